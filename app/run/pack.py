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
from app.run.record import Status, Summary, objective, provenance, result_line, write_json
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
                 group: str | None = None, resumptions: Sequence[Resumption | None] | None = None
                 ) -> list[Summary] | None:
    """Train the runs `cfgs[i]` in `run_dirs[i]` as one pack; each member's summary, in order.
    None (nothing written) when they cannot be packed: a notice names why; the caller trains
    them one at a time. `resumptions[i]`: continue member i from its checkpoints."""
    reason = unpackable_config(cfgs[0])
    if reason is not None:
        log.info("pack: training one run at a time: %s", reason)
        return None
    resumptions = list(resumptions or [None] * len(cfgs))
    runs = [build_run(cfg, run_dir, run_name=name, group=group)
            for cfg, run_dir, name in zip(cfgs, run_dirs, names)]
    reason = unpackable(runs)
    if reason is not None:
        log.info("pack: training one run at a time: %s", reason)
        for run in runs:
            run.release()
        return None
    for cfg, run_dir, run, resumption in zip(cfgs, run_dirs, runs, resumptions):
        if resumption is None:
            write_json(run_dir / "provenance.json", provenance(
                describe(run.device), list(HydraConfig.get().overrides.task), config_hash(cfg)))
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
        for cfg, run_dir, run, summary in zip(cfgs, run_dirs, runs, summaries):
            summary.objective = objective(summary.status, summary.best, cfg.trainer.mode)
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
