"""Optuna sweeps end to end through `python -m app --multirun` in a subprocess, tiny budgets:
pruning, divergence, a killed and resumed study, parallel trials, multi-seed runs, the report.
(The sweeper's logic in detail, with a fake launcher: tests/test_search.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import FAST, kill_sweep_mid_trial, run_dirs

pytestmark = pytest.mark.slow
SEARCH = ["--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random",
          # one swept parameter; the preset's others fixed so that the trials differ only in lr
          "model.nodes=32", "model.layers=2", "optimizer.weight_decay=0",
          "pack=false"]  # one trial per job (packs of trials: tests/test_pack_sweep.py)
STUDY = "train-regression_optuna"


def load(tmp_path, name=STUDY):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'outputs' / 'studies' / f'{name}.db'}")


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_bad_regions_are_pruned_or_failed_with_reasons_and_reported(run_app, tmp_path):
    # lr=1e-7 barely learns: once a trial with lr=0.05 has completed, the median pruner stops it;
    # lr=1e6 diverges (NaN) at once. The sweep runs all its trials all the same.
    args = [*SEARCH, "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
            "hydra.sweeper.pruner.n_warmup_steps=1", "hydra.sweeper.n_trials=5", "optimizer=sgd", "scheduler=none",
            "optimizer.lr=choice(0.05,1e-7,1e6)", *FAST, "trainer.epochs=4"]
    proc = run_app(*args, check=True)
    trials = load(tmp_path).trials
    assert len(trials) == 5 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    by_lr = {lr: [t for t in trials if t.params["optimizer.lr"] == lr] for lr in (0.05, 1e-7, 1e6)}
    assert by_lr[0.05] and all(t.state == TrialState.COMPLETE for t in by_lr[0.05])
    first_complete = min(t.number for t in by_lr[0.05])
    slow_after = [t for t in by_lr[1e-7] if t.number > first_complete]
    assert slow_after and all(t.state == TrialState.PRUNED for t in slow_after)
    assert max(t.number for t in slow_after) < trials[-1].number  # the sweep went on after pruning
    for t in slow_after:
        summary = summary_of(tmp_path / t.user_attrs["run_dir"])
        assert summary["status"] == "pruned" and summary["epochs_run"] < 4
        assert f"pruned at epoch {summary['epochs_run']} by MedianPruner" in summary["message"]
        assert summary["trial"] == {"study": STUDY, "number": t.number, "params": t.params, "state": "PRUNED"}
        assert t.user_attrs["status"] == "pruned" and sorted(t.intermediate_values) == list(
            range(1, summary["epochs_run"] + 1))
    assert by_lr[1e6]
    for t in by_lr[1e6]:
        assert t.state == TrialState.PRUNED and t.user_attrs["status"] == "diverged"
        assert "non-finite loss" in t.user_attrs["reason"]
        summary = summary_of(tmp_path / t.user_attrs["run_dir"])
        assert summary["status"] == "diverged" and "non-finite loss" in summary["message"]

    # the report, written after the sweep and again on demand
    sweep_dir = run_dirs(tmp_path)[0].parent
    for name in ("report.md", "report_curves.png", "report_history.png", "report_importances.png"):
        assert (sweep_dir / name).stat().st_size > 0
    assert "Sweep report" in proc.stdout + proc.stderr
    out = tmp_path / "again"
    report = subprocess.run([sys.executable, "-m", "app.search.report", str(sweep_dir), "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert report.returncode == 0, report.stderr
    table = report.stdout.splitlines()
    for t in trials:
        assert any(line.split()[:2] == [str(t.number), t.state.name] for line in table)
    assert "PRUNED (diverged)" in report.stdout
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"Best: trial {best.number} " in report.stdout and best.user_attrs["run_dir"] in report.stdout
    assert {p.name for p in out.glob("*.png")} == {"report_curves.png", "report_history.png", "report_importances.png"}


def test_killed_sweep_resumes_to_exactly_n_trials(tmp_path):
    args = [*SEARCH, "hydra.sweeper.n_trials=3", "optimizer.lr=tag(log,interval(1e-3,1e-2))",
            *FAST, "trainer.epochs=40"]
    env = {**os.environ, "WANDB_SILENT": "true"}
    kill_sweep_mid_trial(tmp_path, args, env)  # kill it while trial 1 is half-way
    states = [t.state for t in load(tmp_path).trials]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING]  # killed mid-trial

    proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    trials = load(tmp_path).trials
    killed = trials[1]
    assert killed.state == TrialState.FAIL and killed.user_attrs["interrupted"] is True
    assert "interrupted" in summary_of(tmp_path / killed.user_attrs["run_dir"])["error"]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3 and not [t for t in trials if t.state == TrialState.RUNNING]
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE
    assert len(trials) == 4  # trial 0 was not run again
    second_sweep = sorted((tmp_path / "outputs" / "sweeps").glob("*/*"))[-1]
    assert sorted(p.name for p in second_sweep.iterdir() if p.is_dir()) == ["2", "3"]
    assert "1 of 3 trials finished; resuming" in proc.stdout + proc.stderr


def test_parallel_trials_with_joblib_and_several_seeds(run_app, tmp_path):
    proc = run_app(*SEARCH, "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2", "hydra.sweeper.n_trials=2",
                   "hydra/sweeper/pruner=median", "optimizer.lr=tag(log,interval(1e-3,1e-2))",
                   "seeds=[1,2]", *FAST, check=True)
    assert "Running up to 2 trials at once in worker processes" in proc.stdout + proc.stderr
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert len({t.user_attrs["run_dir"] for t in trials}) == 2
    for t in trials:
        run_dir = tmp_path / t.user_attrs["run_dir"]
        assert run_dir.name == str(t.number)
        summary = summary_of(run_dir)
        seeds = [summary_of(run_dir / f"seed_{s}") for s in (1, 2)]
        assert summary["seeds"] == [1, 2] and summary["status"] == "completed"
        assert t.value == pytest.approx(summary["objective"])
        assert summary["objective"] == pytest.approx((seeds[0]["objective"] + seeds[1]["objective"]) / 2)
        assert seeds[0]["objective"] != seeds[1]["objective"]
        # reported from the worker process, epoch by epoch: the first seed's curve
        assert sorted(t.intermediate_values) == [1, 2, 3]
        assert t.user_attrs["epochs"] == 3
    info = json.loads((run_dirs(tmp_path)[0].parent / "study.json").read_text())
    assert info["parallel_jobs"] == 2


def test_several_seeds_in_one_run_keep_each_seeds_records(run_app, tmp_path):
    run_app(*FAST, "seeds=[3,5]", check=True)
    [run_dir] = run_dirs(tmp_path)
    summary = summary_of(run_dir)
    per_seed = []
    for seed in (3, 5):
        seed_dir = run_dir / f"seed_{seed}"
        assert (seed_dir / "metrics.csv").exists() and (seed_dir / "checkpoints" / "last.pt").exists()
        lines = (seed_dir / "metrics.csv").read_text().splitlines()
        per_seed.append(min(float(line.split(",")[2]) for line in lines[1:]))
    assert per_seed[0] != per_seed[1]
    mean = sum(per_seed) / 2
    assert summary["objective"] == pytest.approx(mean)
    assert summary["objective_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2 ** 0.5)
    assert [s["seed"] for s in summary["per_seed"]] == [3, 5] and summary["epochs_run"] == 6
