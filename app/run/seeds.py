"""One configuration, several seeds, one run: `python -m app seeds=[1,2,3]`.

Each seed trains as a run of its own in `<run dir>/seed_<n>/` (metrics.csv, checkpoints/,
summary.json, provenance.json). By default the seeds train together as one pack, one vectorized
model (app/run/pack.py, `pack: auto`); `pack=K` trains packs of at most K seeds, `pack=false` one
seed after the other. Seeds that cannot be packed (a model torch.func cannot vectorize, a setting
packs do not support) train one after the other, after a one-line notice naming why. In an
Optuna sweep the seeds of a trial train one after the other (the trial's pruner follows them in
order: app/search/trial.py). A killed packed run continues with `resume=<run dir>`: finished
seeds are kept, the others continue from their checkpoints. The run dir's summary.json
aggregates the seeds:

- `objective`: the mean of the seeds' objectives (what a sweep optimises), `objective_std` their
  sample standard deviation (0 for one seed); `best`/`best_std` likewise for the best values,
  `test` the mean of each test metric; `epochs_run` is their total.
- `per_seed`: each seed's status, best, best_epoch, epochs_run, objective and directory.
- `status`: `completed` when every seed ended normally (completed or early-stopped). A seed that
  is pruned or diverges ends the run with that status (one after the other, the remaining seeds
  are not trained: they would not change the verdict) and the objective is the worst value, as
  for a single run. A seed that raises ends the run as `failed`.
- `wall_time_s`: the run's time (packed seeds train at once, so not the sum of theirs).
"""
from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, open_dict

from app.config import objective_names, validate
from app.run.record import Status, Summary, objective_values, worst_value
from app.train import distributed
from app.train.distributed import is_main

log = logging.getLogger("app")


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


def aggregate(per_seed: list[dict[str, Any]], seeds: list[int], monitor: str, mode: str,
              objectives: list[str] | None = None) -> Summary:
    """The run's summary from its seeds' summaries (dicts, in the order they ran); `objectives`:
    the metrics of a list monitor (several objectives)."""
    statuses = [Status.of(s.get("status")) for s in per_seed]
    ended_normally = len(per_seed) == len(seeds) and all(s.ended_normally for s in statuses)
    # The first seed that did not end normally decides (one after the other, it is the last).
    first_abnormal = next((i for i, s in enumerate(statuses) if not s.ended_normally), len(per_seed) - 1)
    status = Status.COMPLETED if ended_normally else (statuses[first_abnormal] if per_seed else Status.FAILED)
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
    if objectives and len(objectives) > 1:  # several objectives: each one's mean over the seeds
        summary.objectives = ({n: statistics.fmean(s["objectives"][n] for s in per_seed) for n in objectives}
                              if ended_normally else objective_values(status, None, objectives, mode))
    if ended_normally:
        summary.message = (f"{len(seeds)} seeds: {monitor} {objective:.6g} +- {objective_std:.3g}"
                           if objective is not None else f"{len(seeds)} seeds")
    elif per_seed:
        last = per_seed[first_abnormal]
        summary.message = f"seed {last.get('seed')}: {last.get('message') or last.get('error') or status}"
    return summary


def train_seeds(cfg: DictConfig, run_dir: Path, train: Callable[..., Summary],
                trial: Any = None) -> Summary:
    """Train each of `cfg.seeds` in `run_dir / f"seed_{n}"`: in packs (see module docstring), or
    one after the other through `train(cfg_with_seed, seed_dir, trial=trial)`; write and return
    the aggregate summary."""
    validate(cfg)  # before any seed's directory is made
    from app.run.pack import pack_size

    seeds = [int(s) for s in cfg.seeds]
    size = pack_size(cfg, len(seeds))
    if size > 1 and trial is not None:
        log.info("pack: the seeds of a sweep trial train one after the other (its pruner follows them in order)")
    elif size > 1 and (cfg.trainer.devices > 1 or distributed.world_size() > 1):
        # Every rank decides the same (config and group size), so the ranks train each seed together.
        log.info("pack: training one run at a time: several processes (trainer.devices > 1 or torchrun) "
                 "train each seed together; a pack trains on one process")
    elif size > 1:
        return _train_packed(cfg, run_dir, seeds, size, train)
    return _train_in_turn(cfg, run_dir, seeds, train, trial)


def _train_in_turn(cfg: DictConfig, run_dir: Path, seeds: list[int], train: Callable[..., Summary],
                   trial: Any = None) -> Summary:
    """The seeds one after the other; the first that does not end normally ends the run. With
    `resume`, seeds that finished keep their records, a seed that had started continues from its
    checkpoints and the others start. A full disk in a seed ends the run with one paragraph about
    the whole run (what each seed kept, how to resume it)."""
    from app.run import resume

    resumption = resume.prepare(cfg, run_dir) if cfg.resume else None
    if resumption is not None and resumption.finished is not None:
        log.info(resumption.message)
        return resumption.finished
    per_seed: list[dict[str, Any]] = []
    started = time.time()
    try:
        for seed in seeds:
            seed_dir = run_dir / f"seed_{seed}"
            kwargs: dict[str, Any] = {"trial": trial}
            if resumption is not None:
                kept = Summary.read(seed_dir)
                extend = kept is not None and kept.status == Status.COMPLETED and cfg.trainer.epochs > (kept.epochs_run or 0)
                if kept is not None and kept.status != Status.FAILED and not extend:
                    per_seed.append({**kept.to_dict(), "seed": seed, "run_dir": str(seed_dir)})
                    if not kept.status.ended_normally:
                        break
                    continue
                started_before = (seed_dir / "provenance.json").exists()
                kwargs["resumption"] = resume.Resumption(seed_dir, resumption.accepted, resumption.forced) \
                    if started_before else None
            if is_main():  # with several processes rank 0 alone writes
                seed_dir.mkdir(parents=True, exist_ok=True)
            try:
                result = train(with_seed(cfg, seed), seed_dir, **kwargs)
            except BaseException as exc:
                cause = getattr(exc, "disk_full", None) or exc  # a full disk: the OSError, not its paragraph
                per_seed.append({"seed": seed, "status": "failed", "run_dir": str(seed_dir),
                                 "error": f"{type(cause).__name__}: {cause}"})
                raise
            per_seed.append({**result.to_dict(), "seed": seed, "run_dir": str(seed_dir)})
            if not result.status.ended_normally:
                break
    except BaseException as exc:
        _raise_for_whole_run(exc, cfg, run_dir, seeds, per_seed, trial, started)
    return _write(cfg, run_dir, seeds, per_seed, None, trial, started)


def _train_packed(cfg: DictConfig, run_dir: Path, seeds: list[int], size: int,
                  train: Callable[..., Summary]) -> Summary:
    """The seeds in packs of at most `size`; a pack that cannot be packed trains in turn. With
    `resume`, seeds that finished keep their records and the others continue."""
    from app.run import resume
    from app.run.execute import names
    from app.run.pack import execute_pack

    resumption = resume.prepare(cfg, run_dir) if cfg.resume else None
    if resumption is not None and resumption.finished is not None:
        log.info(resumption.message)
        return resumption.finished
    done: dict[int, dict[str, Any]] = {}
    todo: list[tuple[int, DictConfig, Path, Any]] = []
    for seed in seeds:
        seed_dir = run_dir / f"seed_{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        seeded = with_seed(cfg, seed)
        member = None
        if resumption is not None:
            kept = Summary.read(seed_dir)
            extend = kept is not None and kept.status == Status.COMPLETED and cfg.trainer.epochs > (kept.epochs_run or 0)
            if kept is not None and kept.status != Status.FAILED and not extend:
                done[seed] = {**kept.to_dict(), "seed": seed, "run_dir": str(seed_dir)}
                continue
            member = resume.Resumption(seed_dir, resumption.accepted, resumption.forced)
        todo.append((seed, seeded, seed_dir, member))

    error: BaseException | None = None
    started = time.time()
    try:
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            summaries = execute_pack([c for _, c, _, _ in chunk], [d for _, _, d, _ in chunk],
                                     names=[names(c)[0] for _, c, _, _ in chunk], group=names(cfg)[1],
                                     resumptions=[m for _, _, _, m in chunk]) if len(chunk) > 1 else None
            if summaries is None:  # cannot be packed (notice given), or a pack of one
                summaries = []
                for _, seeded, seed_dir, member in chunk:  # resumed: each seed from its own directory
                    summaries.append(train(seeded, seed_dir, resumption=member) if cfg.resume else train(seeded, seed_dir))
            for (seed, _, seed_dir, _), summary in zip(chunk, summaries):
                done[seed] = {**summary.to_dict(), "seed": seed, "run_dir": str(seed_dir)}
    except BaseException as exc:
        per_seed = []
        for seed in seeds:
            if seed in done:
                per_seed.append(done[seed])
            elif (kept := Summary.read(run_dir / f"seed_{seed}")) is not None:
                per_seed.append({**kept.to_dict(), "seed": seed, "run_dir": str(run_dir / f"seed_{seed}")})
        _raise_for_whole_run(exc, cfg, run_dir, seeds, per_seed, None, started)
    return _write(cfg, run_dir, seeds, [done[seed] for seed in seeds if seed in done], None, None, started)


def _raise_for_whole_run(exc: BaseException, cfg: DictConfig, run_dir: Path, seeds: list[int],
                         per_seed: list[dict[str, Any]], trial: Any, started: float) -> None:
    """Write the run's summary.json for a run that a seed's `exc` ended, and raise: `exc` itself,
    or for a full disk one paragraph about the whole run (what each seed kept, how to resume
    the run: seeds' own paragraphs name their seed_<n> directory, which is not resumed alone)."""
    from app.run.record import disk_full, disk_full_error

    full = getattr(exc, "disk_full", None) or disk_full(exc)
    if full is None:
        _write(cfg, run_dir, seeds, per_seed, exc, trial, started)
        raise exc
    from hydra.core.hydra_config import HydraConfig

    from app.run.record import remove_own_temp_files

    remove_own_temp_files(run_dir)  # what the full disk cut short, in any seed's directory
    written = _write(cfg, run_dir, seeds, per_seed, full, trial, started, tolerate_full_disk=True) is not None
    refusal = disk_full_error(full, run_dir, HydraConfig.get().runtime.cwd, written)
    refusal.recorded, refusal.disk_full = True, full  # app.main must not write over the run's summary
    raise refusal from None


def _write(cfg: DictConfig, run_dir: Path, seeds: list[int], per_seed: list[dict[str, Any]],
           error: BaseException | None, trial: Any, started: float,
           tolerate_full_disk: bool = False) -> Summary | None:
    """Aggregate and write the run's summary.json; `tolerate_full_disk`: None instead of raising
    when the disk is too full to hold it."""
    summary = aggregate(per_seed, seeds, cfg.trainer.monitor, cfg.trainer.mode, objective_names(cfg))
    summary.wall_time_s = round(time.time() - started, 3)
    if error is not None:
        failed = next((s for s in reversed(per_seed) if Status.of(s.get("status")) == Status.FAILED), None)
        summary.status = Status.FAILED
        summary.error = (f"seed {failed['seed']}: " if failed else "") + f"{type(error).__name__}: {error}"
        summary.interrupted = isinstance(error, KeyboardInterrupt)
    if trial is not None:
        summary.trial = trial.describe(summary.status)
    if is_main():  # with several processes rank 0 alone writes
        try:
            summary.write(run_dir)
        except OSError as full:
            from app.run.record import disk_full

            if not tolerate_full_disk or disk_full(full) is None:
                raise
            log.warning("summary.json could not be written: %s", full)
            return None
    return summary
