"""Build a run from the composed config: `build_run` makes every object a run trains with, in
order, generically through `hydra.utils.instantiate` (app/targets.py); main, preflight, multi-seed
runs and resume all build through it.

Mistakes a user can make in a `_target_`'s arguments surface here; they are re-raised as
`ConfigError` naming the group, so the app prints one paragraph instead of a traceback.
"""
from __future__ import annotations

import random
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from app import targets
from app.callbacks import Callback, Checkpoint, CSVLogger
from app.config import check_metrics, parameters, resolve_mode, validate
from app.data import DataSplits, LimitedBatches, TensorBatches
from app.errors import ConfigError
from app.run import debug, faults
from app.run.device import describe as describe_device
from app.run.device import set_threads
from app.run.distributed import check_devices, rank_device
from app.run.load import inference_record
from app.run.reproducibility import set_deterministic
from app.train.acceleration import check_device_options
from app.train.tasks import TASKS, Task, task_for, task_of
from app.train import distributed
from app.train.trainer import Batches, Trainer

# Keys of a scheduler's config that the trainer reads and the scheduler class must not see.
SCHEDULER_TRAINER_KEYS = ("interval",)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) for this run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def _reason(error: BaseException) -> str:
    """The innermost message of an instantiation error, without Hydra's wrapping."""
    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


@contextmanager
def building(group: str, node: DictConfig) -> Iterator[None]:
    """Turn an error raised while building `group` into a ConfigError about that group."""
    try:
        yield
    except ConfigError:
        raise
    except (InstantiationException, TypeError, ValueError, ImportError, AttributeError) as error:
        cause = error
        while cause is not None:  # instantiate wraps what the target raised: surface our own errors
            if isinstance(cause, ConfigError):
                raise cause from None
            cause = cause.__cause__
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        raise ConfigError(
            f"{group}._target_", target, f"{group} settings that {target} accepts",
            f"Building the {group} failed: {_reason(error)}",
        ) from None


def build_data(cfg: DictConfig) -> DataSplits:
    with building("data", cfg.data):
        data = targets.instantiate(cfg.data, "data", cfg.trusted_modules)
    if not isinstance(data, DataSplits):
        raise ConfigError("data._target_", cfg.data._target_, "a function returning app.data.DataSplits")
    return data


def build_model(cfg: DictConfig, data: DataSplits) -> torch.nn.Module:
    with building("model", cfg.model):
        return targets.instantiate(cfg.model, "model", cfg.trusted_modules,
                                   in_features=data.in_features, out_features=data.out_features)


def build_optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    with building("optimizer", cfg.optimizer):
        return targets.instantiate(cfg.optimizer, "optimizer", cfg.trusted_modules)(model.parameters())


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> tuple[Any, str]:
    """The scheduler (or None) and when to step it: "epoch" or "step"."""
    if cfg.scheduler is None:
        return None, "epoch"
    node = OmegaConf.to_container(cfg.scheduler, resolve=True)
    for key in SCHEDULER_TRAINER_KEYS:
        node.pop(key)
    with building("scheduler", cfg.scheduler):
        return targets.instantiate(node, "scheduler", cfg.trusted_modules)(optimizer), cfg.scheduler.interval


def build_batches(
    data: DataSplits, cfg: DictConfig, device: torch.device
) -> tuple[Batches, Batches, Batches | None]:
    """Train (shuffled, seeded from `seed`), validation and test batch iterators, each limited to
    the batches per epoch a debug mode allows (app/run/debug.py: `limits`). debug=overfit trains
    on fixed batches (not shuffled) and validates on those same batches, and has no test."""
    t = cfg.trainer
    eval_bs = t.eval_batch_size or 4 * t.batch_size
    limits = debug.limits(cfg)
    common = dict(device=device, on_device=t.data_on_device, pin_memory=t.pin_memory and device.type == "cuda",
                  rank=distributed.rank(), world_size=distributed.world_size())  # each rank: its part of a batch
    train = limited(TensorBatches(data.train, t.batch_size, shuffle=not limits.fixed, seed=cfg.seed, **common),
                    limits.train)
    if limits.fixed:
        val, test = train, None
    else:
        val = limited(TensorBatches(data.val, eval_bs, shuffle=False, **common), limits.val)
        test = (limited(TensorBatches(data.test, eval_bs, shuffle=False, **common), limits.test)
                if data.test is not None else None)
    return faults.wrap_train_batches(train), val, test  # wrap: a no-op outside kill tests


def limited(batches: TensorBatches, limit: int | None) -> Batches:
    """`batches`, or their first `limit` batches per epoch."""
    return batches if limit is None else LimitedBatches(batches, limit)


def _context(target_node: DictConfig, key: str, trusted_modules: Any, offered: dict[str, Any]) -> dict[str, Any]:
    """The run-context keyword arguments (of `offered`) that the node's callable accepts."""
    accepted = parameters(targets.locate(target_node._target_, key, trusted_modules))
    return {k: v for k, v in offered.items() if accepted is None or k in accepted}


def build_callbacks(cfg: DictConfig, run_dir: Path, run_name: str, group: str | None,
                    hparams: dict[str, Any] | None = None) -> list[Callback]:
    """Every entry of `cfg.callbacks` and `cfg.logger`, and the metrics.csv writer, in this order:

    1. `callbacks.<name>` in the order the defaults list composed them (`+callbacks=x` appends),
       except checkpoints: early stopping and anything else that may stop the run, or whose state
       a checkpoint stores, acts on an epoch before it is saved;
    2. the checkpoint (`validate` requires exactly one: resume and the test with the best
       weights read it);
    3. `metrics.csv` (app.callbacks.CSVLogger): always, whatever the config lists;
    4. `logger.<name>` in the order of the `logger=[...]` list.
    (A sweep's pruning callback goes before all of them: app/main.py inserts it at 0.)

    Run context is passed as keyword arguments to the constructors that accept them: callbacks
    get `run_dir`; loggers `dir` (the run directory), `name` (the logger's own `name` option, else
    `run_name`) and `group` (its own `group` option, else `group`, the sweep's or study's name).
    Loggers then get `.run_config` (the resolved config) and `.hparams` (`hparams`: a sweep
    trial's parameters, {"optimizer.lr": 0.01, ...}; empty outside sweeps).
    """
    first: list[Callback] = []
    checkpoints: list[Callback] = []
    for name, node in cfg.callbacks.items():
        key = f"callbacks.{name}"
        with building(key, node):
            callback = targets.instantiate(node, key, cfg.trusted_modules,
                                           **_context(node, key, cfg.trusted_modules, {"run_dir": run_dir}))
        (checkpoints if isinstance(callback, Checkpoint) else first).append(callback)
    if not distributed.is_main():  # other ranks write no records: rank 0's callbacks alone run
        return [*first, *checkpoints]
    callbacks = [*first, *checkpoints, CSVLogger(run_dir / "metrics.csv")]

    for name, node in cfg.logger.items():
        key = f"logger.{name}"
        offered = {"dir": str(run_dir), "name": node.get("name") or run_name, "group": node.get("group") or group}
        with building(key, node):
            logger = targets.instantiate(node, key, cfg.trusted_modules,
                                         **_context(node, key, cfg.trusted_modules, offered))
        logger.run_config = OmegaConf.to_container(cfg, resolve=True)
        logger.hparams = dict(hparams or {})
        callbacks.append(logger)
    return callbacks


# ----------------------------------------------------------------------------- the whole run
@dataclass
class Run:
    """Everything one run trains with, built from the composed config by `build_run`."""

    cfg: DictConfig
    device: torch.device
    data: DataSplits
    task: Task
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    callbacks: list[Callback]
    train: Batches
    val: Batches
    test: Batches | None
    trainer: Trainer
    threads_before: int | None = None  # torch's thread count before trainer.threads set it

    @property
    def checkpoint(self) -> Checkpoint | None:
        return next((cb for cb in self.callbacks if isinstance(cb, Checkpoint)), None)

    def describe(self) -> str:
        return (f"{self.data.describe()} | {type(self.model).__name__} | "
                f"{sum(p.numel() for p in self.model.parameters())} parameters | {describe_device(self.device)}")

    def release(self) -> None:
        """Free the device memory this run holds and give back torch's thread count: jobs of one
        sweep share a process."""
        if self.threads_before is not None:
            torch.set_num_threads(self.threads_before)
            self.threads_before = None
        if self.device.type == "cuda":
            self.model = self.optimizer = self.trainer = self.train = self.val = self.test = None  # type: ignore[assignment]
            torch.cuda.empty_cache()


def _no_stage(name: str) -> AbstractContextManager:
    return nullcontext()


def build_run(cfg: DictConfig, run_dir: Path, *, run_name: str = "run", group: str | None = None,
              trial: Any = None, stage: Callable[[str], AbstractContextManager] = _no_stage) -> Run:
    """Build a run from the composed config, in the order a run needs it: checks, device, seeds,
    data, model, optimizer, scheduler, callbacks (and the trial's pruning callback), batches,
    Trainer with every trainer option. `stage(name)` wraps each step (preflight times and
    reports each one; a run passes nothing)."""
    with stage("config"):
        resolve_mode(cfg)  # a no-op when app.main resolved it already
        task_name = task_of(cfg.data, cfg.trusted_modules)
        known = TASKS[task_name].metric_names() if task_name in TASKS else None
        validate(cfg, known)
    with stage("device"):
        # In a group: its size; before one (preflight, the launching process): trainer.devices.
        check_devices(cfg, distributed.world_size() if distributed.active() else cfg.trainer.devices)
        device = rank_device(cfg)
        threads_before = set_threads(cfg.trainer.threads)
        check_device_options(cfg.trainer.precision, device, cfg.trainer.cuda_graph)
        seed_everything(cfg.seed)
        set_deterministic(cfg.deterministic)
    with stage("data"):
        data = build_data(cfg)
        task = task_for(data.task, data.target_scaling)  # metrics in the target's units
        if task.metric_names() != known:  # the data said which task it is: check the monitors again
            check_metrics(cfg, task.metric_names())
    with stage("model"):
        model = build_model(cfg, data)
        if distributed.rank() > 0:  # the same initial weights; dropout & co. draw a stream per rank
            seed_everything(cfg.seed + distributed.rank())
    with stage("optimizer"):
        optimizer = build_optimizer(cfg, model)
    with stage("scheduler"):
        scheduler, interval = build_scheduler(cfg, optimizer)
    with stage("callbacks"):
        callbacks = debug.callbacks(cfg) + build_callbacks(cfg, run_dir, run_name=run_name, group=group,
                                                           hparams=trial.params if trial is not None else None)
        for callback in callbacks:
            if isinstance(callback, Checkpoint):  # checkpoints carry what inference needs
                callback.inference = inference_record(cfg, data)
        epochs = debug.epochs(cfg)  # trainer.epochs, unless a debug mode runs fewer
        if trial is not None:
            trial.start_seed(epochs)
            callbacks.insert(0, trial.pruning_callback(cfg.trainer.monitor))
    with stage("batches"):
        train, val, test = build_batches(data, cfg, device)
    with stage("trainer"):
        t = cfg.trainer
        trainer = Trainer(
            model, optimizer, task, device=device, epochs=epochs, scheduler=scheduler,
            scheduler_interval=interval, val_every=t.val_every, monitor=t.monitor, mode=t.mode,
            callbacks=callbacks, precision=t.precision, compile=t.compile, cuda_graph=t.cuda_graph,
            grad_clip=t.grad_clip, accumulate_grad_batches=t.accumulate_grad_batches,
            matmul_precision=t.matmul_precision, grad_norm_every=t.grad_norm_every,
        )
    return Run(cfg, device, data, task, model, optimizer, scheduler, callbacks, train, val, test, trainer,
               threads_before)
