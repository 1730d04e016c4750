"""Ctrl-C through a sweep whose trials run in the sweep's worker processes (`hydra/launcher=joblib`):
one line, no traceback, no process left behind, no trial left RUNNING, and the same command
finishes the study."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from app.search.sweeper import is_finished, process_alive
from tests.conftest import FAST

WAIT_S = 300  # upper bound for an event that must come (a failing test, not a hanging one)
N_TRIALS = 3
COMMAND = ["--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random", "hydra/launcher=joblib",
           "hydra.sweeper.n_jobs=2", f"hydra.sweeper.n_trials={N_TRIALS}", "model.nodes=16", "model.layers=2",
           "optimizer.weight_decay=0", "~callbacks.early_stopping",
           *[a for a in FAST if not a.startswith("trainer.epochs")], "trainer.epochs=40"]
STUDY = "train-regression_optuna"


def descendants(pid: int) -> dict[int, str]:
    """The processes below `pid` now, with their command lines (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue  # it ended meanwhile
            todo.append(child)
    return found


def sweep(tmp_path: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "app", *COMMAND], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group")
@pytest.mark.parametrize("to", ["terminal", "sweep process"])  # Ctrl-C: the whole group; kill -INT: the sweep
def test_ctrl_c_stops_a_pooled_sweep_in_one_line_and_the_same_command_finishes_the_study(tmp_path, to):
    proc = sweep(tmp_path, start_new_session=True)
    processes: dict[int, str] = {}
    try:
        deadline = time.monotonic() + WAIT_S
        while not list(tmp_path.glob("outputs/sweeps/*/*/*/metrics.csv")):  # a trial has trained an epoch
            assert proc.poll() is None and time.monotonic() < deadline, "no trial trained an epoch"
            processes.update(descendants(proc.pid))
            time.sleep(0.05)  # polling for the file, bounded by the deadline
        processes.update(descendants(proc.pid))
        if to == "terminal":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stdout + stderr
    own_lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith("[")]  # not logs
    assert len(own_lines) == 1 and own_lines[0].startswith("interrupted: the sweep stopped"), stderr
    workers = [pid for pid, command in processes.items() if "spawn_main" in command]
    assert len(workers) >= 2 and not [pid for pid in workers if process_alive(pid)]  # no worker left
    # multiprocessing's resource tracker ends by itself once the sweep's end of its pipe is closed
    trackers = [pid for pid, command in processes.items() if "resource_tracker" in command]
    deadline = time.monotonic() + WAIT_S
    while [pid for pid in trackers if process_alive(pid)]:
        assert time.monotonic() < deadline, "the resource tracker did not end"
        time.sleep(0.05)  # polling for its end, bounded by the deadline
    storage = f"sqlite:///{tmp_path}/outputs/studies/{STUDY}.db"
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("interrupted")]
    assert interrupted, [(t.number, t.state, t.user_attrs) for t in trials]  # it stopped mid-trial

    again = sweep(tmp_path)  # the same command
    stdout, stderr = again.communicate(timeout=WAIT_S)
    assert again.returncode == 0, stderr
    trials = optuna.load_study(study_name=STUDY, storage=storage).trials
    assert sum(is_finished(t) for t in trials) == N_TRIALS == sum(t.state == TrialState.COMPLETE for t in trials)
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    for trial in interrupted:
        [retry] = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
        assert retry.params == trial.params and retry.state == TrialState.COMPLETE
