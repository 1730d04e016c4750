"""Kill `python -m app` with SIGKILL at chosen points, resume it, and get the uninterrupted run's
numbers and weights, bit for bit (CPU). The kill points are app/run/faults.py's test hooks."""
from __future__ import annotations

import json
import math
import shutil
import signal

import pytest
import torch

from app.train.trainer import TIMING_METRICS
from tests.conftest import app_in, metrics_rows, ok, run_digest, run_dirs

pytestmark = pytest.mark.slow

# 5 training batches per epoch; validation and last.pt every 2nd epoch, so metrics.csv runs ahead
# of last.pt on odd epochs; dropout makes the global RNG matter.
ARGS = ["trainer.epochs=6", "data.n_samples=400", "trainer.batch_size=64", "trainer.val_every=2",
        "trainer.checkpoint_every=2", "model.dropout=0.1", "logger=none", "device=cpu",
        "trainer.progress_bar=false"]
KILLED = -signal.SIGKILL


def app(cwd, *args, kill=None):
    return app_in(cwd, *args, kill=kill)


metrics = metrics_rows


def epochs_in_csv(run):
    return [int(row["epoch"]) for row in metrics(run)]


def checkpoint(run, name="last.pt"):
    return torch.load(run / "checkpoints" / name, weights_only=True)


digest = run_digest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run killed three times and resumed three times."""
    root = tmp_path_factory.mktemp("kill")
    ok(app(root / "base", *ARGS))
    [base] = run_dirs(root / "base")
    steps = {}

    # 1) mid-epoch, after the 3rd batch of epoch 4 (epochs 1-3 are 15 batches)
    proc = app(root / "chain", *ARGS, kill="batch:18")
    assert proc.returncode == KILLED, proc.stderr
    [run] = run_dirs(root / "chain")
    steps["mid-epoch"] = (checkpoint(run)["epoch"], epochs_in_csv(run))

    # 2) during a checkpoint write: the resumed process's first write is epoch 4's last.pt
    proc = app(root / "chain", f"resume={run}", kill="checkpoint_write:1")
    assert proc.returncode == KILLED, proc.stderr
    [torn] = (run / "checkpoints").glob(".last.pt.*tmp")  # the killed process's own temp file
    steps["checkpoint write"] = (checkpoint(run)["epoch"], epochs_in_csv(run), torn.exists())
    with pytest.raises(RuntimeError, match="zip archive"):  # torn: no central directory
        torch.load(torn, weights_only=True)

    # 3) between epochs: the third epoch this process starts is epoch 5 (it resumes after 2)
    proc = app(root / "chain", f"resume={run}", kill="epoch_start:3")
    assert proc.returncode == KILLED, proc.stderr
    steps["between epochs"] = (checkpoint(run)["epoch"], epochs_in_csv(run), torn.exists())

    # 4) to the end, with an override that does not change the numbers
    ok(app(root / "chain", f"resume={run}", "trainer.log_every=1"))
    return {"root": root, "base": base, "run": run, "steps": steps}


def test_each_kill_left_the_last_checkpoint_and_its_rows(runs):
    assert runs["steps"]["mid-epoch"] == (2, [1, 2, 3])  # row 3 is after last.pt: redone on resume
    assert runs["steps"]["checkpoint write"] == (2, [1, 2, 3], True)  # torn temp, last.pt intact
    assert runs["steps"]["between epochs"] == (4, [1, 2, 3, 4], False)  # the torn temp was removed


def test_resumed_run_equals_the_uninterrupted_run(runs):
    base, run = runs["base"], runs["run"]
    assert epochs_in_csv(run) == [1, 2, 3, 4, 5, 6]
    assert metrics(run) == metrics(base)
    for name in ("last.pt", "best.pt"):
        a, b = checkpoint(base, name), checkpoint(run, name)
        assert a["epoch"] == b["epoch"]
        for key, tensor in a["model"].items():
            assert torch.equal(tensor, b["model"][key]), (name, key)
    summary_base = json.loads((base / "summary.json").read_text())
    summary_run = json.loads((run / "summary.json").read_text())
    for key in ("status", "best", "best_epoch", "last", "epochs_run", "objective", "last_metrics"):
        if key == "last_metrics":
            for name in TIMING_METRICS:
                summary_base[key].pop(name)
                summary_run[key].pop(name)
        assert summary_run[key] == summary_base[key], key


def test_resumes_continue_in_the_run_directory_and_are_recorded(runs):
    assert run_dirs(runs["root"] / "chain") == [runs["run"]]  # no new run directory
    record = json.loads((runs["run"] / "provenance.json").read_text())
    base = json.loads((runs["base"] / "provenance.json").read_text())
    assert record["config_hash"] == base["config_hash"]
    assert [r["from_epoch"] for r in record["resumes"]] == [2, 2, 4]
    # callbacks.progress.log_every interpolates trainer.log_every: the resolved config changes in both
    assert record["resumes"][-1]["accepted_changes"] == {"trainer.log_every": [10, 1],
                                                         "callbacks.progress.log_every": [10, 1]}
    assert "resume=" in " ".join(record["resumes"][0]["command"])
    log = (runs["run"] / "train.log").read_text()
    assert log.count("resuming ") == 3  # every attempt logged into the run's own log


def test_resuming_a_finished_run_says_so_and_changes_nothing(runs):
    before = digest(runs["run"])
    proc = ok(app(runs["root"] / "chain", f"resume={runs['run']}"))
    assert "already finished (completed after 6 epochs" in proc.stderr + proc.stdout
    assert digest(runs["run"]) == before
    assert "already finished" in (runs["run"] / "train.log").read_text()  # the attempt is logged there


def test_resuming_with_a_result_changing_override_is_refused(runs):
    before = digest(runs["run"])
    proc = app(runs["root"] / "chain", f"resume={runs['run']}", "optimizer.lr=0.5", "trainer.epochs=7")
    assert proc.returncode == 2
    assert "Invalid value for `optimizer.lr`: 0.5" in proc.stderr
    assert "resume_force=true" in proc.stderr and "Traceback" not in proc.stderr
    # more epochs are accepted, and the cosine horizon that follows them is re-planned, not refused
    assert "scheduler.T_max" not in proc.stderr and "trainer.epochs: 6 -> 7" not in proc.stderr
    assert digest(runs["run"]) == before


def test_raising_epochs_extends_a_run_and_replans_its_cosine(runs, tmp_path):
    run = tmp_path / "extended"
    shutil.copytree(runs["run"], run)
    pinned = "scheduler.T_max=6"  # pinned to the old total: re-planned all the same (README, Resuming)
    ok(app(tmp_path, f"resume={run}", "trainer.epochs=7", pinned))
    assert epochs_in_csv(run) == list(range(1, 8))
    assert metrics(run)[:6] == metrics(runs["base"])  # the epochs already run stay as they were
    base_lr = float(metrics(run)[0]["lr"])
    assert float(metrics(run)[6]["lr"]) == pytest.approx(base_lr / 2 * (1 + math.cos(math.pi * 6 / 7)))
