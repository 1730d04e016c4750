"""Structured config: dataclass schemas registered in Hydra's ConfigStore, and the semantic
checks that run before any data is made or model built.

Every group option in `conf/<group>/<option>.yaml` extends a schema stored here as
`schema/<group>/<option>` (its defaults list says `/schema/<group>@_here_: <option>`), so a
typo'd key or a wrongly typed value is rejected by Hydra while composing. `validate` then checks
what types cannot: ranges, choices, availability of the device, existence of data files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from app.errors import ConfigError  # noqa: F401 - the app's one user-error type, raised by validate


# ----------------------------------------------------------------------------- group schemas
@dataclass
class TrainerConf:
    epochs: int = 100
    batch_size: int = 256
    eval_batch_size: Optional[int] = None  # None: 4 x batch_size (no gradients, so it fits)
    val_every: int = 1  # validate every N epochs, and always after the last one
    monitor: str = "val_loss"  # the metric early stopping, best.pt and sweeps follow
    mode: str = "min"  # min | max: which direction of `monitor` is better
    log_every: int = 10  # log a metrics line every N epochs (0: never)
    progress_bar: bool = True  # one-line epoch progress on an interactive terminal
    checkpoint_every: int = 1  # write checkpoints/last.pt every N epochs (and at the end)
    keep_last_k: int = 0  # also keep checkpoints/epoch-NNNN.pt of the last k of those (0: none)
    data_on_device: bool = True  # keep in-memory data on the device and batch by index
    pin_memory: bool = True  # host-resident data on CUDA: pinned memory, asynchronous copies
    precision: str = "32"  # 32 | bf16-mixed | 16-mixed (autocast; 16-mixed adds a GradScaler)
    compile: bool = False  # torch.compile the model (falls back to eager with a warning)
    cuda_graph: bool = False  # replay the training step as CUDA graphs (CUDA only)
    grad_clip: float = 0.0  # clip the gradients' global L2 norm to this; 0: off
    accumulate_grad_batches: int = 1  # optimizer step every N batches (loss divided by N)
    matmul_precision: str = "highest"  # highest | high (TF32) | medium: float32 matmuls


@dataclass
class EarlyStoppingConf:
    enabled: bool = True
    monitor: str = "${trainer.monitor}"
    mode: str = "${trainer.mode}"
    patience: int = 20  # validation checks without improvement before stopping
    min_delta: float = 0.0  # ABSOLUTE: improvement means beating the best by more than this


@dataclass
class DeviceConf:
    type: str = "auto"  # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    index: int = 0  # which CUDA device, with type=cuda (or auto picking cuda)


@dataclass
class MLPConf:
    _target_: str = "app.models.MLP"
    nodes: int = 64
    layers: int = 4
    activation: str = "gelu"
    dropout: float = 0.0


@dataclass
class ResidualMLPConf:
    _target_: str = "app.models.ResidualMLP"
    nodes: int = 64
    blocks: int = 3
    expansion: int = 2
    activation: str = "gelu"
    dropout: float = 0.0


@dataclass
class AdamConf:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = 1e-3
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    foreach: Optional[bool] = None  # None: torch's choice (multi-tensor kernels on GPUs)
    fused: Optional[bool] = True  # one kernel per step on CPU, CUDA, MPS (false: torch's default)


@dataclass
class AdamWConf(AdamConf):
    _target_: str = "torch.optim.AdamW"
    lr: float = 3e-3
    weight_decay: float = 0.01


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 1e-2
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    foreach: Optional[bool] = None
    fused: Optional[bool] = None


@dataclass
class SchedulerBase:
    _partial_: bool = True
    interval: str = "epoch"  # epoch | step: when the trainer steps it (not passed to the class)


@dataclass
class CosineConf(SchedulerBase):
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = "${trainer.epochs}"  # type: ignore[assignment]
    eta_min: float = 0.0


@dataclass
class StepConf(SchedulerBase):
    _target_: str = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 30
    gamma: float = 0.1


@dataclass
class PlateauConf(SchedulerBase):
    _target_: str = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    mode: str = "${trainer.mode}"
    factor: float = 0.5
    patience: int = 5
    threshold: float = 1e-4
    min_lr: float = 0.0


@dataclass
class WarmupCosineConf(SchedulerBase):
    _target_: str = "app.train.schedulers.warmup_cosine"
    warmup_steps: int = 5
    total_steps: int = "${trainer.epochs}"  # type: ignore[assignment]
    min_lr_ratio: float = 0.0


@dataclass
class RegressionDataConf:
    _target_: str = "app.data.regression_1d"
    n_samples: int = 10000
    noise_std: float = 0.05
    jitter: float = 0.02
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0  # fixes the data and the split, independent of the training seed


@dataclass
class SpiralsDataConf:
    _target_: str = "app.data.spirals"
    n_samples: int = 3000
    n_classes: int = 3
    noise: float = 0.2  # in units of the gap between neighbouring arms
    turns: float = 1.5
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0


@dataclass
class BlobsDataConf:
    _target_: str = "app.data.blobs"
    n_samples: int = 3000
    n_classes: int = 4
    n_features: int = 2
    cluster_std: float = 1.0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0


@dataclass
class FileDataConf:
    _target_: str = "app.data.load_table"
    path: str = MISSING  # .csv (header row) or .npz; relative to where you launched the app
    features: List[str] = MISSING
    target: Any = MISSING  # a column name, or a list of names (multi-output regression)
    task: str = "regression"  # regression | classification
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0


@dataclass
class WandbConf:
    _target_: str = "app.callbacks.WandbLogger"
    mode: str = "offline"  # offline (default, no network) | online | disabled
    project: str = "hydra-torch-app"
    entity: Optional[str] = None
    group: Optional[str] = None  # None: the sweep's directory name in multirun
    tags: List[str] = field(default_factory=list)
    name: Optional[str] = None  # None: built from the command-line overrides


@dataclass
class Config:
    """The root. Groups whose options differ in shape are typed by their option's schema."""

    seed: int = 42
    deterministic: bool = False  # PyTorch deterministic algorithms (refusing ops are named)
    seeds: Optional[List[int]] = None  # several seeds in one run: objective = their mean (app/run/seeds.py)
    task_name: str = "train"
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = None
    early_stopping: EarlyStoppingConf = field(default_factory=EarlyStoppingConf)
    device: DeviceConf = field(default_factory=DeviceConf)
    logger: Any = None
    trainer: TrainerConf = field(default_factory=TrainerConf)
    resume: Optional[str] = None  # a run directory to continue (app/run/resume.py)
    resume_force: bool = False  # resume even with overrides that change the result
    preflight: bool = False  # check that one training step works, then exit (app/tools/preflight.py)
    # Module prefixes whose `_target_`s a config may build, besides app, torch and optuna
    # (app/targets.py): e.g. [my_lab] for `_target_: my_lab.models.Net`.
    trusted_modules: List[str] = field(default_factory=list)


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"mlp": MLPConf, "resmlp": ResidualMLPConf},
    "optimizer": {"adam": AdamConf, "adamw": AdamWConf, "sgd": SGDConf},
    "scheduler": {
        "cosine": CosineConf,
        "step": StepConf,
        "plateau": PlateauConf,
        "warmup_cosine": WarmupCosineConf,
    },
    "data": {
        "regression": RegressionDataConf,
        "spirals": SpiralsDataConf,
        "blobs": BlobsDataConf,
        "file": FileDataConf,
    },
    "logger": {"wandb": WandbConf},
}  # trainer, early_stopping and device have one shape: `Config` types them directly


def sweep_direction(mode: str) -> str:
    """Optuna's study direction for a monitor mode: min -> minimize, max -> maximize."""
    directions = {"min": "minimize", "max": "maximize"}
    if mode not in directions:
        raise ConfigError("trainer.mode", mode, "min or max")
    return directions[mode]


def register_configs() -> None:
    """Store the root schema as `base_config` and each option's schema as `schema/<group>/<name>`;
    register the `sweep_direction` resolver used by the Optuna presets."""
    OmegaConf.register_resolver("sweep_direction", sweep_direction, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config, replace=True)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node, replace=True)


# ----------------------------------------------------------------------------- semantic checks
MODES = ("min", "max")
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")
WANDB_MODES = ("offline", "online", "disabled")
INTERVALS = ("epoch", "step")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
MATMUL_PRECISIONS = ("highest", "high", "medium")


def _check(ok: bool, key: str, value: Any, accepted: str, reason: str = "") -> None:
    if not ok:
        raise ConfigError(key, value, accepted, reason)


def _positive_int(cfg: DictConfig, key: str, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    low = 0 if allow_zero else 1
    _check(
        isinstance(value, int) and value >= low,
        key,
        value,
        f"an integer >= {low}",
    )


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def validate(cfg: DictConfig, metric_names: list[str] | None = None) -> None:
    """Check what the schemas cannot. Raises `ConfigError` on the first problem.

    `metric_names`: the metrics the configured task produces (checked against `monitor`);
    None skips that check (the data's task is known only once the data config is read).
    """
    for key in sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(key, "???", f"a value on the command line, as in {key}=<value>",
                          "This key is required and has no default")
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    if cfg.seeds is not None:
        seeds = list(cfg.seeds)
        _check(len(seeds) > 0 and len(set(seeds)) == len(seeds) and all(s >= 0 for s in seeds),
               "seeds", seeds, "null (train once with `seed`) or a non-empty list of distinct "
               "integers >= 0, e.g. seeds=[1,2,3]")

    t = cfg.trainer
    for key in ("epochs", "batch_size", "val_every", "checkpoint_every"):
        _positive_int(cfg, f"trainer.{key}")
    _positive_int(cfg, "trainer.log_every", allow_zero=True)
    _positive_int(cfg, "trainer.keep_last_k", allow_zero=True)
    if t.eval_batch_size is not None:
        _positive_int(cfg, "trainer.eval_batch_size")
    _check(t.mode in MODES, "trainer.mode", t.mode, " or ".join(MODES))
    _check(str(t.precision) in PRECISIONS, "trainer.precision", t.precision, ", ".join(PRECISIONS))
    _check(t.matmul_precision in MATMUL_PRECISIONS, "trainer.matmul_precision", t.matmul_precision,
           ", ".join(MATMUL_PRECISIONS))
    _check(_finite(t.grad_clip) and t.grad_clip >= 0, "trainer.grad_clip", t.grad_clip,
           "a finite number >= 0 (the largest global gradient L2 norm; 0 turns clipping off)")
    _positive_int(cfg, "trainer.accumulate_grad_batches")
    _check(not (t.cuda_graph and str(t.precision) == "16-mixed"), "trainer.precision", t.precision,
           "32 or bf16-mixed with trainer.cuda_graph=true",
           "the GradScaler of 16-mixed decides on the host whether to step, which a CUDA graph cannot replay")

    es = cfg.early_stopping
    if es.enabled:
        _check(es.mode in MODES, "early_stopping.mode", es.mode, " or ".join(MODES))
        _positive_int(cfg, "early_stopping.patience")
        _check(
            _finite(es.min_delta) and es.min_delta >= 0,
            "early_stopping.min_delta",
            es.min_delta,
            "a finite number >= 0 (an absolute change in the monitored metric)",
        )

    opt = cfg.optimizer
    _check(_finite(opt.lr) and opt.lr > 0, "optimizer.lr", opt.lr, "a finite number > 0")
    if "weight_decay" in opt:
        _check(
            _finite(opt.weight_decay) and opt.weight_decay >= 0,
            "optimizer.weight_decay",
            opt.weight_decay,
            "a finite number >= 0",
        )
    if "betas" in opt:
        _check(
            len(opt.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in opt.betas),
            "optimizer.betas",
            list(opt.betas),
            "two numbers in [0, 1), e.g. [0.9, 0.999]",
        )
    _check(not (opt.get("fused") and opt.get("foreach")), "optimizer.foreach", True,
           "false or null while optimizer.fused=true (set optimizer.fused=false to use foreach)",
           "fused and foreach are two different implementations of the step")
    if "momentum" in opt:
        _check(
            _finite(opt.momentum) and 0 <= opt.momentum < 1,
            "optimizer.momentum",
            opt.momentum,
            "a number in [0, 1)",
        )
        _check(
            not (opt.nesterov and opt.momentum == 0),
            "optimizer.nesterov",
            True,
            "nesterov=true only with optimizer.momentum > 0",
        )

    if cfg.scheduler is not None:
        _check(
            cfg.scheduler.interval in INTERVALS,
            "scheduler.interval",
            cfg.scheduler.interval,
            " or ".join(INTERVALS),
        )
        if cfg.scheduler._target_.endswith("ReduceLROnPlateau"):
            _check(
                cfg.scheduler.interval == "epoch",
                "scheduler.interval",
                cfg.scheduler.interval,
                "epoch (ReduceLROnPlateau steps with the monitored metric after validation)",
            )
            _check(cfg.scheduler.mode in MODES, "scheduler.mode", cfg.scheduler.mode, "min or max")
        if "warmup_steps" in cfg.scheduler:
            total = cfg.scheduler.total_steps
            _check(
                isinstance(cfg.scheduler.warmup_steps, int) and 0 <= cfg.scheduler.warmup_steps <= total,
                "scheduler.warmup_steps",
                cfg.scheduler.warmup_steps,
                f"an integer in [0, scheduler.total_steps={total}]",
            )

    m = cfg.model
    for key in ("nodes", "layers", "blocks", "expansion"):
        if key in m:
            _positive_int(cfg, f"model.{key}")
    if "dropout" in m:
        _check(
            _finite(m.dropout) and 0 <= m.dropout < 1, "model.dropout", m.dropout, "a number in [0, 1)"
        )
    if "activation" in m:
        from app.models.mlp import ACTIVATIONS

        _check(
            m.activation in ACTIVATIONS,
            "model.activation",
            m.activation,
            ", ".join(sorted(ACTIVATIONS)),
        )

    _check(
        cfg.device.type in DEVICE_TYPES, "device.type", cfg.device.type, ", ".join(DEVICE_TYPES)
    )
    _check(isinstance(cfg.device.index, int) and cfg.device.index >= 0, "device.index",
           cfg.device.index, "an integer >= 0")

    if cfg.logger is not None:
        _check("_target_" in cfg.logger, "logger", OmegaConf.to_container(cfg.logger), "a logger option "
               "(logger=wandb or logger=none); an experiment or override set keys of a logger that is off")
    if cfg.logger is not None and "mode" in cfg.logger:
        _check(cfg.logger.mode in WANDB_MODES, "logger.mode", cfg.logger.mode,
               ", ".join(WANDB_MODES))

    if metric_names is not None:
        for key in ("trainer.monitor",) + (("early_stopping.monitor",) if es.enabled else ()):
            value = OmegaConf.select(cfg, key)
            _check(
                value in metric_names,
                key,
                value,
                "a metric this task produces: " + ", ".join(metric_names),
            )
