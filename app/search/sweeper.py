"""`StudySweeper`: hydra-optuna-sweeper's sweep loop, made to know pruning, failures and resuming.

The plugin's loop asks Optuna for a batch of `n_jobs` trials, launches them as Hydra jobs and
tells Optuna each job's return value (COMPLETE) or exception (FAIL). This subclass keeps the
plugin's search-space parsing, trial configuration and launcher, and changes the loop:

- The study lives in `hydra.sweeper.storage`, by default `outputs/studies/<study name>.db`, and
  is resumed: the loop runs until `n_trials` trials are *finished* in total (COMPLETE, PRUNED, or
  FAIL from a run that raised), whichever invocation ran them. Resuming refuses a study that a
  different command started (other overrides, search space, monitored metrics or directions).
- Each job gets its trial's id (`hydra.job.env_set.APP_OPTUNA_TRIAL_ID`) and reports to it
  every epoch; its run dir is named after the trial number.
- A job's outcome is read from its run dir's summary.json: completed/early_stopped -> COMPLETE
  (values: the job's return value, one per direction), pruned or diverged -> PRUNED, failed or raised -> FAIL, with
  `status`, `reason`, `epochs_run`, `run_dir` as user attributes of the trial.
  The sweep stops once more than `max_failure_rate` x (the trials this invocation set out to
  run) have failed (the plugin checks each batch alone, so with n_jobs=1 any rate below 1 stopped
  at the first failure).
- Interrupted trials (Ctrl-C, or a sweep process that died: found RUNNING at the next start,
  owned by a process that is gone) are marked FAIL with user attribute `interrupted`, do not
  count as finished, and are retried with the same parameters. A trial whose job had finished
  when the sweeper died is told from its summary.json instead.
- No batch barrier: `n_jobs` trials run at once and a slot freed by a trial that finished, was
  pruned or failed gets the next trial at once. With the joblib launcher the jobs run in worker
  processes that the sweep owns (app/search/pool.py); a worker that dies (SIGKILL, the OOM killer)
  fails only its trial, with the reason, and the trial is run again with the same parameters up to
  `max_retries` times. Any other launcher gets one `launch([job])` per free slot, from a thread.
- With a parallel launcher and several GPUs, a starting trial gets a `device.index` that no
  running trial uses (round-robin).
- Packs (`pack=auto|K`, app/search/packs.py): trials of one model shape are asked several at a
  time and train together as one job, each member a real trial told from its own run dir;
  `pack=false`: one trial per job.
- Several directions (a list `trainer.monitor`): as many as the monitored metrics; no pruning
  (Optuna cannot prune multi-objective studies); `optimization_results.yaml` lists the Pareto front.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import logging
import math
import os
import socket
import sqlite3
import sys
import time
import uuid
import warnings
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from app import targets
from app.config import direction_warning, monitored
from app.errors import ConfigError
from app.run.record import Status, Summary
from app.search.internals import stale_trial_ids
from app.search.internals import storage as storage_of
from app.search.internals import trial_id
from app.search import packs
from app.search.pool import InlineRunner, JobExited, ThreadRunner, WorkerDied, WorkerPool
from app.search.study import (
    STORAGE_OUTAGE_S,
    TRIAL_ENV,
    StorageOutage,
    StudyFile,
    absolute_storage,
    default_storage,
    display_url,
    is_memory,
    is_transient,
    load_study,
    new_memory_storage,
    open_storage,
    prepare_storage,
    storage_refusal,
    trial_state,
)
from app.search.trial import Heartbeat

log = logging.getLogger(__name__)
OWNER_ATTR = "app:owner"  # system attribute: which sweep process asked (and so runs) a trial
SEARCH_ATTR = "app:search"  # study user attribute: the command that started the study
UNCLAIMED_GRACE_S = 60.0  # a RUNNING trial with no owner this old was asked by a process that died
RETRY_GRACE_S = 60.0  # an interrupted trial failed this long ago with no retry queued: its worker died
CREATE_ATTEMPTS = 5  # creating a study on a fresh storage: tries (processes racing to make tables)


@dataclass
class Outcome:
    """How a finished job is told to Optuna. `values`: one per objective (COMPLETE only); a
    single float is taken as the one objective's value."""

    state: TrialState
    values: list[float] | None
    status: str
    reason: str = ""
    epochs_run: int | None = None
    interrupted: bool = False

    def __post_init__(self) -> None:
        if self.values is not None and not isinstance(self.values, (list, tuple)):
            self.values = [self.values]

    @property
    def value(self) -> float | None:
        """The first objective's value (the only one of a single-objective study)."""
        return self.values[0] if self.values else None


def _floats(value: Any, objectives: int) -> list[float]:
    """`objectives` floats from a job's return value (a float, or a list for several objectives);
    ValueError naming what is wrong otherwise."""
    if objectives == 1:
        try:
            return [float(value)]
        except (TypeError, ValueError):
            raise ValueError(f"return value {value!r} is not a float") from None
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"return value {value!r} is not a list of {objectives} floats") from None
    if len(values) != objectives:
        raise ValueError(f"return value {value!r} has {len(values)} values for {objectives} objectives")
    return values


def outcome_from_summary(summary: Summary | None, return_value: Any = None, objectives: int = 1) -> Outcome:
    """The outcome of a job from its run dir's summary (None: not written) and its return value,
    for a study of `objectives` objectives."""
    if summary is None:  # a task function that is not this app's: the plugin's rule
        try:
            values = _floats(return_value, objectives)
        except ValueError as error:
            return Outcome(TrialState.FAIL, None, Status.FAILED, str(error))
        if not all(math.isfinite(v) for v in values):
            return Outcome(TrialState.FAIL, None, Status.FAILED, f"non-finite return value {return_value!r}")
        return Outcome(TrialState.COMPLETE, values, Status.COMPLETED)
    status, reason = summary.status, summary.reason
    interrupted = summary.interrupted or (
        status == Status.FAILED and str(summary.error or "").startswith("KeyboardInterrupt"))
    state, values = trial_state(status), None
    if state == TrialState.COMPLETE:
        if return_value is None:  # told from the run dir alone (a recovered trial)
            return_value = (list(summary.objectives.values()) if summary.objectives is not None
                            else summary.objective if summary.objective is not None else math.nan)
        try:
            values = _floats(return_value, objectives)
        except ValueError as error:
            state, reason = TrialState.FAIL, (f"{error}: the study has {objectives} objective"
                                              f"{'s' if objectives > 1 else ''}, one per metric of trainer.monitor")
        else:
            if not all(math.isfinite(v) for v in values):
                state, reason, values = TrialState.FAIL, f"non-finite objective {return_value} for status {status}", None
    return Outcome(state, values if state == TrialState.COMPLETE else None, status, reason, summary.epochs_run,
                   interrupted)


def run_dir_of(ret: JobReturn) -> Path | None:
    try:
        return Path(ret.hydra_cfg.hydra.runtime.output_dir)
    except AttributeError:
        return None


def job_error(ret: JobReturn) -> BaseException:
    """The exception a failed job raised (`JobReturn.return_value` re-raises it)."""
    try:
        ret.return_value
    except BaseException as error:  # noqa: B036 - a job may have ended with KeyboardInterrupt
        return error
    return RuntimeError("the job failed")


def job_outcome(ret: JobReturn, objectives: int = 1) -> Outcome:
    summary = Summary.read(run_dir_of(ret))
    if ret.status == JobStatus.FAILED:
        error = job_error(ret)
        epochs = summary.epochs_run if summary is not None else None
        return Outcome(TrialState.FAIL, None, Status.FAILED, f"{type(error).__name__}: {error}", epochs,
                       isinstance(error, KeyboardInterrupt))
    return outcome_from_summary(summary, ret.return_value, objectives)


# ------------------------------------------------------------------ owners of running trials
def owner(sweep: str | None = None) -> dict[str, Any]:
    """This sweep process (`sweep`: which sweep loop of it, when it runs several, e.g. in tests)."""
    who = {"host": socket.gethostname(), "pid": os.getpid(), "started": _STARTED}
    return {**who, "sweep": sweep} if sweep else who


_STARTED = time.time()


def claim(study: Any, trial: Any, who: dict[str, Any] | None = None) -> None:
    """Record which sweep process (default: this one) runs `trial`."""
    storage_of(study).set_trial_system_attr(trial_id(trial), OWNER_ATTR, who or owner())


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process that its parent has not reaped yet still answers signals
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def abandoned(owner_attr: dict[str, Any] | None, age_s: float = math.inf) -> bool:
    """Whether a RUNNING trial's sweep process is gone. Trials of sweeps on other hosts are
    never judged here (they may be alive: their heartbeats tell). A trial with no owner yet is
    abandoned once `age_s` (since it was asked) exceeds UNCLAIMED_GRACE_S: another worker may be
    between its ask and its claim."""
    if not owner_attr:
        return age_s > UNCLAIMED_GRACE_S
    if owner_attr.get("host") != socket.gethostname():
        return False
    if owner_attr.get("pid") == os.getpid():
        return owner_attr.get("started") != _STARTED
    return not process_alive(int(owner_attr.get("pid", -1)))


def is_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Counts towards n_trials: COMPLETE, PRUNED, or FAIL that was not an interruption."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return (trial.state == TrialState.FAIL and not trial.user_attrs.get("interrupted")
            and not trial.user_attrs.get("surplus"))


def awaiting_retry(trials: Sequence[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Interrupted trials with no retry queued yet (none, or only retries given back as surplus).
    The worker that failed one queues its retry at once (StudySweeper._settle): until then it
    counts as running, so that no other worker asks a fresh trial in its place."""
    retried = {t.user_attrs.get("retry_of") for t in trials if not t.user_attrs.get("surplus")}
    return [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")
            and t.number not in retried and t.params]


def age_s(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_start is None:
        return math.inf
    return (datetime.datetime.now() - trial.datetime_start).total_seconds()


def pick_gpu(in_use: Sequence[int], gpu_count: int) -> int | None:
    """The CUDA device index for a trial that starts while trials on `in_use` run: the lowest
    index no running trial uses (the least used one when every GPU has a trial); None with < 2
    GPUs."""
    if gpu_count < 2:
        return None
    return min(range(gpu_count), key=lambda index: (list(in_use).count(index), index))


def _joblib_launcher_class() -> type | tuple:
    """Hydra's joblib launcher class (an empty tuple, matching nothing, when it is not installed)."""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    except ImportError:
        return ()
    return JoblibLauncher


def submission_refusal(error: BaseException, launcher: str) -> ConfigError | None:
    """The one paragraph for a SLURM launcher that could not submit the trials' jobs (no SLURM on
    this machine, or sbatch refused them: a partition, account or limit the cluster does not
    have). The trials of the refused launch are already failed as interrupted: the same command
    runs them again. None for other errors."""
    if launcher != "SlurmLauncher":
        return None
    failed_job = getattr(sys.modules.get("submitit.core.utils"), "FailedJobError", ())
    no_slurm = isinstance(error, RuntimeError) and "srun" in str(error)
    if not no_slurm and not isinstance(error, failed_job):
        return None
    return ConfigError(
        "hydra/launcher", "slurm", "hydra/launcher=slurm on a machine that submits to SLURM (sbatch and srun "
        "on PATH), with hydra.launcher.partition, timeout_min, gpus_per_task, cpus_per_task, mem_gb and "
        "additional_parameters that the cluster accepts; or hydra/launcher=slurm_local to try it on this machine",
        f"The jobs could not be submitted: {' '.join(str(error).split())}")


class StudySweeper(OptunaSweeperImpl):
    """See the module docstring. `sampler`, `pruner`: Optuna objects, or the config nodes of
    `hydra/sweeper/sampler` and `hydra/sweeper/pruner` (built when the sweep starts, through the
    app's target whitelist); `custom_search_space`: the plugin's option, built the same way."""

    def __init__(self, sampler: Any, pruner: Any = None, custom_search_space: str | None = None,
                 heartbeat_interval: int | None = 30, grace_period: int | None = None,
                 max_failure_rate: float = 0.0, *, max_retries: int, batch_barrier: bool,
                 **plugin_kwargs: Any) -> None:
        # the plugin asserts 0 <= max_failure_rate <= 1: checked in sweep() instead, as a ConfigError
        super().__init__(sampler=sampler, custom_search_space=None, max_failure_rate=0.0, **plugin_kwargs)
        self.max_failure_rate = max_failure_rate
        self.pruner = pruner
        self.custom_search_space = custom_search_space
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.max_retries, self.batch_barrier = max_retries, batch_barrier
        self.poll_s: float | None = None  # waiting for other workers' trials: None -> from the heartbeat
        self.outage_s = STORAGE_OUTAGE_S  # a storage that stopped answering: how long to keep trying
        self._sweep_id: str | None = None  # this sweep loop, in the owner of its trials (_run_trials)
        self._stopping = False  # the loop is on its way out: storage errors are not waited out
        self._existing, self._next_number = 0, None  # see _reseed_for_worker
        self.directions = [str(d).lower() for d in self._get_directions()]  # checked in sweep()
        if self.n_jobs < 1:
            raise ConfigError("hydra.sweeper.n_jobs", self.n_jobs, "an integer >= 1")

    def _check_settings(self) -> None:
        """One-paragraph refusals of settings the plugin would assert on or Optuna would raise on late."""
        if not isinstance(self.n_trials, int) or isinstance(self.n_trials, bool) or self.n_trials <= 0:
            raise ConfigError("hydra.sweeper.n_trials", self.n_trials, "an integer >= 1",
                              "The sweep runs until this many trials have finished")
        try:
            rate = float(self.max_failure_rate)
        except (TypeError, ValueError):
            rate = math.nan
        if not 0.0 <= rate <= 1.0:
            raise ConfigError("hydra.sweeper.max_failure_rate", self.max_failure_rate,
                              "a number from 0 (stop at the first failed trial) to 1 (never stop)")
        self.directions = self._check_directions()
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"hydra.sweeper.{key}", value, "a whole number of seconds >= 1, or null",
                                  "null turns heartbeats off" if key == "heartbeat_interval"
                                  else "null means 2 x heartbeat_interval")

    def _check_loop_settings(self) -> None:
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            raise ConfigError("hydra.sweeper.max_retries", self.max_retries, "a whole number >= 0",
                              "How often a trial whose worker process died is run again (0: never)")
        if not isinstance(self.batch_barrier, bool):
            raise ConfigError("hydra.sweeper.batch_barrier", self.batch_barrier, "true or false")

    def _check_directions(self) -> list[str]:
        """`hydra.sweeper.direction`: minimize or maximize, or a list of them (several objectives),
        as many as `trainer.monitor` names metrics (when the config has a trainer: this app's runs),
        each agreeing with its metric's own direction or kept with a one-line warning."""
        directions = [str(d).lower() for d in self._get_directions()]
        accepted = "minimize or maximize, or a list of them for several objectives, e.g. [minimize, maximize]"
        shown = directions if len(directions) > 1 else directions[0] if directions else []
        if not directions or any(d not in ("minimize", "maximize") for d in directions):
            raise ConfigError("hydra.sweeper.direction", shown, accepted)
        trainer = self.config.get("trainer") if getattr(self, "config", None) is not None else None
        if trainer is None or trainer.get("monitor") is None:
            return directions
        names = monitored(trainer.monitor)
        if len(names) != len(directions):
            raise ConfigError(
                "hydra.sweeper.direction", shown,
                f"{len(names)} direction{'s' if len(names) > 1 else ''}, one per metric of trainer.monitor "
                f"({', '.join(names)}), e.g. hydra.sweeper.direction=[{','.join(['minimize'] * len(names))}]"
                if len(names) > 1 else "minimize or maximize (one objective: trainer.monitor names one metric)",
                f"A run returns one value per metric of trainer.monitor ({len(names)}), the study expects "
                f"{len(directions)}")
        for position, (name, direction) in enumerate(zip(names, directions)):
            key = f"hydra.sweeper.direction={direction}" if len(names) == 1 else \
                f"hydra.sweeper.direction[{position}]={direction}"
            mode = str(trainer.get("mode", "auto"))
            if position == 0 and mode in ("min", "max"):  # an explicit trainer.mode warns in each run
                if direction[:3] != mode:
                    log.warning("%s optimises the %s %s, though trainer.mode=%s keeps the %s as best (early "
                                "stopping, best.pt)", key, "lowest" if direction == "minimize" else "highest",
                                name, mode, "lowest" if mode == "min" else "highest")
                continue
            warning = direction_warning(key, name, direction[:3])
            if warning is not None:
                log.warning("%s (leave the direction out to follow the metric)", warning)
        return directions

    def _build(self, node: Any, key: str, **kwargs: Any) -> Any:
        """An object from a config node of the sweeper (anything else is returned as it is)."""
        if not isinstance(node, (DictConfig, dict)):
            return node
        from hydra.errors import InstantiationException

        trusted = [*(self.config.get("trusted_modules", None) or []), "hydra_plugins.hydra_optuna_sweeper"]
        try:
            return targets.instantiate(node, key, trusted, **kwargs)
        except (InstantiationException, ValueError, TypeError) as error:  # an unknown class, a wrong
            # setting, a removed sampler (its factory raises ValueError, which Hydra passes on as it is)
            cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
            group = key.replace("hydra.sweeper.", "hydra/sweeper/")
            raise ConfigError(
                key, node.get("_target_"),
                f"an option of {group} (e.g. {group}={'tpe' if key.endswith('sampler') else 'median'}) with the "
                "settings its class takes, or a `_target_` naming an Optuna class",
                f"It cannot be built: {' '.join(str(cause).split())}") from None

    def _build_plugin_objects(self) -> None:
        self.sampler = self._build(self.sampler, "hydra.sweeper.sampler")
        self.pruner = self._build(self.pruner, "hydra.sweeper.pruner") or optuna.pruners.NopPruner()
        if len(self.directions) > 1:  # Optuna cannot prune multi-objective studies
            if not isinstance(self.pruner, optuna.pruners.NopPruner):
                log.warning("Pruning is off for multi-objective studies (Optuna cannot prune them): %s is not "
                            "used; every trial runs to its end (early stopping still applies)",
                            type(self.pruner).__name__)
            else:
                log.info("Pruning is off for multi-objective studies (Optuna cannot prune them)")
            self.pruner = optuna.pruners.NopPruner()
        if self.custom_search_space:
            self.custom_search_space_extender = self._build(
                {"_target_": self.custom_search_space, "_partial_": True}, "hydra.sweeper.custom_search_space")

    # ------------------------------------------------------------------ the loop
    def sweep(self, arguments: list[str]) -> None:
        try:
            try:
                self._sweep(arguments)
            except Exception as error:  # noqa: BLE001 - a cluster that refused the jobs: one paragraph
                raise submission_refusal(error, type(self.launcher).__name__) or error
        except ConfigError as error:
            print(f"Error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:  # Ctrl-C: the running trials are settled (_abandon), the workers ended
            print("interrupted: the sweep stopped; the trials that were running are failed as interrupted, and the "
                  "same command runs them again with the same parameters and finishes the study", file=sys.stderr)
            sys.exit(130)

    def _sweep(self, arguments: list[str]) -> None:
        self._check_settings()
        self._check_loop_settings()
        self._build_plugin_objects()
        space, fixed, fixed_overrides, is_grid = self._search_space(arguments)
        self.packer = self._packer(space, is_grid)
        direction = ",".join(self.directions)
        launch_dir = self.config.hydra.runtime.cwd
        self.study_name = self.study_name or self.config.hydra.job.name
        self.url = (absolute_storage(str(self.storage), launch_dir) if self.storage
                    else default_storage(self.study_name, launch_dir))
        # trials at once on this machine's cores and GPUs (basic: one at a time; SLURM: their own nodes)
        parallel = self.n_jobs if type(self.launcher).__name__ not in ("BasicLauncher", "SlurmLauncher") else 1
        memory = is_memory(self.url)
        if memory and type(self.launcher).__name__ != "BasicLauncher":
            raise ConfigError(
                "hydra.sweeper.storage", self.url, "a file (sqlite:///path.db, journal:///path.log) or a "
                "database server URL, or hydra/launcher=basic with the in-memory storage",
                f"An in-memory study lives in the sweep process; the {type(self.launcher).__name__} runs "
                "jobs in other processes, which cannot reach it")
        self._heartbeat = None if memory else self.heartbeat_interval
        study = self._create_study(direction, memory)
        self._check_same_search(study, space, fixed, direction)
        self._retrying(lambda: self._recover(study), "the worker recovered trials")
        existing = len(study.get_trials(deepcopy=False))
        if existing and not is_grid:
            self._reseed_sampler(existing)
        # the number the next new trial gets if no other worker asks meanwhile (_reseed_for_worker)
        self._existing, self._next_number = existing, None if is_grid else existing
        StudyFile(
            storage=self.url, study_name=self.study_name, direction=direction,
            pruner=OmegaConf.to_container(self.config.hydra.sweeper.pruner, resolve=True),
            parallel_jobs=parallel, n_trials=self.n_trials, heartbeat_interval=self._heartbeat,
        ).write(self.sweep_dir)
        gpus = self._gpus_to_share(parallel)
        finished = sum(is_finished(t) for t in study.get_trials(deepcopy=False))
        log.info("Study %r in %s (%s, sampler %s, pruner %s): %d of %d trials finished%s",
                 self.study_name, display_url(self.url), direction, type(self.sampler).__name__,
                 type(self.pruner).__name__, finished, self.n_trials,
                 "; resuming" if finished else "")

        planned = max(0, self.n_trials - finished)
        runner = self._runner(parallel)
        try:
            self._run_trials(runner, space, fixed, fixed_overrides, gpus, planned)
        finally:
            runner.close()
        self._retrying(lambda: self._write_results(self._open()), "the worker wrote the results")

    def _run_trials(self, runner, space: dict, fixed: dict, fixed_overrides: list[str], gpus: int,
                    planned: int) -> None:
        """Keep `runner.slots` trials running until `n_trials` have finished: whenever a slot is
        free (a trial finished, was pruned or failed), tell its outcome and ask the next trial at
        once, so the sampler sees every result as soon as it exists. With `batch_barrier` a new
        batch starts only when the whole previous batch has ended (the plugin's loop)."""
        running: dict[Future, Any] = {}  # job -> its trial
        devices: dict[int, int | None] = {}  # trial number -> device.index of its job
        failed: list[JobReturn | BaseException] = []
        waiting_for, stopping, starting = None, False, None
        outage = self._outage()  # the storage not answering, while this loop looks at the study
        self._sweep_id, self._stopping = uuid.uuid4().hex[:12], False
        packer = getattr(self, "packer", None)  # packs of trials (app/search/packs.py), or None

        def held() -> list:  # trials this loop has asked and not told: running, starting, in packs
            return [t for t in [*list(running.values()), starting, *(packer.held() if packer else [])]
                    if t is not None]

        heartbeat = self._beat_for(lambda: [trial_id(t) for t in held()])
        try:
            while True:
                try:
                    study = self._open()
                    known = self._recover(study, {trial_id(t) for t in held()})
                    to_go = self.n_trials - sum(is_finished(t) for t in known)
                    if to_go <= 0 and not running:
                        break
                    # any worker's, ours too, and interrupted ones whose retry is being queued
                    busy = sum(t.state == TrialState.RUNNING for t in known) + len(awaiting_retry(known))
                    free = min(to_go - busy, runner.slots - len(running))
                    if packer is not None:  # a slot takes a pack; waiting trials count as busy
                        free = packer.free(to_go - busy, runner.slots - len(running))
                    if stopping or (self.batch_barrier and running):
                        free = 0
                    if free > 0:
                        waiting_for = None
                        if packer is not None:
                            launches = packer.next_packs(study, free, to_go - busy, space, fixed, fixed_overrides)
                        else:
                            trials = self._ask(study, free)
                            overrides = self._configure_trials(trials, space, fixed, fixed_overrides) if trials else []
                            launches = (([trial], job) for trial, job in zip(trials, overrides))
                        for members, job in launches:
                            trial = members[0]
                            gpu = pick_gpu([d for d in devices.values() if d is not None], gpus)
                            job = (*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial_id(trial)}",
                                   *([f"device.index={gpu}"] if gpu is not None else []))
                            devices[trial.number], starting = gpu, trial
                            future = runner.start(job, trial.number)
                            running[future] = trial
                            if packer is not None:
                                packer.started(future, members)
                            starting = None
                            self.job_idx = max(self.job_idx or 0, trial.number + 1)
                        outage.over()
                        continue
                    if not running:
                        if stopping:
                            break
                        if waiting_for != busy:  # the rest is running elsewhere: wait for it (or its heartbeat)
                            log.info("Waiting for %d trials of other workers (%d to finish)", busy, to_go)
                            waiting_for = busy
                        time.sleep(self._poll_interval())
                        outage.over()
                        continue
                    done, _ = futures_wait(running, timeout=self._poll_interval(), return_when=FIRST_COMPLETED)
                    told = self._open() if done else None
                    for future in done:
                        trial = running[future]
                        told_all = packer.tell(told, future) if packer is not None else None
                        if told_all is None:
                            told_all = [self._tell_job(told, trial, future)]
                        del running[future]  # (after telling: a job that stops the sweep is abandoned with the rest)
                        devices.pop(trial.number, None)
                        for outcome, failure in told_all:
                            if outcome is not None and outcome.state == TrialState.FAIL and failure is not None:
                                failed.append(failure)
                    if failed and len(failed) > self.max_failure_rate * planned and not stopping:
                        stopping = True
                        log.error("%d trials failed, more than max_failure_rate=%s of the %d this sweep set out "
                                  "to run: stopping%s", len(failed), self.max_failure_rate, planned,
                                  f" once the {len(running)} running trials end" if running else "")
                except Exception as error:  # noqa: BLE001 - a storage that stopped answering: try again
                    if not is_transient(error):
                        raise
                    outage.wait(error, "the worker looked at the study")
                    continue
                outage.over()
        except BaseException as error:
            self._stopping = True
            self._abandon(held(), error)
            if isinstance(error, JobExited):
                sys.exit(error.code)
            raise
        finally:
            if heartbeat is not None:
                heartbeat.stop()
        if stopping:
            for failure in failed:
                if isinstance(failure, JobReturn):
                    failure.return_value  # raises the job's own error, with its traceback
            raise RuntimeError(f"{len(failed)} trials failed; see their run dirs")

    def _runner(self, parallel: int):
        """Where jobs run: the sweep's own worker processes for the joblib launcher, a thread per
        job for any other launcher, this process for the basic launcher (pool.py)."""
        if parallel < 2:
            if type(self.launcher).__name__ == "BasicLauncher":  # composes each job here: once per structure
                from app.search.configs import ComposedOnceLoader

                context = getattr(self.launcher, "hydra_context", None)
                if context is not None and not isinstance(context.config_loader, ComposedOnceLoader):
                    self.launcher.hydra_context = dataclasses.replace(context, config_loader=ComposedOnceLoader(
                        context.config_loader, self.launcher.config, self.trial_configs()))
            return InlineRunner(self.launcher)
        if isinstance(self.launcher, _joblib_launcher_class()):
            limit = self.launcher.joblib.get("n_jobs")
            slots = min(parallel, limit) if isinstance(limit, int) and limit > 0 else parallel
            log.info("Running up to %d trials at once in worker processes of this sweep", slots)
            return WorkerPool(self.launcher, slots)
        return ThreadRunner(self.launcher, parallel)

    def trial_configs(self) -> Any:
        """The sweep's jobs' configs as its launcher composes them (`load_sweep_config`), each
        structure composed once (app/search/configs.py); one for the sweep, shared by the packs
        and the basic launcher's jobs."""
        if getattr(self, "_trial_configs", None) is None:
            from app.search.configs import TrialConfigs

            loader = self.hydra_context.config_loader
            loader = getattr(loader, "_loader", loader)  # (a ComposedOnceLoader: the one it wraps)
            self._trial_configs = TrialConfigs(lambda o: loader.load_sweep_config(self.config, o),
                                               groups=list(self.config.hydra.runtime.choices.keys()))
        return self._trial_configs

    def _tell_job(self, study, trial, future: Future) -> tuple[Outcome | None, JobReturn | BaseException | None]:
        """Tell the outcome of a job that ended: its JobReturn, or the death of the worker process
        that ran it (FAIL with the reason; retried with the same parameters up to max_retries
        times, and until then not counted as finished). Returns the outcome told (None if the trial
        had been settled elsewhere) and what to report if the sweep stops for too many failures."""
        error = future.exception()
        if error is None:
            ret = future.result()
            return self._tell(study, trial, ret), ret
        if isinstance(error, (KeyboardInterrupt, SystemExit, JobExited)):
            raise error
        if isinstance(error, WorkerDied):
            reason = error.reason
        else:  # the launcher itself raised for this job
            reason = f"its launcher failed: {type(error).__name__}: {error}"
        storage = storage_of(study)
        frozen = storage.get_trial(trial_id(trial))
        if frozen.state != TrialState.RUNNING:
            log.warning("Trial %d: %s, but another worker had failed it as stale meanwhile", trial.number, reason)
            return None, None
        deaths = self._deaths_before(study, frozen)
        retry = isinstance(error, WorkerDied) and deaths < self.max_retries
        outcome = Outcome(TrialState.FAIL, None, Status.FAILED, reason, interrupted=retry)
        run_dir = frozen.user_attrs.get("run_dir")
        if run_dir and Path(run_dir).is_dir():
            Summary(Status.FAILED, error=reason, interrupted=retry).write(run_dir)
        if isinstance(error, WorkerDied):
            storage.set_trial_user_attr(trial_id(trial), "worker_died", True)
        if not self._settle(study, trial, outcome, run_dir):
            log.warning("Trial %d: %s, but another worker had failed it as stale meanwhile", trial.number, reason)
            return None, None
        if retry:
            log.warning("Trial %d: FAIL (%s); it will be run again with the same parameters (retry %d of %d)",
                        trial.number, reason, deaths + 1, self.max_retries)
            return outcome, None
        log.warning("Trial %d: FAIL (%s)%s", trial.number, reason,
                    f"; not retried: hydra.sweeper.max_retries={self.max_retries} reached"
                    if isinstance(error, WorkerDied) else "")
        return outcome, error

    @staticmethod
    def _deaths_before(study, trial: optuna.trial.FrozenTrial) -> int:
        """How many earlier runs of these parameters (the chain of `retry_of`) died with their worker."""
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        deaths, current = 0, trial
        while current.user_attrs.get("retry_of") is not None:
            current = by_number.get(current.user_attrs["retry_of"])
            if current is None:
                break
            deaths += bool(current.user_attrs.get("worker_died"))
        return deaths

    # ------------------------------------------------------------------ several workers
    def _poll_interval(self) -> float:
        """How long to wait between looks at the storage while other workers' trials run."""
        if self.poll_s is not None:
            return self.poll_s
        return float(min(10, max(1, (self._heartbeat or 20) / 2)))

    def _retrying(self, operation: Callable[[], Any], what: str) -> Any:
        """`operation()`, tried again while the storage does not answer (bounded: _outage); not once
        the sweep is stopping."""
        return self._outage().retrying(operation, what, give_up=lambda: getattr(self, "_stopping", False))

    def _outage(self) -> StorageOutage:
        """A spell of the storage not answering, waited out for up to `outage_s` seconds; then the
        one-paragraph ConfigError: nothing is lost (finished trials are stored; running ones are
        settled on the way out, or recovered by the next worker). `_pause` is the wait between tries."""
        return StorageOutage(
            self.url, self.outage_s,
            "this worker stops. Nothing is lost: finished trials are stored; the trials that were running are "
            "run again, with the same parameters, by the same command once the storage answers again",
            log, self._pause)

    @staticmethod
    def _pause(seconds: float) -> None:
        time.sleep(seconds)  # between tries of a storage that did not answer, bounded by outage_s

    def _make_storage(self, memory: bool = False):
        if memory:
            return new_memory_storage(self.url)
        return open_storage(self.url, self._heartbeat, self.grace_period if self._heartbeat else None)

    def _storage(self):
        """The sweeper's storage for self.url (one object per sweep: an in-memory study is in it)."""
        if getattr(self, "_store", None) is None or getattr(self, "_store_url", None) != self.url:
            self._store, self._store_url = self._make_storage(), self.url
        return self._store

    def _create_study(self, direction: str, memory: bool = False):
        """Create the study (directions: `self.directions`), or load it when it exists. Several
        workers starting at once on a fresh storage race to create its tables and the study: the
        loser retries (bounded)."""
        import sqlalchemy.exc

        for attempt in range(CREATE_ATTEMPTS):
            try:
                prepare_storage(self.url)
                self._store, self._store_url = self._make_storage(memory), self.url
                return optuna.create_study(
                    study_name=self.study_name, storage=self._store, sampler=self.sampler,
                    pruner=self.pruner, directions=self.directions, load_if_exists=True,
                )
            except (sqlalchemy.exc.IntegrityError, optuna.exceptions.DuplicatedStudyError) as error:
                last = error  # another worker created it between our look and our insert
            except Exception as error:  # noqa: BLE001 - the user's URL or machine, or a race (retried)
                refusal = storage_refusal(self.url, error)
                if refusal is not None:
                    raise refusal from None
                if not isinstance(error, (sqlalchemy.exc.DBAPIError, sqlite3.Error)):
                    raise
                last = error  # another worker is creating the tables
            log.info("Study %r: another worker is creating it (%s); trying again", self.study_name,
                     type(last).__name__)
            time.sleep(0.1 * 2 ** attempt)  # 0.1, 0.2, 0.4, 0.8 s
        raise last

    def _ask(self, study, count: int) -> list:
        """Ask `count` trials and claim them; give back (FAIL, `surplus`) any that another worker's
        concurrent ask made one too many: taken trials (finished or RUNNING), in number order,
        beyond n_trials; and a retry of an interrupted trial that another worker queued too (two
        workers that found it at once): the lowest-numbered retry runs."""
        with warnings.catch_warnings():  # Optuna: heartbeats are "supposed to be used with optimize"
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trials = [study.ask() for _ in range(count)]
        storage = storage_of(study)
        for trial in trials:
            claim(study, trial, owner(self._sweep_id))
            if self._heartbeat:  # from now on its heartbeat tells whether it is alive, whatever
                storage.record_heartbeat(trial_id(trial))  # happens to this worker next (any host)
        self._reseed_for_worker(study, trials)
        known = study.get_trials(deepcopy=False)
        taken = sorted(t.number for t in known if is_finished(t) or t.state == TrialState.RUNNING)
        beyond = set(taken[self.n_trials:])
        first_retry: dict[int, int] = {}  # interrupted trial -> the lowest number retrying it (SQLite
        # lets two workers fail one stale trial at once, and both queue its retry; see _settle)
        for t in known:
            if t.user_attrs.get("retry_of") is not None and not t.user_attrs.get("surplus"):
                of = t.user_attrs["retry_of"]
                first_retry[of] = min(first_retry.get(of, t.number), t.number)
        kept = []
        for trial in trials:
            retry_of = trial.user_attrs.get("retry_of")
            if trial.number in beyond:
                reason = "not run: another worker asked the last trial"
            elif retry_of is not None and first_retry.get(retry_of, trial.number) != trial.number:
                reason = f"not run: trial {first_retry[retry_of]} retries trial {retry_of} already"
            else:
                kept.append(trial)
                continue
            storage.set_trial_user_attr(trial_id(trial), "surplus", True)
            storage.set_trial_user_attr(trial_id(trial), "reason", reason)
            self._finish(study, trial.number, Outcome(TrialState.FAIL, None, Status.FAILED))
            log.info("Trial %d %s", trial.number, reason)
        return kept

    def _beat_for(self, trial_ids: Callable[[], list[int]]) -> Heartbeat | None:
        """While trials run, this worker keeps their heartbeats (`trial_ids()`: the trials running
        now); the job running a trial beats too (trial.py), this covers its start and its end."""
        if not self._heartbeat:
            return None
        storage = self._make_storage()  # its own connection

        def beat() -> None:
            for ident in trial_ids():
                storage.record_heartbeat(ident)

        return Heartbeat(beat, self._heartbeat).start()

    # ------------------------------------------------------------------ pieces of the loop
    def _search_space(self, arguments: list[str]) -> tuple[dict, dict, list[str], bool]:
        """The plugin's parsing of `hydra.sweeper.params` and command-line sweeps: the search
        space, the fixed parameters, the fixed overrides (deletions, `~key`), grid or not."""
        self._process_searchspace_config()
        params_conf = self._parse_sweeper_params_config() + list(arguments)
        try:
            space, fixed, fixed_overrides = create_params_from_overrides(params_conf)
        except ValueError:
            for override in params_conf:  # which one: the plugin's error does not say
                try:
                    create_params_from_overrides([override])
                except ValueError as error:
                    name, _, value = str(override).partition("=")
                    raise ConfigError(
                        f"hydra.sweeper.params.{name.lstrip('+~')}", value,
                        "interval(low, high) with low <= high (low > 0 with tag(log, ...)), "
                        "range(start, stop[, step]) with at least one value, or choice(a, b, ...)",
                        str(error)) from None
            raise
        for name in fixed:  # a plain value on the command line takes a parameter out of the search
            space.pop(name, None)
        is_grid = (isinstance(self.sampler, functools.partial)
                   and self.sampler.func == optuna.samplers.GridSampler)
        if is_grid:  # the grid spans the parameters still searched (the plugin's spans fixed ones too)
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info("Grid sampler: n_trials = %d (the grid's size, at most)", self.n_trials)
        return space, fixed, fixed_overrides, is_grid

    def _packer(self, space: dict, is_grid: bool) -> "packs.Packer | None":
        """Packs of trials (app/search/packs.py) for this sweep, or None (one trial per job; a
        one-line notice says why when `pack` asked for packs). A packed TPE search is rebuilt
        with constant_liar=True (several trials are asked before their results are known)."""
        self._sampler_options = {}
        size, reason = packs.sweep_pack_size(self.config, space, self.n_trials)
        if reason is not None:
            log.info("pack: one trial per job: %s", reason)
        if size < 2:
            return None
        if not is_grid:
            self._sampler_options = packs.sampler_options(self.config)
            if self._sampler_options:
                self.sampler = self._build(self.config.hydra.sweeper.sampler, "hydra.sweeper.sampler",
                                           **getattr(self, "_sampler_options", {}))
        log.info("pack: up to %d trials of one model shape train together as one job%s", size,
                 f" (sampler {type(self.sampler).__name__} with constant_liar=True)" if self._sampler_options else "")
        return packs.Packer(self, size)

    def _open(self):
        """The study, opened once per storage and kept: Optuna's study object caches the trials that
        have finished (they never change), so each look at the study reads only the trials that
        are new or still running, and asking and telling a trial cost less (the loop looks at the
        study after every trial)."""
        storage = self._storage()
        if getattr(self, "_study", None) is None or self._study_storage is not storage:
            self._study = load_study(self.url, self.study_name, pruner=self.pruner, sampler=self.sampler,
                                     storage=storage)
            self._study_storage = storage
        self._study.sampler, self._study.pruner = self.sampler, self.pruner
        return self._study

    def _monitor(self) -> list[str] | None:
        """The metrics the runs return (trainer.monitor, from the command or a config file)."""
        trainer = self.config.get("trainer")
        return monitored(trainer.monitor) if trainer is not None and trainer.get("monitor") is not None else None

    def _check_same_search(self, study, space: dict, fixed: dict, direction: str) -> None:
        """Refuse to resume a study that another command started: the trials would not compare.
        Compared: the command's overrides, the search space, the fixed parameters, the monitored
        metrics (wherever they were set) and the study's directions."""
        search = {
            # `pack` changes how trials are trained together, not what they compute: not compared
            "overrides": sorted(str(o) for o in self.config.hydra.overrides.task
                                if str(o).split("=")[0].lstrip("+~") != "pack"),
            "search_space": {name: repr(d) for name, d in sorted(space.items())},
            "fixed": {name: str(v) for name, v in sorted(fixed.items())},
            "monitor": self._monitor(),
        }
        stored = study.user_attrs.get(SEARCH_ATTR)
        stored_directions = [d.name.lower() for d in study.directions]
        if stored is None and not study.get_trials(deepcopy=False):
            study.set_user_attr(SEARCH_ATTR, search)
            return
        differences = []
        if stored_directions != self.directions:
            differences.append(f"direction {', '.join(stored_directions)} (now {', '.join(self.directions)})")
        if stored is not None:
            for key in search:  # keys a study of an earlier version did not record are not compared
                if key in stored and stored[key] != search[key]:
                    differences.append(f"{key} {stored[key]} (now {search[key]})")
        if differences:
            raise ConfigError(
                "hydra.sweeper.study_name", self.study_name,
                "the command that started the study (to resume it); or, to start afresh, a new name with "
                "hydra.sweeper.study_name=<name>, or a fresh storage with hydra.sweeper.storage=<url>",
                f"The study in {display_url(self.url)} was started by a different search: "
                + "; ".join(differences) + ". Resuming it would mix trials that do not compare",
            )

    def _recover(self, study, mine: set[int] | None = None) -> list[optuna.trial.FrozenTrial]:
        """Settle RUNNING trials that nobody will tell and queue retries of interrupted ones: trials
        whose heartbeat is older than the grace period (any worker, any host), trials of a sweep
        process on this host that is gone (the rule that also works with heartbeats off), and
        trials this sweep loop claimed but does not run (`mine`: the storage ids of the trials it
        runs; an error between asking a trial and starting its job left it behind). Returns the
        study's trials as they are afterwards (one read when there was nothing to settle)."""
        stale = set(stale_trial_ids(study))
        trials, changed = study.get_trials(deepcopy=False), False
        for trial in [t for t in trials if t.state == TrialState.RUNNING]:
            owner_attr = trial.system_attrs.get(OWNER_ATTR)
            orphan = (mine is not None and owner_attr is not None and self._sweep_id is not None
                      and owner_attr.get("sweep") == self._sweep_id and owner_attr.get("pid") == os.getpid()
                      and trial_id(trial) not in mine)
            if trial_id(trial) not in stale and not orphan and not abandoned(owner_attr, age_s(trial)):
                continue
            run_dir = trial.user_attrs.get("run_dir")
            summary = Summary.read(run_dir)
            if summary is not None:
                outcome = outcome_from_summary(summary, objectives=len(self.directions))
                line = (f"Trial {trial.number} had finished ({outcome.status}) when its sweep stopped: "
                        f"told {outcome.state.name}")
            else:
                who = f"pid {owner_attr.get('pid')} on {owner_attr.get('host')}" if owner_attr else "unknown"
                reason = f"interrupted: its sweep process ({who}) ended while the trial ran"
                if trial_id(trial) in stale:
                    reason = (f"interrupted: no heartbeat for more than the grace period (sweep process: "
                              f"{who})")
                elif orphan:
                    reason = "interrupted: its job was not started (the study's storage failed meanwhile)"
                outcome = Outcome(TrialState.FAIL, None, Status.FAILED, reason, interrupted=True)
                if run_dir and Path(run_dir).is_dir():
                    Summary(Status.FAILED, error=reason, interrupted=True).write(run_dir)
                line = f"Trial {trial.number}: {reason}"
            changed = True
            if self._settle(study, trial, outcome, run_dir):
                (log.warning if outcome.interrupted else log.info)(line)
            else:
                log.info("Trial %d was settled by another worker meanwhile", trial.number)
        # The worker that failed an interrupted trial queues its retry (_settle); one that died in
        # between left none: queued here (at a sweep's start at once, later after RETRY_GRACE_S).
        # Two workers that do so at once both queue one: _ask runs the lowest-numbered.
        if changed:
            trials = study.get_trials(deepcopy=False)
        for trial in awaiting_retry(trials):
            if mine is None or (trial.datetime_complete is not None and (
                    datetime.datetime.now() - trial.datetime_complete).total_seconds() > RETRY_GRACE_S):
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                log.info("Trial %d (interrupted) queued again with the same parameters", trial.number)
                changed = True
        return study.get_trials(deepcopy=False) if changed else trials

    def _settle(self, study, trial, outcome: Outcome, run_dir: Any) -> bool:
        """Record `outcome` on the RUNNING `trial` (a Trial or FrozenTrial) and finish it; for an
        interrupted trial, queue a run of its parameters (user attribute `retry_of`). Whether this
        worker finished it: when several workers settle one trial at once (each saw its heartbeat
        go stale), the storage lets one of them move it out of RUNNING (PostgreSQL locks the row, a
        journal file orders the writes) and only that one queues the retry, so a trial is retried
        once. (SQLite cannot refuse the second: the retries that two workers queue are reduced to
        one when asked, in _ask.) A worker killed between the two writes leaves the trial failed
        without a retry: the study still ends with `n_trials` trials, the last one sampled afresh."""
        storage = storage_of(study)
        try:
            self._record(storage, trial_id(trial), outcome, run_dir)
            self._finish(study, trial.number, outcome)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        except ValueError as error:  # Study.tell: "Cannot tell a FAIL trial." (it was finished before our look)
            if "Cannot tell" not in str(error):
                raise
            return False
        params = trial.params
        if outcome.interrupted and params:
            self._retrying(lambda: study.enqueue_trial(params, user_attrs={"retry_of": trial.number}),
                           f"the worker queued the retry of trial {trial.number}")
            log.info("Trial %d (interrupted) queued again with the same parameters", trial.number)
        return True

    def _reseed_sampler(self, existing_trials: int, worker: int = 0) -> bool:
        """A seeded sampler made afresh would repeat the first invocation's samples: offset its
        seed by the number of trials the study already has (deterministic for a given study).
        `worker` > 0: a worker that started beside others (_reseed_for_worker) gets a seed of its
        own, derived from all three numbers. Whether the sampler was made again."""
        node = self.config.hydra.sweeper.sampler
        if node is None or node.get("seed") is None:
            return False
        seed = int(node.seed) + existing_trials
        if worker:
            import numpy as np

            seed = int(np.random.SeedSequence([int(node.seed), existing_trials, worker]).generate_state(1)[0])
        self.sampler = self._build(node, "hydra.sweeper.sampler", seed=seed, **getattr(self, "_sampler_options", {}))
        return True

    def _reseed_for_worker(self, study, trials: list) -> None:
        """Workers started together on one study with one `sampler.seed` would each seed their
        sampler alike (seed + the trials the study had when they started) and sample the same
        parameters. A worker's first new trial (not a queued one, whose parameters are fixed)
        tells it apart: a worker on its own gets the number the study's next trial had when it
        started, and keeps its sampler (the same seed gives the same trials as ever); a worker
        whose first trial came after other workers' new trials reseeds its sampler with a seed
        derived from the seed, that count and the distance (_reseed_sampler)."""
        if self._next_number is None:
            return
        storage = storage_of(study)
        for trial in trials:
            if "fixed_params" in storage.get_trial_system_attrs(trial_id(trial)):
                continue
            worker, self._next_number = trial.number - self._next_number, None
            if worker > 0 and self._reseed_sampler(self._existing, worker):
                study.sampler = self.sampler  # the trial samples through its study's sampler
                log.info("Trial %d: %d trials of other workers came first: this worker's sampler "
                         "seed is derived from hydra.sweeper.sampler.seed and that count", trial.number, worker)
            return

    def _gpus_to_share(self, parallel: int) -> int:
        """GPUs to spread concurrent trials over: 0 unless trials run in parallel processes, the
        device may be CUDA and the command did not pin `device.index`."""
        if parallel < 2:
            return 0
        device = self.config.get("device") or {}
        pinned = any(str(o).split("=")[0].lstrip("+~") == "device.index" for o in self.config.hydra.overrides.task)
        if device.get("type", "auto") not in ("auto", "cuda") or pinned:
            return 0
        import torch

        return torch.cuda.device_count()

    @staticmethod
    def _record(storage, trial_id: int, outcome: Outcome, run_dir: Any) -> None:
        attrs = {"status": outcome.status, "reason": outcome.reason[:500], "epochs_run": outcome.epochs_run}
        if run_dir is not None:
            attrs["run_dir"] = str(run_dir)
        if outcome.interrupted:
            attrs["interrupted"] = True
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)

    @staticmethod
    def _finish(study, number: int, outcome: Outcome) -> None:
        try:
            study.tell(number, outcome.values if outcome.state == TrialState.COMPLETE else None,
                       state=outcome.state)
        except RuntimeError as error:  # the grid sampler stops the study when the grid is done
            if "Study.stop" not in str(error):
                raise

    def _tell(self, study, trial, ret: JobReturn) -> Outcome | None:
        outcome = job_outcome(ret, len(self.directions))
        if storage_of(study).get_trial(trial_id(trial)).state != TrialState.RUNNING \
                or not self._settle(study, trial, outcome, run_dir_of(ret)):
            log.warning("Trial %d: %s, but another worker had failed it as stale (no heartbeat): "
                        "its retry counts instead", trial.number, outcome.state.name)
            return None
        line = f"Trial {trial.number}: {outcome.state.name}"
        if outcome.values is not None:
            line += (f" value={outcome.value:.6g}" if len(outcome.values) == 1 else
                     " values=" + ", ".join(f"{v:.6g}" for v in outcome.values))
        if outcome.reason:
            line += f" ({outcome.reason})"
        (log.warning if outcome.state == TrialState.FAIL else log.info)(line)
        return outcome

    def _abandon(self, trials: list, error: BaseException) -> None:
        """The launch was cut short (Ctrl-C, or a job that exited the process): settle its trials.
        A job that wrote a failed summary before exiting is a FAIL of its own; the rest were
        interrupted: their retries are queued, for the next run of the command (or another worker).
        A storage that does not answer leaves them RUNNING: the next worker to look recovers them
        (their sweep process is gone, or their heartbeat stops)."""
        try:
            study = self._open()
            for trial in trials:
                frozen = storage_of(study).get_trial(trial_id(trial))
                if frozen.state != TrialState.RUNNING:
                    continue
                run_dir = frozen.user_attrs.get("run_dir")
                summary = Summary.read(run_dir)
                if isinstance(error, (SystemExit, JobExited)) and summary is not None \
                        and summary.status == Status.FAILED:
                    outcome = outcome_from_summary(summary, objectives=len(self.directions))
                else:
                    outcome = Outcome(TrialState.FAIL, None, Status.FAILED,
                                      f"interrupted: the sweep stopped ({type(error).__name__})", interrupted=True)
                self._settle(study, frozen, outcome, run_dir)
        except Exception as storage_error:  # noqa: BLE001 - the sweep is stopping anyway
            if not is_transient(storage_error):
                raise
            log.warning("The study's storage did not answer while this worker stopped (%s): its %d running "
                        "trials stay RUNNING until a worker recovers them", type(storage_error).__name__, len(trials))

    def _write_results(self, study) -> None:
        """`optimization_results.yaml` in the sweep dir, as the plugin writes it: the best
        parameters and value, or for several objectives the Pareto front (`solutions`: the
        parameters and values of each trial no other trial beats in every objective)."""
        if len(self.directions) > 1:
            front = study.best_trials
            results = {"name": "optuna", "solutions": [{"params": t.params, "values": t.values} for t in front]}
            log.info("Pareto front of study %r: %d trials", self.study_name, len(front))
            for t in front:
                log.info("    trial %d: values %s, parameters %s", t.number, t.values, t.params)
        else:
            try:
                best = study.best_trial
            except ValueError:
                log.warning("No trial of study %r completed: no best parameters", self.study_name)
                results = {"name": "optuna", "best_params": {}, "best_value": None}
            else:
                results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
                log.info("Best trial %d: value %s, parameters %s", best.number, best.value, best.params)
        OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir) / "optimization_results.yaml")
