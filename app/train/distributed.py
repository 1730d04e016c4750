"""The process group as the training loop sees it: which rank this process is, and the few
collectives one epoch needs. The loop never synchronises per step: gradients are all-reduced by
DistributedDataParallel inside backward (asynchronously, on the device), everything else here
runs once per epoch.

Outside a process group (one process) every function is the identity or a no-op, so the loop
reads the same either way. Launching the group is `app.run.distributed`'s business.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def active() -> bool:
    """Whether this process is a rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes the run's records and talks to Optuna."""
    return rank() == 0


def wrap(model: nn.Module, device: torch.device) -> nn.Module | None:
    """`model` (already on `device`) in DistributedDataParallel, or None outside a group (a group
    of one process, as torchrun --nproc_per_node=1 starts, takes the DDP path too).
    DDP broadcasts rank 0's parameters and buffers here, so every rank starts from the same weights."""
    if not active():
        return None
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def sum_over_ranks(tensor: Tensor) -> Tensor:
    """`tensor` summed element-wise over the ranks, in place, on every rank exactly as rank 0
    has it (the all-reduce, then rank 0's result broadcast: whatever each rank decides from it,
    a plateau scheduler say, it decides the same). Collectives on the device: no host read."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        dist.broadcast(tensor, src=0)
    return tensor


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (a picklable object; a host collective)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's `value`, in rank order, on rank 0; None on the other ranks (a host collective)."""
    if not active():
        return [value]
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def shard(start: int, end: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rank `rank`'s contiguous part of the index range [start, end): the range cut into
    `world_size` parts whose sizes differ by at most one (a part may be empty when the range
    holds fewer items than ranks). Host integers only."""
    size = end - start
    return start + size * rank // world_size, start + size * (rank + 1) // world_size
