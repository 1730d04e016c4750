"""trainer.mode=auto: the monitor's direction follows the metric (declared next to each metric in
app/train/tasks.py), resolved once before early stopping, checkpoints, the summary and sweeps read it."""
from __future__ import annotations

import csv
import json
import logging

import pytest
from omegaconf import OmegaConf

from app.config import resolve_mode, sweep_direction
from app.errors import ConfigError
from app.train.tasks import TASKS, metric_direction
from tests.conftest import run_dirs


@pytest.mark.parametrize("metric, better", [
    ("val_loss", "min"), ("train_loss", "min"), ("val_mae", "min"), ("val_accuracy", "max"),
    ("test_accuracy", "max"), ("val_rmse", "min"), ("val_error", "min"), ("val_f1", "max"),
    ("val_auc", "max"), ("val_r2", "max"), ("val_macro_f1", "max"),
])
def test_metric_direction_by_declaration_or_name(metric, better):
    assert metric_direction(metric) == better


def test_every_declared_metric_has_a_direction():
    for task in TASKS.values():
        for name in task.metric_names():
            assert task.direction(name) in ("min", "max")


def test_unknown_metric_has_no_direction_and_auto_asks_for_a_mode():
    assert metric_direction("val_wobble") is None
    with pytest.raises(ConfigError, match="trainer.mode"):
        sweep_direction("auto", "val_wobble")


def test_auto_follows_the_monitor_everywhere_it_is_read(compose_cfg):
    cfg = compose_cfg("data=blobs", "trainer.monitor=val_accuracy", "scheduler=plateau")
    assert cfg.trainer.mode == "auto"
    resolve_mode(cfg)
    assert cfg.trainer.mode == "max"
    assert cfg.callbacks.early_stopping.mode == "max"  # ${trainer.mode}
    assert cfg.scheduler.mode == "max"
    assert resolve_mode(compose_cfg()).trainer.mode == "min"  # val_loss


def test_explicit_mode_against_the_metric_is_kept_with_one_warning(compose_cfg, caplog):
    cfg = compose_cfg("data=blobs", "trainer.monitor=val_accuracy", "trainer.mode=min")
    with caplog.at_level(logging.WARNING, logger="app"):
        resolve_mode(cfg)
        resolve_mode(cfg)
    assert cfg.trainer.mode == "min"
    warnings = [r.getMessage() for r in caplog.records if "trainer.mode=min" in r.getMessage()]
    assert len(warnings) == 1 and "val_accuracy" in warnings[0]


def test_hparams_search_preset_direction_follows_the_monitor():
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    def direction(*overrides):
        with initialize_config_dir(config_dir=str(CONF)):
            cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        return OmegaConf.select(cfg, "hydra.sweeper.direction")

    assert direction("hparams_search=regression_optuna") == "minimize"
    assert direction("hparams_search=regression_optuna", "data=blobs", "trainer.monitor=val_accuracy") == "maximize"
    assert direction("experiment=spirals", "hparams_search=spirals_optuna") == "maximize"
    assert direction("experiment=spirals", "hparams_search=spirals_optuna", "trainer.mode=min") == "minimize"


@pytest.mark.slow
def test_blobs_monitoring_accuracy_keeps_the_most_accurate_epoch(run_app, tmp_path):
    run_app("data=blobs", "data.n_samples=400", "data.cluster_std=3.0", "trainer.monitor=val_accuracy",
            "trainer.epochs=6", "optimizer.lr=0.003", "logger=none", "device=cpu", "trainer.progress_bar=false",
            check=True)
    [run_dir] = run_dirs(tmp_path)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_accuracy")]
    accuracies = [float(r["val_accuracy"]) for r in rows]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["mode"] == "max"
    assert summary["best"] == pytest.approx(max(accuracies))
    assert summary["best_epoch"] == int(rows[accuracies.index(max(accuracies))]["epoch"])
