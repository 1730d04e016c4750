"""Experiment loggers (TensorBoard, MLflow, W&B) driven by a real Trainer, read back through each
tool's own reader; and the guard every logger runs under: a failing logger warns once, turns
itself off, and training finishes with a complete metrics.csv."""
from __future__ import annotations

import csv
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from app.callbacks import Callback, Checkpoint, CSVLogger
from app.callbacks.logger import Logger, flatten
from app.train.tasks import TASKS
from app.train.trainer import Trainer
from tests.conftest import options_of

ROOT = Path(__file__).resolve().parent.parent
RUN_CONFIG = {
    "seed": 0,
    "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.05},
    "model": {"nodes": [8, 8], "dropout": None},
    "trainer": {"epochs": 3, "compile": False},
}


class ListBatches:
    """Fixed (x, y) batches with the `num_samples` the trainer divides by."""

    def __init__(self, n_batches=3, size=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.batches = [(torch.randn(size, 3, generator=g), torch.randn(size, 1, generator=g))
                        for _ in range(n_batches)]
        self.num_samples = n_batches * size

    def __iter__(self):
        return iter(self.batches)


def make_trainer(run_dir: Path, *loggers: Callback, epochs=3, extra=()) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    callbacks = [Checkpoint(run_dir / "checkpoints", every=1, keep_last_k=0), CSVLogger(run_dir / "metrics.csv"), *loggers, *extra]
    return Trainer(model, optimizer, TASKS["regression"], device=torch.device("cpu"), epochs=epochs,
                   callbacks=callbacks)


def fit_and_end(trainer: Trainer, test_metrics=None) -> dict:
    """Fit, then end the run as the app does: the summary to every callback's on_run_end."""
    batches = ListBatches()
    result = trainer.fit(batches, batches)
    summary = {"status": result.stop_reason, "monitor": result.monitor, "mode": result.mode,
               "best": result.best, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
               "test": test_metrics or {}}
    for callback in trainer.callbacks:
        callback.on_run_end(summary)
    return summary


def csv_epochs(run_dir: Path) -> list[int]:
    with open(run_dir / "metrics.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def logger_warnings(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "app.callbacks.logger"]


# ---------------------------------------------------------------------------- the guard
class Exploding(Logger):
    """A logger whose backend breaks at the second epoch."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.steps, self.aborted = [], 0

    def log_metrics(self, metrics, step):
        if step == 2:
            raise OSError(28, "No space left on device")
        self.steps.append(step)

    def finish(self, summary):
        raise AssertionError("finish must not run once the logger is off")

    def abort(self):
        self.aborted += 1


def test_a_failing_logger_warns_once_turns_off_and_training_completes(tmp_path, caplog):
    logger = Exploding(dir=tmp_path)
    trainer = make_trainer(tmp_path, logger, epochs=4)
    summary = fit_and_end(trainer)
    assert summary["status"] == "completed" and summary["epochs_run"] == 4
    assert csv_epochs(tmp_path) == [1, 2, 3, 4]
    assert logger.steps == [1]  # off after the failure at epoch 2
    assert logger.failed and logger.aborted == 1
    (warning,) = logger_warnings(caplog)
    assert "Exploding" in warning.getMessage() and "No space left on device" in warning.getMessage()
    assert logger.state_dict() == {}  # checkpoints still save


def test_flatten_dots_nested_keys_and_keeps_lists():
    assert flatten(RUN_CONFIG) == {
        "seed": 0, "optimizer._target_": "torch.optim.SGD", "optimizer.lr": 0.05,
        "model.nodes": [8, 8], "model.dropout": None, "trainer.epochs": 3, "trainer.compile": False,
    }


def test_importing_the_callbacks_imports_no_logging_backend():
    code = ("import sys, app.callbacks; "
            "print(sorted(m for m in ('mlflow', 'tensorboard', 'wandb') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------- TensorBoard
def tensorboard_reader(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    return EventAccumulator(str(log_dir)).Reload()


def hparams_of(reader):
    from tensorboard.plugins.hparams import metadata

    content = reader.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    hparams = {k: v.string_value if v.HasField("string_value") else v.number_value
               for k, v in start.hparams.items()}
    return hparams, end.status


def test_tensorboard_scalars_per_epoch_and_hparams_with_final_metrics(tmp_path):
    from tensorboard.plugins.hparams import api_pb2

    from app.callbacks.tensorboard_logger import TensorBoardLogger

    logger = TensorBoardLogger(**options_of("logger", "tensorboard"), dir=tmp_path, group="sweep-1")
    logger.run_config = RUN_CONFIG
    logger.hparams = {"optimizer.lr": 0.05, "model.nodes": [8, 8], "trainer.compile": False}
    trainer = make_trainer(tmp_path, logger)
    summary = fit_and_end(trainer, test_metrics={"test_loss": 0.25, "test_mae": 0.5})

    reader = tensorboard_reader(tmp_path / "tensorboard")
    scalars = set(reader.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_mae", "lr", "epoch_time"} <= scalars
    assert "epoch" not in scalars
    for tag in ("train_loss", "val_loss", "val_mae"):
        events = reader.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([m[tag] for m in trainer.history], rel=1e-6)
    (best,) = reader.Scalars("best_val_loss")
    assert (best.step, best.value) == (summary["best_epoch"], pytest.approx(summary["best"], rel=1e-6))
    assert [(e.step, e.value) for e in reader.Scalars("test_mae")] == [(3, 0.5)]

    hparams, status = hparams_of(reader)
    assert hparams == {"optimizer.lr": 0.05, "model.nodes": "[8, 8]", "trainer.compile": "False",
                       "group": "sweep-1"}
    assert status == api_pb2.STATUS_SUCCESS
    assert logger.writer is None  # closed at the run's end


def test_tensorboard_without_hparams_records_the_flattened_config(tmp_path):
    from app.callbacks.tensorboard_logger import TensorBoardLogger

    logger = TensorBoardLogger(**options_of("logger", "tensorboard"), dir=tmp_path)
    logger.run_config = RUN_CONFIG
    fit_and_end(make_trainer(tmp_path, logger, epochs=1))
    hparams, _ = hparams_of(tensorboard_reader(tmp_path / "tensorboard"))
    assert hparams["optimizer.lr"] == 0.05 and hparams["trainer.epochs"] == 3
    assert "model.dropout" not in hparams and "group" not in hparams  # None is left out


class SnapshotThenInterrupt(Callback):
    """Keep a copy of last.pt as it was after epoch `keep`, then die after epoch `keep + 1`:
    the logger has seen an epoch the checkpoint the run resumes from has not."""

    def __init__(self, checkpoints: Path, keep: int) -> None:
        self.checkpoints, self.keep = checkpoints, keep

    def on_epoch_end(self, trainer, metrics) -> None:
        if trainer.epoch == self.keep:
            for callback in trainer.callbacks:  # last.pt is written on a background thread
                if hasattr(callback, "flush"):
                    callback.flush()
            shutil.copy(self.checkpoints / "last.pt", self.checkpoints / "kept.pt")
        if trainer.epoch == self.keep + 1:
            raise KeyboardInterrupt


def test_tensorboard_resume_logs_each_epoch_once(tmp_path):
    from app.callbacks.tensorboard_logger import TensorBoardLogger

    checkpoints = tmp_path / "checkpoints"
    first = TensorBoardLogger(**options_of("logger", "tensorboard"), dir=tmp_path)
    trainer = make_trainer(tmp_path, first, epochs=4, extra=[SnapshotThenInterrupt(checkpoints, 2)])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(ListBatches(), ListBatches())
    for callback in trainer.callbacks:  # as the app ends a run (the checkpoint's write in flight lands)
        callback.on_run_end({"status": "failed", "monitor": "val_loss", "epochs_run": 3})
    shutil.move(checkpoints / "kept.pt", checkpoints / "last.pt")

    second = TensorBoardLogger(**options_of("logger", "tensorboard"), dir=tmp_path)
    resumed = make_trainer(tmp_path, second, epochs=4)
    resumed.callbacks[0].restore(resumed)
    assert resumed.epoch == 2
    fit_and_end(resumed)

    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    events = tensorboard_reader(tmp_path / "tensorboard").Scalars("train_loss")
    assert [e.step for e in events] == [1, 2, 3, 4]  # epoch 3 of the first attempt purged
    assert [e.value for e in events] == pytest.approx([m["train_loss"] for m in resumed.history], rel=1e-6)


def test_tensorboard_that_cannot_write_warns_once_and_training_completes(tmp_path, caplog):
    from app.callbacks.tensorboard_logger import TensorBoardLogger

    (tmp_path / "tensorboard").write_text("a file where the event folder should be")
    logger = TensorBoardLogger(**options_of("logger", "tensorboard"), dir=tmp_path)
    summary = fit_and_end(make_trainer(tmp_path, logger))
    assert summary["status"] == "completed"
    assert csv_epochs(tmp_path) == [1, 2, 3]
    (warning,) = logger_warnings(caplog)
    assert "TensorBoardLogger" in warning.getMessage()
    assert logger.failed and logger.writer is None


# ---------------------------------------------------------------------------- MLflow
def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def mlflow_logger(run_dir: Path, uri: str, **kw):
    from app.callbacks.mlflow_logger import MLflowLogger

    options = options_of("logger", "mlflow", tracking_uri=uri, experiment_name="tests", tags=kw.pop("tags", {}))
    logger = MLflowLogger(**options, dir=run_dir, **kw)
    logger.run_config = RUN_CONFIG
    return logger


def test_mlflow_params_metrics_summary_and_best_checkpoint(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(tmp_path / "mlflow.db")
    logger = mlflow_logger(tmp_path / "run", uri, name="lr=0.05", tags={"team": "tests"})
    logger.hparams = {"optimizer.lr": 0.05}
    trainer = make_trainer(tmp_path / "run", logger)
    summary = fit_and_end(trainer, test_metrics={"test_loss": 0.25})

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lr=0.05"
    assert client.get_experiment(run.info.experiment_id).name == "tests"
    assert run.data.params == {k: str(v) for k, v in flatten(RUN_CONFIG).items()}
    assert run.data.tags["status"] == "completed" and run.data.tags["team"] == "tests"
    assert "mlflow.parentRunId" not in run.data.tags  # no group: no parent
    for key in ("train_loss", "val_loss", "val_mae", "lr"):
        history = client.get_metric_history(logger.run_id, key)
        assert [(m.step, m.value) for m in history] == [(m["epoch"], m[key]) for m in trainer.history]
    assert [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "best_val_loss")] == \
        [(summary["best_epoch"], summary["best"])]
    assert run.data.metrics["test_loss"] == 0.25
    assert "epoch" not in run.data.metrics
    artifacts = [a.path for a in client.list_artifacts(logger.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.pt"]
    # a local store keeps its artifacts beside the database, not in ./mlruns of the cwd
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_mlflow_trials_of_one_group_share_one_parent_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(tmp_path / "mlflow.db")
    loggers = [mlflow_logger(tmp_path / f"trial{i}", uri, name=f"trial {i}", group=group)
               for i, group in enumerate(["study-a", "study-a", "study-b"])]
    for i, logger in enumerate(loggers):
        fit_and_end(make_trainer(tmp_path / f"trial{i}", logger, epochs=1))

    client = MlflowClient(tracking_uri=uri)
    parents = [client.get_run(logger.run_id).data.tags["mlflow.parentRunId"] for logger in loggers]
    assert parents[0] == parents[1] != parents[2]
    parent = client.get_run(parents[0])
    assert parent.info.run_name == "study-a"
    assert (parent.data.tags["group"], parent.data.tags["sweep"]) == ("study-a", "true")
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0]}'")
    assert sorted(r.info.run_name for r in children) == ["trial 0", "trial 1"]


def test_mlflow_resume_continues_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = sqlite_uri(tmp_path / "mlflow.db")
    first = mlflow_logger(tmp_path, uri)
    trainer = make_trainer(tmp_path, first, epochs=2)
    fit_and_end(trainer)

    second = mlflow_logger(tmp_path, uri)
    second.run_config = {**RUN_CONFIG, "trainer": {**RUN_CONFIG["trainer"], "epochs": 4}}  # extended
    resumed = make_trainer(tmp_path, second, epochs=4)
    resumed.callbacks[0].restore(resumed)
    assert second.run_id == first.run_id
    fit_and_end(resumed)

    client = MlflowClient(tracking_uri=uri)
    assert len(client.search_runs([client.get_experiment_by_name("tests").experiment_id])) == 1
    history = client.get_metric_history(first.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    run = client.get_run(first.run_id)
    assert run.data.params["trainer.epochs"] == "3"  # params are immutable: the first value stays
    assert run.info.status == "FINISHED"


def test_mlflow_store_that_cannot_be_opened_warns_once_and_training_completes(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's folder should be")
    logger = mlflow_logger(tmp_path, sqlite_uri(blocker / "mlflow.db"))
    summary = fit_and_end(make_trainer(tmp_path, logger))
    assert summary["status"] == "completed"
    assert csv_epochs(tmp_path) == [1, 2, 3]
    (warning,) = logger_warnings(caplog)
    assert "MLflowLogger" in warning.getMessage()
    assert logger.failed and logger.client is None


def test_mlflow_default_store_is_sqlite_under_outputs(tmp_path, monkeypatch):
    from app.callbacks.mlflow_logger import MLflowLogger

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert MLflowLogger(**options_of("logger", "mlflow")).tracking_uri == f"sqlite:///{tmp_path.resolve()}/outputs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert MLflowLogger(**options_of("logger", "mlflow")).tracking_uri == "http://127.0.0.1:5000"
    assert MLflowLogger(**options_of("logger", "mlflow", tracking_uri="sqlite:////x.db")).tracking_uri == "sqlite:////x.db"


# ---------------------------------------------------------------------------- W&B
def test_wandb_missing_package_warns_once_and_training_completes(tmp_path, caplog, monkeypatch):
    from app.callbacks import WandbLogger

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` fails
    logger = WandbLogger(**options_of("logger", "wandb", tags=[]), dir=tmp_path / "wandb-run")
    summary = fit_and_end(make_trainer(tmp_path, logger))
    assert summary["status"] == "completed" and csv_epochs(tmp_path) == [1, 2, 3]
    (warning,) = logger_warnings(caplog)
    assert "WandbLogger" in warning.getMessage() and "wandb" in warning.getMessage()
    assert logger.run is None


RACE = """
import sys
from app.callbacks.mlflow_logger import MLflowLogger
logger = MLflowLogger(tracking_uri=sys.argv[1], experiment_name="race", tags=None, log_checkpoint=True, group="study", name=sys.argv[2])
logger.start(type("Resumed", (), {"epoch": 0})())
print(logger.parent_run_id)
"""


@pytest.mark.slow
def test_mlflow_processes_starting_at_once_on_a_fresh_store_share_one_parent(tmp_path):
    """Joblib workers are separate processes: on a fresh SQLite store they race to create its
    tables, the experiment and the sweep's parent run."""
    uri = sqlite_uri(tmp_path / "mlflow.db")
    procs = [subprocess.Popen([sys.executable, "-c", RACE, uri, f"trial {i}"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    parents = {out.strip() for out, _ in outputs}
    assert len(parents) == 1 and "None" not in parents, outputs


# ---------------------------------------------------------------------------- through the app
@pytest.fixture
def app_importable(monkeypatch):
    """`python -m app` from another cwd without installing this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))


@pytest.mark.slow
def test_app_with_tensorboard_writes_events_in_the_run_dir(run_app, tmp_path, app_importable):
    from tests.conftest import FAST, run_dirs

    run_app(*[a for a in FAST if a != "logger=none"], "logger=tensorboard", check=True)
    [run_dir] = run_dirs(tmp_path)
    reader = tensorboard_reader(run_dir / "tensorboard")
    assert [e.step for e in reader.Scalars("val_loss")] == csv_epochs(run_dir) == [1, 2, 3]
    hparams, _ = hparams_of(reader)
    assert hparams["trainer.epochs"] == 3  # no sweep: the flattened config


@pytest.mark.slow
def test_app_multirun_jobs_in_one_process_are_mlflow_children_of_one_sweep(run_app, tmp_path, app_importable):
    from mlflow.tracking import MlflowClient

    from tests.conftest import FAST, run_dirs

    args = [a for a in FAST if a != "logger=none"]
    run_app("--multirun", *args, "logger=mlflow", "optimizer.lr=1e-3,2e-3", check=True)
    assert len(run_dirs(tmp_path)) == 2
    client = MlflowClient(tracking_uri=sqlite_uri(tmp_path / "outputs" / "mlflow.db"))
    experiment = client.get_experiment_by_name("hydra-torch-app")
    everything = client.search_runs([experiment.experiment_id])
    runs = [r for r in everything if r.data.tags.get("sweep") != "true"]
    [parent] = [r for r in everything if r.data.tags.get("sweep") == "true"]
    assert parent.info.run_name == parent.data.tags["group"] == run_dirs(tmp_path)[0].parent.name
    assert sorted(r.data.params["optimizer.lr"] for r in runs) == ["0.001", "0.002"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    for run in runs:
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
        artifacts = client.list_artifacts(run.info.run_id, "checkpoints")
        assert [a.path for a in artifacts] == ["checkpoints/best.pt"]
