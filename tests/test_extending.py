"""Extending is one file plus one YAML: a model, an optimizer, a dataset, a callback and a logger
of the user's own, from their config dir, with no edit of app/ (README, Extending). Also: how
build_callbacks orders what it builds, and what run context it passes."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from app.run import build
from tests.conftest import run_dirs

# ------------------------------------------------------------------ the user's code: my_lab/
MODULES = {
    "models.py": '''
        import torch

        class TinyNet(torch.nn.Sequential):
            """in_features and out_features come from the data; `hidden` from conf/model/tiny.yaml."""
            def __init__(self, in_features, out_features, hidden):
                super().__init__(torch.nn.Linear(in_features, hidden), torch.nn.Tanh(),
                                 torch.nn.Linear(hidden, out_features))
    ''',
    "optim.py": '''
        from pathlib import Path
        import torch

        class Signum(torch.optim.SGD):
            """SGD on the sign of the gradient (a different optimizer, visibly: it says so)."""
            def __init__(self, params, lr):
                super().__init__(params, lr=lr)

            @torch.no_grad()
            def step(self, closure=None):
                self.steps = getattr(self, "steps", 0) + 1
                Path("signum_steps.txt").write_text(str(self.steps))  # in the launch directory
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad.sign_()
                return super().step(closure)
    ''',
    "data.py": '''
        import torch
        from app.data.base import make_splits

        def line(n_samples, slope, val_fraction, seed):
            """y = slope * x on [0, 1]."""
            x = torch.linspace(0, 1, n_samples).unsqueeze(1)
            return make_splits("regression", x, slope * x, 1, val_fraction, 0.0, seed)

        line.task = "regression"
    ''',
    "callbacks.py": '''
        from pathlib import Path
        from app.callbacks import Callback

        class EpochFiles(Callback):
            """Writes <run dir>/<folder>/epoch-N.txt holding the monitored value after each epoch."""
            def __init__(self, folder, monitor, run_dir):
                self.folder, self.monitor = Path(run_dir) / folder, monitor

            def on_epoch_end(self, trainer, metrics):
                self.folder.mkdir(exist_ok=True)
                (self.folder / f"epoch-{int(metrics['epoch'])}.txt").write_text(repr(metrics[self.monitor]))
    ''',
    "loggers.py": '''
        import json
        from app.callbacks import Logger

        class JsonLines(Logger):
            """One JSON line per epoch in <run dir>/<filename>; the run's name and config first."""
            def __init__(self, filename, *, dir, name=None, group=None):
                super().__init__(dir=dir, name=name, group=group)
                self.path = self.dir / filename

            def start(self, trainer):
                header = {"name": self.name, "model": self.run_config["model"]["_target_"]}
                self.path.write_text(json.dumps(header) + "\\n")

            def log_metrics(self, metrics, step):
                with open(self.path, "a") as f:
                    f.write(json.dumps({"step": step, **metrics}) + "\\n")
    ''',
}

# ------------------------------------------------------------------ the user's config dir: my_conf/
YAMLS = {
    "model/tiny.yaml": "_target_: my_lab.models.TinyNet\nhidden: 8\n",
    "optimizer/signum.yaml": "_target_: my_lab.optim.Signum\n_partial_: true\nlr: 0.01\n",
    "data/line.yaml": "_target_: my_lab.data.line\nn_samples: 200\nslope: 2.0\nval_fraction: 0.25\nseed: 0\n",
    "callbacks/epoch_files.yaml": "# @package callbacks.epoch_files\n_target_: my_lab.callbacks.EpochFiles\n"
                                  "folder: epochs\nmonitor: ${trainer.monitor}\n",
    "logger/jsonl.yaml": "# @package logger.jsonl\n_target_: my_lab.loggers.JsonLines\nfilename: metrics.jsonl\n",
}


def write_user_files(root):
    lib = root / "lib" / "my_lab"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    for name, text in MODULES.items():
        (lib / name).write_text(textwrap.dedent(text))
    conf = root / "my_conf"
    for name, text in YAMLS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    return conf


@pytest.mark.slow
def test_a_model_optimizer_dataset_callback_and_logger_from_the_users_config_dir(tmp_path):
    conf = write_user_files(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib"), "WANDB_SILENT": "true"}
    args = ["--config-dir", str(conf), "model=tiny", "optimizer=signum", "data=line",
            "+callbacks=epoch_files", "logger=[jsonl,tensorboard]", "trusted_modules=[my_lab]",
            "logger.jsonl.filename=log.jsonl", "callbacks.epoch_files.folder=per_epoch",
            "trainer.epochs=3", "device=cpu", "trainer.progress_bar=false", "trainer.log_every=1"]
    proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [run] = run_dirs(tmp_path)

    log = (run / "train.log").read_text()
    assert "TinyNet" in log and "regression: 150 train / 50 val" in log  # the model and the data
    # The optimizer: one step per epoch (150 samples, one batch), each counted by Signum.
    assert (tmp_path / "signum_steps.txt").read_text() == "3"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # metrics.csv is written whatever the list

    # The callback: one file per epoch, holding that epoch's val_loss, in the folder set by override.
    for row in rows:
        assert float((run / "per_epoch" / f"epoch-{row['epoch']}.txt").read_text()) == pytest.approx(float(row["val_loss"]))
    assert sorted(p.name for p in (run / "per_epoch").iterdir()) == ["epoch-1.txt", "epoch-2.txt", "epoch-3.txt"]

    # The logger: got dir and name from the app, run_config, every epoch; alongside TensorBoard.
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert lines[0]["model"] == "my_lab.models.TinyNet" and lines[0]["name"]
    assert [line["step"] for line in lines[1:]] == [1, 2, 3]
    assert [line["val_loss"] for line in lines[1:]] == pytest.approx([float(r["val_loss"]) for r in rows])
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_build_callbacks_order_run_context_and_hparams(compose_cfg, tmp_path):
    cfg = compose_cfg("logger=[tensorboard,mlflow]", "logger.mlflow.tracking_uri=sqlite:////nowhere.db")
    callbacks = build.build_callbacks(cfg, tmp_path, run_name="lr=0.1", group="study-1",
                                      hparams={"optimizer.lr": 0.1})
    names = [type(cb).__name__ for cb in callbacks]
    # Composition order, the checkpoint after the callbacks whose state it saves, then metrics.csv,
    # then the loggers in the order of the logger list.
    assert names == ["EarlyStopping", "HealthMonitor", "ProgressLogger", "Checkpoint", "CSVLogger",
                     "TensorBoardLogger", "MLflowLogger"]
    checkpoint, csv_logger, tensorboard, mlflow = callbacks[3:]
    assert checkpoint.directory == tmp_path / "checkpoints" and checkpoint.every == cfg.trainer.checkpoint_every
    assert csv_logger.path == tmp_path / "metrics.csv"
    for logger in (tensorboard, mlflow):
        assert (logger.dir, logger.name, logger.group) == (tmp_path, "lr=0.1", "study-1")
        assert logger.hparams == {"optimizer.lr": 0.1}
        assert logger.run_config["optimizer"]["lr"] == cfg.optimizer.lr
    assert tensorboard.log_dir == tmp_path / "tensorboard" and tensorboard.flush_secs == 30
    assert mlflow.tracking_uri == "sqlite:////nowhere.db"
    outside = build.build_callbacks(compose_cfg("logger=[tensorboard]"), tmp_path, run_name="r", group=None)
    assert outside[-1].hparams == {} and outside[-1].group is None


def test_a_checkpoint_moved_by_the_list_still_runs_after_the_other_callbacks(compose_cfg, tmp_path):
    cfg = compose_cfg("callbacks=[checkpoint,progress,early_stopping]", "logger=[]")
    names = [type(cb).__name__ for cb in build.build_callbacks(cfg, tmp_path, run_name="r", group=None)]
    assert names == ["ProgressLogger", "EarlyStopping", "Checkpoint", "CSVLogger"]


def test_kwargs_targets_take_any_key_and_others_only_their_parameters(compose_cfg, tmp_path, monkeypatch):
    from app.config import ConfigError, validate

    (tmp_path / "my_cbs.py").write_text(textwrap.dedent('''
        from app.callbacks import Callback

        class Anything(Callback):
            def __init__(self, **options):
                self.options = options

        class Strict(Callback):
            def __init__(self, level):
                self.level = level
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["trusted_modules=[my_cbs]", "+callbacks.any._target_=my_cbs.Anything", "+callbacks.any.whatever=1",
              "+callbacks.strict._target_=my_cbs.Strict", "+callbacks.strict.level=2"]
    cfg = compose_cfg(*common)
    validate(cfg)
    built = build.build_callbacks(cfg, tmp_path, run_name="r", group=None)
    # **options takes any key, and the run context too
    assert [cb.options for cb in built if type(cb).__name__ == "Anything"] == [{"whatever": 1, "run_dir": tmp_path}]
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg(*common, "+callbacks.strict.levle=3"))
    assert caught.value.key == "callbacks.strict.levle" and "level" in str(caught.value)
