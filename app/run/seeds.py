"""One configuration, several seeds, one run: `python -m app seeds=[1,2,3]`.

Each seed trains as a run of its own in `<run dir>/seed_<n>/` (metrics.csv, checkpoints/,
summary.json, provenance.json), one after the other. The run dir's summary.json aggregates them:

- `objective`: the mean of the seeds' objectives (what a sweep optimises), `objective_std` their
  sample standard deviation (0 for one seed); `best`/`best_std` likewise for the best values,
  `test` the mean of each test metric; `epochs_run` and `wall_time_s` are totals.
- `per_seed`: each seed's status, best, best_epoch, epochs_run, objective and directory.
- `status`: `completed` when every seed ended normally (completed or early-stopped). A seed that
  is pruned or diverges ends the run with that status (the remaining seeds would not change the
  verdict) and the objective is the worst value, as for a single run. A seed that raises ends
  the run as `failed`.
"""
from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, open_dict

from app.config import validate
from app.run.record import Status, Summary, worst_value
from app.train.distributed import is_main


def with_seed(cfg: DictConfig, seed: int) -> DictConfig:
    """A copy of `cfg` that trains with `seed`."""
    seeded = copy.deepcopy(cfg)
    with open_dict(seeded):
        seeded.seed = int(seed)
    return seeded


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(per_seed: list[dict[str, Any]], seeds: list[int], monitor: str, mode: str) -> Summary:
    """The run's summary from its seeds' summaries (dicts, in the order they ran)."""
    statuses = [Status.of(s.get("status")) for s in per_seed]
    ended_normally = len(per_seed) == len(seeds) and all(s.ended_normally for s in statuses)
    status = Status.COMPLETED if ended_normally else (statuses[-1] if per_seed else Status.FAILED)
    objective, objective_std = _mean_std([s.get("objective") for s in per_seed]) if ended_normally else (None, None)
    best, best_std = _mean_std([s.get("best") for s in per_seed])
    test_keys = set.intersection(*(set(s.get("test") or {}) for s in per_seed)) if per_seed else set()
    summary = Summary(
        status, monitor=monitor, mode=mode, seeds=list(seeds),
        objective=objective if objective is not None else worst_value(mode), objective_std=objective_std,
        best=best, best_std=best_std,
        best_epoch=None,  # per seed: see per_seed
        epochs_run=sum(s.get("epochs_run") or 0 for s in per_seed),
        wall_time_s=round(sum(s.get("wall_time_s") or 0.0 for s in per_seed), 3),
        test={k: statistics.fmean(s["test"][k] for s in per_seed) for k in sorted(test_keys)},
        test_std={k: statistics.stdev(s["test"][k] for s in per_seed) if len(per_seed) > 1 else 0.0
                  for k in sorted(test_keys)} or None,
        per_seed=[
            {key: s.get(key) for key in ("seed", "status", "best", "best_epoch", "epochs_run", "objective", "run_dir")}
            for s in per_seed
        ],
    )
    if ended_normally:
        summary.message = (f"{len(seeds)} seeds: {monitor} {objective:.6g} +- {objective_std:.3g}"
                           if objective is not None else f"{len(seeds)} seeds")
    elif per_seed:
        last = per_seed[-1]
        summary.message = f"seed {last.get('seed')}: {last.get('message') or last.get('error') or status}"
    return summary


def train_seeds(cfg: DictConfig, run_dir: Path, train: Callable[..., Summary],
                trial: Any = None) -> Summary:
    """Run `train(cfg_with_seed, run_dir / f"seed_{n}", trial=trial)` for each of `cfg.seeds`;
    write and return the aggregate summary (see module docstring)."""
    validate(cfg)  # before any seed's directory is made
    seeds = [int(s) for s in cfg.seeds]
    per_seed: list[dict[str, Any]] = []
    error: BaseException | None = None
    try:
        for seed in seeds:
            seed_dir = run_dir / f"seed_{seed}"
            if is_main():  # with several processes rank 0 alone writes
                seed_dir.mkdir(parents=True, exist_ok=True)
            try:
                result = train(with_seed(cfg, seed), seed_dir, trial=trial)
            except BaseException as exc:
                error = exc
                per_seed.append({"seed": seed, "status": "failed", "run_dir": str(seed_dir),
                                 "error": f"{type(exc).__name__}: {exc}"})
                raise
            per_seed.append({**result.to_dict(), "seed": seed, "run_dir": str(seed_dir)})
            if not result.status.ended_normally:
                break
    finally:
        summary = aggregate(per_seed, seeds, cfg.trainer.monitor, cfg.trainer.mode)
        if error is not None:
            summary.status = Status.FAILED
            summary.error = f"seed {per_seed[-1]['seed']}: {type(error).__name__}: {error}"
            summary.interrupted = isinstance(error, KeyboardInterrupt)
        if trial is not None:
            summary.trial = trial.describe(summary.status)
        if is_main():
            summary.write(run_dir)
    return summary
