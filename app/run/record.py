"""The run's record: `summary.json` (a typed `Summary`, written and read only here) and the
JSON helpers `provenance.json` uses."""
from __future__ import annotations

import errno
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
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from typing import Any

from app import PROJECT_ROOT
from app.errors import ConfigError
from app.run import faults

SUMMARY_FILE = "summary.json"


class Status(str, Enum):
    """How a run ended. A `str` enum: compares equal to its value, and is written as it."""

    COMPLETED = "completed"  # trained every epoch
    EARLY_STOPPED = "early_stopped"  # stopped by early stopping
    DIVERGED = "diverged"  # a non-finite loss stopped it
    PRUNED = "pruned"  # its Optuna trial's pruner stopped it
    FAILED = "failed"  # it raised (or was interrupted) before it ended

    def __str__(self) -> str:
        return self.value

    @property
    def ended_normally(self) -> bool:
        """Its best value is a result (the run's objective)."""
        return self in (Status.COMPLETED, Status.EARLY_STOPPED)

    @classmethod
    def of(cls, value: Any) -> "Status":
        """The status `value` names; FAILED for anything else (a record this app did not write)."""
        try:
            return cls(value)
        except ValueError:
            return cls.FAILED


STATUSES = tuple(status.value for status in Status)
_OPTIONAL = ("objectives", "error", "trial", "debug", "seeds", "objective_std", "best_std", "test_std", "per_seed")


@dataclass
class Summary:
    """`summary.json`: what a run (or a multi-seed run, see app/run/seeds.py) ended with."""

    status: Status = Status.FAILED
    monitor: str | None = None
    mode: str | None = None  # min | max
    objective: float | None = None  # what the run returned to the sweeper (worst value unless it ended normally)
    objectives: dict[str, float] | None = None  # several objectives (a list trainer.monitor): metric ->
    #   its value at the best epoch of the first (mean over seeds); worst values unless it ended normally
    best: float | None = None  # best monitored value (mean over seeds for a multi-seed run)
    best_epoch: int | None = None
    last: float | None = None
    epochs_run: int | None = None
    message: str = ""
    error: str | None = None  # what it raised, for failed runs
    interrupted: bool = False  # failed because its process or sweep was stopped
    last_metrics: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)  # test metrics of the best checkpoint
    wall_time_s: float | None = None
    trial: dict[str, Any] | None = None  # the Optuna trial this run was: study, number, params, state
    debug: dict[str, Any] | None = None  # debug=fast_dev_run|overfit: {"passed": bool, "verdict": line}
    # multi-seed runs
    seeds: list[int] | None = None
    objective_std: float | None = None
    best_std: float | None = None
    test_std: dict[str, float] | None = None  # sample standard deviation of each test metric
    per_seed: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        self.status = Status.of(self.status)

    @property
    def reason(self) -> str:
        """Why it ended as it did, in one line (empty for a plain completed run)."""
        return self.message or self.error or ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field, less the optional ones (error, trial, seeds...) left unset."""
        data = asdict(self)
        data["status"] = self.status.value
        return {key: value for key, value in data.items()
                if not (key in _OPTIONAL and value is None) and not (key == "interrupted" and value is False)}

    def write(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / SUMMARY_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Summary":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def read(cls, run_dir: str | Path | None) -> "Summary | None":
        """The summary in `run_dir`, or None when there is none (yet)."""
        if not run_dir:
            return None
        path = Path(run_dir) / SUMMARY_FILE
        return cls.from_dict(read_json(path)) if path.exists() else None


def shown_path(path: str | Path, base: str | Path) -> str:
    """`path` relative to `base` (the directory the app was launched from) when inside it, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path(base).resolve())) or "."
    except ValueError:
        return str(resolved)


def _sig(value: Any) -> str:
    """4 significant digits, e.g. 0.01234, 0.9533, 1.235e+04."""
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


def result_line(summary: Summary, run_dir: str | Path, launch_dir: str | Path) -> str:
    """The run's last log line: status, best monitored value, test metrics, the run dir, e.g.
    `completed: best val_loss 0.01234 at epoch 87 | test_loss 0.01301, test_mae 0.0912 |
    100 epochs, 41.2s | outputs/runs/...`; multi-seed runs show mean +- std."""
    def pm(mean: Any, std: Any) -> str:
        return _sig(mean) + (f" +- {_sig(std)}" if std is not None else "")

    seeds = summary.seeds is not None
    head = f"{summary.status}" + (f" ({len(summary.seeds)} seeds)" if seeds else "")
    if summary.best is not None:
        best = f"best {summary.monitor} {pm(summary.best, summary.best_std if seeds else None)}"
        if summary.best_epoch is not None:
            best += f" at epoch {summary.best_epoch}"
    else:
        best = f"no {summary.monitor} value"
    parts = [f"{head}: {best}"]
    if not summary.status.ended_normally and summary.reason:
        parts[0] += f" ({summary.reason})"
    if summary.test:
        stds = summary.test_std or {}
        parts.append(", ".join(f"{k} {pm(v, stds.get(k) if seeds else None)}" for k, v in summary.test.items()))
    if summary.epochs_run is not None and summary.wall_time_s is not None:
        parts.append(f"{summary.epochs_run} epochs, {summary.wall_time_s:.1f}s")
    parts.append(shown_path(run_dir, launch_dir))
    return " | ".join(parts)


def interrupted_line(epoch: int | None, run_dir: str | Path, launch_dir: str | Path) -> str:
    """What a Ctrl-C prints: where the run stopped and the command that continues it."""
    where = f"at epoch {epoch}" if epoch else "before the first epoch ended"
    return f"interrupted {where}; continue with: python -m app resume={shown_path(run_dir, launch_dir)}"


def worst_value(mode: str) -> float:
    """What a run that produced no usable result returns to the sweeper: the worst possible
    value for `mode` (+inf when minimising, -inf when maximising), so it ranks last."""
    return math.inf if mode == "min" else -math.inf


def objective(status: str, best: float | None, mode: str) -> float:
    """The float a run returns to Hydra (the sweeper's objective): the best monitored value for
    completed and early-stopped runs, the worst possible value otherwise."""
    if Status.of(status).ended_normally and best is not None and math.isfinite(best):
        return float(best)
    return worst_value(mode)


def objective_values(status: str, best_metrics: dict[str, float] | None, names: list[str],
                     mode: str) -> dict[str, float]:
    """The values a run with several objectives returns (`names`, the first being the monitor):
    each metric at the best epoch (`best_metrics`, that epoch's metrics) for completed and
    early-stopped runs; otherwise the worst possible value of each (the first by `mode`, the
    others by their own direction; NaN where that is not known)."""
    from app.train.tasks import metric_direction

    values: dict[str, float] = {}
    for position, name in enumerate(names):
        value = (best_metrics or {}).get(name)
        if Status.of(status).ended_normally and isinstance(value, (int, float)) and math.isfinite(value):
            values[name] = float(value)
            continue
        better = mode if position == 0 else metric_direction(name)
        values[name] = worst_value(better) if better is not None else math.nan
    return values


def returned(summary: Summary) -> float | list[float]:
    """What the task function returns to Hydra's sweeper: the objective, or the list of the
    objectives' values (in `trainer.monitor`'s order) for several objectives."""
    if summary.objectives is not None:
        return list(summary.objectives.values())
    return summary.objective


def _jsonable(value: Any) -> Any:
    """JSON has no inf/nan: write them as strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def temp_path(path: str | Path) -> Path:
    """The temp file an atomic write of `path` goes through: hidden, beside `path`, and unique to
    this process (`.<name>.<pid>.tmp`), so two processes never write into each other's temp."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        faults.before_write(path)  # test-only fault point; a no-op otherwise
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back
        raise


# ----------------------------------------------------------------------------- a full disk
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException | None) -> OSError | None:
    """The "no space left" / "quota exceeded" OSError in `error` or what it was raised from
    (torch.save wraps the file's OSError in a RuntimeError), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def remove_own_temp_files(run_dir: str | Path) -> None:
    """Remove the temp files this process left in `run_dir` (writes a full disk cut short)."""
    for tmp in Path(run_dir).rglob(f".*.{os.getpid()}.tmp"):
        tmp.unlink(missing_ok=True)


def _kept(run_dir: Path) -> str:
    """What a run dir holds that a resume continues from, in words; for a multi-seed run, what
    each of its seed_<n> directories holds."""
    seeds = sorted((p for p in run_dir.glob("seed_*") if p.is_dir() and p.name[5:].lstrip("-").isdigit()),
                   key=lambda p: int(p.name[5:]))
    if seeds:
        parts = []
        for seed_dir in seeds:
            try:
                summary = Summary.read(seed_dir)
            except Exception:  # noqa: BLE001 -- only for the message
                summary = None
            if summary is not None and summary.status.ended_normally:
                parts.append(f"{seed_dir.name} {summary.status} (its summary.json)")
            else:
                parts.append(f"{seed_dir.name} {_kept(seed_dir)}")
        return "; ".join(parts)
    kept = []
    metrics = run_dir / "metrics.csv"
    if metrics.exists():
        rows = max(0, sum(1 for line in metrics.read_text().splitlines() if line.strip()) - 1)
        kept.append(f"metrics.csv ({rows} epoch{'s' if rows != 1 else ''})")
    last = run_dir / "checkpoints" / "last.pt"
    if last.exists():
        try:
            from app.callbacks.checkpoint import load_checkpoint

            kept.append(f"checkpoints/last.pt (after epoch {load_checkpoint(last)['epoch']})")
        except Exception:  # noqa: BLE001 -- only for the message: name the file all the same
            kept.append("checkpoints/last.pt")
    return ", ".join(kept) or "nothing yet"


def refusal(caught: BaseException, resume: bool, run_dir: str | Path, launch_dir: str | Path) -> ConfigError | None:
    """The one paragraph a run ends with for `caught`, or None (a crash: its traceback): a
    ConfigError as it is, a nondeterministic op under `deterministic=true`, a damaged record of
    the run (`recorded`: its files stay as they are), a full disk."""
    from app.run.reproducibility import determinism_refusal

    full = disk_full(caught)
    error = determinism_refusal(caught) or caught
    if isinstance(caught, DamagedRecord):
        error = ConfigError("resume" if resume else "hydra.run.dir", str(caught.path),
                            "a run directory whose records this app wrote; move the damaged file "
                            "aside (a resume continues from checkpoints/last.pt)", str(caught))
        error.recorded = True  # leave the run's files as they are
    if full is not None and not isinstance(caught, ConfigError):
        error = disk_full_error(full, run_dir, launch_dir, summary_written=False)
    return error if isinstance(error, ConfigError) else None


def disk_full_error(full: OSError, run_dir: str | Path, launch_dir: str | Path,
                    summary_written: bool) -> ConfigError:
    """The one paragraph for a run stopped by a full disk: what was full, what was kept, how to
    continue once there is space."""
    run_dir = Path(run_dir)
    where = f" writing {shown_path(full.filename, run_dir)}" if full.filename else ""
    kind = "over its disk quota" if full.errno == errno.EDQUOT else "full"
    summary = ("summary.json says failed" if summary_written
               else "summary.json could not be written either")
    return ConfigError(
        "hydra.run.dir", shown_path(run_dir, launch_dir),
        f"free space on that disk, then continue the run with: python -m app "
        f"resume={shown_path(run_dir, launch_dir)} (new runs can go elsewhere with hydra.run.dir=<dir>)",
        f"The disk holding the run directory is {kind} ({full.strerror or 'no space left'}{where}), "
        f"so the run stopped. Kept: {_kept(run_dir)}; {summary}",
    )


class DamagedRecord(ValueError):
    """A record of a run (summary.json, provenance.json) that is not the JSON this app writes."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a record this app can read ({reason})")
        self.path = Path(path)


def read_json(path: Path) -> dict[str, Any]:
    """Read a file written by `write_json`, turning "inf"/"-inf"/"nan" back into floats. Raises
    DamagedRecord when it is not JSON (or not an object)."""

    def revive(obj):
        for key, value in obj.items():
            if value in ("inf", "-inf", "nan"):
                obj[key] = float(value)
        return obj

    try:
        data = json.loads(Path(path).read_text(), object_hook=revive)
    except (ValueError, UnicodeDecodeError) as error:
        raise DamagedRecord(path, f"{type(error).__name__}: {error}") from None
    if not isinstance(data, dict):
        raise DamagedRecord(path, f"a JSON {type(data).__name__}, not an object")
    return data


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
               command: list[str] | None = None, data_files: dict[str, str] | None = None) -> dict[str, Any]:
    """Where a number came from: code version, command, library versions, device, the hash of
    the config that determines the numbers (`app.run.provenance.config_hash`) and of the data
    files it reads (`app.run.provenance.data_files`)."""
    return {
        **git_state(),
        "config_hash": config_hash,
        "data_files": data_files or {},
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
