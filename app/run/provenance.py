"""What determines a run's numbers, as a hash, and comparing two runs by their records.

`result_config(cfg)` is the resolved job config without the keys that cannot change a run's
numbers (`RESULT_NEUTRAL`: logging, progress, checkpoint cadence, naming) and the keys that only
say how to launch (`RUNTIME_KEYS`); `config_hash` is its sha256. `data_files` hashes the data
files the config names (`data.path`): the config says which file, not what it held. Two runs
with the same config hash, data hashes, git commit and diff hash ran the same experiment. Resuming uses the same split to decide which
changed overrides it accepts (see app/run/resume.py).

    python -m app.run.provenance RUN_DIR_A RUN_DIR_B    # what differs between two runs
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that only tell the app how to start (resume, preflight): never part of a result.
RUNTIME_KEYS = ("resume", "resume_force", "preflight")
# Keys (and key prefixes) that change what a run reports or keeps, never its numbers.
RESULT_NEUTRAL = (
    "logger",                    # experiment loggers: which, modes, projects, tags, names
    "callbacks.checkpoint",      # checkpoint cadence and folder
    "callbacks.progress",        # log lines and the progress bar
    "callbacks.health",          # warnings only
    "task_name",                 # a name for the run and its log file
    "trainer.log_every",
    "trainer.progress_bar",
    "trainer.checkpoint_every",
    "trainer.keep_last_k",
    "trainer.data_on_device",    # where batches are indexed; the same values either way
    "trainer.ddp_timeout",       # how long a rank waits for the others
    "device.index",              # another GPU of the same kind
    "trainer.threads",           # how many CPU cores compute it (like device.index: the last bits may differ)
)


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_result_neutral(key: str) -> bool:
    """Whether a change of `key` (dotted) leaves a run's numbers as they are."""
    return _matches(key, RESULT_NEUTRAL + RUNTIME_KEYS)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf} for every leaf of nested dicts; lists are leaves; an empty dict is a leaf."""
    if isinstance(node, dict) and node:
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def to_plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """The config as plain containers, interpolations resolved where they can be."""
    if isinstance(cfg, dict):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that needs a context we are not in: compare as written
        return OmegaConf.to_container(cfg, resolve=False)


def result_config(cfg: DictConfig | dict) -> dict[str, Any]:
    """The leaves of `cfg` that determine the numbers, as {dotted key: value}."""
    return {k: v for k, v in flatten(to_plain(cfg)).items() if not is_result_neutral(k)}


def config_hash(cfg: DictConfig | dict) -> str:
    """sha256 of `result_config(cfg)` as canonical JSON: equal for configs that train alike."""
    text = json.dumps(result_config(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def data_files(cfg: DictConfig | dict) -> dict[str, str]:
    """{path as the config names it: "sha256:<hex>"} of the data files the run reads
    (`data.path`; relative paths from the working directory, as the data loader reads them).
    A file that cannot be read is recorded as "unreadable" (the data loader says why)."""
    data = to_plain(cfg).get("data")
    path = data.get("path") if isinstance(data, dict) else None
    if not isinstance(path, str) or not path:
        return {}
    digest = hashlib.sha256()
    try:
        with open(Path(path).expanduser(), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return {path: "unreadable"}
    return {path: "sha256:" + digest.hexdigest()}


def config_changes(old: DictConfig | dict, new: DictConfig | dict) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old value, new value)} for every leaf that differs (missing: None)."""
    a, b = flatten(to_plain(old)), flatten(to_plain(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


# ----------------------------------------------------------------------------- compare two runs
FIELDS = ("config_hash", "data_files", "git_commit", "git_dirty", "git_diff_sha256", "device", "python", "platform")
SAME_EXPERIMENT = ("config_hash", "data_files", "git_commit", "git_diff_sha256")  # these must agree


def compare(run_a: Path, run_b: Path) -> tuple[list[tuple[str, Any, Any]], dict[str, tuple[Any, Any]]]:
    """Provenance fields (incl. library versions) and config keys that differ between two runs."""
    from app.run.record import read_json

    records = []
    for run in (run_a, run_b):
        path = Path(run) / "provenance.json"
        if not path.exists():
            raise FileNotFoundError(f"{run} has no provenance.json: not a run directory of this app")
        records.append(read_json(path))
    a, b = records
    fields = [(f, a.get(f), b.get(f)) for f in FIELDS if a.get(f) != b.get(f)]
    versions = sorted(set(a.get("versions", {})) | set(b.get("versions", {})))
    fields += [
        (f"versions.{p}", a.get("versions", {}).get(p), b.get("versions", {}).get(p))
        for p in versions
        if a.get("versions", {}).get(p) != b.get("versions", {}).get(p)
    ]
    configs = [Path(run) / ".hydra" / "config.yaml" for run in (run_a, run_b)]
    changes = config_changes(*(OmegaConf.load(c) for c in configs)) if all(c.exists() for c in configs) else {}
    return fields, changes


def main(argv: list[str]) -> int:
    """Print what differs between two run directories. Exit 0 when they ran the same experiment
    (same config hash, data files, commit and diff), 1 when they did not, 2 on bad arguments."""
    if len(argv) != 2 or any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        fields, changes = compare(Path(argv[0]), Path(argv[1]))
    except FileNotFoundError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    for name, a, b in fields:
        print(f"{name}: {a} | {b}")
    for key, (a, b) in changes.items():
        note = "" if not is_result_neutral(key) else "  (does not change the numbers)"
        print(f"config {key}: {a!r} | {b!r}{note}")
    same = not any(name in SAME_EXPERIMENT for name, _, _ in fields)
    print("same experiment (config hash, data files, commit and diff agree)" if same else "different experiments")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
