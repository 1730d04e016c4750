"""The Hydra task function: compose -> check -> build -> fit -> test -> record -> objective.

It wires; it does not compute (app/run/ builds and executes a run). Returns the run's objective
for sweepers: a float, or a list of floats when `trainer.monitor` names several metrics. With
several processes (app/run/distributed.py) every rank runs `run`; `trainer.devices=N` starts them
from here, torchrun starts them itself.
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
from app.run import distributed
from app.run.execute import execute
from app.run.lock import RunDirLock
from app.run.record import DamagedRecord, Status, Summary, interrupted_line, refusal, result_line, returned
from app.run.seeds import train_seeds
from app.search import packs
from app.search.trial import current_trial
from app.tools import preflight
from app.train.distributed import is_main

register_configs()
log = logging.getLogger("app")


def run(cfg: DictConfig, run_dir: Path) -> Summary:
    """The run itself, in `run_dir`: its trial (rank 0 alone talks to Optuna), its seeds or its
    one execution. Every rank of a process group runs this."""
    resolve_mode(cfg)  # trainer.monitor (a list: its first) and trainer.mode (auto: min | max)
    trial = current_trial(cfg.trusted_modules) if is_main() else None
    try:
        if trial is not None and packs.pack_file() is not None:  # a pack of sweep trials (app/search/packs.py)
            return packs.run_pack_job(cfg, run_dir, trial)
        if cfg.seeds:
            summary = train_seeds(cfg, run_dir, execute, trial)
            if is_main():
                log.info(result_line(summary, run_dir, HydraConfig.get().runtime.cwd))
            return summary
        return execute(cfg, run_dir, trial)
    finally:
        if trial is not None:
            trial.close()  # stops the trial's heartbeat


# The whitelist covers what Hydra itself builds (hydra.callbacks, logging); the app's own builds
# add the config's `trusted_modules` (app/targets.py).
@hydra.main(config_path=str(CONF_DIR), config_name="config", execution_whitelist=list(targets.patterns()))
def main(cfg: DictConfig) -> float | list[float]:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    distributed.publish_run_dir(run_dir)  # torchrun's rank 0: the other ranks use this one
    if cfg.preflight:  # only when app.run.launch left it to Hydra (e.g. with --config-name)
        sys.exit(preflight.run_and_report(cfg))
    # The process that owns the run dir takes its lock: one process, the launching process of
    # `trainer.devices=N` (its workers never get here), or torchrun's rank 0. Torchrun's other
    # ranks share rank 0's run dir and must not take it (rank 0's lock would refuse them).
    if distributed.launch_rank() != 0:
        return train(cfg, run_dir)
    lock = RunDirLock(run_dir, "resume" if cfg.resume else "hydra.run.dir")
    try:
        lock.acquire()  # refused: another process trains here; nothing of the run is touched
    except ConfigError as error:
        fail(error)
    with lock:
        return train(cfg, run_dir)


def train(cfg: DictConfig, run_dir: Path) -> float | list[float]:
    """The run (or its seeds) in `run_dir`, on this process or its group; the objective. User
    mistakes and a full disk end it with one paragraph (exit 2), a failed rank with one error
    naming it (exit 1), Ctrl-C with the line that continues it (exit 130)."""
    try:
        if distributed.starts_group(cfg):  # trainer.devices=N: N processes run `run`, rank 0's summary
            summary = distributed.run_group(cfg, run_dir, run)
        else:
            distributed.join(cfg)  # a torchrun rank joins its group (a no-op for one process)
            try:
                summary = run(cfg, run_dir)
            except BaseException:
                distributed.leave()
                raise
            distributed.leave(together=True)
        if summary.debug is not None and not summary.debug["passed"] and HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)  # a debug verdict: FAILED (in a sweep each job's verdict is logged, the sweep goes on)
        return returned(summary)
    except KeyboardInterrupt as stop:  # summary.json already says failed, interrupted
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records its trial as interrupted
        print(interrupted_line(getattr(stop, "epoch", None), run_dir, HydraConfig.get().runtime.cwd),
              file=sys.stderr)
        sys.exit(130)
    except distributed.RankFailure as failure:  # the group is down; its checkpoints are kept
        summary = Summary.read(run_dir) or Summary(Status.FAILED, monitor=cfg.trainer.monitor)
        summary.status, summary.error = Status.FAILED, str(failure)
        try:
            summary.write(run_dir)
        except OSError:
            pass  # a full disk: the error below is still the one to report
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records its trial as failed and goes on
        print(f"Error: {failure}", file=sys.stderr)
        sys.exit(1)
    except (ConfigError, RuntimeError, OSError, DamagedRecord) as caught:
        error = refusal(caught, cfg.resume, run_dir, HydraConfig.get().runtime.cwd)
        if error is None:
            raise
        main_rank = distributed.launch_rank() == 0
        # a refused resume leaves the run's records as they were
        if not cfg.resume and main_rank and not getattr(error, "recorded", False):
            try:
                Summary(Status.FAILED, error=str(error)).write(run_dir)
            except OSError:
                pass  # a full disk: the paragraph below says so
        if not main_rank:
            print(f"[rank {distributed.launch_rank()}] Error: {error}", file=sys.stderr)
            sys.exit(2)
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
