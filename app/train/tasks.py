"""What a task trains on and reports: its loss and its metrics.

A metric function returns the SUM over the batch of a per-sample quantity, so the trainer can
accumulate sums on the device and divide by the number of samples once per epoch: epoch values
are sample-weighted averages whatever the batch sizes.
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


def _correct_sum(logits: Tensor, target: Tensor) -> Tensor:
    """Number of samples whose arg-max class equals the target. logits [n, C], target [n]."""
    return (logits.argmax(dim=-1) == target).sum()


@dataclass(frozen=True)
class Task:
    name: str
    loss: Callable[[Tensor, Tensor], Tensor]  # mean over the batch
    metrics: dict[str, MetricFn] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)  # metric -> "min" | "max"

    def metric_names(self) -> list[str]:
        """Every metric a run of this task logs (what `trainer.monitor` may name)."""
        return ["train_loss", "val_loss", *(f"val_{name}" for name in self.metrics)]

    def direction(self, metric: str) -> str:
        """Whether `metric` (train_/val_/test_ prefixed) is better when lower or higher."""
        return self.directions.get(metric.split("_", 1)[1], "min")


TASKS: dict[str, Task] = {
    "regression": Task("regression", F.mse_loss, {"mae": _abs_error_sum}, {"loss": "min", "mae": "min"}),
    "classification": Task(
        "classification",
        F.cross_entropy,
        {"accuracy": _correct_sum},
        {"loss": "min", "accuracy": "max"},
    ),
}


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


