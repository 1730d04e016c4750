"""The job's side of an Optuna trial: find it, report to it, ask its pruner.

A job launched by `StudySweeper` has `APP_OPTUNA_TRIAL_ID` in its environment (through
`hydra.job.env_set`) and `study.json` in its sweep dir; `current_trial()` opens the study from
there, in whichever process the launcher runs the job.

Several seeds (`seeds=[...]`): the first seed's curve is what the trial reports to Optuna, one
value per epoch (Optuna keeps one value per step, so later seeds cannot report again). While a
later seed trains, the pruner is asked about the mean, epoch by epoch, over the seeds trained so
far (a seed that stopped early keeps its last value), compared as usual with other trials'
reported curves. So pruning always uses everything known about the trial at that moment.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
from typing import Any, Callable, Iterable

from app.search.internals import trial_id
from app.search.internals import storage as storage_of
from app.search.study import TRIAL_ENV, StudyFile, load_study, open_storage, trial_state

log = logging.getLogger(__name__)


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
        """The run ended: stop the heartbeat (the sweeper tells the outcome)."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
            self.heartbeat = None

    @property
    def params(self) -> dict[str, Any]:
        return self.trial.params

    def set_user_attr(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)

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
        if not self._reports:
            return False
        if len(self.curves) == 1:
            try:
                self.trial.report(value, epoch)
                return self._prunes and bool(self.trial.should_prune())
            except Exception as error:  # noqa: BLE001 - a storage that does not answer just now
                from app.search.study import is_transient, root_cause

                if not is_transient(error):
                    raise
                # the run goes on (its result is told by the sweeper, from its run dir); this epoch
                # is missing from the trial's curve, and the pruner is not asked about it
                log.warning("Trial %d: epoch %d not reported, the study's storage did not answer (%s)",
                            self.number, epoch, root_cause(error))
                return False
        if not self._prunes:
            return False
        frozen = copy.copy(self.trial.storage.get_trial(trial_id(self.trial)))
        frozen.intermediate_values = mean_curve(self.curves)
        return bool(self.study.pruner.prune(self.study, frozen))

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
    study = load_study(info.storage, info.study_name, pruner=info.make_pruner(trusted_modules))
    trial = OptunaTrial(study, int(trial_id))
    trial.set_user_attr("run_dir", str(hydra_cfg.runtime.output_dir))
    if info.heartbeat_interval:
        trial.start_heartbeat(info.heartbeat_interval, open_storage(info.storage, info.heartbeat_interval))
    if info.parallel_jobs > 1:
        share_cpu_threads(info.parallel_jobs)
    return trial


def share_cpu_threads(parallel_jobs: int) -> None:
    """K processes each using every core slow each other down: give each cores // K threads (never
    more than the process was given, e.g. by OMP_NUM_THREADS)."""
    import torch

    threads = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // parallel_jobs))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
