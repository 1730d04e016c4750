"""Packed trials in an Optuna sweep: up to K trials of one model shape trained as ONE job, one
vectorized model (app/run/pack.py, app/train/packed.py), each member a real trial and a real run.

The sweep's side (`Packer`, used by `StudySweeper._run_trials`):

- `sweep_pack_size` reads the top-level `pack` (auto | false | K) once per sweep. `pack=false`:
  one trial per job, as before. `pack=K`: packs of at most K trials. `pack=auto`: at most
  `CPU_AUTO` trials on a CPU, `CUDA_AUTO` on a GPU (where each pack job then trains them in
  chunks that fit the device's free memory, `cuda_pack_limit`); but no packing at all (a
  one-line notice says why) when the search space makes packs of one likely: a parameter that
  fixes tensor shapes searched over a continuous interval, or fewer than two trials per
  combination of shape-fixing values (`n_trials < 2 x combinations`). Settings packs never
  support (`app.train.packed.unpackable_config`, or `seeds`) turn packing off with their notice.
- Trials are asked from the sampler several at a time (TPE gets `constant_liar=True` unless the
  command sets it: what Optuna recommends when trials run at once) and wait, claimed and kept
  alive by the sweep's heartbeat, in a queue grouped by their `shape_key`: the composed config
  without what may differ per member (seed, optimizer hyperparameters, scheduler, epochs,
  gradient clipping, validation interval, callbacks, loggers). A free slot of the pool takes the
  largest group (at most K trials); the queue is topped up to K waiting trials first (trials of a
  shape that comes up rarely wait for others of it; the sampler, asked for at most K trials ahead,
  keeps learning from the results). A group of one runs as an ordinary job.
- A pack job is launched like member 0's trial (its overrides, its trial id, its run dir) plus
  `hydra.job.env_set.APP_PACK_FILE=<sweep dir>/packs/<number>.json`, listing every member's trial
  id, number, run dir and overrides. The sweeper composes each member's config, as the launcher
  would, and writes its `.hydra/` files into its run dir (the dir it would get unpacked).
- When the job ends, each member's outcome is read from its own summary.json and told to its own
  trial (`tell_pack`); a worker that died fails (and retries) the members that had not finished.

The job's side (`run_pack_job`, called by `app.main.run` when APP_PACK_FILE is set): each member
gets its Optuna trial (one heartbeat thread for all), is built with its own config and trial
(its pruning callback: reports every validated epoch, a pruned member stops at once), and the
members train as one pack through `app.run.pack.execute_pack`. A member whose config fails to
build fails alone; members that cannot be vectorized train one after the other.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from app.errors import ConfigError

log = logging.getLogger(__name__)
PACK_ENV = "APP_PACK_FILE"  # set for a pack job (hydra.job.env_set): its members, as JSON
CPU_AUTO = 16  # pack=auto on a CPU: at most this many trials per pack
CUDA_AUTO = 64  # pack=auto on a GPU: at most this many, then as many as fit the free memory
ACCEPTED = "auto (packs sized for the device), false (one trial per job) or an integer >= 1 (packs of at most that many trials)"

# Keys of the composed config that may differ between the members of one pack (anything else
# fixes tensor shapes or what the pack shares: model, data, batch size, precision, device, ...).
# A key maps to None: the whole node may differ; to a set: all of the node but these keys.
PER_MEMBER: dict[str, Any] = {
    "seed": None, "optimizer": {"_target_"}, "scheduler": None, "callbacks": None, "logger": None,
    "trainer.epochs": None, "trainer.grad_clip": None, "trainer.val_every": None, "trainer.log_every": None,
    "trainer.progress_bar": None, "trainer.checkpoint_every": None, "trainer.keep_last_k": None,
    "task_name": None, "pack": None,
}


# ------------------------------------------------------------------ what may share a pack
def per_member(name: str) -> bool:
    """Whether the config key `name` (e.g. `optimizer.lr`) may differ within a pack."""
    name = name.lstrip("+~")
    for key, kept in PER_MEMBER.items():
        if name == key:
            return kept is None
        if name.startswith(key + "."):
            return kept is None or name[len(key) + 1:].split(".")[0] not in kept
    return False


def shape_key(cfg: DictConfig) -> str:
    """What must be equal for runs of `cfg` to share a pack, as a string (the task config without
    the hydra node and the keys of PER_MEMBER)."""
    task = {k: v for k, v in cfg.items() if k != "hydra"} if isinstance(cfg, DictConfig) else dict(cfg)
    try:
        data = OmegaConf.to_container(OmegaConf.create(task), resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation the sweep process cannot resolve: compare as written
        data = OmegaConf.to_container(OmegaConf.create(task), resolve=False)
    for key, kept in PER_MEMBER.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if kept is None:
            del node[leaf]
        elif isinstance(node[leaf], dict):
            node[leaf] = {k: v for k, v in node[leaf].items() if k in kept}
    return json.dumps(data, sort_keys=True, default=str)


def _choices(distribution: Any) -> float:
    """How many values a search-space distribution takes (inf: continuous)."""
    import optuna

    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return len(distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return (distribution.high - distribution.low) // (distribution.step or 1) + 1
    if isinstance(distribution, optuna.distributions.FloatDistribution) and distribution.step:
        return int(round((distribution.high - distribution.low) / distribution.step)) + 1
    return math.inf


def sweep_pack_size(config: DictConfig, space: dict[str, Any], n_trials: int) -> tuple[int, str | None]:
    """Trials per pack job for this sweep, and the notice when packing is off for a reason (None
    for pack=false or a pack). ConfigError for a `pack` that is not auto, false or K >= 1."""
    if config.get("trainer") is None or config.get("model") is None:  # not this app's runs
        return 1, None
    value = config.get("pack", "auto")
    if value is False or value is None:
        return 1, None
    if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError("pack", value, ACCEPTED)
    if value == 1:
        return 1, None
    from app.train.packed import unpackable_config

    if config.get("seeds"):
        return 1, "seeds=[...]: a trial's seeds train one after the other (its pruner follows them in order)"
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default="") or "")
    if "submitit" in launcher:
        return 1, "a SLURM launcher runs each trial as its own job"
    reason = unpackable_config(config)
    if reason is not None:
        return 1, reason
    if value != "auto":
        return min(int(value), n_trials), None
    shaped = {name: _choices(d) for name, d in space.items() if not per_member(name)}
    continuous = [name for name, count in shaped.items() if count == math.inf]
    if continuous:
        return 1, f"the search varies {', '.join(continuous)} over an interval: every trial has its own shape"
    combinations = math.prod(shaped.values()) if shaped else 1
    if n_trials < 2 * combinations:
        return 1, (f"{n_trials} trials over {combinations} combinations of {', '.join(sorted(shaped))}: packs "
                   "of one trial (pack=K packs all the same)")
    return min(CUDA_AUTO if _on_cuda(config) else CPU_AUTO, n_trials), None


def _on_cuda(config: DictConfig) -> bool:
    device = str((config.get("device") or {}).get("type", "auto"))
    if device not in ("auto", "cuda"):
        return False
    import torch

    return torch.cuda.is_available()


def sampler_options(config: DictConfig) -> dict[str, Any]:
    """Extra arguments for the sampler of a packed sweep: TPE asked for several trials at once
    gets `constant_liar=True` (Optuna's advice for parallel trials) unless the command sets it."""
    node = config.hydra.sweeper.get("sampler") or {}
    if str(node.get("_target_", "")) != "optuna.samplers.TPESampler":
        return {}
    overrides = [*config.hydra.overrides.hydra, *config.hydra.overrides.task]
    if any(str(o).split("=")[0].lstrip("+~") == "hydra.sweeper.sampler.constant_liar" for o in overrides):
        return {}
    return {"constant_liar": True}


# ------------------------------------------------------------------ the sweep's side
@dataclass
class _Waiting:
    trial: Any
    overrides: list[str]
    key: str
    run_dir: str
    name: str  # the run's name: hydra.job.override_dirname, or the task name


@dataclass
class Packer:
    """The queue of asked trials and the packs running (see module docstring). `size`: K."""

    sweeper: Any
    size: int
    waiting: list[_Waiting] = field(default_factory=list)
    packs: dict[Future, list[_Waiting]] = field(default_factory=dict)
    launching: dict[int, list[_Waiting]] = field(default_factory=dict)  # first member's number -> members
    configs: Any = None  # app.search.configs.TrialConfigs: the members' configs, as their jobs compose them

    def held(self) -> list[Any]:
        """Trials this sweep holds beyond the ones its loop tracks: waiting ones and the members
        (after the first) of running packs."""
        running = [*self.packs.values(), *self.launching.values()]
        return [w.trial for w in self.waiting] + [w.trial for ms in running for w in ms[1:]]

    def free(self, askable: int, slots: int) -> int:
        """Slots to fill now: a slot is worth filling while trials wait or can be asked."""
        return slots if (self.waiting or askable > 0) and slots > 0 else 0

    def next_packs(self, study: Any, slots: int, askable: int, space: dict, fixed: dict,
                   fixed_overrides: list[str]) -> Iterator[tuple[list[Any], list[str]]]:
        """For each of `slots` free slots: the members (trials) of the next pack and its job's
        overrides (without the trial id). Asks the sampler for more trials first, up to K
        waiting: more would leave the sampler without the results of most trials."""
        for _ in range(slots):
            if askable > 0 and len(self.waiting) < self.size:
                count = min(askable, self.size - len(self.waiting))
                trials = self.sweeper._ask(study, count)
                askable -= count
                if trials:
                    self._queue(trials, space, fixed, fixed_overrides)
            if not self.waiting:
                return
            members = self._take()
            yield [w.trial for w in members], self._job(members)

    def _largest(self) -> int:
        counts: dict[str, int] = {}
        for w in self.waiting:
            counts[w.key] = counts.get(w.key, 0) + 1
        return max(counts.values(), default=0)

    def _queue(self, trials: list, space: dict, fixed: dict, fixed_overrides: list[str]) -> None:
        sweeper = self.sweeper
        if self.configs is None:
            self.configs = sweeper.trial_configs()
        for trial, overrides in zip(trials, sweeper._configure_trials(trials, space, fixed, fixed_overrides)):
            overrides = [str(o) for o in overrides]
            cfg = self.configs(overrides)
            with open_dict(cfg):
                cfg.hydra.job.num = trial.number
                cfg.hydra.job.id = f"{cfg.hydra.job.name}_{trial.number}"
                cfg.hydra.sweep.dir = str(sweeper.sweep_dir)
            run_dir = os.path.abspath(str(Path(str(sweeper.sweep_dir)) / str(cfg.hydra.sweep.subdir)))
            _write_hydra_files(cfg, run_dir)
            name = str(cfg.hydra.job.override_dirname or cfg.get("task_name") or "")
            self.waiting.append(_Waiting(trial, overrides, shape_key(cfg), run_dir, name))

    def _take(self) -> list[_Waiting]:
        """The largest group of waiting trials (ties: the one asked first), at most K of them."""
        groups: dict[str, list[_Waiting]] = {}
        for w in self.waiting:
            groups.setdefault(w.key, []).append(w)
        members = max(groups.values(), key=len)[:self.size]
        self.waiting = [w for w in self.waiting if w not in members]
        return members

    def _job(self, members: list[_Waiting]) -> list[str]:
        if len(members) == 1:
            return list(members[0].overrides)
        from app.search.internals import trial_id

        pack_dir = Path(str(self.sweeper.sweep_dir)) / "packs"
        pack_dir.mkdir(parents=True, exist_ok=True)
        path = (pack_dir / f"{members[0].trial.number}.json").resolve()
        path.write_text(json.dumps({"members": [
            {"trial_id": trial_id(w.trial), "number": w.trial.number, "run_dir": w.run_dir,
             "overrides": w.overrides, "name": w.name} for w in members]}, indent=1))
        self.launching[members[0].trial.number] = members
        return [*members[0].overrides, f"++hydra.job.env_set.{PACK_ENV}={path}"]

    def started(self, future: Future, members: Sequence[Any]) -> None:
        """The job of `members` runs as `future` (a job of one trial is an ordinary job)."""
        launched = self.launching.pop(members[0].number, None)
        if launched is not None:
            self.packs[future] = launched

    def tell(self, study: Any, future: Future) -> list[tuple[Any, Any]] | None:
        """Tell each member of the pack that ran as `future` its outcome; None when `future` is not
        a pack. Returns (outcome, failure) per member, as `StudySweeper._tell_job`."""
        members = self.packs.get(future)
        if members is None:
            return None
        results = tell_pack(self.sweeper, study, members, future)  # (Ctrl-C: raises, members still held)
        del self.packs[future]
        return results


def tell_pack(sweeper: Any, study: Any, members: list[_Waiting], future: Future) -> list[tuple[Any, Any]]:
    """Each member's outcome from its own run dir: the job's return is read member by member (a
    member's summary.json says how it ended; a job that raised fails the members it left
    without a finished summary); a worker that died fails (and retries) those members alone."""
    from hydra.core.utils import JobReturn, JobStatus

    from app.run.record import Status, Summary
    from app.search.sweeper import job_error

    error = future.exception()
    results = []
    for member in members:
        summary = Summary.read(member.run_dir)
        finished = summary is not None and summary.status != Status.FAILED
        if error is not None and not finished:  # the worker died or the launcher failed
            lone: Future = Future()
            lone.set_exception(error)
            results.append(sweeper._tell_job(study, member.trial, lone))
            continue
        ret = JobReturn()
        ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": member.run_dir}}})
        ret.status = JobStatus.COMPLETED
        if error is None and not finished and future.result().status == JobStatus.FAILED:
            ret.status = JobStatus.FAILED
            ret.return_value = job_error(future.result())
        else:
            ret.return_value = None  # told from the member's summary
        results.append((sweeper._tell(study, member.trial, ret), ret))
    return results


def _write_hydra_files(cfg: DictConfig, run_dir: str) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` in `run_dir`, as Hydra writes them
    for a job (resume, evaluate and the report read them)."""
    hydra_dir = Path(run_dir) / str(cfg.hydra.output_subdir or ".hydra")
    hydra_dir.mkdir(parents=True, exist_ok=True)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = run_dir
        task = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
        OmegaConf.save(task, hydra_dir / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": cfg.hydra}), hydra_dir / "hydra.yaml")
        OmegaConf.save(OmegaConf.create(list(cfg.hydra.overrides.task)), hydra_dir / "overrides.yaml")


# ------------------------------------------------------------------ the job's side
def pack_file() -> Path | None:
    value = os.environ.get(PACK_ENV)
    return Path(value) if value else None


def run_pack_job(cfg: DictConfig, run_dir: Path, trial: Any) -> Any:
    """Train the members of this pack job (APP_PACK_FILE) and return member 0's summary: this
    job's own run (`cfg`, `run_dir`, `trial`) and the others, each from its run dir's config."""
    from hydra.core.hydra_config import HydraConfig

    from app.config import resolve_mode
    from app.errors import ConfigError
    from app.run.execute import execute
    from app.run.pack import execute_pack
    from app.run.record import Status, Summary
    from app.search.study import StudyFile, load_study
    from app.search.trial import OptunaTrial, heartbeat_for, interrupted, wait_out

    plan = json.loads(pack_file().read_text())["members"]
    hydra_cfg = HydraConfig.get()
    info = StudyFile.read(hydra_cfg.sweep.dir)
    pruner = info.make_pruner(cfg.trusted_modules)
    try:  # a storage that does not answer just now is waited for (wait_out)
        study = wait_out(lambda: load_study(info.storage, info.study_name, pruner=pruner), info.storage,
                         "the pack job opened its study")
        member_trials = [wait_out(lambda m=member: OptunaTrial(study, int(m["trial_id"])), info.storage,
                                  "the pack job opened its trials") for member in plan]
    except ConfigError as error:  # it stayed down: every member is run again (interrupted)
        for member_dir in dict.fromkeys([str(run_dir), *(str(member["run_dir"]) for member in plan)]):
            interrupted(member_dir, error)
        raise
    if trial is not None:
        trial.close()  # one heartbeat for every member instead
    cfgs, dirs, trials, names, overrides = [], [], [], [], []
    for i, member in enumerate(plan):
        member_dir = Path(member["run_dir"])
        member_cfg = cfg if i == 0 else OmegaConf.load(member_dir / ".hydra" / "config.yaml")
        if i and cfg.get("device") is not None:  # the GPU the sweeper gave this job (device.index)
            with open_dict(member_cfg):
                member_cfg.device = copy.deepcopy(cfg.device)
        resolve_mode(member_cfg)
        member_trial = member_trials[i]
        member_trial.set_user_attr("run_dir", str(member_dir))
        if i == 0:
            name = hydra_cfg.job.override_dirname
        elif "name" in member:  # (the sweeper names each member; parsing its hydra.yaml takes ~35 ms)
            name = member["name"]
        else:
            name = OmegaConf.load(member_dir / ".hydra" / "hydra.yaml").hydra.job.override_dirname
        cfgs.append(member_cfg)
        dirs.append(member_dir)
        trials.append(member_trial)
        names.append(name or member_cfg.task_name)
        overrides.append(list(member["overrides"]))
    heartbeat = None
    if info.heartbeat_interval:
        heartbeat = heartbeat_for(info.storage, info.heartbeat_interval, [int(m["trial_id"]) for m in plan])
    try:
        limit = cuda_pack_limit(cfgs[0], len(cfgs)) if cfg.get("pack", "auto") == "auto" else len(cfgs)
        summaries: list[Summary | None] = [None] * len(cfgs)
        for start in range(0, len(cfgs), limit):
            part = slice(start, start + limit)
            packed = execute_pack(cfgs[part], dirs[part], names=names[part], group=info.study_name,
                                  trials=trials[part], overrides=overrides[part], isolate=True)
            if packed is None:  # cannot be vectorized (notice given): one after the other
                packed = [_alone(execute, c, d, t, o) for c, d, t, o in
                          zip(cfgs[part], dirs[part], trials[part], overrides[part])]
            summaries[part] = packed
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        for member_trial in member_trials:  # writes the user attributes an outage held back
            member_trial.close()
    return summaries[0] or Summary(Status.FAILED, monitor=cfg.trainer.monitor)


def _alone(execute: Any, cfg: DictConfig, run_dir: Path, trial: Any, overrides: list[str]) -> Any:
    """A member trained as a lone run, with its own overrides in its provenance; a member that
    raises fails alone (Ctrl-C stops the job)."""
    from app.run.record import Status, Summary

    trial.curves = []  # it was built once for the pack: this is its first (and only) run
    with _member_overrides(overrides):
        try:
            return execute(cfg, run_dir, trial)
        except Exception as error:  # noqa: BLE001 - recorded in its summary; the others go on
            log.warning("Trial %d failed: %s: %s", trial.number, type(error).__name__, error)
            summary = Summary.read(run_dir)
            if summary is None or summary.status != Status.FAILED:
                summary = Summary(Status.FAILED, error=f"{type(error).__name__}: {error}")
                summary.write(run_dir)
            return summary


@contextmanager
def _member_overrides(overrides: list[str]) -> Iterator[None]:
    """HydraConfig's task overrides set to a member's while it is executed alone (execute records
    them in its provenance.json)."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    before = instance.cfg
    if before is None:
        yield
        return
    member = copy.deepcopy(before)
    with read_write(member.hydra), open_dict(member.hydra):
        member.hydra.overrides.task = list(overrides)
    instance.cfg = member
    try:
        yield
    finally:
        instance.cfg = before


def cuda_pack_limit(cfg: DictConfig, members: int) -> int:
    """pack=auto on CUDA: how many members fit in 70% of the device's free memory, estimated from
    the model's parameters (x4 in float32: weights, gradients, two optimizer moments) and its
    activations for one batch (every leaf module's output, x3: forward, saved, gradient), plus
    the member's own copy of its data. On other devices: all of them."""
    import torch

    from app.run.build import build_data, build_model
    from app.run.device import resolve_device

    try:
        device = resolve_device(str(cfg.device.type), int(cfg.device.get("index") or 0))
    except Exception:  # noqa: BLE001 - the pack itself says what is wrong with the device
        return members
    if device.type != "cuda":
        return members
    data = build_data(cfg)
    model = build_model(cfg, data)
    params = sum(p.numel() for p in model.parameters())
    outputs = [0]

    def count(_module: Any, _inputs: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            outputs[0] += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(data.train.x[: int(cfg.trainer.batch_size)])
    except Exception:  # noqa: BLE001 - an estimate only
        outputs[0] = 0
    finally:
        for hook in hooks:
            hook.remove()
    data_bytes = sum(t.numel() * t.element_size() for split in (data.train, data.val) for t in (split.x, split.y))
    per_member = 16 * params + 12 * outputs[0] + data_bytes
    free, _ = torch.cuda.mem_get_info(device)
    limit = max(1, min(members, int(0.7 * free / max(per_member, 1))))
    if limit < members:
        log.info("pack: %d members fit in the free memory of %s (%.0f MiB each, estimated): packs of %d",
                 limit, device, per_member / 2**20, limit)
    return limit
