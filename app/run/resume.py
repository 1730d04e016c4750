"""Continue an interrupted run in its own directory: `python -m app resume=<run dir> [overrides]`.

How it fits Hydra: every Hydra run writes a new directory, so `app.run.launch` rewrites the command
line before Hydra sees it (`resume_argv`): the run's own overrides (from its
`.hydra/overrides.yaml`) come first, then the new ones, and `hydra.run.dir` points at the run
itself with `hydra.output_subdir=null`, so Hydra composes the run's config again, logs into the
run's log file, creates no new directory, and leaves the run's `.hydra/` records as they were.

In the job, `prepare` compares the composed config with the one the run saved when it started:
a key whose change would change the numbers is refused (naming the key) unless
`resume_force=true`; keys that cannot (`app.run.provenance.RESULT_NEUTRAL`) are accepted, and
`trainer.epochs` may be raised to extend a run. Then the app builds everything as for a new run
and `Resumption.restore` loads `checkpoints/last.pt` into it (see `Checkpoint.restore`).
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from app.errors import ConfigError
from app.run.provenance import RUNTIME_KEYS, config_changes, config_hash, is_result_neutral
from app.run.record import Status, Summary, git_state, read_json, write_json

log = logging.getLogger(__name__)
EXTENDABLE = "trainer.epochs"
LAUNCH_ARGV: list[str] | None = None  # the command as typed, set by app.run.launch before rewriting


# ----------------------------------------------------------------------------- command line
def _parse(arg: str):
    """The Hydra override `arg` is, or None for flags and their values."""
    if arg.startswith("-") or "=" not in arg:
        return None
    try:
        return OverridesParser.create().parse_override(arg)
    except Exception:  # Hydra reports malformed overrides itself, with its own message
        return None


def find_override(args: list[str], key: str) -> tuple[int, Any] | None:
    """(position, value) of the last `key=value` among `args`, or None."""
    found = None
    for i, arg in enumerate(args):
        override = _parse(arg)
        if override is not None and override.key_or_group == key and not override.is_delete():
            found = (i, override.value())
    return found


def _quote(value: str) -> str:
    """A Hydra override value that stays one string whatever the path holds (, = spaces)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def run_directory(value: Any) -> Path:
    """The run directory `resume=<value>` names, checked to be one."""
    accepted = "a run directory of this app (it holds .hydra/config.yaml), e.g. outputs/runs/<date>/<time>"
    if not isinstance(value, str) or not value:
        raise ConfigError("resume", value, accepted)
    path = Path(value).expanduser()
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not path.is_dir():
        raise ConfigError("resume", value, accepted, f"{path} is not a directory")
    if not (path / ".hydra" / "config.yaml").exists() or not (path / ".hydra" / "overrides.yaml").exists():
        raise ConfigError("resume", value, accepted, f"{path} has no .hydra/config.yaml")
    for name in ("config.yaml", "overrides.yaml"):  # damaged records: say which, before Hydra reads them
        try:
            record = OmegaConf.load(path / ".hydra" / name)
        except Exception as error:  # noqa: BLE001 -- any reason it cannot be read
            raise ConfigError("resume", value, accepted, f"{path}/.hydra/{name} cannot be read "
                              f"({type(error).__name__}: {' '.join(str(error).split())})") from None
        shape_ok = (OmegaConf.is_dict(record) if name == "config.yaml"
                    else OmegaConf.is_list(record) and all(isinstance(o, str) for o in record))
        if not shape_ok:
            raise ConfigError("resume", value, accepted, f"{path}/.hydra/{name} is not what this app "
                              "writes there (" + ("a mapping" if name == "config.yaml" else "a list of overrides") + ")")
    return path


def resume_argv(args: list[str]) -> list[str]:
    """The arguments for Hydra that continue the run `resume=<dir>` names (see module docstring);
    `args` unchanged when they name none."""
    found = find_override(args, "resume")
    if found is None or found[1] in (None, ""):
        return args
    position, value = found
    if any(a in ("--multirun", "-m") for a in args):
        raise ConfigError("resume", value, "one run directory, without --multirun",
                          "a resume continues one run; resume the jobs of a sweep one at a time")
    run_dir = run_directory(value)
    new_keys = {o.key_or_group for a in args if (o := _parse(a)) is not None}
    original = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    kept = [a for a in original if (o := _parse(a)) is None or o.key_or_group not in new_keys]
    quoted = _quote(str(run_dir))
    return [
        *args[:position], *kept, f"resume={quoted}", f"hydra.run.dir={quoted}",
        "hydra.output_subdir=null", *args[position + 1:],
    ]


# ----------------------------------------------------------------------------- in the job
@dataclass
class Resumption:
    """A run being continued: what changed, and (when there is nothing left to do) its summary."""

    run_dir: Path
    accepted: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key: (old, new)
    forced: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    finished: Summary | None = None  # the run's summary when it has already finished
    message: str = ""

    def replan_schedule(self, trainer, train_batches) -> str | None:
        """A run extended to more epochs: its schedule's horizon moves to the new total
        (app.train.schedulers.replan states the rule). Returns what changed, or None."""
        if EXTENDABLE not in self.accepted or trainer.scheduler is None:
            return None
        from app.train.schedulers import replan

        old, new = self.accepted[EXTENDABLE]
        per_epoch = 1
        if trainer.scheduler_interval == "step":  # horizons in optimizer steps
            per_epoch = -(-len(train_batches) // trainer.accumulate)
        replanned = replan(trainer.scheduler, old * per_epoch, new * per_epoch)
        if replanned:
            log.info("resume: the run is extended from %d to %d epochs; schedule re-planned: %s", old, new, replanned)
        return replanned

    def restore(self, trainer, train_batches, checkpoint, device_name: str, cfg: DictConfig) -> int:
        """Load last.pt into the freshly built run; record the resume in provenance.json.
        Returns the epoch it continues after (0 when the run died before its first checkpoint)."""
        try:
            state = checkpoint.restore(trainer, train_batches)
        except ValueError as error:
            raise ConfigError(
                "resume", str(self.run_dir),
                "a run whose checkpoints/last.pt this version of the app can read (without a last.pt, "
                "a resume starts the run again from epoch 0 in its directory)", str(error),
            ) from None
        epoch = state["epoch"] if state is not None else 0
        replanned = self.replan_schedule(trainer, train_batches)  # every rank: each steps its scheduler
        from app.train.distributed import is_main

        if not is_main():  # with several processes, rank 0 records the resume
            return epoch
        path = self.run_dir / "provenance.json"
        record = read_json(path) if path.exists() else {}
        before = (record.get("resumes") or [record])[-1].get("device")
        if before and before != device_name:
            log.warning("resume: the run was on %s and continues on %s; numbers from here on may "
                        "differ in the last bits from an uninterrupted run", before, device_name)
        record.setdefault("resumes", []).append({
            **git_state(),
            "config_hash": config_hash(cfg),
            "command": [sys.executable, *(LAUNCH_ARGV or sys.argv)],
            "from_epoch": epoch,
            "accepted_changes": {k: list(v) for k, v in self.accepted.items()},
            "forced_changes": {k: list(v) for k, v in self.forced.items()},
            **({"schedule_replanned": replanned} if replanned else {}),
            "device": device_name,
        })
        write_json(path, record)
        log.info("resuming %s after epoch %d of %d", self.run_dir, epoch, cfg.trainer.epochs)
        return epoch


def _raw(saved: DictConfig, key: str) -> Any:
    """The value of `key` as the run's config wrote it, interpolation and all (None: absent)."""
    try:
        raw = OmegaConf.to_container(saved, resolve=False)
        for part in key.split("."):
            raw = raw[part]
    except (KeyError, TypeError):
        return None
    return raw


def _follows_epochs(saved: DictConfig, key: str) -> bool:
    """Whether the run's config wrote `key` as following trainer.epochs (cosine's T_max...)."""
    raw = _raw(saved, key)
    return isinstance(raw, str) and "${" + EXTENDABLE + "}" in raw


def _refusal(key: str, old: Any, new: Any, overridden: bool, saved: DictConfig) -> str:
    """One refused change, said with why it changed when that is not the command line."""
    text = f"{key}: {old!r} -> {new!r}"
    raw = _raw(saved, key)
    if isinstance(raw, str) and "${" in raw:
        return text + f" (it follows {raw})"
    if not overridden:
        text += " (not overridden on this command line: conf/ changed since the run started)"
    return text


def prepare(cfg: DictConfig, run_dir: Path) -> Resumption:
    """Check that `cfg` may continue the run in `run_dir` (see module docstring). Raises
    ConfigError naming the first key that would change the result; writes nothing."""
    resume_dir = Path(cfg.resume).expanduser().resolve()
    if resume_dir != Path(run_dir).resolve():
        raise ConfigError(
            "resume", cfg.resume, "python -m app resume=<run dir> [overrides]",
            f"this job's output directory is {run_dir}: resumes are started through `python -m app`, "
            "which continues the run in its own directory",
        )
    from app.config import resolve_mode

    saved = resolve_mode(OmegaConf.load(resume_dir / ".hydra" / "config.yaml"))  # auto as cfg's is
    original = {str(o) for o in OmegaConf.load(resume_dir / ".hydra" / "overrides.yaml")}
    new_keys = [
        o.key_or_group for a in HydraConfig.get().overrides.task
        if a not in original and (o := _parse(a)) is not None and o.key_or_group not in RUNTIME_KEYS
    ]

    resumption = Resumption(resume_dir)
    refused = []
    changes = config_changes(saved, cfg)
    old_epochs, new_epochs = changes.get(EXTENDABLE, (None, None))
    extended = isinstance(old_epochs, int) and isinstance(new_epochs, int) and new_epochs >= old_epochs
    for key, (old, new) in changes.items():
        if key in RUNTIME_KEYS:
            continue
        if is_result_neutral(key):
            resumption.accepted[key] = (old, new)
        elif key == EXTENDABLE and extended:
            resumption.accepted[key] = (old, new)
        elif extended and _follows_epochs(saved, key):  # a horizon: re-planned, see Resumption.replan_schedule
            resumption.accepted[key] = (old, new)
        else:
            overridden = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in new_keys)
            refused.append((key, old, new, overridden))
    if refused and not cfg.resume_force:
        key, old, new, _ = refused[0]
        raise ConfigError(
            key, new,
            f"the run's own value {old!r} (leave the override out), "
            + ("a larger value to extend the run, " if key == EXTENDABLE else "")
            + "or resume_force=true to continue with the change anyway",
            f"Resuming {resume_dir} with these changes would change its result: "
            + "; ".join(_refusal(k, o, n, ov, saved) for k, o, n, ov in refused),
        )
    for key, (old, new) in resumption.accepted.items():
        log.info("resume: %s %r -> %r (does not change the epochs already run)", key, old, new)
    for key, old, new, _ in refused:
        resumption.forced[key] = (old, new)
        held = key.split(".")[0] in ("optimizer", "scheduler")
        log.warning("resume_force: %s %r -> %r%s", key, old, new,
                    f"; last.pt's {key.split('.')[0]} state is loaded over it, and settings that state "
                    "holds (lr, momentum, T_max, ...) keep their checkpointed values"
                    if held else "; the result is no longer that of the run's config")

    summary = Summary.read(resume_dir)
    finished = summary is not None and summary.status != Status.FAILED  # a failed run is resumed
    extending = finished and summary.status == Status.COMPLETED and cfg.trainer.epochs > (summary.epochs_run or 0)
    if finished and not extending:
        resumption.finished = summary
        resumption.message = (
            f"{resume_dir} already finished ({summary.status} after {summary.epochs_run} epochs, best "
            f"{summary.monitor}={summary.best} at epoch {summary.best_epoch}): nothing "
            "to resume" + (f"; raise trainer.epochs above {summary.epochs_run} to extend it"
                           if summary.status == Status.COMPLETED else "")
        )
    return resumption


def refresh_sweep_summary(run_dir: Path) -> None:
    """A resumed job of a sweep: bring the sweep's summary table up to date."""
    sweep_dir = Path(run_dir).parent
    if (sweep_dir / "multirun.yaml").exists() or (sweep_dir / "sweep_summary.csv").exists():
        from app.search.summary import write_summary

        write_summary(Path(run_dir).parent)
