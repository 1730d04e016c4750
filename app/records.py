"""Files a run leaves beside its metrics: `summary.json` and `provenance.json`."""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATUSES = ("completed", "early_stopped", "diverged", "pruned", "failed")


def worst_value(mode: str) -> float:
    """What a run that produced no usable result returns to the sweeper: the worst possible
    value for `mode` (+inf when minimising, -inf when maximising), so it ranks last."""
    return math.inf if mode == "min" else -math.inf


def objective(status: str, best: float | None, mode: str) -> float:
    """The float a run returns to Hydra (the sweeper's objective): the best monitored value for
    completed and early-stopped runs, the worst possible value otherwise."""
    if status in ("completed", "early_stopped") and best is not None and math.isfinite(best):
        return float(best)
    return worst_value(mode)


def _jsonable(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    """Read a file written by `write_json`, turning "inf"/"-inf"/"nan" back into floats."""

    def revive(obj):
        for key, value in obj.items():
            if value in ("inf", "-inf", "nan"):
                obj[key] = float(value)
        return obj

    return json.loads(Path(path).read_text(), object_hook=revive)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_state() -> dict[str, Any]:
    """The code's version: commit, whether tracked files differ from it, and the sha256 of that
    difference (`git diff HEAD`), so two dirty runs can be told apart. None where git says nothing."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    diff = _git("diff", "HEAD", "--binary") if status else None
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "git_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def provenance(device_name: str, overrides: list[str], config_hash: str | None = None,
               command: list[str] | None = None) -> dict[str, Any]:
    """Where a number came from: code version, command, library versions, device, and the hash of
    the config that determines the numbers (`app.provenance.config_hash`)."""
    return {
        **git_state(),
        "config_hash": config_hash,
        "command": command or [sys.executable, *sys.argv],
        "overrides": overrides,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            p: _version(p)
            for p in ("torch", "numpy", "hydra-core", "omegaconf", "optuna", "hydra-optuna-sweeper", "wandb")
        },
        "device": device_name,
    }
