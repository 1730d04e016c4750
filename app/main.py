"""The Hydra task function: compose -> check -> build -> fit -> test -> record -> objective.

It wires; it does not compute (app/run/ builds and executes a run). Returns the run's objective
for sweepers: a float, or a list of floats when `trainer.monitor` names several metrics.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from app import CONF_DIR, targets
from app.config import register_configs, resolve_mode
from app.errors import ConfigError
from app.run.execute import execute
from app.run.lock import RunDirLock
from app.run.record import (DamagedRecord, Status, Summary, disk_full, disk_full_error, interrupted_line,
                            result_line, returned)
from app.run.reproducibility import determinism_refusal
from app.run.seeds import train_seeds
from app.search.trial import current_trial
from app.tools import preflight

register_configs()
log = logging.getLogger("app")


# The whitelist covers what Hydra itself builds (hydra.callbacks, logging); the app's own builds
# add the config's `trusted_modules` (app/targets.py).
@hydra.main(config_path=str(CONF_DIR), config_name="config", execution_whitelist=list(targets.patterns()))
def main(cfg: DictConfig) -> float | list[float]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.preflight:  # only when app.run.launch left it to Hydra (e.g. with --config-name)
        sys.exit(preflight.run_and_report(cfg))
    lock = RunDirLock(run_dir, "resume" if cfg.resume else "hydra.run.dir")
    try:
        lock.acquire()  # refused: another process trains here; nothing of the run is touched
    except ConfigError as error:
        fail(error)
    with lock:
        return train(cfg, run_dir)


def train(cfg: DictConfig, run_dir: Path) -> float:
    """The run (or its seeds) in `run_dir`; the objective. User mistakes and a full disk end it
    with one paragraph (exit 2), Ctrl-C with the line that continues it (exit 130)."""
    try:
        resolve_mode(cfg)  # trainer.monitor (a list: its first) and trainer.mode (auto: min | max)
        trial = current_trial(cfg.trusted_modules)
        try:
            if cfg.seeds:
                summary = train_seeds(cfg, run_dir, execute, trial)
                log.info(result_line(summary, run_dir, HydraConfig.get().runtime.cwd))
            else:
                summary = execute(cfg, run_dir, trial)
        finally:
            if trial is not None:
                trial.close()  # stops the trial's heartbeat
        if summary.debug is not None and not summary.debug["passed"] and HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)  # a debug verdict: FAILED (in a sweep each job's verdict is logged, the sweep goes on)
        return returned(summary)
    except KeyboardInterrupt as stop:  # summary.json already says failed, interrupted
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records its trial as interrupted
        print(interrupted_line(getattr(stop, "epoch", None), run_dir, HydraConfig.get().runtime.cwd),
              file=sys.stderr)
        sys.exit(130)
    except (ConfigError, RuntimeError, OSError, DamagedRecord) as caught:
        full = disk_full(caught)
        error = determinism_refusal(caught) or caught
        if isinstance(caught, DamagedRecord):
            error = ConfigError("resume" if cfg.resume else "hydra.run.dir", str(caught.path),
                                "a run directory whose records this app wrote; move the damaged file "
                                "aside (a resume continues from checkpoints/last.pt)", str(caught))
            error.recorded = True  # leave the run's files as they are
        if full is not None and not isinstance(caught, ConfigError):
            error = disk_full_error(full, run_dir, HydraConfig.get().runtime.cwd, summary_written=False)
        if not isinstance(error, ConfigError):
            raise
        if not cfg.resume and not getattr(error, "recorded", False):  # a refused resume leaves the run's records as they were
            try:
                Summary(Status.FAILED, error=str(error)).write(run_dir)
            except OSError:
                pass  # a full disk: the paragraph below says so
        fail(error)


def fail(error: ConfigError) -> None:
    """Print `error` as its one paragraph, bring a sweep's summary table up to date, exit 2."""
    print(f"Error: {error}", file=sys.stderr)
    from app.search.summary import refresh_summary

    try:
        refresh_summary()
    except OSError:
        pass
    sys.exit(2)
