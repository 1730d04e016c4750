"""Structured config: dataclass schemas registered in Hydra's ConfigStore, and the semantic
checks that run before any data is made or model built.

Each default is written once, in conf/: users read conf/ to see what a run does.
- A value a user can change lives in its option's YAML (`conf/<group>/<option>.yaml`,
  `conf/config.yaml` for the root keys), `_target_` included.
- A schema dataclass here declares names and types only: every field is `MISSING`. Each option
  of model, optimizer, scheduler and data extends its schema (`/schema/<group>/<option>@_here_`
  in its defaults list), so a typo'd key or a wrongly typed value is refused while composing.
- `callbacks` and `logger` entries have no dataclass: the signature of their `_target_` is their
  schema. Their constructors take every option without a default, so the YAML is the one copy
  (`dir`, `name`, `group`, `run_dir`: run context the app passes, see app/run/build.py).

`validate` then checks what types cannot: keys that `+`/`++` overrides added and nothing reads,
ranges, choices, availability of the device, existence of data files.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, open_dict

from app.errors import ConfigError  # noqa: F401 - the app's one user-error type, raised by validate


# ----------------------------------------------------------------------------- group schemas
# Types only: every value lives in conf/ (see the module docstring). `MISSING` here means "the
# option's YAML writes it"; a YAML that forgets one fails the `???` check in `validate`.
@dataclass
class TrainerConf:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: Optional[int] = MISSING  # None: 4 x batch_size (no gradients, so it fits)
    val_every: int = MISSING  # validate every N epochs, and always after the last one
    monitor: Any = MISSING  # the metric early stopping, best.pt and sweeps follow; a list: several
    #   objectives (multi-objective sweeps), the first drives early stopping and best.pt
    objectives: Optional[List[str]] = MISSING  # derived: every metric of a list monitor (see resolve_mode)
    mode: str = MISSING  # auto | min | max: which direction of `monitor` is better (auto: the metric's own)
    log_every: int = MISSING  # log a metrics line every N epochs (0: never)
    progress_bar: bool = MISSING  # one-line epoch progress on an interactive terminal
    checkpoint_every: int = MISSING  # write checkpoints/last.pt every N epochs (and at the end)
    keep_last_k: int = MISSING  # also keep checkpoints/epoch-NNNN.pt of the last k of those (0: none)
    data_on_device: bool = MISSING  # keep in-memory data on the device and batch by index
    pin_memory: bool = MISSING  # host-resident data on CUDA: pinned memory, asynchronous copies
    precision: str = MISSING  # 32 | bf16-mixed | 16-mixed (autocast; 16-mixed adds a GradScaler)
    compile: bool = MISSING  # torch.compile the model (falls back to eager with a warning)
    cuda_graph: Any = MISSING  # auto | true | false: replay the training step as CUDA graphs (CUDA only)
    grad_clip: float = MISSING  # clip the gradients' global L2 norm to this; 0: off
    accumulate_grad_batches: int = MISSING  # optimizer step every N batches (loss divided by N)
    matmul_precision: str = MISSING  # highest | high (TF32) | medium: float32 matmuls
    grad_norm_every: int = MISSING  # measure grad_norm at every N-th optimizer step (1: each)
    threads: Optional[int] = MISSING  # torch CPU threads (intra-op); None: torch's default, one per core
    devices: int = MISSING  # processes (one per GPU) that train the run together with DDP
    ddp_timeout: float = MISSING  # seconds a collective waits for every rank before failing


@dataclass
class DeviceConf:
    type: str = MISSING  # auto (cuda -> mps -> cpu) | cpu | cuda | mps
    index: int = MISSING  # which CUDA device, with type=cuda (or auto picking cuda)


@dataclass
class Target:
    """A node Hydra instantiates: `_target_` names the callable (written in the option's YAML)."""

    _target_: str = MISSING


@dataclass
class PartialTarget(Target):
    _partial_: bool = MISSING  # true: the app binds the rest (the model's parameters, the optimizer)


@dataclass
class MLPConf(Target):
    nodes: int = MISSING
    layers: int = MISSING
    activation: str = MISSING
    dropout: float = MISSING


@dataclass
class ResidualMLPConf(Target):
    nodes: int = MISSING
    blocks: int = MISSING
    expansion: int = MISSING
    activation: str = MISSING
    dropout: float = MISSING


@dataclass
class AdamConf(PartialTarget):  # Adam and AdamW
    lr: float = MISSING
    betas: List[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING
    foreach: Optional[bool] = MISSING  # None: torch's choice (multi-tensor kernels on GPUs)
    fused: Optional[bool] = MISSING  # one kernel per step on CPU, CUDA, MPS


@dataclass
class SGDConf(PartialTarget):
    lr: float = MISSING
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING
    foreach: Optional[bool] = MISSING
    fused: Optional[bool] = MISSING


@dataclass
class SchedulerBase(PartialTarget):
    interval: str = MISSING  # epoch | step: when the trainer steps it (not passed to the class)


@dataclass
class CosineConf(SchedulerBase):
    T_max: int = MISSING
    eta_min: float = MISSING


@dataclass
class StepConf(SchedulerBase):
    step_size: int = MISSING
    gamma: float = MISSING


@dataclass
class PlateauConf(SchedulerBase):
    mode: str = MISSING
    factor: float = MISSING
    patience: int = MISSING
    threshold: float = MISSING
    min_lr: float = MISSING


@dataclass
class WarmupCosineConf(SchedulerBase):
    warmup_steps: int = MISSING
    total_steps: int = MISSING
    min_lr_ratio: float = MISSING


@dataclass
class SplitConf(Target):
    val_fraction: float = MISSING
    test_fraction: float = MISSING
    seed: int = MISSING  # fixes the data and the split, independent of the training seed


@dataclass
class RegressionDataConf(SplitConf):
    n_samples: int = MISSING
    noise_std: float = MISSING
    jitter: float = MISSING


@dataclass
class SpiralsDataConf(SplitConf):
    n_samples: int = MISSING
    n_classes: int = MISSING
    noise: float = MISSING  # in units of the gap between neighbouring arms
    turns: float = MISSING


@dataclass
class BlobsDataConf(SplitConf):
    n_samples: int = MISSING
    n_classes: int = MISSING
    n_features: int = MISSING
    cluster_std: float = MISSING


@dataclass
class FileDataConf(SplitConf):
    path: str = MISSING  # .csv (header row) or .npz; relative to where you launched the app
    target: Any = MISSING  # a column name, or a list of names (multi-output regression)
    features: Any = MISSING  # names or fnmatch patterns (a list or one string); None: all but target, exclude
    exclude: List[str] = MISSING  # names or patterns left out when features is None (or matched by a pattern)
    task: str = MISSING  # auto | regression | classification (auto: inferred from the target)
    scaling: str = MISSING  # standard | minmax | none: fitted on the train split only
    target_scaling: str = MISSING  # regression targets: standard | minmax | none (train split only)


@dataclass
class DebugConf:
    """A debug mode (conf/debug/<mode>.yaml, app/run/debug.py); each mode adds its own keys."""

    mode: str = MISSING  # fast_dev_run | overfit | limit | profile: what app/run/debug.py does
    max_epochs: Optional[int] = MISSING  # epochs to run at most (None: trainer.epochs); the
    #   schedule still spans trainer.epochs, so the run's first epochs are those of the real run


@dataclass
class FastDevRunConf(DebugConf):
    batches: int = MISSING  # batches of train, validation and test each


@dataclass
class OverfitConf(DebugConf):
    batches: int = MISSING  # the fixed training batches, also the validation batches
    target_ratio: float = MISSING  # learned: train_loss <= target_ratio x the first epoch's


@dataclass
class LimitConf(DebugConf):
    limit_train_batches: Optional[int] = MISSING  # batches per epoch at most (None: all)
    limit_val_batches: Optional[int] = MISSING
    limit_test_batches: Optional[int] = MISSING


@dataclass
class ProfileConf(DebugConf):
    wait: int = MISSING  # torch.profiler.schedule: training steps skipped,
    warmup: int = MISSING  # then traced but discarded (warm caches),
    active: int = MISSING  # then recorded
    sort_by: str = MISSING  # the column the top-operator table is sorted by
    row_limit: int = MISSING  # rows of that table


@dataclass
class Config:
    """The root. Groups whose options differ in shape are typed by their option's schema;
    `callbacks` and `logger` map a name to a `_target_` node (checked against its signature)."""

    seed: int = MISSING
    deterministic: bool = MISSING  # PyTorch deterministic algorithms (refusing ops are named)
    seeds: Optional[List[int]] = MISSING  # several seeds in one run: objective = their mean
    pack: Any = MISSING  # auto | false | K: runs trained together as one vectorized model (app/run/pack.py)
    task_name: str = MISSING
    data: Any = MISSING
    model: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING  # None: constant learning rate
    device: DeviceConf = field(default_factory=DeviceConf)
    callbacks: Dict[str, Any] = field(default_factory=dict)  # name -> _target_ node (conf/callbacks/)
    logger: Dict[str, Any] = field(default_factory=dict)  # name -> _target_ node (conf/logger/)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    resume: Optional[str] = MISSING  # a run directory to continue (app/run/resume.py)
    resume_force: bool = MISSING  # resume even with overrides that change the result
    preflight: bool = MISSING  # check that one training step works, then exit (app/tools/preflight.py)
    trusted_modules: List[str] = MISSING  # module prefixes of `_target_`s (app/targets.py)
    debug: Any = MISSING  # None, or a debug mode's keys (conf/debug/, SCHEMAS["debug"])


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"mlp": MLPConf, "resmlp": ResidualMLPConf},
    "optimizer": {"adam": AdamConf, "adamw": AdamConf, "sgd": SGDConf},
    "scheduler": {
        "cosine": CosineConf,
        "step": StepConf,
        "plateau": PlateauConf,
        "warmup_cosine": WarmupCosineConf,
    },
    "debug": {
        "fast_dev_run": FastDevRunConf,
        "overfit": OverfitConf,
        "limit": LimitConf,
        "profile": ProfileConf,
    },
    "data": {
        "regression": RegressionDataConf,
        "spirals": SpiralsDataConf,
        "blobs": BlobsDataConf,
        "file": FileDataConf,
    },
}  # trainer and device have one shape: `Config` types them directly. callbacks and logger
#   entries are plain `_target_` nodes: their constructor's signature is their schema.


def monitor_mode(monitor: str, mode: str) -> str:
    """`mode` with `auto` replaced by the direction `monitor` is better in (min for losses and
    errors, max for accuracy-like metrics: app.train.tasks declares each metric's direction)."""
    from app.train.tasks import metric_direction

    if mode not in MODES + ("auto",):
        raise ConfigError("trainer.mode", mode, "auto, min or max")
    if mode != "auto":
        return mode
    natural = metric_direction(str(monitor))
    if natural is None:
        raise ConfigError("trainer.mode", mode, "min or max, naming the better direction of "
                          f"trainer.monitor={monitor}",
                          f"auto cannot tell whether a lower or a higher {monitor} is better")
    return natural


_warned: set[tuple[str, str]] = set()  # (monitor, mode) pairs already warned about in this process


def monitored(value: Any) -> list[str]:
    """The metric names a `trainer.monitor` value names: one name, or a list of them (several
    objectives). Refuses an empty list, repeated names and anything but names."""
    names = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ConfigError("trainer.monitor", OmegaConf.to_container(value) if isinstance(value, ListConfig) else value,
                          "a metric name (e.g. val_loss), or a list of distinct names for several objectives "
                          "(e.g. '[val_loss,val_accuracy]'; the first drives early stopping and best.pt)")
    return names


def direction_warning(key: str, metric: str, mode: str) -> str | None:
    """The one-line warning for keeping `mode` (min | max) for `metric` against its natural direction
    (None when they agree or the metric's direction is unknown); `key` names the setting."""
    from app.train.tasks import metric_direction

    natural = metric_direction(str(metric))
    if natural is None or natural == mode:
        return None
    return (f"{key} keeps the {'lowest' if mode == 'min' else 'highest'} {metric} as best, though a "
            f"{'lower' if natural == 'min' else 'higher'} {metric} is better")


def resolve_mode(cfg: DictConfig) -> DictConfig:
    """Resolve `trainer.monitor` and `trainer.mode` in `cfg` (in place), before anything reads
    them (early stopping's `${trainer.monitor}` and `${trainer.mode}`, checkpoints' best, the
    summary). A list monitor (several objectives) becomes its first metric, which drives early
    stopping and best.pt, and `trainer.objectives` keeps the whole list; `auto` becomes min or
    max, the first metric's direction. An explicit mode against the metric's natural direction
    is kept, with a one-line warning. Returns `cfg`. Running it again changes nothing."""
    import logging

    names = monitored(cfg.trainer.monitor)
    if len(names) > 1 or isinstance(cfg.trainer.monitor, ListConfig):
        with open_dict(cfg):
            cfg.trainer.monitor, cfg.trainer.objectives = names[0], names
    monitor, mode = cfg.trainer.monitor, cfg.trainer.mode
    objectives = cfg.trainer.get("objectives")
    if objectives is not None and (not objectives or objectives[0] != monitor):
        raise ConfigError("trainer.objectives", OmegaConf.to_container(objectives), "null",
                          "The app sets it from trainer.monitor: for several objectives, give trainer.monitor "
                          "a list, e.g. 'trainer.monitor=[val_loss,val_accuracy]'")
    resolved = monitor_mode(monitor, mode)
    warning = direction_warning(f"trainer.mode={mode}", monitor, mode) if mode != "auto" else None
    if warning is not None and (monitor, mode) not in _warned:
        _warned.add((monitor, mode))
        logging.getLogger("app").warning("%s (trainer.mode=auto follows the metric)", warning)
    if resolved != mode:
        with open_dict(cfg):
            cfg.trainer.mode = resolved
    return cfg


def objective_names(cfg: DictConfig) -> list[str]:
    """The metrics a run returns to a sweeper, in order: `trainer.objectives` once a list monitor
    was resolved, else the monitor (one objective)."""
    return list(cfg.trainer.get("objectives") or monitored(cfg.trainer.monitor))


def sweep_direction(mode: str, monitor: Any = None) -> Any:
    """Optuna's study direction for a monitor mode: min -> minimize, max -> maximize; auto
    follows `monitor` (`${sweep_direction:${trainer.mode},${trainer.monitor}}` in the presets).
    A list monitor gives a list of directions: the first follows `mode`, the others each
    metric's own direction."""
    from app.train.tasks import metric_direction

    if mode == "auto" and monitor is None:
        raise ConfigError("trainer.mode", mode, "min or max (or auto with the monitor: "
                          "${sweep_direction:${trainer.mode},${trainer.monitor}})")
    names = monitored(monitor) if monitor is not None else [None]
    directions = [{"min": "minimize", "max": "maximize"}[monitor_mode(names[0], mode)]]
    for name in names[1:]:
        natural = metric_direction(name)
        if natural is None:
            raise ConfigError("hydra.sweeper.direction", f"${{sweep_direction:{mode},{names}}}",
                              f"a list of {len(names)} directions, one per monitored metric, e.g. "
                              f"hydra.sweeper.direction=[{', '.join(['minimize'] * len(names))}]",
                              f"Whether a lower or a higher {name} is better is not known")
        directions.append({"min": "minimize", "max": "maximize"}[natural])
    return directions if len(names) > 1 else directions[0]


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
WANDB_MODES = ("offline", "online", "disabled", "dryrun", "run")  # dryrun, run: W&B's old names
INTERVALS = ("epoch", "step")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
MATMUL_PRECISIONS = ("highest", "high", "medium")
PROFILE_SORT_KEYS = (  # what torch.profiler's key_averages().table(sort_by=...) sorts by
    "self_cpu_time_total", "cpu_time_total", "self_cuda_time_total", "cuda_time_total",
    "self_device_time_total", "device_time_total", "cpu_memory_usage", "self_cpu_memory_usage",
    "cuda_memory_usage", "self_cuda_memory_usage", "count",
)


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


# ----------------------------------------------------------------------------- unknown keys
TARGET_GROUPS = ("data", "model", "optimizer", "scheduler")  # each one `_target_` node
ENTRY_GROUPS = ("callbacks", "logger")  # each a mapping: name -> `_target_` node
INSTANTIATE_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")  # Hydra's own
APP_READS = {"scheduler": ("interval",)}  # keys the app reads itself and does not pass on


def _entries(cfg: DictConfig, group: str) -> list[tuple[str, Any]]:
    node = cfg.get(group)
    return list(node.items()) if isinstance(node, DictConfig) else []


def _target_nodes(cfg: DictConfig) -> list[tuple[str, Any]]:
    """(key, node) of every `_target_` node the app builds: data, model, ..., callbacks.<name>."""
    nodes = [(group, cfg[group]) for group in TARGET_GROUPS if cfg.get(group) is not None]
    for group in ENTRY_GROUPS:
        nodes += [(f"{group}.{name}", node) for name, node in _entries(cfg, group)]
    return nodes


def _located(cfg: DictConfig) -> dict[str, Any]:
    """{key: the callable its `_target_` names} for `_target_nodes`, each imported only once
    app.targets allows it; None where the import fails (building that group reports it)."""
    from app import targets  # app.targets imports this module

    found: dict[str, Any] = {}
    for key, node in _target_nodes(cfg):
        _check(isinstance(node, DictConfig) and isinstance(node.get("_target_"), str), key,
               OmegaConf.to_container(node) if isinstance(node, DictConfig) else node,
               "a node with a `_target_` naming the callable to build (an option of the group, "
               "e.g. conf/callbacks/<name>.yaml)")
        try:
            found[key] = targets.locate(node._target_, key, cfg.trusted_modules)
        except ConfigError:
            raise
        except Exception:  # noqa: BLE001 -- not importable: `app.run.build` names the reason
            found[key] = None
    return found


def parameters(target: Any) -> list[str] | None:
    """The keyword arguments `target` accepts; None when it accepts any (`**kwargs`) or its
    signature cannot be read."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return [name for name, p in signature.parameters.items() if p.kind in kinds]


def _known(node: DictConfig, path: str, known: list[str], what: str) -> None:
    for key in node:
        if key not in known and key not in INSTANTIATE_KEYS:
            full = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                full, node._get_node(key)._value(),
                f"the keys of {what}: {', '.join(k for k in known if k not in INSTANTIATE_KEYS)}",
                f"{what[0].upper()}{what[1:]} has no key `{key}`, so nothing would read it (a `+` or `++` override, or "
                "a YAML file, added it)",
            )


def refuse_unknown_keys(cfg: DictConfig, located: dict[str, Any] | None = None) -> None:
    """Refuse keys no schema declares: Hydra refuses them while composing, except those that a
    `+key=`/`++key=` override adds. Dataclass-typed nodes are compared with their fields,
    `_target_` nodes with their callable's signature (anything goes for `**kwargs`)."""
    _known(cfg, "", [f.name for f in fields(Config)], "the config root")
    for key, schema in (("trainer", TrainerConf), ("device", DeviceConf)):
        _known(cfg[key], key, [f.name for f in fields(schema)], f"`{key}`")
    debug = cfg.get("debug")
    if isinstance(debug, DictConfig) and debug.get("mode") in SCHEMAS["debug"]:
        _known(debug, "debug", [f.name for f in fields(SCHEMAS["debug"][debug.mode])], f"`debug` ({debug.mode})")
    nodes = dict(_target_nodes(cfg))
    for key, target in (_located(cfg) if located is None else located).items():
        known = parameters(target) if target is not None else None
        if known is not None:
            _known(nodes[key], key, known + list(APP_READS.get(key, ())),
                   f"`{key}` ({nodes[key]._target_})")


def validate(cfg: DictConfig, metric_names: list[str] | None = None) -> None:
    """Check what the schemas cannot. Raises `ConfigError` on the first problem.

    `metric_names`: the metrics the configured task produces (checked against `monitor`);
    None skips that check (the data's task is known only once the data config is read).
    """
    for key in sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(key, "???", f"a value on the command line, as in {key}=<value>",
                          "This key is required and has no default")
    located = _located(cfg)
    refuse_unknown_keys(cfg, located)
    _check(isinstance(cfg.seed, int) and cfg.seed >= 0, "seed", cfg.seed, "an integer >= 0")
    if cfg.seeds is not None:
        seeds = list(cfg.seeds)
        _check(len(seeds) > 0 and len(set(seeds)) == len(seeds) and all(s >= 0 for s in seeds),
               "seeds", seeds, "null (train once with `seed`) or a non-empty list of distinct "
               "integers >= 0, e.g. seeds=[1,2,3]")
    from app.run.pack import pack_size

    pack_size(cfg, 1)  # refuses anything but auto, false or an integer >= 1

    t = cfg.trainer
    for key in ("epochs", "batch_size", "val_every", "checkpoint_every"):
        _positive_int(cfg, f"trainer.{key}")
    _positive_int(cfg, "trainer.log_every", allow_zero=True)
    _positive_int(cfg, "trainer.keep_last_k", allow_zero=True)
    if t.eval_batch_size is not None:
        _positive_int(cfg, "trainer.eval_batch_size")
    _check(t.mode in MODES + ("auto",), "trainer.mode", t.mode, "auto, min or max")
    _check(str(t.precision) in PRECISIONS, "trainer.precision", t.precision, ", ".join(PRECISIONS))
    _check(t.matmul_precision in MATMUL_PRECISIONS, "trainer.matmul_precision", t.matmul_precision,
           ", ".join(MATMUL_PRECISIONS))
    _check(_finite(t.grad_clip) and t.grad_clip >= 0, "trainer.grad_clip", t.grad_clip,
           "a finite number >= 0 (the largest global gradient L2 norm; 0 turns clipping off)")
    _positive_int(cfg, "trainer.accumulate_grad_batches")
    _positive_int(cfg, "trainer.grad_norm_every")
    if t.threads is not None:
        _check(isinstance(t.threads, int) and t.threads >= 1, "trainer.threads", t.threads,
               "null (torch's default: one thread per core) or an integer >= 1")
    _positive_int(cfg, "trainer.devices")
    _check(_finite(t.ddp_timeout) and t.ddp_timeout > 0, "trainer.ddp_timeout", t.ddp_timeout,
           "a number of seconds > 0")
    _check(isinstance(t.cuda_graph, bool) or t.cuda_graph == "auto", "trainer.cuda_graph", t.cuda_graph,
           "auto (CUDA graphs wherever they apply), true (required: an error where they cannot be "
           "used) or false")
    _check(not (t.cuda_graph is True and t.devices > 1), "trainer.cuda_graph", t.cuda_graph,
           "auto or false with trainer.devices > 1",
           "DistributedDataParallel all-reduces gradients outside a captured CUDA graph")
    _check(not (t.cuda_graph is True and str(t.precision) == "16-mixed"), "trainer.precision", t.precision,
           "32 or bf16-mixed with trainer.cuda_graph=true",
           "the GradScaler of 16-mixed decides on the host whether to step, which a CUDA graph cannot replay")

    from app.callbacks import Checkpoint, EarlyStopping, WandbLogger

    def built_as(key: str, kind: type) -> bool:
        target = located.get(key)
        return isinstance(target, type) and issubclass(target, kind)

    for name, node in _entries(cfg, "callbacks"):
        key = f"callbacks.{name}"
        if built_as(key, EarlyStopping):
            _check(node.get("mode") in MODES + ("auto",), f"{key}.mode", node.get("mode"), "auto, min or max")
            _positive_int(cfg, f"{key}.patience")
            _check(_finite(node.get("min_delta")) and node.min_delta >= 0, f"{key}.min_delta",
                   node.get("min_delta"), "a finite number >= 0 (an absolute change in the monitored metric)")
    checkpoints = [name for name, _ in _entries(cfg, "callbacks") if built_as(f"callbacks.{name}", Checkpoint)]
    debugging = cfg.get("debug") is not None
    _check(len(checkpoints) == 1 or (debugging and not checkpoints), "callbacks", checkpoints or sorted(cfg.callbacks),
           "exactly one checkpoint callback (app.callbacks.Checkpoint or a subclass), e.g. "
           "callbacks.checkpoint: +callbacks=checkpoint brings the default one back",
           "A run needs one: resuming and testing with the best weights read its checkpoints "
           "(only a debug run may go without: it tests its last weights)")
    if debugging:
        _validate_debug(cfg)

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
        sch = cfg.scheduler
        for key in ("step_size", "T_max", "total_steps"):  # a period or horizon: 0 divides by zero
            if key in sch:
                _positive_int(cfg, f"scheduler.{key}")
        if "gamma" in sch:
            _check(_finite(sch.gamma) and sch.gamma > 0, "scheduler.gamma", sch.gamma,
                   "a finite number > 0 (what the learning rate is multiplied by)")
        if "factor" in sch:
            _check(_finite(sch.factor) and 0 < sch.factor < 1, "scheduler.factor", sch.factor,
                   "a number in (0, 1) (what the learning rate is multiplied by on a plateau)")
        for key in ("eta_min", "min_lr", "min_lr_ratio", "threshold"):
            if key in sch:
                _check(_finite(sch[key]) and sch[key] >= 0, f"scheduler.{key}", sch[key], "a finite number >= 0")
        if "patience" in sch:
            _positive_int(cfg, "scheduler.patience", allow_zero=True)
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

    for name, node in _entries(cfg, "logger"):
        if built_as(f"logger.{name}", WandbLogger):
            _check(node.get("mode") in WANDB_MODES, f"logger.{name}.mode", node.get("mode"),
                   "offline, online or disabled",
                   "its default is the WANDB_MODE environment variable when that is set")

    if metric_names is not None:
        check_metrics(cfg, metric_names)


def check_metrics(cfg: DictConfig, metric_names: list[str]) -> None:
    """Refuse a `trainer.monitor` (each objective of a multi-objective one) or a callback's
    `monitor` that names no metric of `metric_names`, the metrics the run's task produces."""
    for value in objective_names(cfg):
        _check(value in metric_names, "trainer.monitor", value,
               "a metric this task produces: " + ", ".join(metric_names))
    for key in [f"callbacks.{name}.monitor" for name, node in _entries(cfg, "callbacks") if "monitor" in node]:
        value = OmegaConf.select(cfg, key)
        _check(value in metric_names, key, value, "a metric this task produces: " + ", ".join(metric_names))


def _validate_debug(cfg: DictConfig) -> None:
    """The `debug` keys (conf/debug/<mode>.yaml; what they do: app/run/debug.py)."""
    d = cfg.debug
    _check(isinstance(d, DictConfig) and d.get("mode") in SCHEMAS["debug"], "debug.mode",
           d.get("mode") if isinstance(d, DictConfig) else d,
           "null or a mode of conf/debug/: debug=" + ", debug=".join(SCHEMAS["debug"]))
    if d.max_epochs is not None:
        _positive_int(cfg, "debug.max_epochs")
    for key in ("batches", "limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if d.get(key) is not None:
            _positive_int(cfg, f"debug.{key}")
    if d.mode == "overfit":
        _check(_finite(d.target_ratio) and 0 < d.target_ratio < 1, "debug.target_ratio", d.target_ratio,
               "a number in (0, 1): the fraction of its first-epoch value train_loss must fall to")
    if d.mode == "profile":
        _positive_int(cfg, "debug.wait", allow_zero=True)
        _positive_int(cfg, "debug.warmup", allow_zero=True)
        _positive_int(cfg, "debug.active")
        _positive_int(cfg, "debug.row_limit")
        _check(d.sort_by in PROFILE_SORT_KEYS, "debug.sort_by", d.sort_by, ", ".join(PROFILE_SORT_KEYS))
    if cfg.get("resume") and d.mode != "limit":
        raise ConfigError("resume", cfg.resume, "a run without debug, or with debug=limit (a normal run on fewer batches)",
                          f"a debug={d.mode} run is a quick check that keeps nothing to continue from: run it again")
