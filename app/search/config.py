"""Schemas of the `hydra/sweeper/pruner` options (`hydra/sweeper/pruner=median` on the command line).

Each builds an Optuna pruner. Steps are epochs: a trial reports its monitored metric after
every epoch that validates (`trainer.val_every`), at step = epoch number. Importing this module
is cheap (no optuna, no torch): the plugin package imports it whenever Hydra starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class NoPrunerConf:
    """Every trial runs to its end (early stopping still applies)."""

    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConf:
    """Prune when the trial's best value so far is worse than the median of finished trials'
    values at the same epoch."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5  # finished trials needed before any trial is pruned
    n_warmup_steps: int = 5  # epochs a trial always runs before it can be pruned
    interval_steps: int = 1  # consider pruning every N epochs after the warm-up
    n_min_trials: int = 1  # finished trials that reached this epoch, needed to compare


@dataclass
class PercentilePrunerConf:
    """Like median, with another percentile: 25 keeps only trials in the best quarter."""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 25.0
    n_startup_trials: int = 5
    n_warmup_steps: int = 5
    interval_steps: int = 1
    n_min_trials: int = 1


@dataclass
class HyperbandPrunerConf:
    """Hyperband: several successive-halving brackets with different aggressiveness."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1  # epochs every trial gets
    max_resource: Any = "${trainer.epochs}"  # epochs of a full trial (or "auto")
    reduction_factor: int = 3
    bootstrap_count: int = 0


@dataclass
class SuccessiveHalvingPrunerConf:
    """Asynchronous successive halving: at epochs min_resource * reduction_factor**k, keep the
    best 1/reduction_factor of the trials that reached that epoch."""

    _target_: str = "optuna.pruners.SuccessiveHalvingPruner"
    min_resource: Any = "auto"
    reduction_factor: int = 4
    min_early_stopping_rate: int = 0
    bootstrap_count: int = 0


@dataclass
class ExtrapolationPrunerConf:
    """Predict the final value from the curve so far and prune when even that prediction is
    worse than `percentile` of the finished trials (see app/search/pruners.py)."""

    _target_: str = "app.search.pruners.CurveExtrapolationPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 5
    window: int = 10  # the last N reported epochs are fitted
    percentile: float = 50.0  # 50: the median of finished trials' values
    horizon: Optional[int] = None  # None: the trial's trainer.epochs


PRUNERS: dict[str, type] = {
    "none": NoPrunerConf,
    "median": MedianPrunerConf,
    "percentile": PercentilePrunerConf,
    "hyperband": HyperbandPrunerConf,
    "successive_halving": SuccessiveHalvingPrunerConf,
    "extrapolation": ExtrapolationPrunerConf,
}
