"""The one place the app reaches past Optuna's public API, and why.

Hydra's sweepers drive Optuna with ask/tell while the trials run as separate Hydra jobs (other
processes with the joblib launcher). A job must report to *its* trial, and the sweeper must mark
trials it did not create in this process (recovering a killed sweep). Optuna identifies a trial
across processes by its storage id: `optuna.trial.Trial(study, trial_id)` is public, but the id
itself (`Trial._trial_id`, `FrozenTrial._trial_id`) and the study's storage (`Study._storage`,
needed to write attributes of a trial by id, e.g. its owner, or to read one trial without loading
all) are not. Keeping these reads here means a change in Optuna touches one module.
"""
from __future__ import annotations

from typing import Any


def trial_id(trial: Any) -> int:
    """The storage id of an `optuna.trial.Trial` or `FrozenTrial`."""
    return trial._trial_id


def storage(study: Any) -> Any:
    """The storage an `optuna.Study` reads and writes."""
    return study._storage
