"""Shared data containers and the fixed-seed train/val/test split."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import torch
from torch import Tensor

from app.errors import ConfigError

TASKS = ("regression", "classification")

@dataclass
class Split:
    """One split of in-memory data.

    x: float32 [n, in_features]. y: float32 [n, out_features] (regression) or int64 [n]
    (classification, class indices 0..K-1).
    """

    x: Tensor
    y: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class DataSplits:
    """Train/val(/test) splits plus what the model needs to know about their shapes.

    out_features: number of target columns (regression) or number of classes (classification).
    test is None when no test split was requested (test_fraction == 0).
    """

    task: str
    train: Split
    val: Split
    test: Split | None
    in_features: int
    out_features: int

    def describe(self) -> str:
        """One line, e.g. 'regression: 8000 train / 2000 val / 0 test, 1 -> 1'."""
        n_test = len(self.test) if self.test is not None else 0
        arrow = f"{self.in_features} -> {self.out_features}"
        if self.task == "classification":
            arrow += " classes"
        sizes = f"{len(self.train)} train / {len(self.val)} val / {n_test} test"
        return f"{self.task}: {sizes}, {arrow}"


def is_int(value: Any) -> bool:
    """True for integers (Python or numpy), never for bools."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for finite real numbers (ints or floats, never bools)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def validate_fractions(val_fraction: Any, test_fraction: Any) -> None:
    """Check 0 < val_fraction < 1, 0 <= test_fraction < 1 and val + test < 1 (raises ConfigError)."""
    if not is_real(val_fraction) or not 0 < val_fraction < 1:
        raise ConfigError(
            "data.val_fraction", val_fraction, "a number in (0, 1), e.g. 0.2", "The validation fraction must lie strictly "
            "between 0 and 1",
        )
    if not is_real(test_fraction) or not 0 <= test_fraction < 1:
        raise ConfigError(
            "data.test_fraction", test_fraction, "a number in [0, 1); 0 for no test split",
            "The test fraction must lie in [0, 1)",
        )
    if val_fraction + test_fraction >= 1:
        raise ConfigError(
            "data.test_fraction", test_fraction,
            "fractions with val_fraction + test_fraction < 1", f"val_fraction + test_fraction = {val_fraction + test_fraction:g} leaves no "
            "training data",
        )


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(n_train, n_val, n_test) for `n` samples, each rounded half-up; fractions must be valid."""
    n_val = math.floor(n * val_fraction + 0.5)
    n_test = math.floor(n * test_fraction + 0.5)
    return n - n_val - n_test, n_val, n_test


def sizes_ok(n: int, val_fraction: float, test_fraction: float) -> bool:
    """Whether `n` samples give every requested split (train, val, test if > 0) >= 1 sample."""
    n_train, n_val, n_test = split_sizes(n, val_fraction, test_fraction)
    return n_train >= 1 and n_val >= 1 and (n_test >= 1 or test_fraction == 0)


def min_samples(val_fraction: float, test_fraction: float) -> int:
    """Smallest n for which `sizes_ok` holds (fractions must already be valid)."""
    n = 2
    while not sizes_ok(n, val_fraction, test_fraction):
        n += 1
    return n


def split_indices(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-seed random train/val/test partition of range(n).

    Returns three int64 index tensors (train, val, test; test is empty when test_fraction == 0)
    that are disjoint and together cover 0..n-1. The permutation comes from its own
    `torch.Generator().manual_seed(seed)`, so the split never depends on the global RNG.
    """
    validate_fractions(val_fraction, test_fraction)
    if not sizes_ok(n, val_fraction, test_fraction):
        n_train, n_val, n_test = split_sizes(n, val_fraction, test_fraction)
        key, value = (
            ("data.test_fraction", test_fraction)
            if n_test < 1 and test_fraction > 0
            else ("data.val_fraction", val_fraction)
        )
        raise ConfigError(
            key, value,
            f"fractions that leave >= 1 sample per split (or at least "
            f"{min_samples(val_fraction, test_fraction)} samples)",
            f"With {n} samples the splits would be {n_train} train / {n_val} val / {n_test} test, "
            "and every requested split needs at least 1 sample",
        )
    n_train, n_val, _ = split_sizes(n, val_fraction, test_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def make_splits(
    task: str, x: Tensor, y: Tensor, out_features: int,
    val_fraction: float, test_fraction: float, seed: int,
) -> DataSplits:
    """Partition full-data tensors (x [n, in], y [n, ...]) into a DataSplits via split_indices."""
    train_idx, val_idx, test_idx = split_indices(int(x.shape[0]), val_fraction, test_fraction, seed)

    def take(idx: Tensor) -> Split:
        return Split(x.index_select(0, idx).contiguous(), y.index_select(0, idx).contiguous())

    return DataSplits(
        task=task,
        train=take(train_idx),
        val=take(val_idx),
        test=take(test_idx) if test_fraction > 0 else None,
        in_features=int(x.shape[1]),
        out_features=int(out_features),
    )
