"""Execute one run in its directory: build it, continue it (resume) or start its records, fit,
test with the best checkpoint, and write its summary, whatever happens on the way."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from app.errors import ConfigError
from app.run import debug, resume
from app.run.build import build_run
from app.run.device import describe
from app.config import objective_names
from app.run.provenance import config_hash, data_files
from app.run.record import (Status, Summary, disk_full, disk_full_error, objective, objective_values, provenance,
                            remove_own_temp_files, result_line, write_json)
from app.train.distributed import is_main

log = logging.getLogger("app")


def names(cfg: DictConfig, trial: Any = None) -> tuple[str, str | None]:
    """The run's name for loggers (its overrides) and its group (the study, or the sweep dir)."""
    hydra_cfg = HydraConfig.get()
    name = hydra_cfg.job.override_dirname or cfg.task_name
    if cfg.seeds:
        name = f"{name} seed={cfg.seed}"
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    group = trial.study_name if trial is not None else Path(hydra_cfg.sweep.dir).name if multirun else None
    return name, group


_PREPARE: Any = object()


def execute(cfg: DictConfig, run_dir: Path, trial: Any = None, resumption: Any = _PREPARE) -> Summary:
    """Run one experiment in `run_dir`; return its summary (also written to summary.json).
    `trial`: the Optuna trial this run is part of (reports to it, may be pruned by it).
    `resumption`: by default prepared from `cfg.resume`; a seed of a resumed multi-seed run gets
    its own (`resume.Resumption` of its seed_<n> directory), or None to start afresh."""
    if resumption is _PREPARE:
        resumption = resume.prepare(cfg, run_dir) if cfg.resume else None
    if resumption is not None and resumption.finished is not None:
        log.info(resumption.message)
        return resumption.finished
    run_name, group = names(cfg, trial)
    run = build_run(cfg, run_dir, run_name=run_name, group=group, trial=trial)
    main = is_main()  # with several processes, rank 0 alone writes the run's records
    if resumption is None and main:
        write_json(run_dir / "provenance.json", provenance(
            describe(run.device), list(HydraConfig.get().overrides.task), config_hash(cfg),
            data_files=data_files(cfg)))
    elif resumption is not None:
        try:
            resumption.restore(run.trainer, run.train, run.checkpoint, describe(run.device), cfg)
        except (RuntimeError, KeyError, TypeError, IsADirectoryError) as error:  # last.pt not of this run
            raise ConfigError(
                "resume", str(run_dir), "a run whose checkpoints/last.pt holds the state of the model, "
                "optimizer and scheduler this config builds (resume_force cannot change their shapes)",
                f"checkpoints/last.pt does not fit the run built from its config "
                f"({type(error).__name__}: {' '.join(str(error).split())[:300]})") from None
    log.info(run.describe())
    if cfg.get("debug") is not None:
        log.info(debug.describe(cfg, {"train": run.train, "val": run.val, "test": run.test}))

    t = cfg.trainer
    started = time.time()
    summary = Summary(Status.FAILED, monitor=t.monitor, mode=t.mode)
    profiler = debug.profiler(cfg, run_dir, run.device) if main else None  # debug=profile only
    try:
        try:
            result = run.trainer.fit(profiler.wrap(run.train) if profiler else run.train, run.val)
        finally:
            if profiler:
                profiler.close()
        # Without a checkpoint (debug runs may go without) the test takes the last weights.
        best_loaded = run.checkpoint is not None and run.checkpoint.load_best_weights(run.model)
        tested = run.test is not None and (best_loaded or run.checkpoint is None)
        test = run.trainer.evaluate(run.test, prefix="test") if tested else {}
        summary = Summary(
            result.stop_reason, monitor=t.monitor, mode=t.mode, message=result.message, best=result.best,
            best_epoch=result.best_epoch, last=result.last, epochs_run=result.epochs_run,
            last_metrics=result.last_metrics, test=test,
        )
        verdict = debug.verdict(cfg, run.trainer.history, test,
                                {"train": run.train, "val": run.val, "test": run.test})
        if verdict is not None:
            summary.debug = verdict.to_dict()
    except BaseException as error:
        summary.epochs_run, summary.error = run.trainer.epoch, f"{type(error).__name__}: {error}"
        if isinstance(error, KeyboardInterrupt):  # Ctrl-C: app.main prints how to continue
            summary.interrupted, error.epoch = True, run.trainer.epoch
        full = disk_full(error)
        if full is None:
            raise
        # A full disk: one paragraph instead of the chained traceback, the summary if it fits.
        remove_own_temp_files(run_dir)
        summary.error = f"OSError: {full}"
        written = _write_summary(summary, run_dir, t.mode, started, trial, write=main)
        refusal = disk_full_error(full, run_dir, HydraConfig.get().runtime.cwd, written)
        refusal.recorded = True  # app.main must not write over this summary
        refusal.disk_full = full  # a multi-seed run words it for the whole run (app.run.seeds)
        raise refusal from None
    finally:
        if len(objective_names(cfg)) > 1:  # several objectives: each metric at the best epoch
            at_best = next((m for m in run.trainer.history if m.get("epoch") == summary.best_epoch), None)
            summary.objectives = objective_values(summary.status, at_best, objective_names(cfg), t.mode)
        _write_summary(summary, run_dir, t.mode, started, trial, write=main)
        if main:
            for callback in run.callbacks:
                callback.on_run_end(summary.to_dict())
        run.release()
    if resumption is not None and main:
        resume.refresh_sweep_summary(run_dir)
    log.info(result_line(summary, run_dir, HydraConfig.get().runtime.cwd))
    if summary.debug is not None:
        (log.info if summary.debug["passed"] else log.error)(summary.debug["verdict"])
    return summary


def _write_summary(summary: Summary, run_dir: Path, mode: str, started: float, trial: Any,
                   write: bool = True) -> bool:
    """Complete and write summary.json (`write`: this process owns the run's records, rank 0 with
    several processes); False when it was not written (the disk is too full to hold it, or not
    this process's to write)."""
    summary.objective = objective(summary.status, summary.best, mode)
    summary.wall_time_s = round(time.time() - started, 3)
    if trial is not None:
        summary.trial = trial.describe(summary.status)
    if not write:
        return False
    try:
        summary.write(run_dir)
    except OSError as error:
        if disk_full(error) is None:
            raise
        log.warning("summary.json could not be written: %s", error)
        return False
    return True
