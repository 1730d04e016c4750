"""Learning-rate schedules not in `torch.optim.lr_scheduler` as a single class."""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warmup from ~0 to the base lr over `warmup_steps`, then cosine decay to
    `min_lr_ratio * base lr` at `total_steps`. Steps are epochs or optimizer steps, following
    the scheduler's `interval`."""
    if warmup_steps < 0 or total_steps <= 0 or warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps}]"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
