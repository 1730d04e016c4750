"""Learning-rate schedules not in `torch.optim.lr_scheduler` as a single class, and re-planning a
schedule when a run is extended (`resume=<run dir> trainer.epochs=<more>`)."""
from __future__ import annotations

import math
from typing import Any

from torch import Tensor
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR


class WarmupCosine:
    """The lr factor of `warmup_cosine` at a step. A callable object rather than a closure, so
    LambdaLR's state_dict stores its horizon and a resumed run gets back the one it trained with."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """Linear warmup from ~0 to the base lr over `warmup_steps`, then cosine decay to
    `min_lr_ratio * base lr` at `total_steps`. Steps are epochs or optimizer steps, following
    the scheduler's `interval`."""
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]"
        )
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio))


def replan(scheduler: Any, old_total: int, new_total: int) -> str | None:
    """Re-plan `scheduler` (its state just loaded from a run planned for `old_total` scheduler
    steps) over `new_total` steps: a run being extended.

    The rule: a horizon that spanned the whole run (cosine's `T_max`, warmup_cosine's
    `total_steps` equal to `old_total`, whether it followed `trainer.epochs` or was pinned to it)
    moves to `new_total`, and the learning rate becomes the one the re-planned schedule has at the
    step the run is at. The remaining steps then follow the schedule of a run planned for
    `new_total` from the start: from where it is, down to the schedule's floor at the new end,
    never climbing back up a finished cosine and never training the added steps at its floor.
    A horizon shorter than the run (a periodic cosine chosen on purpose) and schedules without a
    horizon (step, plateau, constant) continue as configured.

    Returns a description of what changed, or None when nothing did."""
    if new_total <= old_total:
        return None
    if isinstance(scheduler, CosineAnnealingLR) and scheduler.T_max == old_total:
        scheduler.T_max = new_total
        step = scheduler.last_epoch
        lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * step / new_total)) / 2
               for base in scheduler.base_lrs]
        what = f"cosine T_max {old_total} -> {new_total}"
    elif isinstance(scheduler, LambdaLR) and all(
            isinstance(f, WarmupCosine) and f.total_steps == old_total for f in scheduler.lr_lambdas):
        for factor in scheduler.lr_lambdas:
            factor.total_steps = new_total
        lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        what = f"warmup_cosine total_steps {old_total} -> {new_total}"
    else:
        return None
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        if isinstance(group["lr"], Tensor):  # a learning rate in device memory (CUDA graphs)
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
    # Private: get_last_lr() reports this list and torch has no public setter for it (its own
    # step() assigns it the same way).
    scheduler._last_lr = list(lrs)
    return f"{what}: lr {lrs[0]:.4g} at step {scheduler.last_epoch}"
