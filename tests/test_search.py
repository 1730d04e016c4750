"""Hyperparameter search without subprocesses: the pruners, the job's trial, the sweeper's loop
(with a fake launcher), multi-seed aggregation and the report."""
from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from app.callbacks import Checkpoint
from app.callbacks.pruning import Pruning
from app.config import validate
from app.errors import ConfigError
from app.run.record import read_json, write_json
from app.search.report import edge_warning, grid_report, optuna_report, write_report
from app.search import sweeper as sweeper_module
from app.search.pruners import CurveExtrapolationPruner, extrapolate
from app.run.record import Summary
from app.search.study import TRIAL_ENV, open_storage
from app.search.sweeper import (
    StudySweeper,
    abandoned,
    claim,
    pick_gpu,
    outcome_from_summary,
)
from app.search.trial import OptunaTrial, mean_curve
from app.run.seeds import aggregate
from tests.test_trainer import make_trainer, regression_batches, script_val_loss

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----------------------------------------------------------------------------- pruners
def test_extrapolate_follows_a_log_linear_curve_and_never_predicts_worse_than_reached():
    steps = list(range(1, 11))
    values = [1.0 - 0.1 * math.log(s) for s in steps]
    assert extrapolate(steps, values, horizon=100, maximize=False) == pytest.approx(1.0 - 0.1 * math.log(100))
    # a curve getting worse: the running best is flat, the prediction is the best reached
    assert extrapolate(steps, [0.5 + 0.01 * s for s in steps], horizon=100, maximize=False) == pytest.approx(0.51)
    # maximising mirrors it
    up = [0.2 + 0.1 * math.log(s) for s in steps]
    assert extrapolate(steps, up, horizon=100, maximize=True) == pytest.approx(0.2 + 0.1 * math.log(100))
    # only the last `window` points count: an early plunge followed by a plateau predicts the plateau
    plateau = [5.0, 1.0] + [1.0] * 10
    assert extrapolate(list(range(1, 13)), plateau, horizon=1000, maximize=False, window=10) == pytest.approx(1.0)
    assert extrapolate([1, 2], [math.nan, 0.3], horizon=10, maximize=False) == pytest.approx(0.3)


def _completed(study, curves_and_values):
    for curve, value in curves_and_values:
        trial = study.ask()
        for step, v in enumerate(curve, start=1):
            trial.report(v, step)
        study.tell(trial, value)


def _decision(study, curve, epochs=None):
    trial = study.ask()
    if epochs:
        trial.set_user_attr("epochs", epochs)
    for step, v in enumerate(curve, start=1):
        trial.report(v, step)
    return study.pruner.prune(study, study._storage.get_trial(trial._trial_id))


def test_extrapolation_pruner_prunes_hopeless_curves_only():
    pruner = CurveExtrapolationPruner(n_startup_trials=3, n_warmup_steps=3, window=5, percentile=50)
    study = optuna.create_study(pruner=pruner)
    _completed(study, [([1.0, 0.5, 0.3], 0.1), ([1.0, 0.6, 0.4], 0.2)])
    flat_and_bad = [2.0, 2.0, 2.0, 2.0]
    assert not _decision(study, flat_and_bad, epochs=50)  # only 2 completed trials: no verdict yet
    _completed(study, [([1.0, 0.7, 0.5], 0.3)])
    assert _decision(study, flat_and_bad, epochs=50)  # median of finished values is 0.2
    assert not _decision(study, [2.0, 2.0], epochs=50)  # still warming up
    # falling fast enough that the extrapolation reaches below the median by the last epoch
    falling = [1.0 - 0.3 * math.log(s) for s in range(1, 5)]
    assert not _decision(study, falling, epochs=50)
    assert _decision(study, falling, epochs=5)  # ...but not if there are only 5 epochs


def test_extrapolation_pruner_refuses_bad_settings():
    with pytest.raises(ValueError, match="window"):
        CurveExtrapolationPruner(window=1)
    with pytest.raises(ValueError, match="percentile"):
        CurveExtrapolationPruner(percentile=120)


# ----------------------------------------------------------------------------- the job's trial
def test_mean_curve_averages_seeds_and_carries_a_finished_seed_forward():
    assert mean_curve([{1: 1.0, 2: 2.0, 3: 3.0}, {1: 3.0, 2: 4.0}]) == {1: 2.0, 2: 3.0}
    assert mean_curve([{1: 1.0}, {1: 3.0, 2: 5.0}]) == {1: 2.0, 2: 3.0}
    assert mean_curve([{1: 4.0}]) == {1: 4.0}


def test_later_seeds_are_judged_on_the_mean_over_seeds_so_far():
    study = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    _completed(study, [([1.0, 1.0, 1.0], 1.0)])
    trial = OptunaTrial(study, study.ask()._trial_id)
    trial.start_seed(epochs=3)
    assert [trial.report(e, 0.5) for e in (1, 2, 3)] == [False, False, False]  # first seed: good
    trial.start_seed(epochs=3)
    # the mean over seeds so far, (0.5 + 3.0) / 2 = 1.75, is worse than the finished trial's 1.0
    assert trial.report(1, 3.0) is True
    other = OptunaTrial(study, study.ask()._trial_id)
    other.start_seed(epochs=3)
    other.report(1, 0.5)
    other.start_seed(epochs=3)
    assert other.report(1, 1.2) is False  # 1.2 alone is worse than 1.0, the mean 0.85 is not
    # Optuna keeps the first seed's curve: one value per epoch
    stored = study._storage.get_trial(trial.trial._trial_id)
    assert stored.intermediate_values == {1: 0.5, 2: 0.5, 3: 0.5}
    assert stored.user_attrs["epochs"] == 3
    assert trial.describe("diverged") == {"study": study.study_name, "number": trial.number,
                                          "params": {}, "state": "PRUNED"}


def test_pruning_callback_stops_the_run_as_pruned_and_never_passes_non_finite_values():
    seen = []

    def should_prune(epoch, value):
        seen.append((epoch, value))
        return epoch == 2

    trainer = script_val_loss(make_trainer(epochs=5, callbacks=[Pruning(should_prune, "val_loss", "TestPruner")]),
                              [0.9, 0.8, 0.7, 0.6, 0.5])
    batches = regression_batches([8])
    result = trainer.fit(batches, batches)
    assert result.stop_reason == "pruned" and result.epochs_run == 2
    assert "pruned at epoch 2 by TestPruner" in result.message
    assert seen == [(1, pytest.approx(0.9)), (2, pytest.approx(0.8))]

    seen.clear()
    trainer = script_val_loss(make_trainer(epochs=3, callbacks=[Pruning(should_prune, "val_loss")]),
                              [math.nan, 0.8, 0.7])
    trainer.fit(batches, batches)
    assert seen == []  # NaN is not reported; the trainer stopped the run as diverged


def test_pruning_first_lets_the_checkpoint_of_the_pruned_epoch_be_written(tmp_path):
    checkpoint = Checkpoint(tmp_path, every=10, keep_last_k=0)
    trainer = script_val_loss(make_trainer(epochs=5, callbacks=[Pruning(lambda e, v: e == 2), checkpoint]),
                              [0.9, 0.95, 0.7, 0.6, 0.5])
    batches = regression_batches([8])
    trainer.fit(batches, batches)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2


# ----------------------------------------------------------------------------- outcomes
def test_run_statuses_map_to_trial_states():
    assert outcome_from_summary(Summary.from_dict({"status": "completed", "objective": 0.3}), 0.3).state == TrialState.COMPLETE
    assert outcome_from_summary(Summary.from_dict({"status": "early_stopped"}), 0.25).value == 0.25
    pruned = outcome_from_summary(Summary.from_dict({"status": "pruned", "message": "pruned at epoch 4", "epochs_run": 4}), math.inf)
    assert (pruned.state, pruned.value, pruned.reason, pruned.epochs_run) == (TrialState.PRUNED, None, "pruned at epoch 4", 4)
    diverged = outcome_from_summary(Summary.from_dict({"status": "diverged", "message": "non-finite loss at epoch 2"}), math.inf)
    assert diverged.state == TrialState.PRUNED and diverged.status == "diverged"
    failed = outcome_from_summary(Summary.from_dict({"status": "failed", "error": "RuntimeError: boom"}))
    assert failed.state == TrialState.FAIL and not failed.interrupted and "boom" in failed.reason
    assert outcome_from_summary(Summary.from_dict({"status": "failed", "error": "KeyboardInterrupt: "})).interrupted
    assert outcome_from_summary(Summary.from_dict({"status": "completed"}), math.nan).state == TrialState.FAIL
    assert outcome_from_summary(None, "0.5").value == 0.5  # not this app's task: the plugin's rule
    assert outcome_from_summary(None, "oops").state == TrialState.FAIL


def test_a_starting_trial_gets_a_gpu_no_running_trial_uses():
    assert pick_gpu([], 2) == 0
    assert pick_gpu([0], 2) == 1
    assert pick_gpu([1], 2) == 0  # trial on GPU 0 ended: its GPU is free again
    assert pick_gpu([0, 1], 2) == 0  # more trials than GPUs: the least used one
    assert pick_gpu([0, 1, 0], 2) == 1
    assert pick_gpu([0, 2], 4) == 1
    assert pick_gpu([], 1) is None and pick_gpu([], 0) is None


def test_a_running_trial_is_abandoned_only_when_its_process_is_gone():
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    assert abandoned(None)
    assert abandoned({"host": host, "pid": dead.pid, "started": 0})
    assert not abandoned({"host": host, "pid": os.getppid(), "started": 0})
    assert not abandoned({"host": host + "-elsewhere", "pid": dead.pid, "started": 0})
    assert not abandoned(sweeper_module.owner())
    assert abandoned({**sweeper_module.owner(), "started": -1.0})  # this pid, an earlier process


# ----------------------------------------------------------------------------- the sweeper loop
class FakeLauncher:
    """Runs each job in-process: `x` picks the outcome (x > 0.9 diverges, `raise_above` raises)
    and the objective is x. Records the overrides it was given."""

    def __init__(self, sweep_dir: Path, raise_above: float = 2.0, name: str = "BasicLauncher", on_launch=None):
        self.sweep_dir, self.raise_above = sweep_dir, raise_above
        self.launched: list[tuple[int, list[str]]] = []
        self.on_launch = on_launch  # called with the launch's overrides before the jobs "run"
        self.__class__ = type(name, (FakeLauncher,), {})  # the sweeper tells launchers by class name

    def launch(self, job_overrides, initial_job_idx):
        if self.on_launch is not None:
            self.on_launch(job_overrides)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            self.launched.append((idx, list(overrides)))
            values = dict(o.lstrip("+").split("=", 1) for o in overrides)
            run_dir = self.sweep_dir / str(idx)
            run_dir.mkdir(parents=True)
            x = float(values["x"])
            ret = JobReturn(overrides=list(overrides), hydra_cfg=OmegaConf.create(
                {"hydra": {"runtime": {"output_dir": str(run_dir)}}}))
            if x > self.raise_above:
                write_json(run_dir / "summary.json", {"status": "failed", "error": "RuntimeError: boom"})
                ret.status, ret.return_value = JobStatus.FAILED, RuntimeError("boom")
            else:
                status = "diverged" if x > 0.9 else "completed"
                objective = math.inf if status == "diverged" else x
                write_json(run_dir / "summary.json", {"status": status, "objective": objective, "epochs_run": 3,
                                                      "message": "non-finite loss" if status == "diverged" else ""})
                ret.status, ret.return_value = JobStatus.COMPLETED, objective
            returns.append(ret)
        return returns


def make_sweeper(tmp_path, n_trials=4, n_jobs=1, params="interval(0, 1)", launcher=None, overrides=(),
                 max_failure_rate=0.0, device_type="auto", seed=0, storage=None, max_retries=1,
                 batch_barrier=False, **settings):
    tmp_path.mkdir(parents=True, exist_ok=True)
    index = len(list(tmp_path.glob("sweep*")))
    while True:  # the next free sweep<N>; mkdir claims it, so sweepers made at once (threads) differ
        sweep_dir = tmp_path / f"sweep{index}"
        try:
            sweep_dir.mkdir()
            break
        except FileExistsError:
            index += 1
    sweeper = StudySweeper(
        pruner=optuna.pruners.NopPruner(), sampler=optuna.samplers.RandomSampler(seed=seed),
        direction="minimize", storage=storage, study_name="unit", n_trials=n_trials, n_jobs=n_jobs,
        max_failure_rate=max_failure_rate, custom_search_space=None, max_retries=max_retries,
        batch_barrier=batch_barrier, params=OmegaConf.create({"x": params}), **settings,
    )
    sweeper.poll_s = 0.02
    sweeper.config = OmegaConf.create({
        "device": {"type": device_type, "index": 0},
        "hydra": {
            "runtime": {"cwd": str(tmp_path)}, "job": {"name": "unit"},
            "overrides": {"task": list(overrides)},
            "sweeper": {"sampler": {"_target_": "optuna.samplers.RandomSampler", "seed": seed},
                        "pruner": {"_target_": "optuna.pruners.NopPruner"}},
        },
    })
    sweeper.sweep_dir = str(sweep_dir)
    sweeper.launcher = launcher or FakeLauncher(sweep_dir)
    sweeper.hydra_context, sweeper.job_idx = None, 0
    return sweeper


def stored_study(tmp_path, name="unit"):
    return optuna.load_study(study_name=name, storage=open_storage(f"sqlite:///{tmp_path}/outputs/studies/{name}.db"))


def test_sweeper_tells_states_from_run_dirs_and_names_run_dirs_after_trials(tmp_path):
    sweeper = make_sweeper(tmp_path, n_trials=6, params="choice(0.2, 0.95)")
    sweeper.sweep([])
    trials = stored_study(tmp_path).trials
    assert len(trials) == 6
    for t in trials:
        assert t.state == (TrialState.PRUNED if t.params["x"] == 0.95 else TrialState.COMPLETE)
        assert t.user_attrs["status"] == ("diverged" if t.params["x"] == 0.95 else "completed")
        assert Path(t.user_attrs["run_dir"]).name == str(t.number)
    assert {t.params["x"] for t in trials} == {0.2, 0.95}
    assert [t.value for t in trials if t.state == TrialState.COMPLETE] == [0.2] * sum(
        t.params["x"] == 0.2 for t in trials)
    ids = [dict(o.lstrip("+").split("=", 1) for o in ov)[f"hydra.job.env_set.{TRIAL_ENV}"]
           for _, ov in sweeper.launcher.launched]
    assert ids == [str(t._trial_id) for t in trials]
    results = OmegaConf.load(Path(sweeper.sweep_dir) / "optimization_results.yaml")
    assert results.best_value == 0.2
    info = json.loads((Path(sweeper.sweep_dir) / "study.json").read_text())
    assert info["study_name"] == "unit" and info["storage"].endswith("outputs/studies/unit.db")


def test_sweeper_resumes_a_study_to_n_trials_in_total(tmp_path):
    make_sweeper(tmp_path, n_trials=3).sweep([])
    second = make_sweeper(tmp_path, n_trials=5)
    second.sweep([])
    trials = stored_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert [idx for idx, _ in second.launcher.launched] == [3, 4]  # only the missing two ran
    xs = [t.params["x"] for t in trials]
    assert len(set(xs)) == 5  # the reseeded sampler did not repeat the first run's samples
    make_sweeper(tmp_path, n_trials=5).sweep([])  # nothing left to do
    assert len(stored_study(tmp_path).trials) == 5


def test_sweeper_refuses_to_resume_a_study_started_by_another_search(tmp_path, capsys):
    make_sweeper(tmp_path, n_trials=1).sweep([])
    with pytest.raises(SystemExit) as exit_info:
        make_sweeper(tmp_path, n_trials=2, params="interval(0, 2)").sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "hydra.sweeper.study_name" in message and "search_space" in message and "Traceback" not in message
    assert len(stored_study(tmp_path).trials) == 1  # the stored study is untouched


def test_interrupted_trials_are_failed_and_retried_with_the_same_parameters(tmp_path):
    make_sweeper(tmp_path, n_trials=1).sweep([])
    study = stored_study(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    study.enqueue_trial({"x": 0.3})  # a value the fake launcher completes (x > 0.9 "diverges")
    orphan = study.ask()
    orphan.suggest_float("x", 0, 1)
    claim(study, orphan, {"host": socket.gethostname(), "pid": dead.pid, "started": 0})
    run_dir = tmp_path / "orphan_run"
    run_dir.mkdir()
    orphan.set_user_attr("run_dir", str(run_dir))
    live = study.ask()  # a trial of a sweep that is still running (this test's parent process)
    live.suggest_float("x", 0, 1)
    claim(study, live, {"host": socket.gethostname(), "pid": os.getppid(), "started": 0})

    def other_worker_finishes_its_trial(_):  # the live trial counts towards n_trials: the sweep waits for it
        if stored_study(tmp_path).trials[live.number].state == TrialState.RUNNING:
            other = stored_study(tmp_path)
            observed["running_while_launching"] = True
            other.tell(live.number, 0.5)

    observed = {}
    resumed = make_sweeper(tmp_path, n_trials=4)
    resumed.launcher.on_launch = other_worker_finishes_its_trial
    resumed.sweep([])
    trials = stored_study(tmp_path).trials
    failed = trials[orphan.number]
    assert failed.state == TrialState.FAIL and failed.user_attrs["interrupted"] is True
    assert "interrupted" in read_json(run_dir / "summary.json")["error"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retries) == 1 and retries[0].params == failed.params and retries[0].state == TrialState.COMPLETE
    assert observed["running_while_launching"]  # its owner is alive: left alone, not failed
    assert trials[live.number].state == TrialState.COMPLETE
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert len(trials) == 5  # 4 finished + the interrupted one: nothing more was asked


def test_raising_trials_fail_with_their_reason_until_max_failure_rate(tmp_path):
    sweeper = make_sweeper(tmp_path, n_trials=6, params="choice(0.1, 3.0)", max_failure_rate=0.99)
    sweeper.launcher.raise_above = 2.5
    sweeper.sweep([])
    trials = stored_study(tmp_path).trials
    assert len(trials) == 6
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["x"] == 3.0 and "boom" in t.user_attrs["reason"] for t in failed)

    strict = make_sweeper(tmp_path / "strict", n_trials=4, params="choice(3.0)", max_failure_rate=0.5)
    strict.launcher.raise_above = 2.5
    with pytest.raises(RuntimeError, match="boom"):
        strict.sweep([])
    states = [t.state for t in stored_study(tmp_path / "strict").trials]
    assert states == [TrialState.FAIL] * 3  # 3 > 0.5 x 4: stopped, nothing left RUNNING


def test_parallel_trials_get_distinct_gpus_round_robin(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    sweeper = make_sweeper(tmp_path, n_trials=4, n_jobs=3)
    sweeper.launcher = FakeLauncher(Path(sweeper.sweep_dir), name="JoblibLauncher")
    sweeper.sweep([])
    devices = [[o for o in ov if o.startswith("device.index=")] for _, ov in sorted(sweeper.launcher.launched)]
    assert all(len(d) == 1 for d in devices) and len(devices) == 4
    # trials 0-2 start together: two GPUs, then the least used; trial 3 gets one of the freed ones
    assert [d[0] for d in devices[:3]] == ["device.index=0", "device.index=1", "device.index=0"]
    assert json.loads((Path(sweeper.sweep_dir) / "study.json").read_text())["parallel_jobs"] == 3

    for name, kwargs in (("cpu", {"device_type": "cpu"}), ("pinned", {"overrides": ["device.index=1"]})):
        pinned = make_sweeper(tmp_path / name, n_trials=2, n_jobs=2, **kwargs)
        pinned.launcher = FakeLauncher(Path(pinned.sweep_dir), name="JoblibLauncher")
        pinned.sweep([])
        assert not any(o.startswith("device.index=") for _, ov in pinned.launcher.launched for o in ov)

    serial = make_sweeper(tmp_path / "serial", n_trials=2, n_jobs=2)
    serial.sweep([])  # the basic launcher runs jobs one after the other: no need to spread them
    assert not any(o.startswith("device.index=") for _, ov in serial.launcher.launched for o in ov)


# ----------------------------------------------------------------------------- seeds
def test_seed_summaries_aggregate_to_mean_and_std():
    per_seed = [{"seed": s, "status": "completed", "objective": v, "best": v, "epochs_run": 3, "wall_time_s": 1.0,
                 "test": {"test_loss": v}} for s, v in ((1, 0.1), (2, 0.2), (3, 0.6))]
    summary = aggregate(per_seed, [1, 2, 3], "val_loss", "min")
    assert summary.status == "completed"
    assert summary.objective == pytest.approx(0.3)
    assert summary.objective_std == pytest.approx(math.sqrt(((0.2) ** 2 + 0.1 ** 2 + 0.3 ** 2) / 2))
    assert summary.epochs_run == 9 and summary.test == {"test_loss": pytest.approx(0.3)}
    pruned = aggregate(per_seed[:1] + [{"seed": 2, "status": "pruned", "message": "pruned at epoch 4",
                                        "objective": math.inf, "best": 0.9, "epochs_run": 4}], [1, 2, 3], "val_loss", "min")
    assert pruned.status == "pruned" and pruned.objective == math.inf
    assert [s["seed"] for s in pruned.per_seed] == [1, 2] and "seed 2: pruned at epoch 4" == pruned.message
    assert aggregate(per_seed[:1], [7], "val_accuracy", "max").objective_std == 0.0


@pytest.mark.parametrize("seeds", ["[]", "[1,1]", "[-1,2]"])
def test_bad_seed_lists_are_refused(compose_cfg, seeds):
    with pytest.raises(ConfigError, match="`seeds`"):
        validate(compose_cfg(f"seeds={seeds}"))


# ----------------------------------------------------------------------------- report
def _fake_run(run_dir: Path, curve: list[float], status="completed"):
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "val_loss"])
        writer.writerows(enumerate(curve, start=1))
    write_json(run_dir / "summary.json", {"status": status, "monitor": "val_loss", "mode": "min",
                                          "objective": min(curve), "epochs_run": len(curve)})


def test_report_of_a_study_has_table_best_importances_edge_warnings_and_plots(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="r", storage=open_storage(url), sampler=optuna.samplers.RandomSampler(seed=1))
    for i in range(8):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        width = trial.suggest_categorical("width", [16, 32, 64])
        curve = [1.0 / (e * (1 + 10 * lr)) for e in range(1, 6)]
        _fake_run(tmp_path / str(i), curve)
        trial.set_user_attr("run_dir", str(tmp_path / str(i)))
        for e, v in enumerate(curve, start=1):
            trial.report(v, e)
        if i == 7:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, min(curve) + 0 * width)
    report = optuna_report(url, "r")
    assert [r["trial"] for r in report.rows] == list(range(8))
    assert report.rows[7]["state"] == "PRUNED" and report.rows[0]["epochs"] == 5
    best = min((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert report.best["trial"] == best.number and report.best["run_dir"] == str(tmp_path / str(best.number))
    assert set(report.importances) == {"lr", "width"} and report.importances["lr"] > report.importances["width"]
    assert any(w.startswith("lr: the best value") and "upper edge" in w for w in report.warnings) == (
        math.log(best.params["lr"] / 1e-4) / math.log(1e-1 / 1e-4) >= 0.95)
    files = write_report(report, tmp_path / "out")
    assert {f.name for f in files} == {"report.md", "report_curves.png", "report_history.png", "report_importances.png"}
    assert all(f.stat().st_size > 1000 for f in files if f.suffix == ".png")
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| trial | state | value | epochs | duration_s | lr | width |" in text and "![report_curves.png]" in text


def test_edge_warnings():
    log_range = ("range", 1e-4, 1e-1, True, False)
    assert "lower edge" in edge_warning("lr", 1.2e-4, log_range)
    assert "upper edge" in edge_warning("lr", 0.09, log_range)
    assert edge_warning("lr", 3e-3, log_range) is None  # mid-range on a log scale (linearly near the bottom)
    assert "upper edge" in edge_warning("layers", 5, ("range", 2, 5, False, True))
    assert edge_warning("layers", 4, ("range", 2, 5, False, True)) is None
    assert "largest choice" in edge_warning("nodes", 128, ("choices", [32, 64, 128]))
    assert edge_warning("nodes", 64, ("choices", [32, 64, 128])) is None
    assert edge_warning("activation", "relu", None) is None


def test_grid_report_uses_the_overrides_that_vary(tmp_path):
    for job, (lr, curve) in enumerate([("0.1", [0.5, 0.4]), ("0.01", [0.5, 0.2]), ("0.001", [0.6, 0.5])]):
        run = tmp_path / str(job)
        _fake_run(run, curve)
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n- logger=none\n")
    report = grid_report(tmp_path)
    assert report.param_names == ["optimizer.lr"]
    assert report.best["trial"] == "1" and report.best["optimizer.lr"] == 0.01
    assert report.warnings == []  # 0.01 is the middle value
    files = write_report(report, tmp_path)
    assert [f.name for f in files] == ["report.md", "report_curves.png"]


def test_report_command_refuses_what_it_cannot_report_in_one_line(tmp_path, capsys):
    from app.search.report import main

    assert main([str(tmp_path / "nowhere")]) == 2
    assert main([str(tmp_path)]) == 2  # a directory without sweep jobs
    assert main(["--storage", f"sqlite:///{tmp_path}/missing.db"]) == 2
    assert main([]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("Error: ") for line in errors)
    assert not (tmp_path / "missing.db").exists()  # asking did not create an empty storage


def test_storage_urls_are_stable_and_absolute(tmp_path):
    from app.search.study import StudyFile, absolute_storage, default_storage, file_name

    assert default_storage("train-regression_optuna", tmp_path) == \
        f"sqlite:///{tmp_path.resolve()}/outputs/studies/train-regression_optuna.db"
    assert file_name("a b/c:d") == "a_b_c_d"
    assert absolute_storage("sqlite:///studies/x.db", tmp_path) == f"sqlite:///{tmp_path.resolve()}/studies/x.db"
    assert absolute_storage("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert absolute_storage("postgresql://host/db", tmp_path) == "postgresql://host/db"
    info = StudyFile("sqlite:////abs/x.db", "x", "minimize", {"_target_": "optuna.pruners.MedianPruner",
                                                              "n_startup_trials": 2}, parallel_jobs=3)
    info.write(tmp_path)
    again = StudyFile.read(tmp_path)
    assert again == info and isinstance(again.make_pruner(), optuna.pruners.MedianPruner)
    assert StudyFile.read(tmp_path / "elsewhere") is None


def test_sweeper_refuses_an_untrusted_sampler_before_it_runs(tmp_path, capsys):
    sweeper = make_sweeper(tmp_path)
    sweeper.sampler = OmegaConf.create({"_target_": "os.makedirs", "name": str(tmp_path / "made_by_sampler")})
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "`hydra.sweeper.sampler._target_`" in message and "trusted_modules" in message
    assert not (tmp_path / "made_by_sampler").exists()
    assert not (tmp_path / "outputs" / "studies").exists()  # refused before any storage was made
