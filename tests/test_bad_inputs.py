"""A catalogue of bad inputs: overrides, config files, data files, run dirs, checkpoints, study
storage and output locations. Each one must exit non-zero, print no traceback, name what is
wrong and what is accepted, and leave no run marked completed.

The cases run in-process through the same entry code as `python -m app` (`app.run.launch.launch`,
which hands over to Hydra and `app.main`), so the whole catalogue takes a couple of minutes."""
from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from app.run.launch import launch
from tests.conftest import FAST

FAST_ARGS = [a for a in FAST if a != "trainer.epochs=3"] + ["trainer.epochs=2"]
BASE = ["logger=none", "device=cpu", "trainer.progress_bar=false", "trainer.epochs=2"]


def with_base(args: list[str]) -> list[str]:
    """`args` and the quick-run overrides of BASE whose keys `args` does not set (a resume keeps
    the run's own)."""
    if any(a.startswith("resume=") for a in args):
        return list(args)
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    return [*args, *(a for a in BASE if a.split("=", 1)[0] not in keys)]


def _all_loggers() -> list[logging.Logger]:
    return [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger))]


@pytest.fixture(autouse=True)
def restore_logging():
    """Hydra configures logging for each run (handlers on the captured streams, a train.log):
    take them off again, so later tests do not log into closed streams."""
    before = {id(lg): list(lg.handlers) for lg in _all_loggers()}
    yield
    for lg in _all_loggers():
        for handler in [h for h in lg.handlers if h not in before.get(id(lg), [])]:
            lg.removeHandler(handler)
            handler.close()
        for handler in before.get(id(lg), []):
            if handler not in lg.handlers:
                lg.addHandler(handler)


def invoke(cwd: Path, args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """Run `python -m app *args` in this process with cwd=`cwd`; (exit status, stdout+stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["app", *args])
    monkeypatch.delenv("APP_TEST_KILL_AT", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        launch()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return code, out + err


def completed_summaries(root: Path) -> dict[Path, str]:
    """summary.json files under root saying completed/early_stopped, with their text."""
    found = {}
    for path in root.rglob("summary.json"):
        text = path.read_text()
        try:
            status = json.loads(text).get("status")
        except ValueError:  # a damaged summary that a case put there
            continue
        if status in ("completed", "early_stopped"):
            found[path] = text
    return found


# ----------------------------------------------------------------------------- fixtures on disk
def csv(tmp: Path, name: str, text: str) -> None:
    (tmp / name).write_text(text)


def good_csv(tmp: Path) -> None:
    rows = "\n".join(f"{i % 7},{(i * 3) % 11},{i % 2}" for i in range(60))
    csv(tmp, "good.csv", "a,b,label\n" + rows + "\n")


def user_conf(tmp: Path, rel: str, text: str) -> None:
    path = tmp / "my_conf" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A real, finished 2-epoch run (a template the run-dir and checkpoint cases copy)."""
    root = tmp_path_factory.mktemp("finished")
    mp = pytest.MonkeyPatch()
    handlers = {id(lg): list(lg.handlers) for lg in _all_loggers()}
    try:
        mp.chdir(root)
        mp.setattr(sys, "argv", ["app", *FAST_ARGS])
        try:
            launch()
        except SystemExit as stop:
            assert not stop.code, stop.code
    finally:
        mp.undo()
        for lg in _all_loggers():  # what Hydra configured for this run (see restore_logging)
            for handler in [h for h in lg.handlers if h not in handlers.get(id(lg), [])]:
                lg.removeHandler(handler)
                handler.close()
    [run] = [p.parent for p in (root / "outputs").rglob(".hydra")]
    return run


def copy_run(tmp: Path, template: Path, status: str = "failed") -> Path:
    """A copy of the finished run at tmp/run, marked as interrupted so a resume would continue it."""
    run = tmp / "run"
    shutil.copytree(template, run)
    summary = json.loads((run / "summary.json").read_text())
    summary.update(status=status, error="KeyboardInterrupt", interrupted=True)
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@dataclass
class Case:
    id: str
    args: list[str]
    words: list[str]  # must appear in the output (what is wrong, what is accepted)
    setup: Callable[[Path, Path], None] | None = None  # (tmp, finished run template)
    fast: bool = True  # False: append nothing (the args are complete)
    extra: list[str] = field(default_factory=list)


def C(id, args, *words, setup=None, fast=True):
    return Case(id, args, list(words), setup, fast)


ACCEPTED = "Accepted:"
CASES = [
    # --- overrides: trainer
    C("epochs-0", ["trainer.epochs=0"], "trainer.epochs", ACCEPTED),
    C("epochs-negative", ["trainer.epochs=-3"], "trainer.epochs", ACCEPTED),
    C("epochs-text", ["trainer.epochs=abc"], "trainer.epochs", "abc"),
    C("epochs-float", ["trainer.epochs=1.5"], "trainer.epochs", "1.5"),
    C("epochs-empty", ["trainer.epochs="], "trainer.epochs"),
    C("batch-size-0", ["trainer.batch_size=0"], "trainer.batch_size", ACCEPTED),
    C("eval-batch-size-0", ["trainer.eval_batch_size=0"], "trainer.eval_batch_size", ACCEPTED),
    C("val-every-0", ["trainer.val_every=0"], "trainer.val_every", ACCEPTED),
    C("checkpoint-every-0", ["trainer.checkpoint_every=0"], "trainer.checkpoint_every", ACCEPTED),
    C("log-every-negative", ["trainer.log_every=-1"], "trainer.log_every", ACCEPTED),
    C("keep-last-k-negative", ["trainer.keep_last_k=-1"], "trainer.keep_last_k", ACCEPTED),
    C("mode-unknown", ["trainer.mode=sideways"], "trainer.mode", "auto, min or max"),
    C("monitor-not-produced", ["trainer.monitor=val_accuracy"], "trainer.monitor", "val_loss"),
    C("monitor-nonsense", ["trainer.monitor=nope"], "trainer.monitor", ACCEPTED),
    C("precision-8", ["trainer.precision=8"], "trainer.precision", "bf16-mixed"),
    C("precision-16-on-cpu", ["trainer.precision=16-mixed"], "precision", ACCEPTED),
    C("matmul-precision", ["trainer.matmul_precision=low"], "trainer.matmul_precision", "highest"),
    C("grad-clip-negative", ["trainer.grad_clip=-1"], "trainer.grad_clip", ACCEPTED),
    C("grad-clip-nan", ["trainer.grad_clip=nan"], "trainer.grad_clip", ACCEPTED),
    C("accumulate-0", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", ACCEPTED),
    C("grad-norm-every-0", ["trainer.grad_norm_every=0"], "trainer.grad_norm_every", ACCEPTED),
    C("threads-0", ["trainer.threads=0"], "trainer.threads", ACCEPTED),
    C("threads-text", ["trainer.threads=many"], "trainer.threads", "many"),
    C("cuda-graph-16-mixed", ["trainer.cuda_graph=true", "trainer.precision=16-mixed"], "trainer.precision", ACCEPTED),
    C("cuda-graph-text", ["trainer.cuda_graph=maybe"], "trainer.cuda_graph", "auto"),
    C("cuda-graph-required-on-cpu", ["trainer.cuda_graph=true"], "trainer.cuda_graph", "auto or false on cpu"),
    C("data-on-device-text", ["trainer.data_on_device=maybe"], "trainer.data_on_device", "maybe"),
    C("unknown-trainer-key", ["++trainer.bogus=1"], "trainer.bogus", ACCEPTED),
    C("unknown-trainer-key-no-plus", ["trainer.bogus=1"], "trainer.bogus"),
    C("unknown-root-key", ["+nonsense=1"], "nonsense", ACCEPTED),
    # --- overrides: seeds
    C("seed-negative", ["seed=-1"], "seed", ACCEPTED),
    C("seeds-empty", ["seeds=[]"], "seeds", ACCEPTED),
    C("seeds-duplicate", ["seeds=[1,1]"], "seeds", ACCEPTED),
    C("seeds-negative", ["seeds=[1,-2]"], "seeds", ACCEPTED),
    # --- overrides: optimizer
    C("lr-0", ["optimizer.lr=0"], "optimizer.lr", ACCEPTED),
    C("lr-negative", ["optimizer.lr=-1"], "optimizer.lr", ACCEPTED),
    C("lr-inf", ["optimizer.lr=inf"], "optimizer.lr", ACCEPTED),
    C("lr-text", ["optimizer.lr=fast"], "optimizer.lr", "fast"),
    C("weight-decay-negative", ["optimizer.weight_decay=-0.1"], "optimizer.weight_decay", ACCEPTED),
    C("betas-one", ["optimizer.betas=[0.9]"], "optimizer.betas", ACCEPTED),
    C("betas-above-1", ["optimizer.betas=[1.5,0.9]"], "optimizer.betas", ACCEPTED),
    C("momentum-above-1", ["optimizer=sgd", "optimizer.momentum=1.5"], "optimizer.momentum", ACCEPTED),
    C("nesterov-without-momentum", ["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"],
      "optimizer.nesterov", ACCEPTED),
    C("fused-and-foreach", ["optimizer.fused=true", "optimizer.foreach=true"], "optimizer.foreach", ACCEPTED),
    C("optimizer-unknown", ["optimizer=nope"], "optimizer", "adamw"),
    C("optimizer-unknown-key", ["+optimizer.foo=1"], "optimizer.foo", ACCEPTED),
    # --- overrides: model
    C("model-unknown", ["model=nope"], "model", "resmlp"),
    C("model-nodes-0", ["model.nodes=0"], "model.nodes", ACCEPTED),
    C("model-layers-0", ["model.layers=0"], "model.layers", ACCEPTED),
    C("model-dropout-1", ["model.dropout=1.0"], "model.dropout", ACCEPTED),
    C("model-activation", ["model.activation=swish2"], "model.activation", "relu"),
    C("resmlp-blocks-0", ["model=resmlp", "model.blocks=0"], "model.blocks", ACCEPTED),
    C("model-target-missing", ["model._target_=app.models.Nope"], "model._target_", ACCEPTED),
    C("model-target-untrusted", ["model._target_=os.system"], "model._target_", "trusted_modules"),
    C("model-unknown-key", ["+model.foo=1"], "model.foo", ACCEPTED),
    # --- overrides: scheduler
    C("scheduler-unknown", ["scheduler=nope"], "scheduler", "cosine"),
    C("scheduler-interval", ["scheduler.interval=batch"], "scheduler.interval", "epoch or step"),
    C("plateau-step-interval", ["scheduler=plateau", "scheduler.interval=step"], "scheduler.interval", ACCEPTED),
    C("plateau-mode", ["scheduler=plateau", "scheduler.mode=up"], "scheduler.mode", ACCEPTED),
    C("warmup-beyond-total", ["scheduler=warmup_cosine", "scheduler.warmup_steps=500"],
      "scheduler.warmup_steps", ACCEPTED),
    C("step-size-0", ["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size", ACCEPTED),
    C("step-gamma-negative", ["scheduler=step", "scheduler.gamma=-0.5"], "scheduler.gamma", ACCEPTED),
    C("cosine-t-max-0", ["scheduler.T_max=0"], "scheduler.T_max", ACCEPTED),
    C("cosine-eta-min-negative", ["scheduler.eta_min=-1"], "scheduler.eta_min", ACCEPTED),
    # --- overrides: device, callbacks, logger, debug
    C("device-tpu", ["device.type=tpu"], "device.type", "auto"),
    C("device-cuda-missing", ["device=cuda"], "device.type", ACCEPTED),
    C("device-index-negative", ["device.index=-1"], "device.index", ACCEPTED),
    C("wandb-mode", ["logger=wandb", "logger.wandb.mode=sometimes"], "logger.wandb.mode", "offline, online or disabled"),
    C("logger-unknown", ["logger=nope"], "logger", "wandb"),
    C("patience-0", ["callbacks.early_stopping.patience=0"], "callbacks.early_stopping.patience", ACCEPTED),
    C("early-stopping-mode", ["callbacks.early_stopping.mode=up"], "callbacks.early_stopping.mode", ACCEPTED),
    C("min-delta-negative", ["callbacks.early_stopping.min_delta=-1"], "callbacks.early_stopping.min_delta", ACCEPTED),
    C("no-checkpoint", ["callbacks=[early_stopping]"], "callbacks", ACCEPTED),
    C("callback-unknown-key", ["++callbacks.health.bogus=1"], "callbacks.health.bogus", ACCEPTED),
    C("debug-unknown", ["debug=nope"], "debug", "fast_dev_run"),
    C("overfit-ratio", ["debug=overfit", "debug.target_ratio=2"], "debug.target_ratio", ACCEPTED),
    C("profile-sort", ["debug=profile", "debug.sort_by=x"], "debug.sort_by", ACCEPTED),
    C("limit-0", ["debug=limit", "debug.limit_train_batches=0"], "debug.limit_train_batches", ACCEPTED),
    C("experiment-unknown", ["experiment=nope"], "experiment", "spirals"),
    C("override-parse-error", ["trainer.epochs=[1"], "trainer.epochs"),
    C("preflight-multirun", ["preflight=true", "--multirun"], "preflight", ACCEPTED),
    # --- synthetic data options
    C("n-samples-0", ["data.n_samples=0"], "data", ACCEPTED),
    C("val-fraction-above-1", ["data.val_fraction=1.5"], "data.val_fraction", ACCEPTED),
    C("spirals-one-class", ["data=spirals", "data.n_classes=1"], "data", ACCEPTED),
    C("blobs-no-features", ["data=blobs", "data.n_features=0"], "data", ACCEPTED),
    C("data-target-untrusted", ["data._target_=os.makedirs"], "data._target_", "trusted_modules"),
    # --- data files
    C("file-without-path", ["data=file", "data.target=label"], "data.path", ACCEPTED),
    C("file-missing", ["data=file", "data.path=missing.csv", "data.target=label"], "data.path", ACCEPTED),
    C("file-is-a-directory", ["data=file", "data.path=.", "data.target=label"], "data.path", ACCEPTED),
    C("file-extension", ["data=file", "data.path=x.txt", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: csv(t, "x.txt", "a,label\n1,2\n")),
    C("npy-renamed-npz", ["data=file", "data.path=x.npz", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: np.save(t / "x.npy", np.zeros((10, 2))) or (t / "x.npy").rename(t / "x.npz")),
    C("csv-empty", ["data=file", "data.path=e.csv", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: csv(t, "e.csv", "")),
    C("csv-header-only", ["data=file", "data.path=h.csv", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: csv(t, "h.csv", "a,label\n")),
    C("csv-missing-target", ["data=file", "data.path=good.csv", "data.target=price"], "data.target", "label",
      setup=lambda t, r: good_csv(t)),
    C("csv-unknown-feature", ["data=file", "data.path=good.csv", "data.target=label", "data.features=[zz]"],
      "data.features", "label", setup=lambda t, r: good_csv(t)),
    C("csv-pattern-matches-nothing", ["data=file", "data.path=good.csv", "data.target=label", "data.features=px_*"],
      "data.features", ACCEPTED, setup=lambda t, r: good_csv(t)),
    C("csv-text-feature", ["data=file", "data.path=t.csv", "data.target=label"], "t.csv", ACCEPTED,
      setup=lambda t, r: csv(t, "t.csv", "a,label\n" + "x,1\n" * 20)),
    C("csv-nan", ["data=file", "data.path=n.csv", "data.target=label"], "n.csv", ACCEPTED,
      setup=lambda t, r: csv(t, "n.csv", "a,label\n" + "1,0\n" * 20 + "nan,1\n")),
    C("csv-inf", ["data=file", "data.path=i.csv", "data.target=label"], "i.csv", ACCEPTED,
      setup=lambda t, r: csv(t, "i.csv", "a,label\n" + "1,0\n" * 20 + "inf,1\n")),
    C("csv-beyond-float32", ["data=file", "data.path=b.csv", "data.target=label"], "b.csv", ACCEPTED,
      setup=lambda t, r: csv(t, "b.csv", "a,label\n" + "1,0\n" * 20 + "1e39,1\n")),
    C("csv-empty-cell", ["data=file", "data.path=c.csv", "data.target=label"], "c.csv", ACCEPTED,
      setup=lambda t, r: csv(t, "c.csv", "a,label\n" + "1,0\n" * 20 + ",1\n")),
    C("csv-ragged", ["data=file", "data.path=r.csv", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: csv(t, "r.csv", "a,b,label\n" + "1,2,0\n" * 20 + "1,0\n")),
    C("csv-binary", ["data=file", "data.path=bin.csv", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: (t / "bin.csv").write_bytes(bytes(range(256)) * 4)),
    C("csv-one-row", ["data=file", "data.path=one.csv", "data.target=label"], "data", ACCEPTED,
      setup=lambda t, r: csv(t, "one.csv", "a,label\n1,0\n")),
    C("csv-task-unknown", ["data=file", "data.path=good.csv", "data.target=label", "data.task=ranking"],
      "data.task", ACCEPTED, setup=lambda t, r: good_csv(t)),
    C("csv-scaling-unknown", ["data=file", "data.path=good.csv", "data.target=label", "data.scaling=log"],
      "data.scaling", ACCEPTED, setup=lambda t, r: good_csv(t)),
    C("csv-target-scaling-unknown", ["data=file", "data.path=good.csv", "data.target=label",
                                     "data.target_scaling=log"], "data.target_scaling", ACCEPTED,
      setup=lambda t, r: good_csv(t)),
    C("csv-fractions-sum-1", ["data=file", "data.path=good.csv", "data.target=label", "data.val_fraction=0.6",
                              "data.test_fraction=0.5"], "fraction", ACCEPTED, setup=lambda t, r: good_csv(t)),
    C("csv-fractional-classes", ["data=file", "data.path=f.csv", "data.target=label", "data.task=classification"],
      "data.target", ACCEPTED, setup=lambda t, r: csv(t, "f.csv", "a,label\n" + "1,0.5\n2,1.5\n" * 10)),
    C("npz-mismatched-lengths", ["data=file", "data.path=m.npz", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: np.savez(t / "m.npz", a=np.zeros(10), label=np.zeros(7))),
    C("npz-not-a-zip", ["data=file", "data.path=z.npz", "data.target=label"], "data.path", ACCEPTED,
      setup=lambda t, r: csv(t, "z.npz", "a,label\n1,0\n")),
    # --- config files in a user config dir
    C("yaml-unclosed", ["--config-dir", "my_conf", "model=bad"], "model/bad.yaml",
      setup=lambda t, r: user_conf(t, "model/bad.yaml", "_target_: app.models.MLP\nnodes: [64\n")),
    C("yaml-tab", ["--config-dir", "my_conf", "model=tab"], "model/tab.yaml",
      setup=lambda t, r: user_conf(t, "model/tab.yaml", "_target_: app.models.MLP\n\tnodes: 64\n")),
    C("yaml-duplicate-key", ["--config-dir", "my_conf", "model=dup"], "nodes",
      setup=lambda t, r: user_conf(t, "model/dup.yaml", "defaults:\n  - mlp\n  - _self_\nnodes: 64\nnodes: 32\n")),
    C("yaml-a-list", ["--config-dir", "my_conf", "model=list"], "model",
      setup=lambda t, r: user_conf(t, "model/list.yaml", "- 1\n- 2\n")),
    C("yaml-unknown-key", ["--config-dir", "my_conf", "model=extra"], "model.width", ACCEPTED,
      setup=lambda t, r: user_conf(t, "model/extra.yaml", "defaults:\n  - mlp\n  - _self_\nwidth: 3\n")),
    C("yaml-untrusted-target", ["--config-dir", "my_conf", "data=evil"], "data._target_", "trusted_modules",
      setup=lambda t, r: user_conf(t, "data/evil.yaml", "_target_: os.makedirs\nname: x\n")),
    C("yaml-without-target", ["--config-dir", "my_conf", "+callbacks=bare"], "callbacks.bare", ACCEPTED,
      setup=lambda t, r: user_conf(t, "callbacks/bare.yaml", "# @package callbacks.bare\nevery: 1\n")),
    C("yaml-wrong-type", ["--config-dir", "my_conf", "trainer=typo"], "trainer.epochs",
      setup=lambda t, r: user_conf(t, "trainer/typo.yaml", "defaults:\n  - default\n  - _self_\nepochs: many\n")),
    C("config-dir-missing", ["--config-dir", "no_such_conf", "model=tiny"], "no_such_conf", "not found"),
    C("config-name-missing", ["--config-name", "nope"], "nope"),
    # --- run dirs (resume)
    C("resume-missing", ["resume=no/such/run"], "resume", ACCEPTED),
    C("resume-a-file", ["resume=good.csv"], "resume", ACCEPTED, setup=lambda t, r: good_csv(t)),
    C("resume-not-a-run", ["resume=."], "resume", ACCEPTED),
    C("resume-corrupt-config", ["resume=run"], "resume", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / ".hydra" / "config.yaml").write_text("trainer: [\n")),
    C("resume-corrupt-overrides", ["resume=run"], "resume", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / ".hydra" / "overrides.yaml").write_text("{{{\n")),
    C("resume-overrides-not-a-list", ["resume=run"], "resume", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / ".hydra" / "overrides.yaml").write_text("a: 1\n")),
    C("resume-bad-override-inside", ["resume=run"], "resume", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / ".hydra" / "overrides.yaml").write_text("- trainer.epochs=0\n")),
    C("resume-changed-lr", ["resume=run", "optimizer.lr=0.5"], "optimizer.lr", "resume_force",
      setup=lambda t, r: copy_run(t, r) and None),
    C("resume-multirun", ["resume=run", "--multirun"], "resume", ACCEPTED,
      setup=lambda t, r: copy_run(t, r) and None),
    C("resume-fewer-epochs", ["resume=run", "trainer.epochs=1"], "trainer.epochs", ACCEPTED,
      setup=lambda t, r: copy_run(t, r) and None),
    C("resume-corrupt-summary", ["resume=run"], "resume", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / "summary.json").write_text("{not json")),
    C("resume-corrupt-provenance", ["resume=run"], "resume", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / "provenance.json").write_text("[1, 2")),
    # --- checkpoints
    C("checkpoint-truncated", ["resume=run"], "last.pt", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / "checkpoints" / "last.pt").write_bytes(
          (r / "checkpoints" / "last.pt").read_bytes()[:500])),
    C("checkpoint-empty", ["resume=run"], "last.pt", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / "checkpoints" / "last.pt").write_bytes(b"")),
    C("checkpoint-text", ["resume=run"], "last.pt", ACCEPTED,
      setup=lambda t, r: (copy_run(t, r) / "checkpoints" / "last.pt").write_text("not a checkpoint")),
    C("checkpoint-a-directory", ["resume=run"], "last.pt", ACCEPTED,
      setup=lambda t, r: ((copy_run(t, r) / "checkpoints" / "last.pt").unlink(),
                          (t / "run" / "checkpoints" / "last.pt").mkdir()) and None),
    C("checkpoint-mismatched-model", ["resume=run", "model.nodes=32", "resume_force=true"], "last.pt", ACCEPTED,
      setup=lambda t, r: copy_run(t, r) and None),
    # --- sweeps: storage and study settings
    C("storage-not-a-url", ["--multirun", "hparams_search=regression_optuna", "hydra.sweeper.storage=notaurl"],
      "hydra.sweeper.storage", ACCEPTED),
    C("storage-under-proc", ["--multirun", "hparams_search=regression_optuna",
                             "hydra.sweeper.storage=sqlite:////proc/app/study.db"], "hydra.sweeper.storage", ACCEPTED),
    C("storage-not-a-database", ["--multirun", "hparams_search=regression_optuna",
                                 "hydra.sweeper.storage=sqlite:///study.db"], "hydra.sweeper.storage", ACCEPTED,
      setup=lambda t, r: csv(t, "study.db", "this is not a database\n" * 20)),
    C("storage-unknown-driver", ["--multirun", "hparams_search=regression_optuna",
                                 "hydra.sweeper.storage=nosuchdb://host/x"], "hydra.sweeper.storage", ACCEPTED),
    C("n-trials-0", ["--multirun", "hparams_search=regression_optuna", "hydra.sweeper.n_trials=0"],
      "hydra.sweeper.n_trials", ACCEPTED),
    C("direction-sideways", ["--multirun", "hparams_search=regression_optuna", "hydra.sweeper.direction=sideways"],
      "direction", ACCEPTED),
    C("failure-rate-2", ["--multirun", "hparams_search=regression_optuna", "hydra.sweeper.max_failure_rate=2"],
      "hydra.sweeper.max_failure_rate", ACCEPTED),
    C("heartbeat-0", ["--multirun", "hparams_search=regression_optuna", "hydra.sweeper.heartbeat_interval=0"],
      "hydra.sweeper.heartbeat_interval", ACCEPTED),
    C("range-reversed", ["--multirun", "hparams_search=regression_optuna", "model.layers=range(5,2)"],
      "model.layers", ACCEPTED),
    C("interval-reversed", ["--multirun", "hparams_search=regression_optuna", "optimizer.lr=interval(1e-1,1e-5)"],
      "optimizer.lr", ACCEPTED),
    C("log-over-zero", ["--multirun", "hparams_search=regression_optuna", "optimizer.lr=tag(log,interval(0,1))"],
      "optimizer.lr", ACCEPTED),
    C("sweep-unknown-preset", ["--multirun", "hparams_search=nope"], "hparams_search", "regression_optuna"),
    # --- output locations
    C("run-dir-under-proc", ["hydra.run.dir=/proc/app-run"], "/proc/app-run"),
    C("run-dir-is-a-file", ["hydra.run.dir=good.csv"], "good.csv", setup=lambda t, r: good_csv(t)),
    C("run-dir-below-a-file", ["hydra.run.dir=good.csv/run"], "good.csv", setup=lambda t, r: good_csv(t)),
    C("sweep-dir-under-proc", ["--multirun", "hydra.sweep.dir=/proc/app-sweep", "optimizer.lr=1e-3,1e-2"],
      "/proc/app-sweep"),
]


def test_the_catalogue_is_large_and_its_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) >= 100 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_exits_non_zero_with_one_clear_message(case, tmp_path, finished_run, monkeypatch, capsys):
    if case.setup is not None:
        case.setup(tmp_path, finished_run)
    before = completed_summaries(tmp_path)
    code, output = invoke(tmp_path, with_base(case.args), monkeypatch, capsys)
    assert code not in (0, None), output
    assert "Traceback" not in output, output
    for word in case.words:
        assert word in output, (word, output)
    assert completed_summaries(tmp_path) == before  # nothing newly marked completed
