"""No batch barrier: a free slot gets the next trial at once; a worker process that dies fails only
its own trial, which is run again with the same parameters (`hydra.sweeper.max_retries`).
The loop with the fake launcher of tests/test_search.py (jobs in threads); the joblib launcher's
worker processes end to end through `python -m app --multirun` (slow)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from app.search.pool import exit_reason
from tests.conftest import FAST
from tests.test_search import FakeLauncher, make_sweeper, stored_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
WAIT_S = 60  # upper bound for an event that must come (a failing test, not a hanging one)


def test_a_free_slot_gets_the_next_trial_while_a_slow_trial_runs(tmp_path):
    sweeper = make_sweeper(tmp_path, n_trials=6, n_jobs=2)
    completed = lambda study: sum(t.state == TrialState.COMPLETE for t in study.trials) >= 4  # noqa: E731
    launcher = FakeLauncher(Path(sweeper.sweep_dir), name="JoblibLauncher")
    launcher.launch = _holding(launcher.launch, 0, completed, tmp_path)
    sweeper.launcher = launcher
    sweeper.sweep([])
    trials = stored_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    slow = trials[0]
    during = [t for t in trials[1:] if slow.datetime_start <= t.datetime_start
              and t.datetime_complete <= slow.datetime_complete]
    # with 2 slots, trials 1-4 (at least) started and finished one after another while trial 0 ran
    assert {1, 2, 3, 4} <= {t.number for t in during}


def test_with_the_batch_barrier_a_batch_waits_for_its_slowest_trial(tmp_path):
    sweeper = make_sweeper(tmp_path, n_trials=4, n_jobs=2, batch_barrier=True)
    partner_done = lambda study: study.trials[1].state == TrialState.COMPLETE  # noqa: E731
    launcher = FakeLauncher(Path(sweeper.sweep_dir), name="JoblibLauncher")
    launcher.launch = _holding(launcher.launch, 0, partner_done, tmp_path)
    sweeper.launcher = launcher
    sweeper.sweep([])
    trials = stored_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[1].datetime_complete <= trials[0].datetime_complete  # trial 1's slot idled ...
    assert min(trials[2].datetime_start, trials[3].datetime_start) >= trials[0].datetime_complete  # ... till 0 ended


def _holding(launch, number, until, tmp_path):
    """`launch`, except that the job of trial `number` runs until `until(study)` holds."""
    def hold(job_overrides, initial_job_idx):
        if initial_job_idx == number:
            deadline = time.monotonic() + WAIT_S
            while not until(stored_study(tmp_path)):
                assert time.monotonic() < deadline, "the condition never held"
                time.sleep(0.01)  # polling the condition, with a deadline
        return launch(job_overrides, initial_job_idx)

    return hold


def test_exit_reasons_name_the_signal_and_the_oom_killer():
    assert exit_reason(-signal.SIGKILL) == (
        "its worker process was killed by signal 9 (SIGKILL; the kernel's out-of-memory killer sends it)")
    assert exit_reason(-signal.SIGSEGV) == f"its worker process was killed by signal {int(signal.SIGSEGV)} (SIGSEGV)"
    assert exit_reason(3) == "its worker process exited with status 3 before returning the job"


# ----------------------------------------------------------------------------- end to end
SEARCH = ["--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random",
          "model.nodes=32", "model.layers=2", "optimizer.weight_decay=0",
          "optimizer.lr=tag(log,interval(1e-3,1e-2))", "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", *FAST,
          "pack=false"]  # one trial per job (packs of trials: tests/test_pack_sweep.py)
STUDY = "train-regression_optuna"


def sweep(tmp_path, *args, kill_trial_id):
    """The sweep, with the job of the trial whose storage id is `kill_trial_id` SIGKILLed by
    app/run/faults.py after its 3rd training batch (its worker process dies; no other does)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true",
           "APP_TEST_KILL_AT": "batch:3", "APP_TEST_KILL_TRIAL_ID": str(kill_trial_id)}
    proc = subprocess.run([sys.executable, "-m", "app", *SEARCH, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    study = optuna.load_study(study_name=STUDY,
                              storage=f"sqlite:///{tmp_path / 'outputs' / 'studies' / f'{STUDY}.db'}")
    return proc, study.trials


@pytest.mark.slow
def test_a_killed_worker_fails_only_its_trial_which_is_retried_with_the_same_params(tmp_path):
    proc, trials = sweep(tmp_path, "hydra.sweeper.n_trials=3", kill_trial_id=2)  # trial number 1
    assert proc.returncode == 0, proc.stderr
    killed = trials[1]
    reason = "its worker process was killed by signal 9 (SIGKILL; the kernel's out-of-memory killer sends it)"
    assert killed.state == TrialState.FAIL and killed.user_attrs["reason"] == reason
    assert killed.user_attrs["worker_died"] is True and killed.user_attrs["interrupted"] is True
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert Path(retry.user_attrs["run_dir"]).name == str(retry.number)
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3 and len(trials) == 4  # the kill cost one run, not the sweep
    assert trials[0].state == TrialState.COMPLETE  # the trial running beside it went on
    assert "retry 1 of 1" in proc.stdout + proc.stderr and "TerminatedWorkerError" not in proc.stderr


@pytest.mark.slow
def test_with_max_retries_0_a_killed_worker_fails_its_trial_for_good(tmp_path):
    proc, trials = sweep(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.max_retries=0",
                         "hydra.sweeper.max_failure_rate=1", kill_trial_id=1)  # trial number 0
    assert proc.returncode == 0, proc.stderr
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "killed by signal 9" in trials[0].user_attrs["reason"]
    assert not trials[0].user_attrs.get("interrupted") and not any("retry_of" in t.user_attrs for t in trials)
    assert "hydra.sweeper.max_retries=0 reached" in proc.stdout + proc.stderr
