"""The console a person reads: one final line per run, and a Ctrl-C that says how to continue."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.run.record import Status, Summary, interrupted_line, result_line, shown_path
from tests.conftest import FAST, run_dirs


def test_result_line_has_status_best_test_and_relative_run_dir(tmp_path):
    summary = Summary(Status.COMPLETED, monitor="val_loss", mode="min", best=0.0123456, best_epoch=87,
                      epochs_run=100, wall_time_s=41.23, test={"test_loss": 0.013012, "test_mae": 0.091234})
    line = result_line(summary, tmp_path / "outputs" / "runs" / "x", tmp_path)
    assert line == ("completed: best val_loss 0.01235 at epoch 87 | test_loss 0.01301, test_mae 0.09123 | "
                    "100 epochs, 41.2s | outputs/runs/x")


def test_result_line_of_a_multi_seed_run_shows_mean_and_std(tmp_path):
    summary = Summary(Status.COMPLETED, monitor="val_accuracy", mode="max", seeds=[1, 2, 3], best=0.912345,
                      best_std=0.0123456, epochs_run=30, wall_time_s=3.0, test={"test_accuracy": 0.9},
                      test_std={"test_accuracy": 0.01})
    line = result_line(summary, "/elsewhere/run", tmp_path)
    assert line.startswith("completed (3 seeds): best val_accuracy 0.9123 +- 0.01235 | test_accuracy 0.9 +- 0.01")
    assert line.endswith("| /elsewhere/run")  # outside the launch dir: absolute


def test_result_line_of_a_diverged_run_says_why():
    summary = Summary(Status.DIVERGED, monitor="val_loss", mode="min", message="non-finite loss at epoch 3",
                      epochs_run=3, wall_time_s=1.0)
    assert result_line(summary, "/r", "/").startswith("diverged: no val_loss value (non-finite loss at epoch 3) |")


def test_interrupted_line_and_paths(tmp_path):
    assert interrupted_line(4, tmp_path / "outputs" / "r", tmp_path) == \
        "interrupted at epoch 4; continue with: python -m app resume=outputs/r"
    assert shown_path(tmp_path, tmp_path / "sub") == str(tmp_path.resolve())



@pytest.mark.slow
def test_a_run_ends_with_one_readable_line(run_app, tmp_path):
    proc = run_app(*FAST, "data=blobs", "trainer.monitor=val_accuracy", check=True)
    [run_dir] = run_dirs(tmp_path)
    [line] = [l for l in (proc.stdout + proc.stderr).splitlines() if "completed: best val_accuracy" in l]
    assert "test_accuracy" in line and line.endswith(str(run_dir.relative_to(tmp_path)))


@pytest.mark.slow
def test_multi_seed_run_ends_with_mean_and_std(run_app, tmp_path):
    proc = run_app(*FAST, "seeds=[1,2]", check=True)
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if "completed (2 seeds): best val_loss" in l]
    assert len(lines) == 1 and " +- " in lines[0]


def _wait_for(path_glob: str, root: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {path_glob} appeared")
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} did not appear within {timeout}s")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process")
def test_ctrl_c_prints_how_to_continue_and_exits_130(run_app, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "trainer.epochs=500", "data.n_samples=400", "logger=none", "device=cpu",
         "trainer.progress_bar=false"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for("outputs/runs/*/*/checkpoints/last.pt", tmp_path, proc)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    [line] = [l for l in stderr.splitlines() if l.startswith("interrupted at epoch ")]
    [run_dir] = run_dirs(tmp_path)
    assert line.endswith(f"; continue with: python -m app resume={run_dir.relative_to(tmp_path)}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["interrupted"] is True
    assert summary["error"].startswith("KeyboardInterrupt")
