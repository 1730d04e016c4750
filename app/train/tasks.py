"""What a task trains on and reports: its loss and its metrics.

A metric function returns the SUM over the batch of a per-sample quantity, so the trainer can
accumulate sums on the device and divide by the number of samples once per epoch: epoch values
are sample-weighted averages whatever the batch sizes.

A regression whose target the data scaled (`DataSplits.target_scaling`, e.g. `data=file`'s
`data.target_scaling=standard`) trains on the scaled target: `task_for` gives a task whose loss
(train_loss, val_loss, test_loss) is the MSE of the scaled target, the quantity the optimizer
minimises, and whose metrics (mse, mae) undo the scaling first, so they are in the target's
own units. Without target scaling, loss and mse are the same number.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

MetricFn = Callable[[Tensor, Tensor], Tensor]


def _abs_error_sum(pred: Tensor, target: Tensor) -> Tensor:
    """Sum over samples of the mean absolute error across outputs. pred, target: [n, k]."""
    return (pred - target).abs().mean(dim=-1).sum()


def _squared_error_sum(pred: Tensor, target: Tensor) -> Tensor:
    """Sum over samples of the mean squared error across outputs. pred, target: [n, k]."""
    return (pred - target).square().mean(dim=-1).sum()


def _correct_sum(logits: Tensor, target: Tensor) -> Tensor:
    """Number of samples whose arg-max class equals the target. logits [n, C], target [n]."""
    return (logits.argmax(dim=-1) == target).sum()


@dataclass(frozen=True)
class Metric:
    """A metric function (see the module docstring) and which direction of it is better."""

    fn: MetricFn
    better: str  # "min" | "max"

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        return self.fn(pred, target)


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[Tensor, Tensor], Tensor]  # mean over the batch; lower is better
    metrics: dict[str, Metric] = field(default_factory=dict)

    def metric_names(self) -> list[str]:
        """Every metric a run of this task logs (what `trainer.monitor` may name)."""
        return ["train_loss", "val_loss", *(f"val_{name}" for name in self.metrics)]

    def direction(self, metric: str) -> str | None:
        """"min" or "max": which direction of `metric` (train_/val_/test_ prefixed) is better."""
        base = _unprefixed(metric)
        return "min" if base == "loss" else self.metrics[base].better if base in self.metrics else None


TASKS: dict[str, Task] = {
    "regression": Task("regression", F.mse_loss, {"mae": Metric(_abs_error_sum, "min"),
                                                  "mse": Metric(_squared_error_sum, "min")}),
    "classification": Task("classification", F.cross_entropy, {"accuracy": Metric(_correct_sum, "max")}),
}

class _Unscaled:
    """A metric of values in the target's own units, for a model trained on the scaled target:
    pred and target are mapped back (x * scale + shift, per output) before `fn` sees them.
    Tensors only, so `torch.func.vmap` (packed training) can map it like the plain metric."""

    def __init__(self, fn: MetricFn, shift: Tensor, scale: Tensor) -> None:
        self.fn = fn
        self._stats: dict[torch.device, tuple[Tensor, Tensor]] = {shift.device: (shift, scale)}

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        stats = self._stats.get(pred.device)
        if stats is None:  # copied to a device once, not at every batch
            shift, scale = next(iter(self._stats.values()))
            stats = self._stats[pred.device] = (shift.to(pred.device), scale.to(pred.device))
        shift, scale = stats
        return self.fn(pred * scale + shift, target * scale + shift)


def task_for(name: str, target_scaling=None) -> Task:
    """The task a run of `name` trains with: `TASKS[name]`, or, for a regression whose data
    scaled the target (`target_scaling`: an `app.data.base.Scaling`), the same task with every
    metric in the target's original units (see the module docstring)."""
    task = TASKS[name]
    if target_scaling is None or name != "regression":
        return task
    shift, scale = target_scaling.shift.float(), target_scaling.scale.float()
    metrics = {key: Metric(_Unscaled(metric.fn, shift, scale), metric.better) for key, metric in task.metrics.items()}
    return Task(task.name, task.loss, metrics)


# Metrics no task here declares (a custom task's, a logger's): their direction by name.
_LOWER_IS_BETTER = ("loss", "mae", "mse", "rmse", "error", "perplexity")
_HIGHER_IS_BETTER = ("accuracy", "acc", "f1", "auc", "auroc", "r2", "precision", "recall", "iou", "dice")


def _unprefixed(metric: str) -> str:
    for prefix in ("train_", "val_", "test_"):
        if metric.startswith(prefix):
            return metric[len(prefix):]
    return metric


def metric_direction(metric: str) -> str | None:
    """"min" or "max" for `metric` (e.g. val_accuracy -> max): what the task declaring it says,
    else by its name's ending (loss, mae, mse, rmse, error: min; accuracy, f1, auc, r2...: max);
    None when neither tells."""
    for task in TASKS.values():
        declared = task.direction(metric)
        if declared is not None:
            return declared
    base = _unprefixed(metric).lower()
    for better, endings in (("min", _LOWER_IS_BETTER), ("max", _HIGHER_IS_BETTER)):
        if any(base == e or base.endswith("_" + e) for e in endings):
            return better
    return None


def task_of(data_cfg, trusted_modules: Iterable[str] = ()) -> str | None:
    """The task a data config produces, known before the data is made: its `task` key, or the
    `task` attribute of its builder function; None when neither says."""
    if data_cfg is None:
        return None
    if "task" in data_cfg:
        return data_cfg.task
    from app import targets

    try:
        return getattr(targets.locate(data_cfg._target_, "data._target_", trusted_modules), "task", None)
    except Exception:  # an untrusted or unimportable target is reported when the data is built
        return None


