"""Several sweep processes (workers) on one study, heartbeats, and refused sweeper settings: the
sweeper loop with the fake launcher of tests/test_search.py, workers as threads sharing one SQLite file."""
from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from app.search.study import open_storage
from app.search.sweeper import claim, is_finished
from app.search.trial import Heartbeat
from tests.test_search import FakeLauncher, make_sweeper, stored_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
WAIT_S = 60  # upper bound for an event that must come (a failing test, not a hanging one)


def test_two_workers_on_one_study_never_overshoot_and_wait_for_each_other(tmp_path):
    a_launched, b_done_launching = threading.Semaphore(0), threading.Event()
    states_at_exit = {}

    def a_waits_for_b(_):  # each of a's jobs runs until b has launched its own
        a_launched.release()
        assert b_done_launching.wait(WAIT_S)

    a = make_sweeper(tmp_path, n_trials=3, n_jobs=2)
    a.launcher = FakeLauncher(Path(a.sweep_dir), name="JoblibLauncher", on_launch=a_waits_for_b)
    b = make_sweeper(tmp_path, n_trials=3, n_jobs=2)
    b.launcher.on_launch = lambda _: b_done_launching.set()
    errors = []

    def run(sweeper, name):
        try:
            sweeper.sweep([])
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
            b_done_launching.set()
        states_at_exit[name] = [t.state for t in stored_study(tmp_path).trials]

    thread_a = threading.Thread(target=run, args=(a, "a"))
    thread_a.start()
    assert a_launched.acquire(timeout=WAIT_S) and a_launched.acquire(timeout=WAIT_S)  # a's 2 trials
    # are RUNNING: b may ask only 1
    thread_b = threading.Thread(target=run, args=(b, "b"))
    thread_b.start()
    thread_a.join(WAIT_S)
    thread_b.join(WAIT_S)
    assert not errors and not thread_a.is_alive() and not thread_b.is_alive()
    trials = stored_study(tmp_path).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert (len(a.launcher.launched), len(b.launcher.launched)) == (2, 1)
    # b, done with its one trial, exited only once a's two had finished too
    assert states_at_exit["b"] == [TrialState.COMPLETE] * 3


def _stale_trial(tmp_path, x=0.3):
    """A RUNNING trial of a worker on another host whose last heartbeat is old."""
    make_sweeper(tmp_path, n_trials=1).sweep([])
    url = f"sqlite:///{tmp_path}/outputs/studies/unit.db"
    study = optuna.load_study(study_name="unit", storage=open_storage(url, heartbeat_interval=1))
    study.enqueue_trial({"x": x})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    claim(study, trial, {"host": "elsewhere", "pid": 1, "started": 0})
    study._storage.record_heartbeat(trial._trial_id)
    return trial, url


def test_a_running_trial_with_a_stale_heartbeat_is_failed_and_retried_with_the_same_params(tmp_path):
    trial, url = _stale_trial(tmp_path)
    with sqlite3.connect(url[len("sqlite:///"):]) as connection:
        connection.execute("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'")
    make_sweeper(tmp_path, n_trials=3, heartbeat_interval=1, grace_period=5).sweep([])
    trials = stored_study(tmp_path).trials
    stale = trials[trial.number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["interrupted"] is True
    assert "no heartbeat" in stale.user_attrs["reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retries) == 1 and retries[0].params == {"x": 0.3} and retries[0].state == TrialState.COMPLETE
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3 and len(trials) == 4


def test_a_running_trial_with_a_fresh_heartbeat_is_waited_for(tmp_path):
    trial, url = _stale_trial(tmp_path)
    seen = {}

    def the_other_worker_finishes(_):  # the trial was left RUNNING while this worker ran its own
        study = optuna.load_study(study_name="unit", storage=open_storage(url))
        seen["state"] = study.trials[trial.number].state
        study.tell(trial.number, 0.3)

    sweeper = make_sweeper(tmp_path, n_trials=3, heartbeat_interval=60)
    sweeper.launcher.on_launch = the_other_worker_finishes
    sweeper.sweep([])
    trials = stored_study(tmp_path).trials
    assert seen["state"] == TrialState.RUNNING
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # 1 + the other's + 1: no overshoot


def test_heartbeat_beats_at_start_and_every_interval_until_stopped():
    beats, second = [], threading.Event()

    def beat():
        beats.append(1)
        if len(beats) >= 2:
            second.set()

    heartbeat = Heartbeat(beat, 0.01).start()
    assert beats  # the first beat is recorded before start() returns
    assert second.wait(WAIT_S)
    heartbeat.stop()
    count = len(beats)
    assert not heartbeat._thread.is_alive() and len(beats) == count


def _create(work_dir, shared_dir, barrier, results):
    import pathlib

    sweeper = make_sweeper(pathlib.Path(work_dir), n_trials=1)
    sweeper.storage = f"sqlite:///{shared_dir}/fresh.db"
    sweeper.url, sweeper.study_name = sweeper.storage, "race"
    sweeper._heartbeat = None
    barrier.wait(WAIT_S)
    try:
        sweeper._create_study("minimize")
        results.put("ok")
    except BaseException as error:  # noqa: BLE001
        results.put(repr(error))


def test_two_processes_creating_one_study_on_a_fresh_storage_both_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    # both processes open the same fresh storage file at once (after the barrier)
    processes = [context.Process(target=_create, args=(str(tmp_path / f"p{i}"), str(tmp_path), barrier, results))
                 for i in range(2)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=WAIT_S) for _ in processes]
    for process in processes:
        process.join(WAIT_S)
    assert outcomes == ["ok", "ok"]
    summaries = optuna.get_all_study_summaries(storage=f"sqlite:///{tmp_path}/fresh.db")
    assert [s.study_name for s in summaries] == ["race"]


# ----------------------------------------------------------------------------- loose ends
MEMORY = "sqlite:///:memory:"


def test_an_in_memory_study_is_shared_with_jobs_in_this_process_and_starts_afresh(tmp_path):
    from app.search.study import TRIAL_ENV, load_study
    from app.search.trial import OptunaTrial

    def job_reports(overrides):  # what a job of the basic launcher does: open the study by URL
        values = dict(o.lstrip("+").split("=", 1) for o in overrides[0])
        study = load_study(MEMORY, "unit")
        OptunaTrial(study, int(values[f"hydra.job.env_set.{TRIAL_ENV}"])).set_user_attr("seen_by_job", True)

    for _ in range(2):
        sweeper = make_sweeper(tmp_path, n_trials=2, storage=MEMORY)
        sweeper.launcher.on_launch = job_reports
        sweeper.sweep([])
        trials = load_study(MEMORY, "unit").trials
        assert len(trials) == 2 and all(t.state == TrialState.COMPLETE and t.user_attrs["seen_by_job"]
                                        for t in trials)
    assert not (tmp_path / "outputs").exists()


def test_an_in_memory_study_with_jobs_in_other_processes_is_refused(tmp_path, capsys):
    sweeper = make_sweeper(tmp_path, n_trials=2, n_jobs=2, storage=MEMORY)
    sweeper.launcher = FakeLauncher(tmp_path, name="JoblibLauncher")
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "`hydra.sweeper.storage`" in message and "JoblibLauncher" in message and "Traceback" not in message
    assert sweeper.launcher.launched == []


def test_resuming_a_study_with_another_direction_is_refused_in_one_paragraph(tmp_path, capsys):
    make_sweeper(tmp_path, n_trials=1).sweep([])
    flipped = make_sweeper(tmp_path, n_trials=2)
    flipped.direction = "maximize"
    with pytest.raises(SystemExit) as exit_info:
        flipped.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "direction minimize (now maximize)" in message and "hydra.sweeper.study_name=<name>" in message
    assert "hydra.sweeper.storage" in message and "\n" not in message
    assert len(stored_study(tmp_path).trials) == 1


@pytest.mark.parametrize("setting, value, key", [
    ("n_trials", 0, "hydra.sweeper.n_trials"),
    ("n_trials", -3, "hydra.sweeper.n_trials"),
    ("direction", "sideways", "hydra.sweeper.direction"),
    ("max_failure_rate", 1.5, "hydra.sweeper.max_failure_rate"),
    ("max_failure_rate", -0.1, "hydra.sweeper.max_failure_rate"),
    ("heartbeat_interval", 0, "hydra.sweeper.heartbeat_interval"),
    ("grace_period", -1, "hydra.sweeper.grace_period"),
    ("max_retries", -1, "hydra.sweeper.max_retries"),
    ("max_retries", 1.5, "hydra.sweeper.max_retries"),
    ("batch_barrier", "sometimes", "hydra.sweeper.batch_barrier"),
    ("storage", "notaurl", "hydra.sweeper.storage"),
    ("storage", "postgresql://nohost/db", "hydra.sweeper.storage"),
    ("storage", "sqlite:////proc/no/such/dir/x.db", "hydra.sweeper.storage"),
    ("params", "interval(1e-1, 1e-5)", "hydra.sweeper.params.x"),
    ("params", "range(5, 2)", "hydra.sweeper.params.x"),
    ("params", "tag(log, interval(0, 1))", "hydra.sweeper.params.x"),
])
def test_bad_sweeper_settings_are_refused_in_one_paragraph(tmp_path, capsys, setting, value, key):
    from omegaconf import OmegaConf

    if setting == "max_failure_rate":
        sweeper = make_sweeper(tmp_path, max_failure_rate=value)  # the plugin asserted in __init__
    else:
        sweeper = make_sweeper(tmp_path)
        if setting == "params":
            sweeper.params = OmegaConf.create({"x": value})
        else:
            setattr(sweeper, setting, value)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith(f"Error: Invalid value for `{key}`") and "Accepted:" in message
    assert "\n" not in message and "Traceback" not in message
    assert sweeper.launcher.launched == []


def test_the_job_records_its_trials_heartbeat_until_the_run_ends(tmp_path):
    from app.search.trial import OptunaTrial

    url = f"sqlite:///{tmp_path}/hb.db"
    study = optuna.create_study(study_name="hb", storage=open_storage(url, heartbeat_interval=1))
    asked = study.ask()
    trial = OptunaTrial(study, asked._trial_id)
    trial.start_heartbeat(1)
    thread = trial.heartbeat._thread
    with sqlite3.connect(f"{tmp_path}/hb.db") as connection:
        rows = connection.execute("SELECT trial_id FROM trial_heartbeats").fetchall()
    assert rows == [(asked._trial_id,)]
    trial.close()
    assert trial.heartbeat is None and not thread.is_alive()


def test_an_interrupted_trial_queued_again_by_two_workers_at_once_runs_once(tmp_path):
    make_sweeper(tmp_path, n_trials=1).sweep([])
    study = stored_study(tmp_path)
    study.enqueue_trial({"x": 0.3})  # a value the fake launcher completes (above 0.9 it diverges)
    interrupted = study.ask()
    interrupted.suggest_float("x", 0, 1)
    interrupted.set_user_attr("interrupted", True)
    study.tell(interrupted, state=TrialState.FAIL)
    for _ in range(2):  # both workers found it failed and no retry yet
        study.enqueue_trial(interrupted.params, user_attrs={"retry_of": interrupted.number})
    make_sweeper(tmp_path, n_trials=3).sweep([])
    trials = stored_study(tmp_path).trials
    first, second = (t for t in trials if t.user_attrs.get("retry_of") == interrupted.number)
    assert first.state == TrialState.COMPLETE and first.params == {"x": 0.3}
    assert second.state == TrialState.FAIL and second.user_attrs["surplus"] is True
    assert f"trial {first.number} retries trial {interrupted.number}" in second.user_attrs["reason"]
    assert "run_dir" not in second.user_attrs  # never launched
    assert sum(is_finished(t) for t in trials) == 3 and len(trials) == 5  # 0, the retry, one more
