"""Studies on a real PostgreSQL server (the tests' own, tests/postgres.py): the sweeper loop, the
refusals of storages that cannot be opened, the report, and three `python -m app --multirun`
workers on one study, one of them killed mid-trial."""
from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from app.search import report
from app.search.internals import HEARTBEAT_ATTR, trial_id
from app.search.internals import storage as storage_of
from app.search.study import open_storage
from app.search.sweeper import OWNER_ATTR, claim, is_finished
from tests.conftest import FAST
from tests.postgres import PASSWORD, PostgresServer, bin_dir, free_port
from tests.test_search import make_sweeper

optuna.logging.set_verbosity(optuna.logging.WARNING)
WAIT_S = 300  # upper bound (generous: CI machines may be busy) for an event that must come (a failing test, not a hanging one)


def test_a_sweep_on_postgresql_runs_exactly_n_trials_and_resumes(postgres_server, tmp_path):
    url = postgres_server.create_database("resume")
    make_sweeper(tmp_path, n_trials=3, storage=url).sweep([])
    make_sweeper(tmp_path, n_trials=5, storage=url).sweep([])  # the same command, more trials
    trials = optuna.load_study(study_name="unit", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [Path(t.user_attrs["run_dir"]).name for t in trials] == ["0", "1", "2", "3", "4"]
    assert not (tmp_path / "outputs" / "studies").exists()  # nothing stored in a file


def _refusal(tmp_path, capsys, url):
    sweeper = make_sweeper(tmp_path, storage=url)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2 and sweeper.launcher.launched == []
    message = capsys.readouterr().err.strip()
    assert message.startswith("Error: Invalid value for `hydra.sweeper.storage`") and "Accepted:" in message
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("case, reason", [
    ("server down", "Connection refused"),
    ("wrong password", "password authentication failed"),
    ("no such database", 'database "absent" does not exist'),
    ("driver not installed", "driver is not installed"),
    ("malformed URL", "not a valid database URL"),
])
def test_a_postgresql_storage_that_cannot_be_opened_is_refused_in_one_paragraph(
        postgres_server, tmp_path, capsys, case, reason):
    url = {
        "server down": f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:{free_port()}/studies",
        "wrong password": postgres_server.url("postgres", password="wrong-secret"),
        "no such database": postgres_server.url("absent"),
        "driver not installed": f"postgresql+pg8000://app:{PASSWORD}@127.0.0.1:{postgres_server.port}/postgres",
        "malformed URL": f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:port/studies",
    }[case]
    message = _refusal(tmp_path, capsys, url)
    assert reason in message
    assert PASSWORD not in message and "wrong-secret" not in message  # shown as ***


def test_the_report_reads_a_postgresql_study_and_refuses_an_unreachable_one(postgres_server, tmp_path, capsys):
    url = postgres_server.create_database("report")
    make_sweeper(tmp_path, n_trials=3, storage=url).sweep([])
    capsys.readouterr()
    assert report.main(["--storage", url, "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Study 'unit'" in printed and (tmp_path / "out" / "report.md").exists()
    assert [line.split()[0] for line in printed.splitlines() if line[:1].isdigit()] == ["0", "1", "2"]
    down = f"postgresql+psycopg://app:{PASSWORD}@127.0.0.1:{free_port()}/report"
    assert report.main(["--storage", down]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("Error: Invalid value for `--storage`") and "\n" not in error and PASSWORD not in error


def _stale_trial(url: str):
    """A RUNNING trial (x=0.3) of a worker on another host whose last heartbeat is long past."""
    study = optuna.load_study(study_name="unit", storage=open_storage(url, heartbeat_interval=1, grace_period=2))
    study.enqueue_trial({"x": 0.3})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    claim(study, trial, {"host": "elsewhere", "pid": 1, "started": 0})
    storage = storage_of(study)
    storage.record_heartbeat(trial_id(trial))
    if url.startswith("journal:"):
        storage.set_trial_system_attr(trial_id(trial), HEARTBEAT_ATTR, time.time() - 600)
    else:
        import sqlalchemy

        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'"))
        engine.dispose()
    return trial


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_two_workers_that_fail_one_stale_trial_at_once_queue_one_retry(postgres_server, tmp_path, kind):
    url = (postgres_server.create_database("stale_at_once") if kind == "postgresql"
           else f"journal:///{tmp_path}/studies/unit.log")
    make_sweeper(tmp_path, n_trials=1, storage=url).sweep([])
    stale = _stale_trial(url)
    both_looked = threading.Barrier(2, timeout=WAIT_S)
    settled, errors = [], []

    def worker():
        try:  # all of it: an error anywhere is reported below, not lost to threading's excepthook
            sweeper = make_sweeper(tmp_path, storage=url, heartbeat_interval=1, grace_period=2)
            sweeper.url, sweeper._heartbeat = url, 1
            record, settle = sweeper._record, sweeper._settle

            def record_then_wait(*args):  # both workers found the trial RUNNING and wrote why it failed
                record(*args)
                both_looked.wait()

            def settle_and_note(*args):
                settled.append(settle(*args))
                return settled[-1]

            sweeper._record, sweeper._settle = record_then_wait, settle_and_note
            sweeper._recover(optuna.load_study(study_name="unit", storage=sweeper._make_storage()), mine=set())
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:  # a worker that is done (or failed) before the barrier: its partner stops waiting at once
            both_looked.abort()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not errors and sorted(settled) == [False, True]  # the storage let one of them fail it
    trials = optuna.load_study(study_name="unit", storage=open_storage(url)).trials
    assert trials[stale.number].state == TrialState.FAIL and trials[stale.number].user_attrs["interrupted"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == stale.number]
    assert len(retries) == 1 and retries[0].state == TrialState.WAITING
    assert retries[0].system_attrs["fixed_params"] == {"x": 0.3}  # queued with the same parameters


@pytest.fixture
def own_server():
    """A PostgreSQL server of this test's own (it is stopped and started mid-test)."""
    server = PostgresServer(bin_dir()).start()
    try:
        yield server
    finally:
        server.stop()


def _storage_down_at_second_trial(sweeper, server):
    launches = []

    def on_launch(_):
        launches.append(1)
        if len(launches) == 2:
            server.pause()  # every connection drops; the job itself does not use the storage

    sweeper.launcher.on_launch = on_launch


def test_a_storage_that_stops_answering_for_a_while_is_waited_for_and_nothing_is_lost(own_server, tmp_path, caplog):
    url = own_server.create_database("outage")
    sweeper = make_sweeper(tmp_path, n_trials=3, storage=url)
    _storage_down_at_second_trial(sweeper, own_server)
    pause = sweeper._pause

    def back_after_the_first_failure(seconds):  # the worker saw the failure: the server comes back
        if not own_server.started:
            own_server.resume()
        pause(seconds)

    sweeper._pause = back_after_the_first_failure
    with caplog.at_level(logging.WARNING, logger="app.search.sweeper"):
        sweeper.sweep([])
    trials = optuna.load_study(study_name="unit", storage=url).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # trial 1 told once the server was back
    assert [Path(t.user_attrs["run_dir"]).name for t in trials] == ["0", "1", "2"]
    assert any("did not answer" in r.getMessage() and "trying again" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in caplog.text


def test_a_storage_that_stays_down_stops_the_worker_in_one_paragraph_and_the_command_resumes(
        own_server, tmp_path, capsys):
    url = own_server.create_database("down")
    sweeper = make_sweeper(tmp_path, n_trials=3, storage=url)
    sweeper.outage_s = 1.0
    _storage_down_at_second_trial(sweeper, own_server)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("Error: Invalid value for `hydra.sweeper.storage`") and "did not answer" in message
    assert "Nothing is lost" in message and "\n" not in message and "Traceback" not in message
    assert PASSWORD not in message
    own_server.resume()
    again = make_sweeper(tmp_path, n_trials=3, storage=url, heartbeat_interval=1, grace_period=2)
    again.sweep([])  # the same command: trial 1, left RUNNING, goes stale and is run again
    trials = optuna.load_study(study_name="unit", storage=url).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3 and sum(is_finished(t) for t in trials) == 3
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"] is True
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == trials[1].params and retry.state == TrialState.COMPLETE


# ----------------------------------------------------------------------------- several workers
WORKER_ARGS = ["--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random",
               "model.nodes=16", "model.layers=2", "optimizer.weight_decay=0", "~callbacks.early_stopping",
               *[a for a in FAST if not a.startswith("trainer.epochs")], "trainer.epochs=8",
               "~hydra.callbacks.sweep_summary",  # the test reports the study itself, once
               "pack=false"]  # one trial per job (packs of trials: tests/test_pack_sweep.py)


def start_worker(tmp_path: Path, index: int, storage: str, n_trials: int, *extra: str) -> subprocess.Popen:
    """One sweep worker: `python -m app --multirun` on the shared study, its own sweep dir and
    sampler seed (workers that start together with one seed sample the same parameters; a
    resumed sampler's seed is offset by the study's trial count, so the seeds lie far apart).
    The overrides of the run itself must match across workers. Output goes to a file."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("APP_TEST_KILL_AT", None)
    args = [*WORKER_ARGS, f"hydra.sweeper.storage={storage}", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.sampler.seed={1000 * index}", f"hydra.sweep.dir=outputs/sweeps/worker{index}", *extra]
    log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, what: str, timeout: float = WAIT_S):
    """Poll `condition()` until it returns something truthy (returned), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)  # between polls, bounded by the deadline
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def finish_workers(tmp_path: Path, workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        try:
            worker.wait(timeout=WAIT_S)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    logs = {i: (tmp_path / f"worker{i}.log").read_text() for i in range(len(workers))}
    for i, worker in enumerate(workers):
        assert worker.returncode in (0, -signal.SIGKILL), f"worker {i} exited {worker.returncode}:\n{logs[i]}"


def run_dir_numbers(tmp_path: Path) -> list[str]:
    """The trial numbers that have a run dir, over every worker's sweep dir (one entry per dir)."""
    return [p.parent.name for p in (tmp_path / "outputs" / "sweeps").glob("worker*/*/.hydra")]


def load_when_created(storage: str, name: str = "train-regression_optuna"):
    def study():
        try:
            return optuna.load_study(study_name=name, storage=open_storage(storage))
        except KeyError:  # not created yet
            return None
    return wait_for(study, f"study {name!r} to be created")


@pytest.mark.slow
def test_three_workers_on_postgresql_finish_exactly_n_trials_though_one_is_killed_mid_trial(
        postgres_server, tmp_path, capsys):
    url = postgres_server.create_database("workers")
    n_trials = 5
    beat = ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3"]
    workers = [start_worker(tmp_path, i, url, n_trials, *beat) for i in range(3)]
    victim = workers[0]
    try:
        study = load_when_created(url)

        def victims_trial_is_training():  # its job has recorded its run dir: the run is under way
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (t.system_attrs.get(OWNER_ATTR) or {}).get("pid") == victim.pid and "run_dir" in t.user_attrs:
                    return t
            return None

        trial = wait_for(victims_trial_is_training, "worker 0 to train a trial")
        victim.send_signal(signal.SIGSTOP)  # frozen mid-trial: its heartbeats stop too
        storage = storage_of(study)
        # Seen from the other workers, as a worker on another machine: only its heartbeat tells
        # whether it is alive (on this host, a dead pid would be recovered at once).
        storage.set_trial_system_attr(trial_id(trial), OWNER_ATTR, {"host": "another-machine", "pid": 1, "started": 0})
        assert storage.get_trial(trial_id(trial)).state == TrialState.RUNNING
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=WAIT_S)
    finally:
        finish_workers(tmp_path, workers)

    assert victim.returncode == -signal.SIGKILL
    trials = optuna.load_study(study_name="train-regression_optuna", storage=url).trials
    assert sum(is_finished(t) for t in trials) == n_trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials
    killed = trials[trial.number]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"] is True
    assert "no heartbeat" in killed.user_attrs["reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
    # only the worker whose FAIL of the stale trial the server accepted queued its retry
    assert len(retries) == 1 and not retries[0].user_attrs.get("surplus")
    assert retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE
    assert "worker0" not in retries[0].user_attrs["run_dir"]  # another worker ran it
    numbers = run_dir_numbers(tmp_path)
    assert [n for n, count in collections.Counter(numbers).items() if count > 1] == []  # none ran twice
    assert {str(t.number) for t in trials if t.state == TrialState.COMPLETE} <= set(numbers)

    capsys.readouterr()
    assert report.main(["--storage", url, "--out", str(tmp_path / "report")]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert sorted(rows, key=int) == [str(t.number) for t in trials]


def test_a_trial_goes_on_when_its_report_finds_the_storage_down(own_server, tmp_path, caplog):
    from app.search.trial import OptunaTrial

    url = own_server.create_database("report_down")
    make_sweeper(tmp_path, n_trials=1, storage=url).sweep([])
    study = optuna.load_study(study_name="unit", storage=open_storage(url), pruner=optuna.pruners.MedianPruner())
    trial = study.ask()
    job = OptunaTrial(study, trial_id(trial))
    assert job.report(1, 0.5) is False
    own_server.pause()
    with caplog.at_level(logging.WARNING, logger="app.search.trial"):
        assert job.report(2, 0.4) is False  # not pruned, not raised: the run goes on
    assert "epoch 2 not reported" in caplog.text
    own_server.resume()
    assert job.report(3, 0.3) is False
    assert storage_of(study).get_trial(trial_id(trial)).intermediate_values == {1: 0.5, 3: 0.3}


def _heartbeats(url: str, ident: int) -> int:
    """How many heartbeats PostgreSQL keeps for the trial of storage id `ident` (0 or 1: a row per trial)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text("SELECT count(*) FROM trial_heartbeats WHERE trial_id = :i"),
                                      {"i": ident}).scalar_one()
    finally:
        engine.dispose()


def test_a_trials_attributes_heartbeats_and_pruning_checks_outlast_the_storage_going_down_mid_trial(
        own_server, tmp_path, caplog):
    from app.search.trial import OptunaTrial, heartbeat_for

    url = own_server.create_database("job_down")
    make_sweeper(tmp_path, n_trials=1, storage=url).sweep([])
    study = optuna.load_study(study_name="unit", storage=open_storage(url), pruner=optuna.pruners.MedianPruner())
    trial = study.ask()
    ident = trial_id(trial)
    job = OptunaTrial(study, ident)
    own_server.pause()
    with caplog.at_level(logging.WARNING, logger="app.search.trial"):
        beats = heartbeat_for(url, 3600, [ident])  # its first beat finds the storage down: missed, not raised
        try:
            job.start_seed(8)  # the "epochs" user attribute: kept for later
            assert job.report(1, 0.5) is False
            job.start_seed(8)  # a second seed: its reports ask the pruner about the mean curve
            assert job.report(1, 0.4) is False
            own_server.resume()
            assert _heartbeats(url, ident) == 0
            beats._beat_once()  # (the thread's next beat, without waiting an interval for it)
            assert _heartbeats(url, ident) == 1  # the heartbeat's storage was opened once it answered
        finally:
            beats.stop()
        assert job.report(2, 0.3) is False  # the kept attribute is written first
        frozen = storage_of(study).get_trial(ident)
        assert frozen.user_attrs["epochs"] == 8 and frozen.state == TrialState.RUNNING
        assert frozen.intermediate_values == {}  # the first seed's one report was during the outage
        messages = [r.getMessage() for r in caplog.records]
        assert sum("user attribute 'epochs' not recorded yet" in m for m in messages) == 1  # logged once
        assert any("epoch 1 not reported" in m for m in messages)
        assert any("epoch 1 of seed 2 not checked for pruning" in m for m in messages)
        job.close()
        assert not any("not recorded:" in r.getMessage() for r in caplog.records)  # nothing was left over
        own_server.pause()
        job.set_user_attr("note", "set while the storage was down")
        job.close()
    assert any("user attribute note not recorded: the study's storage did not answer" in r.getMessage()
               for r in caplog.records)
    assert PASSWORD not in caplog.text


def _job_of(tmp_path: Path, sweep_dir: str, ident: int, monkeypatch, run: str):
    """`current_trial()` as the job of trial `ident` calls it, in run dir `run` of `sweep_dir`."""
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from app.search.study import TRIAL_ENV
    from app.search.trial import current_trial

    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.sweep.dir, cfg.hydra.runtime.output_dir = sweep_dir, str(tmp_path / run)
    (tmp_path / run).mkdir()
    monkeypatch.setenv(TRIAL_ENV, str(ident))
    HydraConfig.instance().set_config(cfg)
    try:
        return current_trial()
    finally:
        HydraConfig.instance().cfg = None  # later tests see no Hydra run


def test_a_job_that_starts_while_the_storage_is_down_waits_for_it_or_stops_in_one_paragraph(
        own_server, tmp_path, caplog, monkeypatch):
    import app.search.trial as job_side
    from app.errors import ConfigError
    from app.run.record import Summary

    url = own_server.create_database("start_down")
    sweeper = make_sweeper(tmp_path, n_trials=1, storage=url)
    sweeper.sweep([])  # its sweep dir's study.json names the study (heartbeats every 30 s)
    study = optuna.load_study(study_name="unit", storage=open_storage(url))
    trial = study.ask()
    pause = job_side._pause

    def back_after_the_first_failure(seconds):  # the job saw the storage down: it comes back
        if not own_server.started:
            own_server.resume()
        pause(seconds)

    monkeypatch.setattr(job_side, "_pause", back_after_the_first_failure)
    own_server.pause()
    with caplog.at_level(logging.WARNING, logger="app.search.trial"):
        job = _job_of(tmp_path, sweeper.sweep_dir, trial_id(trial), monkeypatch, "waited")
    try:
        assert job is not None and job.number == trial.number
        assert storage_of(study).get_trial(trial_id(trial)).user_attrs["run_dir"] == str(tmp_path / "waited")
        assert _heartbeats(url, trial_id(trial)) == 1
    finally:
        job.close()
    assert any("did not answer when the job opened its trial" in r.getMessage() and "trying again" in r.getMessage()
               for r in caplog.records)

    monkeypatch.setattr(job_side, "_pause", pause)
    monkeypatch.setattr(job_side, "STORAGE_OUTAGE_S", 1.0)
    own_server.pause()  # and it stays down
    with pytest.raises(ConfigError) as refused:
        _job_of(tmp_path, sweeper.sweep_dir, trial_id(trial), monkeypatch, "refused")
    message = str(refused.value)
    assert message.startswith("Invalid value for `hydra.sweeper.storage`") and "did not answer for" in message
    assert "runs the trial again" in message and "\n" not in message and PASSWORD not in message
    summary = Summary.read(tmp_path / "refused")  # the sweep runs the trial again: an interrupted run
    assert summary.status == "failed" and summary.interrupted and refused.value.recorded


def test_a_pack_job_whose_storage_stays_down_marks_every_member_interrupted(own_server, tmp_path, monkeypatch):
    """A pack job that cannot open its members' trials stops before training, and every member's
    run dir (not only the job's own) says interrupted: each member is run again."""
    import json

    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import app.search.trial as job_side
    from app.errors import ConfigError
    from app.run.record import Summary
    from app.search.packs import PACK_ENV, run_pack_job

    url = own_server.create_database("pack_down")
    sweeper = make_sweeper(tmp_path, n_trials=1, storage=url)
    sweeper.sweep([])  # its sweep dir's study.json names the study
    study = optuna.load_study(study_name="unit", storage=open_storage(url))
    members = [study.ask() for _ in range(3)]
    dirs = [tmp_path / "pack" / str(m.number) for m in members]
    for member_dir in dirs:
        member_dir.mkdir(parents=True)
    plan = tmp_path / "pack.json"
    plan.write_text(json.dumps({"members": [
        {"trial_id": trial_id(m), "number": m.number, "run_dir": str(d), "overrides": [f"x={m.number}"]}
        for m, d in zip(members, dirs)]}))
    monkeypatch.setenv(PACK_ENV, str(plan))
    monkeypatch.setattr(job_side, "STORAGE_OUTAGE_S", 1.0)
    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.sweep.dir, cfg.hydra.runtime.output_dir = sweeper.sweep_dir, str(dirs[0])
    HydraConfig.instance().set_config(cfg)
    own_server.pause()
    try:
        with pytest.raises(ConfigError) as refused:
            run_pack_job(OmegaConf.create({"trusted_modules": []}), dirs[0], None)
    finally:
        HydraConfig.instance().cfg = None
        own_server.resume()
    assert "did not answer for" in str(refused.value) and refused.value.recorded
    for member_dir in dirs:
        summary = Summary.read(member_dir)
        assert summary is not None and summary.status == "failed" and summary.interrupted, member_dir
    assert all(storage_of(study).get_trial(trial_id(m)).state == TrialState.RUNNING for m in members)
