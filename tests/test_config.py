"""Every option of every group composes, type-checks and instantiates; validation catches
what types cannot."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from app.run import build
from app.config import resolve_mode, validate
from app.errors import ConfigError
from app.train.tasks import TASKS, task_of
from tests.conftest import CONF, ROOT

GROUPS = ["model", "optimizer", "scheduler", "callbacks", "device", "data", "logger", "trainer",
          "experiment", "hparams_search"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert options("model") == ["mlp", "resmlp"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert options("scheduler") == ["cosine", "none", "plateau", "step", "warmup_cosine"]
    assert options("callbacks") == ["checkpoint", "early_stopping", "health", "progress"]
    assert options("device") == ["auto", "cpu", "cuda", "mps"]
    assert set(options("data")) >= {"regression", "spirals", "file"}
    assert options("logger") == ["mlflow", "none", "tensorboard", "wandb"]
    assert len(options("experiment")) >= 2
    assert len(options("hparams_search")) >= 1


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "table.csv"
    rows = ["a,b,y"] + [f"{i / 50},{(i * 7 % 13) / 13},{i % 3}" for i in range(50)]
    path.write_text("\n".join(rows) + "\n")
    return path


def overrides_for(group: str, option: str, table) -> list[str]:
    """The option, plus what it needs (a file for data=file; a small data set otherwise)."""
    if (group, option) == ("data", "file"):
        return ["data=file", f"data.path={table}", "data.features=[a,b]", "data.target=y"]
    return [f"{group}={option}", "data.n_samples=200"]


@pytest.mark.parametrize("group, option", [(g, o) for g in ["model", "optimizer", "scheduler", "data"] for o in options(g)])
def test_each_option_composes_validates_and_instantiates(compose_cfg, table, group, option):
    cfg = resolve_mode(compose_cfg(*overrides_for(group, option, table)))
    task = task_of(cfg.data)
    validate(cfg, TASKS[task].metric_names() if task in TASKS else None)
    data = build.build_data(cfg)
    model = build.build_model(cfg, data)
    optimizer = build.build_optimizer(cfg, model)
    scheduler, interval = build.build_scheduler(cfg, optimizer)
    assert interval in ("epoch", "step")
    out = model(data.train.x[:5])
    assert out.shape == (5, data.out_features)
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optimizer.lr) or scheduler is not None
    if group == "scheduler":
        assert (scheduler is None) == (option == "none")


@pytest.mark.parametrize("group, option", [(g, o) for g in ["callbacks", "device", "logger", "trainer"] for o in options(g)])
def test_runtime_groups_compose_validate_and_instantiate(compose_cfg, tmp_path, group, option):
    # A callbacks list needs its one checkpoint; each option is built as a run would build it.
    cfg = compose_cfg(f"callbacks=[checkpoint,{option}]" if group == "callbacks" else f"{group}={option}")
    assert OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    validate(cfg, TASKS["regression"].metric_names())
    callbacks = build.build_callbacks(cfg, tmp_path, run_name="r", group=None)
    built = {type(cb).__name__ for cb in callbacks}
    assert {"Checkpoint", "CSVLogger"} <= built
    if group in ("callbacks", "logger") and option != "none":
        target = OmegaConf.select(cfg, f"{group}.{option}._target_")
        assert target.rsplit(".", 1)[1] in built


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose_and_name_a_metric_their_task_produces(compose_cfg, option):
    cfg = compose_cfg(f"experiment={option}")
    validate(cfg, TASKS[task_of(cfg.data)].metric_names())


def test_classification_experiment_monitors_accuracy(compose_cfg):
    cfg = compose_cfg("experiment=spirals")
    assert task_of(cfg.data) == "classification" and cfg.trainer.mode == "auto"
    resolve_mode(cfg)  # what app.main does first: auto follows the monitor
    assert (cfg.trainer.monitor, cfg.trainer.mode, cfg.callbacks.early_stopping.mode) == ("val_accuracy", "max", "max")


def test_default_config_is_the_documented_default(compose_cfg):
    cfg = compose_cfg()
    assert cfg.model._target_ == "app.models.MLP" and (cfg.model.nodes, cfg.model.layers) == (64, 4)
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert cfg.data.n_samples == 10000 and cfg.data.val_fraction == pytest.approx(0.2)
    assert list(cfg.logger) == ["wandb"] and cfg.logger.wandb.mode == "offline"
    assert list(cfg.callbacks) == ["early_stopping", "health", "progress", "checkpoint"]
    assert cfg.trainer.monitor == "val_loss"


def test_early_stopping_follows_trainer_monitor_and_mode(compose_cfg):
    cfg = compose_cfg("trainer.monitor=val_mae", "trainer.mode=min")
    assert cfg.callbacks.early_stopping.monitor == "val_mae"
    cfg = compose_cfg("trainer.mode=max")
    assert cfg.callbacks.early_stopping.mode == "max"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["trainer.epochs=0"], "trainer.epochs"),
        (["trainer.batch_size=-4"], "trainer.batch_size"),
        (["optimizer.lr=0"], "optimizer.lr"),
        (["optimizer.lr=-1e-3"], "optimizer.lr"),
        (["callbacks.early_stopping.patience=0"], "callbacks.early_stopping.patience"),
        (["trainer.mode=maximum"], "trainer.mode"),
        (["trainer.monitor=val_acc"], "trainer.monitor"),
        (["callbacks.early_stopping.min_delta=-0.1"], "callbacks.early_stopping.min_delta"),
        (["callbacks.early_stopping.monitor=val_acc"], "callbacks.early_stopping.monitor"),
        (["model.dropout=1.5"], "model.dropout"),
        (["model.activation=swish"], "model.activation"),
        (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], "optimizer.nesterov"),
        (["scheduler=plateau", "scheduler.interval=step"], "scheduler.interval"),
        (["logger.wandb.mode=sometimes"], "logger.wandb.mode"),
        (["~callbacks.checkpoint"], "callbacks"),
        (["++trainer.fast_dev_run=true"], "trainer.fast_dev_run"),
        (["+trainer.strategy=ddp"], "trainer.strategy"),
        (["+device.name=gpu0"], "device.name"),
        (["+model.foo=1"], "model.foo"),
        (["++optimizer.momentum=0.9"], "optimizer.momentum"),
        (["+scheduler.warmup=3"], "scheduler.warmup"),
        (["+data.n_rows=5"], "data.n_rows"),
        (["++callbacks.health.bogus=1"], "callbacks.health.bogus"),
        (["logger=[wandb,tensorboard]", "+logger.tensorboard.flush_every=1"], "logger.tensorboard.flush_every"),
        (["+seedz=3"], "seedz"),
        (["device.type=tpu"], "device.type"),
        (["scheduler=warmup_cosine", "trainer.epochs=4", "scheduler.warmup_steps=5"], "scheduler.warmup_steps"),
    ],
)
def test_semantic_checks_name_the_key_value_and_accepted(compose_cfg, overrides, key):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ConfigError) as info:
        validate(cfg, TASKS["regression"].metric_names())
    assert info.value.key == key
    message = str(info.value)
    assert f"`{key}`" in message and "Accepted:" in message
    assert "\n" not in message


def test_accuracy_monitor_refused_for_regression(compose_cfg):
    cfg = compose_cfg("trainer.monitor=val_accuracy", "trainer.mode=max")
    with pytest.raises(ConfigError, match="val_loss, val_mae"):
        validate(cfg, TASKS["regression"].metric_names())


def test_conf_folders_match_documented_groups():
    present = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert set(GROUPS) <= present
    assert (ROOT / "app" / "main.py").exists()
