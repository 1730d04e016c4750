"""`StudySweeper`: hydra-optuna-sweeper's sweep loop, made to know pruning, failures and resuming.

The plugin's loop asks Optuna for a batch of `n_jobs` trials, launches them as Hydra jobs and
tells Optuna each job's return value (COMPLETE) or exception (FAIL). This subclass keeps the
plugin's search-space parsing, trial configuration and launcher, and changes the loop:

- The study lives in `hydra.sweeper.storage`, by default `outputs/studies/<study name>.db`, and
  is resumed: the loop runs until `n_trials` trials are *finished* in total (COMPLETE, PRUNED, or
  FAIL from a run that raised), whichever invocation ran them. Resuming refuses a study that a
  different command started (other overrides, search space or direction).
- Each job gets its trial's id (`hydra.job.env_set.APP_OPTUNA_TRIAL_ID`) and reports to it
  every epoch; its run dir is named after the trial number.
- A job's outcome is read from its run dir's summary.json: completed/early_stopped -> COMPLETE
  (value: the job's return value), pruned or diverged -> PRUNED, failed or raised -> FAIL, with
  `status`, `reason`, `epochs_run`, `run_dir` as user attributes of the trial.
  The sweep stops once more than `max_failure_rate` x (the trials this invocation set out to
  run) have failed (the plugin checks each batch alone, so with n_jobs=1 any rate below 1 stopped
  at the first failure).
- Interrupted trials (Ctrl-C, or a sweep process that died: found RUNNING at the next start,
  owned by a process that is gone) are marked FAIL with user attribute `interrupted`, do not
  count as finished, and are retried with the same parameters. A trial whose job had finished
  when the sweeper died is told from its summary.json instead.
- With a parallel launcher and several GPUs, trials of a batch get `device.index` round-robin.
"""
from __future__ import annotations

import datetime
import functools
import logging
import math
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import optuna
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from app import targets
from app.errors import ConfigError
from app.run.record import Status, Summary
from app.search.internals import stale_trial_ids
from app.search.internals import storage as storage_of
from app.search.internals import trial_id
from app.search.study import (
    TRIAL_ENV,
    StudyFile,
    absolute_storage,
    default_storage,
    display_url,
    is_memory,
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
CREATE_ATTEMPTS = 5  # creating a study on a fresh storage: tries (processes racing to make tables)


@dataclass
class Outcome:
    """How a finished job is told to Optuna."""

    state: TrialState
    value: float | None
    status: str
    reason: str = ""
    epochs_run: int | None = None
    interrupted: bool = False


def outcome_from_summary(summary: Summary | None, return_value: Any = None) -> Outcome:
    """The outcome of a job from its run dir's summary (None: not written)."""
    if summary is None:  # a task function that is not this app's: the plugin's rule
        try:
            return Outcome(TrialState.COMPLETE, float(return_value), Status.COMPLETED)
        except (TypeError, ValueError):
            return Outcome(TrialState.FAIL, None, Status.FAILED, f"return value {return_value!r} is not a float")
    status, reason = summary.status, summary.reason
    interrupted = summary.interrupted or (
        status == Status.FAILED and str(summary.error or "").startswith("KeyboardInterrupt"))
    state, value = trial_state(status), None
    if state == TrialState.COMPLETE:
        objective = summary.objective if summary.objective is not None else math.nan
        value = float(return_value if return_value is not None else objective)
        if not math.isfinite(value):
            state, reason = TrialState.FAIL, f"non-finite objective {value} for status {status}"
    return Outcome(state, value, status, reason, summary.epochs_run, interrupted)


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


def job_outcome(ret: JobReturn) -> Outcome:
    summary = Summary.read(run_dir_of(ret))
    if ret.status == JobStatus.FAILED:
        error = job_error(ret)
        epochs = summary.epochs_run if summary is not None else None
        return Outcome(TrialState.FAIL, None, Status.FAILED, f"{type(error).__name__}: {error}", epochs,
                       isinstance(error, KeyboardInterrupt))
    return outcome_from_summary(summary, ret.return_value)


# ------------------------------------------------------------------ owners of running trials
def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _STARTED}


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


def age_s(trial: optuna.trial.FrozenTrial) -> float:
    if trial.datetime_start is None:
        return math.inf
    return (datetime.datetime.now() - trial.datetime_start).total_seconds()


def gpu_assignments(batch_size: int, gpu_count: int) -> list[int | None]:
    """The CUDA device index for each trial of a batch that runs at once: round-robin over
    the GPUs, so K <= gpu_count concurrent trials get K distinct GPUs; None with < 2 GPUs."""
    if gpu_count < 2:
        return [None] * batch_size
    return [position % gpu_count for position in range(batch_size)]


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
                 max_failure_rate: float = 0.0, **plugin_kwargs: Any) -> None:
        # the plugin asserts 0 <= max_failure_rate <= 1: checked in sweep() instead, as a ConfigError
        super().__init__(sampler=sampler, custom_search_space=None, max_failure_rate=0.0, **plugin_kwargs)
        self.max_failure_rate = max_failure_rate
        self.pruner = pruner
        self.custom_search_space = custom_search_space
        self.heartbeat_interval, self.grace_period = heartbeat_interval, grace_period
        self.poll_s: float | None = None  # waiting for other workers' trials: None -> from the heartbeat
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
        directions = self._get_directions()
        if len(directions) != 1:
            raise ConfigError("hydra.sweeper.direction", list(directions), "minimize or maximize",
                              "A run returns one objective (its monitored metric)")
        if str(directions[0]).lower() not in ("minimize", "maximize"):
            raise ConfigError("hydra.sweeper.direction", directions[0], "minimize or maximize")
        for key in ("heartbeat_interval", "grace_period"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ConfigError(f"hydra.sweeper.{key}", value, "a whole number of seconds >= 1, or null",
                                  "null turns heartbeats off" if key == "heartbeat_interval"
                                  else "null means 2 x heartbeat_interval")

    def _build(self, node: Any, key: str, **kwargs: Any) -> Any:
        """An object from a config node of the sweeper (anything else is returned as it is)."""
        if not isinstance(node, (DictConfig, dict)):
            return node
        trusted = [*(self.config.get("trusted_modules", None) or []), "hydra_plugins.hydra_optuna_sweeper"]
        return targets.instantiate(node, key, trusted, **kwargs)

    def _build_plugin_objects(self) -> None:
        self.sampler = self._build(self.sampler, "hydra.sweeper.sampler")
        self.pruner = self._build(self.pruner, "hydra.sweeper.pruner") or optuna.pruners.NopPruner()
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

    def _sweep(self, arguments: list[str]) -> None:
        self._check_settings()
        self._build_plugin_objects()
        space, fixed, fixed_overrides, is_grid = self._search_space(arguments)
        direction = str(self._get_directions()[0]).lower()
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
        self._recover(study)
        existing = len(study.get_trials(deepcopy=False))
        if existing and not is_grid:
            self._reseed_sampler(existing)
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
        failed: list[JobReturn] = []
        waiting_for: int | None = None
        while True:
            study = self._open()
            self._recover(study)
            known = study.get_trials(deepcopy=False)
            to_go = self.n_trials - sum(is_finished(t) for t in known)
            if to_go <= 0:
                break
            running = sum(t.state == TrialState.RUNNING for t in known)  # other workers' (ours are told)
            free = to_go - running
            if free <= 0:  # the rest is running elsewhere: wait for it to finish (or go stale)
                if waiting_for != running:
                    log.info("Waiting for %d trials of other workers (%d to finish)", running, to_go)
                    waiting_for = running
                time.sleep(self._poll_interval())
                continue
            waiting_for = None
            trials = self._ask(study, min(free, self.n_jobs))
            if not trials:
                continue
            overrides = self._configure_trials(trials, space, fixed, fixed_overrides)
            jobs = [
                (*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial_id(trial)}",
                 *([f"device.index={gpu}"] if gpu is not None else []))
                for trial, job, gpu in zip(trials, overrides, gpu_assignments(len(trials), gpus))
            ]
            heartbeat = self._beat_for(study, trials)
            try:
                returns = self._launch(trials, jobs)
            except BaseException as error:
                self._abandon(trials, error)
                raise
            finally:
                if heartbeat is not None:
                    heartbeat.stop()
            told = self._open()
            for trial, ret in zip(trials, returns):
                outcome = self._tell(told, trial, ret)
                if outcome is not None and outcome.state == TrialState.FAIL:
                    failed.append(ret)
            if failed and len(failed) > self.max_failure_rate * planned:
                log.error("%d trials failed, more than max_failure_rate=%s of the %d this sweep set out "
                          "to run: stopping", len(failed), self.max_failure_rate, planned)
                for ret in failed:
                    ret.return_value  # raises the job's own error, with its traceback
                raise RuntimeError(f"{len(failed)} trials failed; see their run dirs")
        self._write_results(self._open())

    # ------------------------------------------------------------------ several workers
    def _poll_interval(self) -> float:
        """How long to wait between looks at the storage while other workers' trials run."""
        if self.poll_s is not None:
            return self.poll_s
        return float(min(10, max(1, (self._heartbeat or 20) / 2)))

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
        """Create the study, or load it when it exists. Several workers starting at once on a
        fresh storage race to create its tables and the study: the loser retries (bounded)."""
        import sqlalchemy.exc

        for attempt in range(CREATE_ATTEMPTS):
            try:
                prepare_storage(self.url)
                self._store, self._store_url = self._make_storage(memory), self.url
                return optuna.create_study(
                    study_name=self.study_name, storage=self._store, sampler=self.sampler,
                    pruner=self.pruner, direction=direction, load_if_exists=True,
                )
            except (sqlalchemy.exc.IntegrityError, optuna.exceptions.DuplicatedStudyError) as error:
                last = error  # another worker created it between our look and our insert
            except Exception as error:  # noqa: BLE001 - the user's URL or machine, or a race (retried)
                refusal = storage_refusal(self.url, error)
                if refusal is not None:
                    raise refusal from None
                if not isinstance(error, sqlalchemy.exc.DBAPIError):
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
        for trial in trials:
            claim(study, trial)
        known = study.get_trials(deepcopy=False)
        taken = sorted(t.number for t in known if is_finished(t) or t.state == TrialState.RUNNING)
        beyond = set(taken[self.n_trials:])
        first_retry: dict[int, int] = {}  # interrupted trial -> the lowest number retrying it
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
            storage = storage_of(study)
            storage.set_trial_user_attr(trial_id(trial), "surplus", True)
            storage.set_trial_user_attr(trial_id(trial), "reason", reason)
            self._finish(study, trial.number, Outcome(TrialState.FAIL, None, Status.FAILED))
            log.info("Trial %d %s", trial.number, reason)
        return kept

    def _beat_for(self, study, trials: list) -> Heartbeat | None:
        """While a batch is launched, this worker keeps its trials' heartbeats (a trial waiting for
        its turn, or finished and not yet told); the job running a trial beats too (trial.py)."""
        if not self._heartbeat:
            return None
        storage, ids = self._make_storage(), [trial_id(t) for t in trials]  # its own connection
        return Heartbeat(lambda: [storage.record_heartbeat(i) for i in ids], self._heartbeat).start()

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
        is_grid = (isinstance(self.sampler, functools.partial)
                   and self.sampler.func == optuna.samplers.GridSampler)
        if is_grid:
            grid = {name: self._to_grid_sampler_choices(d) for name, d in space.items()}
            self.sampler = self.sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            log.info("Grid sampler: n_trials = %d (the grid's size, at most)", self.n_trials)
        for name in fixed:
            space.pop(name, None)
        return space, fixed, fixed_overrides, is_grid

    def _open(self):
        return load_study(self.url, self.study_name, pruner=self.pruner, sampler=self.sampler,
                          storage=self._storage())

    def _check_same_search(self, study, space: dict, fixed: dict, direction: str) -> None:
        """Refuse to resume a study that another command started: the trials would not compare."""
        search = {
            "overrides": sorted(str(o) for o in self.config.hydra.overrides.task),
            "search_space": {name: repr(d) for name, d in sorted(space.items())},
            "fixed": {name: str(v) for name, v in sorted(fixed.items())},
        }
        stored = study.user_attrs.get(SEARCH_ATTR)
        stored_direction = study.direction.name.lower()
        if stored is None and not study.get_trials(deepcopy=False):
            study.set_user_attr(SEARCH_ATTR, search)
            return
        differences = [f"direction {stored_direction} (now {direction})"] if stored_direction != direction else []
        if stored is not None:
            for key in search:
                if stored.get(key) != search[key]:
                    differences.append(f"{key} {stored.get(key)} (now {search[key]})")
        if differences:
            raise ConfigError(
                "hydra.sweeper.study_name", self.study_name,
                "the command that started the study (to resume it), or a new name with "
                "hydra.sweeper.study_name=<name> (or another hydra.sweeper.storage)",
                f"The study in {display_url(self.url)} was started by a different search: "
                + "; ".join(differences) + ". Resuming it would mix trials that do not compare",
            )

    def _recover(self, study) -> None:
        """Settle RUNNING trials that nobody will tell and queue retries of interrupted ones: trials
        whose heartbeat is older than the grace period (any worker, any host), and trials of a sweep
        process on this host that is gone (the rule that also works with heartbeats off)."""
        storage = storage_of(study)
        stale = set(stale_trial_ids(study))
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner_attr = trial.system_attrs.get(OWNER_ATTR)
            if trial_id(trial) not in stale and not abandoned(owner_attr, age_s(trial)):
                continue
            run_dir = trial.user_attrs.get("run_dir")
            summary = Summary.read(run_dir)
            if summary is not None:
                outcome = outcome_from_summary(summary)
                log.info("Trial %d had finished (%s) when its sweep stopped: told %s",
                         trial.number, outcome.status, outcome.state.name)
            else:
                who = f"pid {owner_attr.get('pid')} on {owner_attr.get('host')}" if owner_attr else "unknown"
                reason = f"interrupted: its sweep process ({who}) ended while the trial ran"
                if trial_id(trial) in stale:
                    reason = (f"interrupted: no heartbeat for more than the grace period (sweep process: "
                              f"{who})")
                outcome = Outcome(TrialState.FAIL, None, Status.FAILED, reason, interrupted=True)
                if run_dir and Path(run_dir).is_dir():
                    Summary(Status.FAILED, error=reason, interrupted=True).write(run_dir)
                log.warning("Trial %d: %s; it will be run again", trial.number, reason)
            try:
                self._record(storage, trial_id(trial), outcome, run_dir)
                self._finish(study, trial.number, outcome)
            except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError) as error:
                log.info("Trial %d was settled by another worker meanwhile (%s)", trial.number, error)
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials if not t.user_attrs.get("surplus")}
        for trial in trials:
            if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") \
                    and trial.number not in retried and trial.params:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                log.info("Trial %d (interrupted) queued again with the same parameters", trial.number)

    def _reseed_sampler(self, existing_trials: int) -> None:
        """A seeded sampler made afresh would repeat the first invocation's samples: offset its
        seed by the number of trials the study already has (deterministic for a given study)."""
        node = self.config.hydra.sweeper.sampler
        if node is not None and node.get("seed") is not None:
            self.sampler = self._build(node, "hydra.sweeper.sampler", seed=int(node.seed) + existing_trials)

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

    def _launch(self, trials: list, jobs: list[Sequence[str]]) -> list[JobReturn]:
        """Run directories are named after trial numbers: launch consecutive numbers together
        (the launcher numbers jobs from initial_job_idx), others one at a time."""
        numbers = [t.number for t in trials]
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            returns = list(self.launcher.launch(jobs, initial_job_idx=numbers[0]))
        else:
            returns = [r for n, job in zip(numbers, jobs) for r in self.launcher.launch([job], initial_job_idx=n)]
        self.job_idx = numbers[-1] + 1
        return returns

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
            study.tell(number, outcome.value if outcome.state == TrialState.COMPLETE else None,
                       state=outcome.state)
        except RuntimeError as error:  # the grid sampler stops the study when the grid is done
            if "Study.stop" not in str(error):
                raise

    def _tell(self, study, trial, ret: JobReturn) -> Outcome | None:
        outcome = job_outcome(ret)
        if storage_of(study).get_trial(trial_id(trial)).state != TrialState.RUNNING:
            log.warning("Trial %d: %s, but another worker had failed it as stale (no heartbeat): "
                        "its retry counts instead", trial.number, outcome.state.name)
            return None
        self._record(storage_of(study), trial_id(trial), outcome, run_dir_of(ret))
        self._finish(study, trial.number, outcome)
        line = f"Trial {trial.number}: {outcome.state.name}"
        if outcome.value is not None:
            line += f" value={outcome.value:.6g}"
        if outcome.reason:
            line += f" ({outcome.reason})"
        (log.warning if outcome.state == TrialState.FAIL else log.info)(line)
        return outcome

    def _abandon(self, trials: list, error: BaseException) -> None:
        """The launch was cut short (Ctrl-C, or a job that exited the process): settle its trials.
        A job that wrote a failed summary before exiting is a FAIL of its own; the rest were
        interrupted and will be retried by the next run of the command."""
        study = self._open()
        for trial in trials:
            frozen = storage_of(study).get_trial(trial_id(trial))
            if frozen.state != TrialState.RUNNING:
                continue
            run_dir = frozen.user_attrs.get("run_dir")
            summary = Summary.read(run_dir)
            if isinstance(error, SystemExit) and summary is not None and summary.status == Status.FAILED:
                outcome = outcome_from_summary(summary)
            else:
                outcome = Outcome(TrialState.FAIL, None, Status.FAILED,
                                  f"interrupted: the sweep stopped ({type(error).__name__})", interrupted=True)
            self._record(storage_of(study), trial_id(trial), outcome, run_dir)
            self._finish(study, trial.number, outcome)

    def _write_results(self, study) -> None:
        """`optimization_results.yaml` in the sweep dir, as the plugin writes it."""
        try:
            best = study.best_trial
        except ValueError:
            log.warning("No trial of study %r completed: no best parameters", self.study_name)
            results = {"name": "optuna", "best_params": {}, "best_value": None}
        else:
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            log.info("Best trial %d: value %s, parameters %s", best.number, best.value, best.params)
        OmegaConf.save(OmegaConf.create(results), Path(self.sweep_dir) / "optimization_results.yaml")
