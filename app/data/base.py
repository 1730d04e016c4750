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
SCALINGS = ("standard", "minmax", "none")

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
class Scaling:
    """Feature scaling fitted on the train split: x_scaled = (x - shift) / scale, per feature.

    method: standard (shift = mean, scale = standard deviation) or minmax (shift = min, scale =
    max - min); a constant feature gets scale 1. shift, scale: float32 [in_features].
    features: the column each entry belongs to (a 2-D npz array contributes name[0], name[1], ...).
    Plain tensors and lists, so a checkpoint can carry them (`weights_only=True` loads them).
    """

    method: str
    shift: Tensor
    scale: Tensor
    features: list[str]

    @classmethod
    def fit(cls, method: str, x: Tensor, features: list[str]) -> "Scaling":
        """Statistics of `x` (float32 [n, in_features], the TRAIN split only)."""
        if method == "standard":
            shift, scale = x.mean(dim=0), x.std(dim=0, unbiased=False)
        else:
            shift, scale = x.amin(dim=0), x.amax(dim=0) - x.amin(dim=0)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant feature stays put
        return cls(method, shift, scale, list(features))

    def apply(self, x: Tensor) -> Tensor:
        return ((x - self.shift) / self.scale).contiguous()

    def invert(self, x: Tensor) -> Tensor:
        """The inverse of `apply`: values back in the original units."""
        return (x * self.scale + self.shift).contiguous()

    def to_dict(self) -> dict[str, Any]:
        """{method, features, shift, scale} as plain lists (for a run's records and checkpoints:
        float32 values survive the round trip through Python floats exactly)."""
        return {"method": self.method, "features": list(self.features),
                "shift": self.shift.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "Scaling":
        """The scaling `to_dict` describes."""
        return cls(state["method"], torch.tensor(state["shift"], dtype=torch.float32),
                   torch.tensor(state["scale"], dtype=torch.float32), list(state["features"]))


@dataclass
class DataSplits:
    """Train/val(/test) splits plus what the model needs to know about their shapes.

    out_features: number of target columns (regression) or number of classes (classification).
    test is None when no test split was requested (test_fraction == 0).
    What inference needs to read new inputs and name outputs (None where the source has no
    names, e.g. synthetic data): `features`, one name per input feature (a 2-D npz array `a`
    gives a[0], a[1], ...); `feature_columns`, the file columns they come from; `targets`, the
    target column names; `classes`, the label of each class index (classification).
    """

    task: str
    train: Split
    val: Split
    test: Split | None
    in_features: int
    out_features: int
    scaling: Scaling | None = None  # fitted on train, already applied to every split's x
    # Regression only: fitted on train's y, already applied to every split's y (the model learns
    # the scaled target; `app.train.tasks.task_for` reports metrics in the original units).
    target_scaling: Scaling | None = None
    features: list[str] | None = None
    feature_columns: list[str] | None = None
    targets: list[str] | None = None
    classes: list[str] | list[int] | None = None

    def describe(self) -> str:
        """One line, e.g. 'regression: 8000 train / 2000 val / 0 test, 1 -> 1'."""
        n_test = len(self.test) if self.test is not None else 0
        arrow = f"{self.in_features} -> {self.out_features}"
        if self.task == "classification":
            arrow += " classes"
        sizes = f"{len(self.train)} train / {len(self.val)} val / {n_test} test"
        scaled = f", {self.scaling.method}-scaled features (fitted on train)" if self.scaling else ""
        if self.target_scaling is not None:
            scaled += f", {self.target_scaling.method}-scaled target (metrics in its units)"
        return f"{self.task}: {sizes}, {arrow}{scaled}"


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
    scaling: str = "none", feature_names: list[str] | None = None,
    target_scaling: str = "none", target_names: list[str] | None = None,
) -> DataSplits:
    """Partition full-data tensors (x [n, in], y [n, ...]) into a DataSplits via split_indices.
    `scaling` (standard | minmax | none): fitted on the train split's x only, then applied to
    every split (see `Scaling`); `feature_names` label its entries (default x0, x1, ...).
    `target_scaling` (regression only; standard | minmax | none): the same for y [n, k], fitted
    on the train split's y; `target_names` label its entries (default y0, y1, ...)."""
    if scaling not in SCALINGS:
        raise ConfigError("data.scaling", scaling, " | ".join(SCALINGS), "Unknown feature scaling")
    if target_scaling not in SCALINGS:
        raise ConfigError("data.target_scaling", target_scaling, " | ".join(SCALINGS), "Unknown target scaling")
    train_idx, val_idx, test_idx = split_indices(int(x.shape[0]), val_fraction, test_fraction, seed)
    fitted = fitted_y = None
    if scaling != "none":
        names = feature_names or [f"x{i}" for i in range(int(x.shape[1]))]
        fitted = Scaling.fit(scaling, x.index_select(0, train_idx), names)
    if target_scaling != "none" and task == "regression":
        names = target_names or [f"y{i}" for i in range(int(y.shape[1]))]
        fitted_y = Scaling.fit(target_scaling, y.index_select(0, train_idx), names)

    def take(idx: Tensor) -> Split:
        part, target = x.index_select(0, idx), y.index_select(0, idx)
        return Split(fitted.apply(part) if fitted else part.contiguous(),
                     fitted_y.apply(target) if fitted_y else target.contiguous())

    return DataSplits(
        task=task,
        train=take(train_idx),
        val=take(val_idx),
        test=take(test_idx) if test_fraction > 0 else None,
        in_features=int(x.shape[1]),
        out_features=int(out_features),
        scaling=fitted,
        target_scaling=fitted_y,
    )
