"""Mini-batches straight from in-memory tensors, without a Dataset or per-sample collate."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from app.data.base import Split
from app.train.distributed import shard


class TensorBatches:
    """Iterates (x, y) mini-batches of a `Split` by index.

    on_device=True moves the whole split to `device` once, so a batch is an index_select (or, with
    shuffle=False, a view) of device memory and costs no host-to-device copy. on_device=False keeps
    the data on the host (pinned if `pin_memory` and `device` is CUDA) for sets that do not fit,
    copying each batch with `.to(device, non_blocking=True)`.

    Shuffled epochs draw their permutation from a CPU generator seeded once here, so epoch k's
    order depends only on `seed` and k, never on the global RNG; `state_dict` captures it for an
    exact resume. Iteration never synchronizes host and device (sizes come from shapes).

    Several processes (`world_size` > 1, DistributedDataParallel): `batch_size` is the global
    batch. Every rank draws the same permutation (same `seed`) and cuts each global batch into
    `world_size` contiguous parts whose sizes differ by at most one; rank `rank` yields its part.
    So the ranks together see exactly the batches one process would, `len` (batches per epoch),
    `batch_size` and `num_samples` are the global figures on every rank, and a part can be empty
    when a batch holds fewer samples than there are ranks.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        device: torch.device | str,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        on_device: bool = True,
        pin_memory: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if split.x.shape[0] != split.y.shape[0]:
            raise ValueError(
                f"x and y disagree on the number of samples: "
                f"{split.x.shape[0]} vs {split.y.shape[0]}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank!r}")
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.on_device = on_device
        self._n = int(split.x.shape[0])  # a host-side shape, never read back from the device

        if on_device:
            self._x, self._y = split.x.to(self.device), split.y.to(self.device)
            self._pin = False
        else:
            self._pin = pin_memory and self.device.type == "cuda" and torch.cuda.is_available()
            self._x, self._y = split.x.cpu(), split.y.cpu()
            if self._pin:
                self._x, self._y = self._x.pin_memory(), self._y.pin_memory()

        self._generator = torch.Generator()  # CPU: randperm there is cheap and device-independent
        self._generator.manual_seed(int(seed))

    @property
    def num_samples(self) -> int:
        """Samples yielded per epoch (the last partial batch is left out with drop_last)."""
        if self.drop_last:
            return (self._n // self.batch_size) * self.batch_size
        return self._n

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self._n // self.batch_size
        return -(-self._n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (x [b, ...], y [b, ...]) batches; b == batch_size except maybe the last one.

        The permutation is drawn when iteration starts (the first `next`), once per epoch.
        """
        stop = self.num_samples
        if not self.shuffle:
            for start in range(0, stop, self.batch_size):
                start, end = self._part(start, min(start + self.batch_size, stop))
                yield self._transfer(self._x[start:end], self._y[start:end])
            return

        # One small copy per epoch, then indexing stays local; non_blocking: without it a
        # copy from pageable memory waits for the device (a host sync per epoch).
        perm = self.next_order().to(self._x.device, non_blocking=True)
        for start in range(0, stop, self.batch_size):
            start, end = self._part(start, min(start + self.batch_size, stop))
            idx = perm[start:end]
            xb, yb = self._x.index_select(0, idx), self._y.index_select(0, idx)
            if self._pin:
                # index_select returns pageable memory; a pinned copy keeps the upload async.
                xb, yb = xb.pin_memory(), yb.pin_memory()
            yield self._transfer(xb, yb)

    def next_order(self) -> Tensor:
        """The next epoch's sample order (a CPU permutation), drawn as iterating draws it: the
        shuffle generator advances the same way. For callers that batch the data themselves
        (packs index every member's batch of one shared split in one operation)."""
        return torch.randperm(self._n, generator=self._generator)

    @property
    def tensors(self) -> tuple[Tensor, Tensor]:
        """The split's (x, y) where batches are cut from (on the device with on_device)."""
        return self._x, self._y

    def bounds(self) -> list[tuple[int, int]]:
        """[start, end) of each batch of an epoch, in order (one process)."""
        stop = self.num_samples
        return [(start, min(start + self.batch_size, stop)) for start in range(0, stop, self.batch_size)]

    def _part(self, start: int, end: int) -> tuple[int, int]:
        """This rank's part of the global batch [start, end)."""
        return (start, end) if self.world_size == 1 else shard(start, end, self.rank, self.world_size)

    def _transfer(self, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
        """Move a host batch to the target device (no-op when the data already lives there)."""
        if self.on_device:
            return xb, yb
        return xb.to(self.device, non_blocking=True), yb.to(self.device, non_blocking=True)

    def state_dict(self) -> dict[str, Any]:
        """The shuffle generator's state: restoring it reproduces the following epochs' order."""
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from `state_dict` (a checkpoint mapped to another device works too)."""
        self._generator.set_state(state["generator"].to("cpu", torch.uint8))


class LimitedBatches:
    """The first `limit` batches of each epoch of `batches` (a `TensorBatches` or another batch
    iterable with `batch_size` and `num_samples`): a view, the data is not copied.

    Each epoch draws its order from `batches` as usual and stops after `limit` batches, so with
    shuffling every epoch sees a different (seeded, reproducible) subset, and the shuffle state
    that `state_dict` hands to checkpoints is the underlying iterator's: a resumed limited run
    continues exactly. Without shuffling the same `limit` batches come every epoch.
    `num_samples` counts the samples of those batches only, so epoch means stay per-sample.
    """

    def __init__(self, batches: Any, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
            raise ValueError(f"limit must be a positive integer, got {limit!r}")
        self.batches = batches
        self.limit = min(limit, len(batches))
        self.batch_size = batches.batch_size

    @property
    def num_samples(self) -> int:
        # Every batch is full but maybe the underlying epoch's last: sizes do not depend on the order.
        return min(self.limit * self.batch_size, self.batches.num_samples)

    def __len__(self) -> int:
        return self.limit

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        iterator = iter(self.batches)
        for _ in range(self.limit):
            yield next(iterator)

    def state_dict(self) -> dict[str, Any]:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches.load_state_dict(state)
