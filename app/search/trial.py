"""The job's side of an Optuna trial: find it, report to it, ask its pruner.

A job launched by `StudySweeper` has `APP_OPTUNA_TRIAL_ID` in its environment (through
`hydra.job.env_set`) and `study.json` in its sweep dir; `current_trial()` opens the study from
there, in whichever process the launcher runs the job.

Several seeds (`seeds=[...]`): the first seed's curve is what the trial reports to Optuna, one
value per epoch (Optuna keeps one value per step, so later seeds cannot report again). While a
later seed trains, the pruner is asked about the mean, epoch by epoch, over the seeds trained so
far (a seed that stopped early keeps its last value), compared as usual with other trials'
reported curves. So pruning always uses everything known about the trial at that moment.

A storage that stops answering for a while (a database restart, a network cut: `is_transient`)
does not fail the run. Opening the trial when the job starts is tried again (0.5 s, doubling, at
most 15 s apart) for up to STORAGE_OUTAGE_S, then the run stops with one paragraph before it trains
(the sweep runs the trial again). Later, a report or a pruning check that finds it down is logged
and skipped; a user attribute it refuses (`run_dir`, `epochs`) is kept and written before the next
report and when the run ends (a warning names any that never were); a heartbeat it refuses is
missed, and the next one is tried (the sweep process beats for its running trials too).
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable, TypeVar

from app.search.internals import trial_id
from app.search.internals import storage as storage_of
from app.search.study import (STORAGE_OUTAGE_S, TRIAL_ENV, StorageOutage, StudyFile, is_transient, load_study,
                              open_storage, root_cause, trial_state)

log = logging.getLogger(__name__)
T = TypeVar("T")


class OptunaTrial:
    """One Optuna trial, seen from the job running it. `study`: an `optuna.Study` opened with
    the sweep's pruner; `trial_id`: Optuna's internal id of the trial."""

    def __init__(self, study: Any, trial_id: int) -> None:
        import optuna

        self.study = study
        self.trial = optuna.trial.Trial(study, trial_id)
        self.number = self.trial.number
        self.study_name = study.study_name
        self.pruner_name = type(study.pruner).__name__
        # Optuna cannot prune multi-objective studies (Trial.report raises there): such a trial
        # reports nothing and is never pruned.
        self._reports = len(study.directions) == 1
        self._prunes = self._reports and not isinstance(study.pruner, optuna.pruners.NopPruner)
        self.curves: list[dict[int, float]] = []  # per seed, in order: epoch -> monitored value
        self.heartbeat: Heartbeat | None = None
        self._unrecorded: dict[str, Any] = {}  # user attributes the storage did not take yet (an outage)
        self._warned: set[str] = set()  # ... and already logged as such

    def start_heartbeat(self, interval_s: float, storage: Any = None) -> None:
        """Record Optuna heartbeats for this trial every `interval_s` seconds from a daemon thread
        (Optuna does so only inside `study.optimize`; Hydra sweepers ask and tell). `storage`: one
        for the thread alone (default: the study's); a SQLite storage keeps one connection, which
        two threads must not use at once."""
        storage = storage or storage_of(self.study)
        storage_id = trial_id(self.trial)
        self.heartbeat = Heartbeat(lambda: storage.record_heartbeat(storage_id), interval_s)
        self.heartbeat.start()

    def close(self) -> None:
        """The run ended: stop the heartbeat (the sweeper tells the outcome) and write the user
        attributes an outage held back; a warning names those the storage still refuses."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None
        import optuna

        why = "the study's storage did not answer"
        try:
            self._record_attrs()
        except optuna.exceptions.UpdateFinishedTrialError:
            why = "the trial was finished meanwhile (another worker failed it as stale)"
        if self._unrecorded:
            log.warning("Trial %d: user attribute%s %s not recorded: %s", self.number,
                        "s" if len(self._unrecorded) > 1 else "", ", ".join(sorted(self._unrecorded)), why)

    @property
    def params(self) -> dict[str, Any]:
        return self.trial.params

    def set_user_attr(self, key: str, value: Any) -> None:
        """Set a user attribute of the trial; one that a storage which does not answer just now
        refuses is kept and written before the next report, or when the run ends (close)."""
        self._unrecorded[key] = value
        self._record_attrs()

    def _record_attrs(self) -> bool:
        """Write the user attributes not recorded yet; whether all are (False: the storage did not
        answer; the rest wait for the next try). Other errors are raised."""
        for key in list(self._unrecorded):
            try:
                self.trial.set_user_attr(key, self._unrecorded[key])
            except Exception as error:  # noqa: BLE001 - a storage that does not answer just now
                if not is_transient(error):
                    raise
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("Trial %d: user attribute %r not recorded yet, the study's storage did not "
                                "answer (%s): tried again at the next report", self.number, key, root_cause(error))
                return False
            del self._unrecorded[key]
        return True

    def _storage_down(self, error: BaseException, what: str) -> bool:
        """For a storage call of `report` that raised `error`: log a transient one (`what` was
        skipped) and return False (not pruned); raise any other."""
        if not is_transient(error):
            raise error
        log.warning("Trial %d: %s, the study's storage did not answer (%s)", self.number, what, root_cause(error))
        return False

    def start_seed(self, epochs: int) -> None:
        """Call before each seed's training; `epochs`: trainer.epochs (the pruners' horizon)."""
        if not self.curves:
            self.set_user_attr("epochs", int(epochs))
        self.curves.append({})

    def pruning_callback(self, monitor: str):
        from app.callbacks.pruning import Pruning

        return Pruning(self.report, monitor, self.pruner_name)

    def report(self, epoch: int, value: float) -> bool:
        """Record the monitored `value` after `epoch` of the current seed (reported to a
        single-objective study); whether to prune."""
        if not self.curves:
            self.curves.append({})
        self.curves[-1][epoch] = value
        if self._unrecorded:
            self._record_attrs()
        if not self._reports:
            return False
        # A storage that does not answer just now: the run goes on (its result is told by the
        # sweeper, from its run dir); this epoch is missing from the trial's curve, or the pruner
        # is not asked about it.
        if len(self.curves) == 1:
            try:
                self.trial.report(value, epoch)
                return self._prunes and bool(self.trial.should_prune())
            except Exception as error:  # noqa: BLE001 - see _storage_down
                return self._storage_down(error, f"epoch {epoch} not reported")
        if not self._prunes:
            return False
        try:
            frozen = copy.copy(self.trial.storage.get_trial(trial_id(self.trial)))
            frozen.intermediate_values = mean_curve(self.curves)
            return bool(self.study.pruner.prune(self.study, frozen))
        except Exception as error:  # noqa: BLE001 - see _storage_down
            return self._storage_down(error, f"epoch {epoch} of seed {len(self.curves)} not checked for pruning")

    def describe(self, status: str) -> dict[str, Any]:
        """The trial as a run's summary records it (and W&B shows it)."""
        return {"study": self.study_name, "number": self.number, "params": self.params,
                "state": trial_state(status).name}


class Heartbeat:
    """Calls `beat` now and then every `interval_s` seconds from a daemon thread until `stop()`.
    A failing beat is logged, not raised (the trial may have been told meanwhile)."""

    def __init__(self, beat: Callable[[], Any], interval_s: float) -> None:
        self.beat, self.interval_s = beat, float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="optuna-heartbeat", daemon=True)

    def start(self) -> "Heartbeat":
        self._beat_once()
        self._thread.start()
        return self

    def _beat_once(self) -> None:
        try:
            self.beat()
        except Exception as error:  # noqa: BLE001 - a heartbeat must never end the run
            log.debug("heartbeat not recorded: %s", error)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._beat_once()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.interval_s + 5)


def mean_curve(curves: list[dict[int, float]]) -> dict[int, float]:
    """Epoch -> mean over `curves` of the value at that epoch, for the epochs of the last curve.
    An earlier curve that ended before an epoch contributes its last value."""
    last = curves[-1]
    means = {}
    for epoch in sorted(last):
        values = []
        for curve in curves:
            known = [e for e in curve if e <= epoch]
            if known:
                values.append(curve[max(known)])
        means[epoch] = sum(values) / len(values)
    return means


def current_trial(trusted_modules: Iterable[str] = ()) -> OptunaTrial | None:
    """The Optuna trial this job runs as, or None outside an Optuna sweep. Records the run dir
    on the trial and, when trials run in parallel processes on CPU, gives each process an equal
    share of the CPU threads."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    info = StudyFile.read(hydra_cfg.sweep.dir)
    if info is None:
        log.warning("%s is set but %s/study.json is missing: not reporting to Optuna",
                    TRIAL_ENV, hydra_cfg.sweep.dir)
        return None
    from app.errors import ConfigError

    pruner = info.make_pruner(trusted_modules)
    run_dir = str(hydra_cfg.runtime.output_dir)
    try:
        trial = wait_out(lambda: OptunaTrial(load_study(info.storage, info.study_name, pruner=pruner), int(trial_id)),
                         info.storage, "the job opened its trial")
    except ConfigError as error:  # the storage stayed down: the trial is run again (interrupted)
        interrupted(run_dir, error)
        raise
    trial.set_user_attr("run_dir", run_dir)
    if info.heartbeat_interval:
        trial.heartbeat = heartbeat_for(info.storage, info.heartbeat_interval, [int(trial_id)])
    if info.parallel_jobs > 1:
        share_cpu_threads(info.parallel_jobs)
    return trial


def interrupted(run_dir: Any, error: Any) -> None:
    """Record in `run_dir` that its run stopped with `error` (a ConfigError: wait_out gave up)
    before training, as an interrupted run: the sweep runs its trial again. `error.recorded`
    tells main.train to leave this summary as it is."""
    from app.run.record import Status, Summary

    Summary(Status.FAILED, error=str(error), interrupted=True).write(run_dir)
    error.recorded = True


def heartbeat_for(url: str, interval_s: int, trial_ids: list[int]) -> Heartbeat:
    """A started heartbeat for the trials `trial_ids` of the storage at `url`, through a storage of
    its own (a SQLite storage keeps one connection, which two threads must not use at once), opened
    by its first beat that finds the storage answering: a storage that is down when the run starts
    or later only misses beats (the sweep process beats for its running trials too)."""
    opened: list[Any] = []

    def beat() -> None:
        if not opened:
            opened.append(open_storage(url, interval_s))
        for ident in trial_ids:
            opened[0].record_heartbeat(ident)

    return Heartbeat(beat, interval_s).start()


def _pause(seconds: float) -> None:
    time.sleep(seconds)  # between tries of a storage that did not answer, bounded by wait_out's deadline


def wait_out(operation: Callable[[], T], url: str, what: str, outage_s: float | None = None) -> T:
    """`operation()`, tried again while the storage at `url` does not answer (StorageOutage), for up to
    `outage_s` (default STORAGE_OUTAGE_S) seconds; then the one-paragraph ConfigError (`what`: what
    the job was doing, for the messages)."""
    limit = STORAGE_OUTAGE_S if outage_s is None else outage_s
    stops = ("this run stops before training. Nothing is lost: the sweep runs the trial again, with the same "
             "parameters, once the storage answers")
    return StorageOutage(url, limit, stops, log, _pause).retrying(operation, what)


def share_cpu_threads(parallel_jobs: int) -> None:
    """K processes each using every core slow each other down: give each cores // K threads (never
    more than the process was given, e.g. by OMP_NUM_THREADS)."""
    import torch

    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // parallel_jobs))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
