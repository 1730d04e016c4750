"""Studies in an Optuna journal file (`journal:///<path>`, for a shared filesystem without a
database server): the sweeper loop, resume, heartbeats, the report, refusals, and two
`python -m app --multirun` workers on one file."""
from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from app.search import report
from app.search.internals import HEARTBEAT_ATTR, stale_trial_ids, trial_id
from app.search.internals import storage as storage_of
from app.search.study import absolute_storage, open_storage
from app.search.sweeper import claim, is_finished
from tests.test_postgres import finish_workers, run_dir_numbers, start_worker
from tests.test_search import make_sweeper

optuna.logging.set_verbosity(optuna.logging.WARNING)


def journal(tmp_path):
    return f"journal:///{tmp_path}/studies/unit.log"  # absolute: 4 slashes in all


def load(url, name="unit"):
    return optuna.load_study(study_name=name, storage=open_storage(url))


def test_a_relative_journal_path_is_resolved_against_the_launch_dir(tmp_path):
    assert absolute_storage("journal:///studies/x.log", tmp_path) == f"journal:///{tmp_path.resolve()}/studies/x.log"
    assert absolute_storage("journal:////shared/x.log", tmp_path) == "journal:////shared/x.log"


def test_a_sweep_on_a_journal_file_runs_exactly_n_trials_and_resumes(tmp_path):
    url = journal(tmp_path)
    make_sweeper(tmp_path, n_trials=3, storage=url).sweep([])
    assert (tmp_path / "studies" / "unit.log").stat().st_size > 0  # its folder made by the sweep
    make_sweeper(tmp_path, n_trials=5, storage=url).sweep([])
    trials = load(url).trials
    assert len(trials) == 5 and sum(is_finished(t) for t in trials) == 5
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]


def test_a_journal_trial_whose_heartbeat_stops_is_failed_and_retried_with_the_same_params(tmp_path):
    url = journal(tmp_path)
    make_sweeper(tmp_path, n_trials=1, storage=url).sweep([])
    study = optuna.load_study(study_name="unit", storage=open_storage(url, heartbeat_interval=1, grace_period=2))
    study.enqueue_trial({"x": 0.3})
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    claim(study, trial, {"host": "elsewhere", "pid": 1, "started": 0})  # a worker on another machine
    store = storage_of(study)
    store.record_heartbeat(trial_id(trial))
    assert stale_trial_ids(study) == []  # fresh
    store.set_trial_system_attr(trial_id(trial), HEARTBEAT_ATTR, time.time() - 60)  # its last beat, long ago
    assert stale_trial_ids(study) == [trial_id(trial)]
    make_sweeper(tmp_path, n_trials=3, storage=url, heartbeat_interval=1, grace_period=2).sweep([])
    trials = load(url).trials
    stale = trials[trial.number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["interrupted"] is True
    assert "no heartbeat" in stale.user_attrs["reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
    assert len(retries) == 1 and retries[0].params == {"x": 0.3} and is_finished(retries[0])
    assert sum(is_finished(t) for t in trials) == 3


def test_the_report_reads_a_journal_study(tmp_path, capsys):
    url = journal(tmp_path)
    make_sweeper(tmp_path, n_trials=3, storage=url).sweep([])
    capsys.readouterr()
    assert report.main(["--storage", url]) == 0
    printed = capsys.readouterr().out
    assert [line.split()[0] for line in printed.splitlines() if line[:1].isdigit()] == ["0", "1", "2"]
    assert (tmp_path / "studies" / "unit-report" / "report.md").exists()  # beside the journal file


@pytest.mark.parametrize("content, reason", [
    (b"SQLite format 3\x00not a journal", "not an Optuna study storage"),
    (None, "cannot be opened"),
])
def test_a_journal_file_that_cannot_be_used_is_refused_in_one_paragraph(tmp_path, capsys, content, reason):
    if content is None:  # its folder cannot be made: a file is in the way
        (tmp_path / "blocker").write_text("")
        url = f"journal:///{tmp_path}/blocker/studies/unit.log"
    else:
        (tmp_path / "other.db").write_bytes(content)
        url = f"journal:///{tmp_path}/other.db"
    sweeper = make_sweeper(tmp_path, storage=url)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2 and sweeper.launcher.launched == []
    message = capsys.readouterr().err.strip()
    assert message.startswith("Error: Invalid value for `hydra.sweeper.storage`") and reason in message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.slow
def test_two_workers_on_one_journal_file_finish_exactly_n_trials(tmp_path, capsys):
    url = "journal:///outputs/studies/shared.log"  # relative: both workers launch from tmp_path
    n_trials = 4
    workers = [start_worker(tmp_path, i, url, n_trials) for i in range(2)]
    finish_workers(tmp_path, workers)
    assert [w.returncode for w in workers] == [0, 0]
    trials = load(f"journal:///{tmp_path}/outputs/studies/shared.log", "train-regression_optuna").trials
    assert sum(is_finished(t) for t in trials) == n_trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == n_trials
    numbers = run_dir_numbers(tmp_path)
    assert sorted(numbers, key=int) == sorted({*numbers}, key=int)  # no trial ran twice
    assert {str(t.number) for t in trials if t.state == TrialState.COMPLETE} == set(numbers)
    assert all(any(p.name.isdigit() for p in (tmp_path / "outputs" / "sweeps" / f"worker{i}").iterdir())
               for i in range(2))  # both worked


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_workers_started_together_with_one_sampler_seed_sample_different_parameters(tmp_path, kind):
    def url(folder):
        return f"sqlite:///{folder}/studies/unit.db" if kind == "sqlite" else journal(folder)

    first = make_sweeper(tmp_path, n_trials=1, storage=url(tmp_path), seed=7)
    second = make_sweeper(tmp_path, n_trials=2, storage=url(tmp_path), seed=7)
    run_trials = second._run_trials

    def the_other_worker_asks_first(*args):  # both found the study empty; `first` asks trial 0 now
        first.sweep([])
        return run_trials(*args)

    second._run_trials = the_other_worker_asks_first
    second.sweep([])
    trials = load(url(tmp_path)).trials
    assert len(trials) == 2 and [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert trials[0].params != trials[1].params  # the same seed, yet not the same sample
    # a worker on its own keeps its seed: the same seed gives the same trials, run after run
    for folder in ("alone", "again"):
        make_sweeper(tmp_path / folder, n_trials=2, storage=url(tmp_path / folder), seed=7).sweep([])
    alone, again = load(url(tmp_path / "alone")).trials, load(url(tmp_path / "again")).trials
    assert [t.params for t in alone] == [t.params for t in again] and alone[0].params == trials[0].params
