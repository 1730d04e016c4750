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


def stale_trial_ids(study: Any) -> list[int]:
    """Ids of the study's RUNNING trials whose last heartbeat is older than the storage's grace
    period (none when its heartbeats are off). `optuna.storages.fail_stale_trials` fails them at
    once, leaving no moment to record why on the trial (a finished trial's attributes are
    read-only): the sweeper needs the ids first, which only `_get_stale_trial_ids` gives."""
    store = storage(study)
    if not getattr(store, "get_heartbeat_interval", lambda: None)():
        return []
    return list(store._get_stale_trial_ids(study._study_id))
