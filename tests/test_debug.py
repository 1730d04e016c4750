"""Debug modes (`debug=fast_dev_run|overfit|limit|profile`, app/run/debug.py) and the limited
batches view they and preflight share (app/data/batches.py: LimitedBatches)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from app.config import validate
from app.data import LimitedBatches, Split, TensorBatches
from app.errors import ConfigError
from app.run import debug
from app.run.build import build_batches, build_data
from tests.conftest import ROOT, run_dirs


# ----------------------------------------------------------------------------- test models
class CountingModel(nn.Module):
    """A linear model that writes to $COUNTS_FILE how many batches (and rows) it saw in training
    mode and in eval mode: what a run really used, whatever it reports."""

    def __init__(self, in_features, out_features, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.trace, self.counts = os.environ["COUNTS_FILE"], {"train_batches": 0, "train_rows": 0, "eval_batches": 0, "eval_rows": 0}

    def forward(self, x):
        kind = "train" if self.training else "eval"
        self.counts[f"{kind}_batches"] += 1
        self.counts[f"{kind}_rows"] += x.shape[0]
        Path(self.trace).write_text(json.dumps(self.counts))
        return self.linear(x)


def split(n: int) -> Split:
    return Split(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


def rows(batches) -> list[list[int]]:
    return [y.tolist() for _, y in batches]


# ----------------------------------------------------------------------------- LimitedBatches
def test_limited_batches_are_the_first_batches_of_each_epoch():
    inner = TensorBatches(split(10), 4, device="cpu", shuffle=False)
    assert rows(LimitedBatches(inner, 2)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    two, three, many = LimitedBatches(inner, 2), LimitedBatches(inner, 3), LimitedBatches(inner, 99)
    assert (len(two), two.num_samples) == (2, 8)
    assert (len(three), three.num_samples) == (3, 10)  # the last batch has 2 rows
    assert (len(many), many.num_samples) == (3, 10)  # clipped to what there is
    assert rows(two) == rows(two)  # unshuffled: the same batches every epoch
    assert sum(len(r) for r in rows(three)) == three.num_samples
    with pytest.raises(ValueError):
        LimitedBatches(inner, 0)


def test_limited_shuffled_batches_follow_the_seeded_order_and_resume_exactly():
    full = TensorBatches(split(100), 10, device="cpu", shuffle=True, seed=3)
    limited = LimitedBatches(TensorBatches(split(100), 10, device="cpu", shuffle=True, seed=3), 3)
    epochs_full = [rows(full)[:3] for _ in range(3)]
    epochs_limited = [rows(limited) for _ in range(3)]
    assert epochs_limited == epochs_full  # epoch k: the first 3 batches of the full run's epoch k
    assert epochs_limited[0] != epochs_limited[1]  # shuffled: each epoch another subset

    state = limited.state_dict()
    following = rows(limited)
    other = LimitedBatches(TensorBatches(split(100), 10, device="cpu", shuffle=True, seed=99), 3)
    other.load_state_dict(state)
    assert rows(other) == following


def test_limited_batches_of_limited_batches_keep_num_samples_right():
    inner = LimitedBatches(TensorBatches(split(10), 4, device="cpu", shuffle=False), 3)
    outer = LimitedBatches(inner, 2)
    assert (len(outer), outer.num_samples, rows(outer)) == (2, 8, [[0, 1, 2, 3], [4, 5, 6, 7]])


# ----------------------------------------------------------------------------- config and builder
@pytest.mark.parametrize("experiment", ["regression", "spirals"])
@pytest.mark.parametrize("mode", ["fast_dev_run", "overfit", "limit", "profile"])
def test_every_mode_validates_with_every_experiment(compose_cfg, experiment, mode):
    cfg = compose_cfg(f"experiment={experiment}", f"debug={mode}", "device=cpu")
    validate(cfg)  # spirals' warmup_cosine: the schedule keeps trainer.epochs, debug caps the run
    assert cfg.debug.mode == mode
    assert debug.epochs(cfg) == {"fast_dev_run": 1, "profile": 1}.get(mode, cfg.trainer.epochs)
    if mode in ("fast_dev_run", "overfit"):
        assert dict(cfg.logger) == {} and "checkpoint" not in cfg.callbacks
        assert "early_stopping" not in cfg.callbacks
    else:
        assert "checkpoint" in cfg.callbacks


def test_limits_are_applied_by_the_one_builder(compose_cfg):
    cfg = compose_cfg("experiment=spirals", "debug=limit", "debug.limit_train_batches=3",
                      "debug.limit_val_batches=1", "debug.limit_test_batches=2", "trainer.eval_batch_size=100",
                      "device=cpu")
    train, val, test = build_batches(build_data(cfg), cfg, torch.device("cpu"))
    assert (len(train), len(val), len(test)) == (3, 1, 2)
    assert (train.num_samples, val.num_samples, test.num_samples) == (3 * 128, 100, 200)


def test_overfit_trains_and_validates_on_the_same_fixed_batches(compose_cfg):
    cfg = compose_cfg("debug=overfit", "debug.batches=2", "device=cpu")
    train, val, test = build_batches(build_data(cfg), cfg, torch.device("cpu"))
    assert val is train and test is None and len(train) == 2
    assert rows(train) == rows(train)  # no shuffling: the same batches every epoch


def test_no_checkpoint_only_in_debug_and_no_resume_of_a_quick_check(compose_cfg):
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg("~callbacks.checkpoint", "device=cpu"))
    assert caught.value.key == "callbacks"
    validate(compose_cfg("debug=limit", "~callbacks.checkpoint", "device=cpu"))  # a debug run may
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg("debug=fast_dev_run", "resume=somewhere", "device=cpu"))
    assert caught.value.key == "resume" and "fast_dev_run" in str(caught.value)


@pytest.mark.parametrize("override, key", [
    ("+debug.bogus=1", "debug.bogus"), ("debug.batches=0", "debug.batches"),
    ("debug.max_epochs=0", "debug.max_epochs"),
])
def test_bad_debug_keys_are_refused(compose_cfg, override, key):
    with pytest.raises(ConfigError) as caught:
        validate(compose_cfg("debug=fast_dev_run", override, "device=cpu"))
    assert caught.value.key == key


def test_fast_dev_run_verdict_names_what_is_not_finite(compose_cfg):
    cfg = compose_cfg("debug=fast_dev_run")
    used = {"train": [0], "val": [0], "test": [0]}
    ok = debug.verdict(cfg, [{"train_loss": 0.5, "val_loss": 0.4}], {"test_loss": 0.3}, used)
    assert ok.passed and ok.line.startswith("fast_dev_run PASSED: train_loss=0.5 val_loss=0.4 test_loss=0.3")
    bad = debug.verdict(cfg, [{"train_loss": 0.5, "val_loss": math.nan}], {"test_loss": math.inf}, used)
    assert not bad.passed and bad.line.startswith("fast_dev_run FAILED: non-finite val_loss=nan test_loss=inf")


# ----------------------------------------------------------------------------- end to end
QUICK = ["device=cpu", "trainer.progress_bar=false"]
EXPERIMENTS = {"regression": ["experiment=regression"], "spirals": ["experiment=spirals"]}
BATCH_SIZE = {"regression": 256, "spirals": 128}


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def counting(tmp_path):
    return ["model._target_=tests.test_debug.CountingModel", "trusted_modules=[tests]"]


@pytest.fixture
def importable_tests(monkeypatch, tmp_path):
    """Subprocesses can import `tests` (the models above) from the repository root; the
    CountingModel writes to tmp_path/counts.json."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("COUNTS_FILE", str(tmp_path / "counts.json"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_uses_one_batch_each_and_keeps_nothing(run_app, tmp_path, importable_tests, experiment):
    proc = run_app(*EXPERIMENTS[experiment], "debug=fast_dev_run", *QUICK, *counting(tmp_path), check=True)
    [line] = [l for l in proc.stdout.splitlines() if "fast_dev_run PASSED: " in l]
    assert "train_loss=" in line and "val_loss=" in line
    assert ("test_loss=" in line) == (experiment == "spirals")  # regression has no test split
    counts = json.loads((tmp_path / "counts.json").read_text())
    tested = 1 if experiment == "spirals" else 0
    assert counts["train_batches"] == 1 and counts["train_rows"] == BATCH_SIZE[experiment]
    assert counts["eval_batches"] == 1 + tested  # one validation batch, one test batch
    [run_dir] = run_dirs(tmp_path)
    assert [r["epoch"] for r in read_metrics(run_dir)] == ["1"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["debug"]["passed"] is True
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "wandb").exists()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_fails_a_model_with_nan_output(run_app, tmp_path, importable_tests, experiment):
    proc = run_app(*EXPERIMENTS[experiment], "debug=fast_dev_run", *QUICK,
                   "model._target_=tests.test_preflight.NaNOutput", "trusted_modules=[tests]")
    assert proc.returncode == 1, proc.stderr
    [line] = [l for l in proc.stdout.splitlines() if "fast_dev_run FAILED: " in l]
    assert "non-finite train_loss=nan" in line and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_overfit_learns_its_fixed_batches(run_app, tmp_path, experiment):
    lr = ["optimizer.lr=0.01"] if experiment == "regression" else []  # memorises in fewer epochs
    proc = run_app(*EXPERIMENTS[experiment], "debug=overfit", *QUICK, *lr, "trainer.log_every=0", check=True)
    [line] = [l for l in proc.stdout.splitlines() if "overfit PASSED: the model learned 1 fixed batch(es)" in l]
    [run_dir] = run_dirs(tmp_path)
    losses = [float(r["train_loss"]) for r in read_metrics(run_dir)]
    assert losses[-1] <= 0.1 * losses[0] and len(losses) < 1000  # stopped once learned
    assert f"in {len(losses)} epochs" in line
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_overfit_says_when_the_model_did_not_learn(run_app, tmp_path):
    proc = run_app("debug=overfit", *QUICK, "trainer.epochs=3", "debug.target_ratio=0.0001")
    assert proc.returncode == 1
    assert "overfit FAILED: the model did not learn 1 fixed batch(es)" in proc.stdout and "in 3 epochs" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_limit_caps_the_batches_of_each_epoch_in_a_normal_run(run_app, tmp_path, importable_tests, experiment):
    proc = run_app(*EXPERIMENTS[experiment], "debug=limit", *QUICK, *counting(tmp_path), "logger=none",
                   "debug.limit_train_batches=3", "debug.limit_val_batches=2", "debug.limit_test_batches=1",
                   "trainer.eval_batch_size=100", "debug.max_epochs=2", "callbacks.early_stopping.patience=5")
    assert proc.returncode == 0, proc.stderr
    counts = json.loads((tmp_path / "counts.json").read_text())
    tested = 1 if experiment == "spirals" else 0
    assert counts["train_batches"] == 2 * 3 and counts["train_rows"] == 2 * 3 * BATCH_SIZE[experiment]
    assert counts["eval_batches"] == 2 * 2 + tested and counts["eval_rows"] == 2 * 200 + 100 * tested
    [run_dir] = run_dirs(tmp_path)
    assert len(read_metrics(run_dir)) == 2
    assert (run_dir / "checkpoints" / "last.pt").exists()  # a normal run otherwise


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_profile_writes_a_chrome_trace_and_logs_top_operators(run_app, tmp_path, experiment):
    proc = run_app(*EXPERIMENTS[experiment], "debug=profile", *QUICK, "logger=none", check=True)
    [run_dir] = run_dirs(tmp_path)
    trace = json.loads((run_dir / "profile" / "train.pt.trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert any(str(n).startswith("ProfilerStep#") for n in names) and "aten::mm" in names
    log = (run_dir / f"{experiment}.log").read_text()
    assert "profile: top operators of training steps 3-5, by self_cpu_time_total" in log
    assert "Self CPU %" in log and "aten::" in log
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_fast_dev_run_in_a_sweep_runs_each_job_in_fast_mode(run_app, tmp_path):
    run_app("--multirun", "debug=fast_dev_run", "optimizer.lr=1e-3,1e-2", *QUICK, check=True)
    summaries = [json.loads((d / "summary.json").read_text()) for d in run_dirs(tmp_path)]
    assert len(summaries) == 2
    assert all(s["epochs_run"] == 1 and s["debug"]["passed"] for s in summaries)
