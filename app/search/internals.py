"""The one place the app reaches past Optuna's public API, and why.

Hydra's sweepers drive Optuna with ask/tell while the trials run as separate Hydra jobs (other
processes with the joblib launcher). A job must report to *its* trial, and the sweeper must mark
trials it did not create in this process (recovering a killed sweep). Optuna identifies a trial
across processes by its storage id: `optuna.trial.Trial(study, trial_id)` is public, but the id
itself (`Trial._trial_id`, `FrozenTrial._trial_id`) and the study's storage (`Study._storage`,
needed to write attributes of a trial by id, e.g. its owner, or to read one trial without loading
all) are not. Optuna records heartbeats only in RDB storages (`BaseHeartbeat`, in the private
module `optuna.storages._heartbeat`); `JournalHeartbeatStorage` gives a journal file the same
interface. Keeping these here means a change in Optuna touches one module.
"""
from __future__ import annotations

import time
from typing import Any, Callable

HEARTBEAT_ATTR = "app:heartbeat"  # trial system attribute of a journal storage: the last beat (Unix time)


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



def __getattr__(name: str) -> Any:
    """`JournalHeartbeatStorage` is made on first use: this module is imported by every run
    (app.search.trial), which must not import optuna unless it is a sweep's trial."""
    if name != "JournalHeartbeatStorage":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = globals()[name] = _journal_heartbeat_storage()
    return cls


def _journal_heartbeat_storage() -> type:
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat  # private: the interface Optuna's heartbeats use
    from optuna.trial import TrialState

    class JournalHeartbeatStorage(optuna.storages.JournalStorage, BaseHeartbeat):
        """A journal storage with Optuna's heartbeat interface: a beat appends the trial's system
        attribute `app:heartbeat` (the beating host's Unix time) to the journal, and a RUNNING trial
        whose last beat is older than `grace_period` (default 2 x `heartbeat_interval`) seconds is
        stale. Trials that never beat are not stale (as in RDBStorage). Across machines the hosts'
        clocks must agree to well within the grace period (NTP does)."""

        def __init__(self, backend: Any, heartbeat_interval: int, grace_period: int | None = None,
                     on_stale: Callable[..., None] | None = None) -> None:
            super().__init__(backend)
            self.heartbeat_interval = heartbeat_interval
            self.grace_period = grace_period or 2 * heartbeat_interval
            self.on_stale = on_stale

        def record_heartbeat(self, trial_id: int) -> None:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

        def _get_stale_trial_ids(self, study_id: int) -> list[int]:
            now = time.time()
            return [t._trial_id for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
                    if HEARTBEAT_ATTR in t.system_attrs and now - t.system_attrs[HEARTBEAT_ATTR] > self.grace_period]

        def get_heartbeat_interval(self) -> int | None:
            return self.heartbeat_interval

        def get_heartbeat_stale_trial_callback(self) -> Callable[..., None] | None:
            return self.on_stale

    JournalHeartbeatStorage.__module__, JournalHeartbeatStorage.__qualname__ = __name__, "JournalHeartbeatStorage"
    return JournalHeartbeatStorage
