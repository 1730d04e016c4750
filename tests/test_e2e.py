"""End to end through `python -m app` in a subprocess, with tiny budgets."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from app.train.trainer import TIMING_METRICS
from tests.conftest import FAST, run_dirs

pytestmark = pytest.mark.slow


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_single_run_leaves_every_record(run_app, tmp_path):
    proc = run_app(*FAST, check=True)
    [run_dir] = run_dirs(tmp_path)
    assert run_dir.parent.parent.name == "runs"
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        assert (run_dir / ".hydra" / name).exists()

    rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"epoch", "train_loss", "val_loss", "lr", "val_mae"} <= set(rows[0])
    assert all(float(r["val_loss"]) > 0 for r in rows)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epochs_run"] == 3
    best = min(float(r["val_loss"]) for r in rows)
    assert summary["best"] == pytest.approx(best)
    assert summary["objective"] == pytest.approx(best)
    assert summary["best_epoch"] == 1 + [float(r["val_loss"]) for r in rows].index(best)
    assert summary["wall_time_s"] > 0

    for name in ("best.pt", "last.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scheduler", "epoch", "best"} <= set(state)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 3

    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert {"git_commit", "git_dirty", "python", "versions", "device", "overrides"} <= set(provenance)
    assert provenance["versions"]["torch"] == torch.__version__.split("+")[0] or provenance["versions"]["torch"]
    assert "trainer.epochs=3" in provenance["overrides"]
    assert "completed" in proc.stderr + proc.stdout


def test_wandb_offline_files_live_in_the_run_dir(run_app, tmp_path):
    args = [a for a in FAST if a != "logger=none"]
    run_app(*args, "logger.wandb.tags=[smoke]", check=True)
    [run_dir] = run_dirs(tmp_path)
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))


def test_classification_experiment_reports_accuracy_and_tests_best_checkpoint(run_app, tmp_path):
    run_app("experiment=spirals", "trainer.epochs=4", "scheduler.warmup_steps=1", "data.n_samples=600", "logger=none", "device=cpu", check=True)
    [run_dir] = run_dirs(tmp_path)
    rows = read_metrics(run_dir)
    assert "val_accuracy" in rows[0]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val_accuracy" and summary["best"] == pytest.approx(max(accuracies))
    assert {"test_loss", "test_accuracy"} <= set(summary["test"])


def test_same_overrides_give_the_same_numbers(run_app, tmp_path):
    run_app(*FAST, check=True)
    run_app(*FAST, check=True)
    run_app(*FAST, "seed=7", check=True)
    first, second, other_seed = [read_metrics(d) for d in run_dirs(tmp_path)]  # in creation order

    def numbers(rows):
        return [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in rows]

    assert numbers(first) == numbers(second)
    assert numbers(first) != numbers(other_seed)


def test_diverged_run_is_recorded_and_returns_worst_value(run_app, tmp_path):
    proc = run_app(*FAST, "trainer.epochs=20", "optimizer=sgd", "optimizer.lr=1e6", "scheduler=none", check=True)
    [run_dir] = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert summary["objective"] == "inf"  # JSON has no infinity: written as a string
    assert summary["epochs_run"] < 20
    assert "non-finite loss" in proc.stderr + proc.stdout


def test_grid_multirun_writes_jobs_and_sweep_summary(run_app, tmp_path):
    run_app("--multirun", *FAST, "optimizer.lr=1e-3,1e-2", "model=mlp,resmlp", check=True)
    jobs = run_dirs(tmp_path)
    assert len(jobs) == 4
    sweep_dir = jobs[0].parent
    assert sweep_dir.parent.parent.name == "sweeps"
    with open(sweep_dir / "sweep_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["status"] == "completed" for r in rows)
    combos = {tuple(sorted(r["overrides"].split())) for r in rows}
    assert len(combos) == 4 and all(any(o.startswith("optimizer.lr=") for o in c) for c in combos)
    for row in rows:
        summary = json.loads((sweep_dir / row["job"] / "summary.json").read_text())
        assert float(row["objective"]) == pytest.approx(summary["objective"])
    # the sweep report: a table of the jobs with the overrides that vary, the best, the curves
    report = (sweep_dir / "report.md").read_text()
    assert "| trial | state | value | epochs | duration_s | model | optimizer.lr |" in report
    best = min(rows, key=lambda r: float(r["objective"]))
    assert f"**Best:** trial {best['job']}," in report
    assert (sweep_dir / "report_curves.png").stat().st_size > 0


def test_optuna_search_runs_trials_and_persists_the_study(run_app, tmp_path):
    optuna = pytest.importorskip("optuna")
    run_app("--multirun", "hparams_search=regression_optuna", "hydra.sweeper.n_trials=3", *FAST, check=True)
    jobs = run_dirs(tmp_path)
    assert len(jobs) == 3
    sweep_dir = jobs[0].parent
    # the study lives in a stable file named after it, not in the (timestamped) sweep dir
    storage = f"sqlite:///{tmp_path / 'outputs' / 'studies' / 'train-regression_optuna.db'}"
    [summary] = optuna.study.get_all_study_summaries(storage)
    assert summary.study_name == "train-regression_optuna"
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    objectives = sorted(json.loads((j / "summary.json").read_text())["objective"] for j in jobs)
    assert sorted(t.value for t in trials) == pytest.approx(objectives)
    assert [len(t.intermediate_values) for t in trials] == [3, 3, 3]  # one value per epoch
    assert sorted(j.name for j in jobs) == [str(t.number) for t in trials]  # run dir = trial number
    assert (sweep_dir / "sweep_summary.csv").exists()


def test_optuna_direction_follows_monitor_mode(run_app, tmp_path):
    optuna = pytest.importorskip("optuna")
    run_app("--multirun", "experiment=spirals", "hparams_search=spirals_optuna", "hydra.sweeper.n_trials=2",
            "trainer.epochs=2", "scheduler.warmup_steps=1", "data.n_samples=300", "logger=none", "device=cpu", check=True)
    storage = f"sqlite:///{tmp_path / 'outputs' / 'studies' / 'spirals-spirals_optuna.db'}"
    [summary] = optuna.study.get_all_study_summaries(storage)
    assert summary.direction == optuna.study.StudyDirection.MAXIMIZE


def test_help_lists_groups_and_options(run_app):
    proc = run_app("--help", check=True)
    for text in ("model: mlp, resmlp", "optimizer: adam, adamw, sgd", "scheduler:", "data:", "experiment:"):
        assert text in proc.stdout
    cfg = run_app("model=resmlp", "--cfg", "job", check=True).stdout
    assert "app.models.ResidualMLP" in cfg and "hydra:" not in cfg
    assert "Hydra" in run_app("--info", check=True).stdout


def test_default_experiment_reaches_its_target_accuracy(run_app, tmp_path):
    """The README's default run, exactly as shipped: val MSE below 0.01 in the default budget."""
    run_app(check=True)
    [run_dir] = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] in ("completed", "early_stopped")
    assert summary["best"] < 0.01
    assert list((run_dir / "wandb").glob("offline-run-*"))  # W&B offline by default


def test_jobs_of_one_process_do_not_share_wandb_runs_or_log_handlers(run_app, tmp_path):
    args = [a for a in FAST if a != "logger=none"]
    run_app("--multirun", *args, "optimizer.lr=1e-3,2e-3", check=True)
    jobs = run_dirs(tmp_path)
    assert len(jobs) == 2
    for job in jobs:
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
        log = (job / "train.log").read_text()
        assert log.count("completed: best") == 1  # only its own job's lines
        assert str(job.relative_to(tmp_path)) in log  # the final line names the run dir relative to the launch dir


def test_host_resident_batches_give_the_same_numbers(run_app, tmp_path):
    run_app(*FAST, check=True)
    run_app(*FAST, "trainer.data_on_device=false", check=True)
    on_device, on_host = [read_metrics(d) for d in run_dirs(tmp_path)]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in rows]  # noqa: E731
    assert strip(on_device) == strip(on_host)
