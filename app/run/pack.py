"""Execute several runs of one model shape as one pack (app/train/packed.py), each in its own
directory, with the records a lone run leaves (app/run/execute.py): provenance.json, metrics.csv,
checkpoints/, summary.json, its own logger runs.

`pack_size(cfg)` reads the top-level `pack` setting: `auto` (the default; every run the caller
has in one pack), `false` (one at a time) or an integer K >= 1 (packs of at most K runs).
`execute_pack` builds each member with `build_run` (continuing it from its checkpoints when the
config resumes), checks that they can train together (`unpackable`; if not, it returns None and
the caller trains them one at a time, after a one-line notice naming why), trains them, then
tests each with its best checkpoint and writes its summary.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from app.errors import ConfigError
from app.run.build import Run, build_run
from app.run.device import describe
from app.run.provenance import config_hash
from app.config import objective_names
from app.run.record import Status, Summary, objective, objective_values, provenance, result_line, write_json
from app.run.resume import Resumption
from app.train.packed import PackedTrainer, unpackable, unpackable_config

log = logging.getLogger("app")
ACCEPTED = "auto (every run in one pack), false (one run at a time) or an integer >= 1 (packs of at most that many runs)"


def pack_size(cfg: DictConfig, runs: int) -> int:
    """How many of `runs` runs of `cfg` train together: `runs` for pack=auto, 1 for pack=false,
    min(K, runs) for pack=K. Raises ConfigError for anything else."""
    value = cfg.get("pack", "auto")
    if value == "auto":
        return runs
    if value is False or value is None:
        return 1
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("pack", value, ACCEPTED)
    return min(int(value), runs)


def execute_pack(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], *, names: Sequence[str],
                 group: str | None = None, resumptions: Sequence[Resumption | None] | None = None,
                 trials: Sequence[Any] | None = None, overrides: Sequence[list[str]] | None = None,
                 isolate: bool = False) -> list[Summary] | None:
    """Train the runs `cfgs[i]` in `run_dirs[i]` as one pack; each member's summary, in order.
    None (nothing written) when they cannot be packed: a notice names why; the caller trains
    them one at a time. `resumptions[i]`: continue member i from its checkpoints. A sweep's
    pack (app/search/packs.py) passes each member's Optuna `trials[i]` (it reports to it and may
    be pruned by it), its `overrides[i]` for provenance.json (default: the job's), and
    `isolate=True`: a member whose run cannot be built fails alone (its summary says why)."""
    reason = unpackable_config(cfgs[0])
    if reason is not None:
        log.info("pack: training one run at a time: %s", reason)
        return None
    resumptions = list(resumptions or [None] * len(cfgs))
    trials = list(trials or [None] * len(cfgs))
    overrides = list(overrides or [list(HydraConfig.get().overrides.task)] * len(cfgs))
    failed: dict[int, Summary] = {}
    runs = []
    for i, (cfg, run_dir, name) in enumerate(zip(cfgs, run_dirs, names)):
        try:
            runs.append(build_run(cfg, run_dir, run_name=name, group=group, trial=trials[i]))
        except Exception as error:  # noqa: BLE001 - with isolate: this member fails, the others train
            if not isolate:
                raise
            log.warning("pack: %s cannot be built: %s: %s", run_dir, type(error).__name__, error)
            failed[i] = Summary(Status.FAILED, monitor=cfg.trainer.monitor, mode=cfg.trainer.mode,
                                error=f"{type(error).__name__}: {error}")
            if trials[i] is not None:
                failed[i].trial = trials[i].describe(Status.FAILED)
            failed[i].write(run_dir)
    if failed:  # the others train on; the caller gets every member's summary, in order
        if not runs:
            return [failed[i] for i in range(len(cfgs))]
        kept = [i for i in range(len(cfgs)) if i not in failed]
        summaries = _train(runs, [cfgs[i] for i in kept], [run_dirs[i] for i in kept],
                           [resumptions[i] for i in kept], [trials[i] for i in kept], [overrides[i] for i in kept])
        if summaries is None:
            return None
        by_index = dict(zip(kept, summaries))
        return [failed.get(i) or by_index[i] for i in range(len(cfgs))]
    return _train(runs, cfgs, run_dirs, resumptions, trials, overrides)


def _train(runs: list[Run], cfgs: Sequence[DictConfig], run_dirs: Sequence[Path],
           resumptions: Sequence[Resumption | None], trials: Sequence[Any], overrides: Sequence[list[str]]
           ) -> list[Summary] | None:
    """Train the built `runs` as one pack (see execute_pack); None when they cannot be packed."""
    reason = unpackable(runs)
    if reason is not None:
        log.info("pack: training one run at a time: %s", reason)
        for run in runs:
            run.release()
        return None
    for cfg, run_dir, run, resumption, args in zip(cfgs, run_dirs, runs, resumptions, overrides):
        if resumption is None:
            write_json(run_dir / "provenance.json", provenance(
                describe(run.device), list(args), config_hash(cfg)))
        else:
            resumption.restore(run.trainer, run.train, run.checkpoint, describe(run.device), cfg)
    log.info("pack of %d runs: %s", len(runs), runs[0].describe())

    started = time.time()
    summaries = [Summary(Status.FAILED, monitor=c.trainer.monitor, mode=c.trainer.mode) for c in cfgs]
    results = None
    try:
        results = PackedTrainer(runs).fit()
        for i, (run, result) in enumerate(zip(runs, results)):
            summaries[i] = _tested(run, result)
    except BaseException as error:
        for summary, run in zip(summaries, runs):
            if summary.status == Status.FAILED:
                summary.epochs_run, summary.error = run.trainer.epoch, f"{type(error).__name__}: {error}"
                summary.interrupted = isinstance(error, KeyboardInterrupt)
        if isinstance(error, KeyboardInterrupt):
            error.epoch = max(run.trainer.epoch for run in runs)
        raise
    finally:
        wall = round(time.time() - started, 3)
        for cfg, run_dir, run, summary, trial in zip(cfgs, run_dirs, runs, summaries, trials):
            summary.objective = objective(summary.status, summary.best, cfg.trainer.mode)
            if len(objective_names(cfg)) > 1:  # several objectives: each metric at the best epoch
                at_best = next((m for m in run.trainer.history if m.get("epoch") == summary.best_epoch), None)
                summary.objectives = objective_values(summary.status, at_best, objective_names(cfg),
                                                      cfg.trainer.mode)
            if trial is not None:
                summary.trial = trial.describe(summary.status)
            summary.wall_time_s = wall
            summary.write(run_dir)
            for callback in run.callbacks:
                callback.on_run_end(summary.to_dict())
            run.release()
    for run_dir, summary in zip(run_dirs, summaries):
        log.info(result_line(summary, run_dir, HydraConfig.get().runtime.cwd))
    return summaries


def _tested(run: Run, result: Any) -> Summary:
    """The member's summary: its fit, and its test metrics with its best checkpoint's weights."""
    best_loaded = run.checkpoint is not None and run.checkpoint.load_best_weights(run.model)
    tested = run.test is not None and (best_loaded or run.checkpoint is None)
    test = run.trainer.evaluate(run.test, prefix="test") if tested else {}
    t = run.cfg.trainer
    return Summary(
        result.stop_reason, monitor=t.monitor, mode=t.mode, message=result.message, best=result.best,
        best_epoch=result.best_epoch, last=result.last, epochs_run=result.epochs_run,
        last_metrics=result.last_metrics, test=test,
    )
