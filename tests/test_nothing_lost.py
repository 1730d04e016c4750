"""Nothing lost: one process per run dir (a lock the kernel releases), a full disk ends a run
with one paragraph and its records intact, W&B without a key falls back to offline, data files
are part of provenance, and an extended run re-plans its schedule."""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from app.errors import ConfigError
from app.run import provenance
from app.run.lock import LOCK_FILE, RunDirLock
from app.run.record import (Status, Summary, disk_full, disk_full_error, temp_path, write_json)
from app.train.schedulers import WarmupCosine, replan, warmup_cosine
from tests.conftest import FAST, run_dirs

ROOT = Path(__file__).resolve().parent.parent


def app_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    env.pop("APP_TEST_KILL_AT", None)
    return {**env, **extra}


def start_app(cwd: Path, *args: str, **env: str) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "app", *args], cwd=cwd, env=app_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_app(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, env=app_env(**env),
                          capture_output=True, text=True, timeout=300)


def csv_column(run: Path, column: str) -> list[str]:
    with open(run / "metrics.csv", newline="") as f:
        return [row[column] for row in csv.DictReader(f)]


def wait_for(condition, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- the lock
def test_a_second_lock_on_a_run_dir_is_refused_naming_the_holder_until_it_is_released(tmp_path):
    first = RunDirLock(tmp_path, "resume").acquire()
    with pytest.raises(ConfigError) as refused:
        RunDirLock(tmp_path, "resume").acquire()
    text = str(refused.value)
    assert text.startswith("Invalid value for `resume`") and f"process {os.getpid()}" in text
    assert "Accepted:" in text and "resume=" in text
    first.release()
    with RunDirLock(tmp_path) as again:  # released: the next one gets it at once
        assert again.fd is not None
    assert (tmp_path / LOCK_FILE).exists()


def test_temp_files_of_atomic_writes_are_unique_per_process(tmp_path):
    target = tmp_path / "summary.json"
    assert str(os.getpid()) in temp_path(target).name and temp_path(target).parent == tmp_path
    other = subprocess.run([sys.executable, "-c", "from app.run.record import temp_path; "
                            f"print(temp_path({str(target)!r}))"], capture_output=True, text=True,
                           cwd=ROOT, check=True).stdout.strip()
    assert other != str(temp_path(target))
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_a_second_process_on_a_training_run_is_refused_and_a_killed_run_resumes_at_once(tmp_path):
    args = [*FAST, "trainer.epochs=20", "~callbacks.early_stopping"]
    first = start_app(tmp_path, *args)
    try:
        lock = wait_for(lambda: next((tmp_path / "outputs").rglob(LOCK_FILE), None)
                        if (tmp_path / "outputs").exists() else None, what="the run's lock file")
        wait_for(lambda: lock.read_text().strip(), what="the lock holder's name")
        os.kill(first.pid, signal.SIGSTOP)  # frozen mid-run, holding the lock
        run = lock.parent
        second = run_app(tmp_path, f"resume={run}")
        assert second.returncode == 2, second.stderr
        assert "Traceback" not in second.stderr
        assert f"process {first.pid}" in second.stderr and "is training in this run directory" in second.stderr
        os.kill(first.pid, signal.SIGKILL)  # the kernel releases its lock
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    resumed = run_app(tmp_path, f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert csv_column(run, "epoch") == [str(e) for e in range(1, 21)]  # each epoch once
    assert Summary.read(run).status == Status.COMPLETED


# ----------------------------------------------------------------------------- a full disk
class FullDisk(io.RawIOBase):
    """A file whose writes fail as a full disk's do (the OS boundary torch.save writes through)."""

    name = "last.pt"

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)


def test_a_full_disk_is_recognised_through_torch_saves_wrapping(tmp_path):
    with pytest.raises(Exception) as raised:
        torch.save({"w": torch.zeros(1000)}, FullDisk())
    found = disk_full(raised.value)
    assert found is not None and found.errno == errno.ENOSPC
    assert disk_full(RuntimeError("file write failed")) is None
    assert disk_full(OSError(errno.EACCES, "denied")) is None


def test_the_full_disk_paragraph_says_what_was_full_kept_and_how_to_resume(tmp_path):
    run = tmp_path / "outputs" / "runs" / "r"
    run.mkdir(parents=True)
    (run / "metrics.csv").write_text("epoch,train_loss\n1,0.5\n2,0.4\n")
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / "checkpoints" / "last.pt"))
    text = str(disk_full_error(full, run, tmp_path, summary_written=False))
    assert "full" in text and "No space left on device" in text and "checkpoints/last.pt" in text
    assert "metrics.csv (2 epochs)" in text and "summary.json could not be written" in text
    assert "resume=outputs/runs/r" in text and "\n" not in text
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), None)
    assert "quota" in str(disk_full_error(quota, run, tmp_path, summary_written=True))


def test_a_summary_that_does_not_fit_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        Path(self).write_bytes(b"{")  # part of it reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as raised:
        Summary(Status.FAILED).write(tmp_path)
    assert raised.value.errno == errno.ENOSPC
    assert not list(tmp_path.iterdir())  # neither summary.json nor its temp


@pytest.mark.slow
def test_a_disk_full_mid_run_gives_one_paragraph_keeps_the_records_and_resumes(tmp_path):
    # Writes: provenance.json 1, metrics.csv header 2, epoch 1: last.pt 3, row 4; epoch 2: last.pt 5
    proc = run_app(tmp_path, *FAST, "trainer.epochs=4", APP_TEST_KILL_AT="disk_full:5")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [paragraph] = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "disk holding the run directory is full" in paragraph
    assert "checkpoints/last.pt (after epoch 1)" in paragraph and "metrics.csv (1 epoch)" in paragraph
    assert "summary.json says failed" in paragraph and "resume=outputs/runs/" in paragraph
    [run] = run_dirs(tmp_path)
    summary = Summary.read(run)
    assert summary.status == Status.FAILED and "No space left" in summary.error
    assert not list(run.rglob("*.tmp"))
    resumed = run_app(tmp_path, f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    assert csv_column(run, "epoch") == ["1", "2", "3", "4"]
    assert Summary.read(run).status == Status.COMPLETED


# Writes of a seed of 3 epochs, one seed after the other: provenance.json, metrics.csv header,
# per epoch last.pt and a row, summary.json: 9. The 2nd seed's 5th write is its epoch-2 last.pt.
# Packed, the members write in turn, each at every epoch (pack_interval_s=0): the 9th write is
# seed 2's first last.pt.
@pytest.mark.slow
@pytest.mark.parametrize("pack, write", [("false", 14), ("auto", 9)])
def test_a_disk_full_in_the_second_seed_keeps_finished_seeds_and_resumes_the_run(tmp_path, pack, write):
    proc = run_app(tmp_path, *FAST, "trainer.epochs=3", "seeds=[1,2,3]", f"pack={pack}", "trainer.threads=1",
                   "callbacks.checkpoint.pack_interval_s=0", APP_TEST_KILL_AT=f"disk_full:{write}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    [paragraph] = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    [run] = run_dirs(tmp_path)  # the run's .hydra/ is in the run dir, not in its seeds' dirs
    shown = run.relative_to(tmp_path)
    assert "disk holding the run directory is full" in paragraph and "seed_2/checkpoints/" in paragraph
    assert f"continue the run with: python -m app resume={shown} " in paragraph  # the run, not a seed
    assert "summary.json says failed" in paragraph
    summary = Summary.read(run)
    assert summary.status == Status.FAILED and "No space left" in summary.error
    statuses = {s["seed"]: s["status"] for s in summary.per_seed}
    if pack == "false":  # seed 1 finished before the disk filled: kept as it was
        assert "Kept: seed_1 completed (its summary.json); seed_2 metrics.csv (1 epoch), " \
               "checkpoints/last.pt (after epoch 1);" in paragraph
        assert statuses == {1: "completed", 2: "failed"} and not (run / "seed_3").exists()
        finished = {name: (run / "seed_1" / name).read_bytes() for name in ("summary.json", "metrics.csv")}
        assert Summary.read(run / "seed_1").status == Status.COMPLETED
    else:  # the pack stopped together: no seed is marked finished
        assert set(statuses.values()) == {"failed"} and "seed_1 metrics.csv (1 epoch)" in paragraph
        finished = {}
    assert all(Summary.read(d).status == Status.FAILED for d in run.glob("seed_*") if d.name != "seed_1" or pack != "false")
    assert not list(run.rglob("*.tmp"))
    resumed = run_app(tmp_path, paragraph.split("python -m app ")[1].split(" ")[0])  # the command it printed
    assert resumed.returncode == 0, resumed.stderr
    for seed in (1, 2, 3):
        assert csv_column(run / f"seed_{seed}", "epoch") == ["1", "2", "3"]
    after = Summary.read(run)
    assert after.status == Status.COMPLETED and [s["status"] for s in after.per_seed] == ["completed"] * 3
    assert all((run / "seed_1" / name).read_bytes() == data for name, data in finished.items())


# ----------------------------------------------------------------------------- W&B
def test_wandb_mode_defaults_to_the_environment_and_an_override_wins(compose_cfg, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose_cfg().logger.wandb.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_cfg().logger.wandb.mode == "disabled"
    assert compose_cfg("logger.wandb.mode=offline").logger.wandb.mode == "offline"


def wandb_history(run: Path) -> list[dict[str, str]]:
    """The metrics rows of the run's offline W&B files, read with W&B's own record format
    (a LevelDB-style log of protobuf `Record`s after a 7-byte ':W&B' header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    [path] = run.glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, chunk, rows = path.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (kind == 0 and length == 0):
            pos += left
            continue
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        chunk = payload if kind in (1, 2) else chunk + payload
        if kind in (1, 4):  # a whole record
            record = pb.Record()
            record.ParseFromString(chunk)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): i.value_json for i in record.history.item})
    return rows


@pytest.mark.slow
def test_wandb_online_without_a_key_warns_once_and_logs_every_epoch_offline(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "NETRC": str(tmp_path / "no-netrc"), "WANDB_API_KEY": ""}
    args = [a for a in FAST if not a.startswith("logger=")]
    proc = run_app(tmp_path, *args, "logger=wandb", "logger.wandb.mode=online", **env)
    assert proc.returncode == 0, proc.stderr
    [run] = run_dirs(tmp_path)
    log = (run / "train.log").read_text()
    assert log.count("W&B online: no W&B API key") == 1 and "offline instead" in log
    rows = wandb_history(run)
    assert [row["_step"] for row in rows] == ["1", "2", "3"]
    assert [float(row["val_loss"]) for row in rows] == [float(v) for v in csv_column(run, "val_loss")]


# ----------------------------------------------------------------------------- provenance
def test_runs_on_different_data_file_contents_are_different_experiments(compose_cfg, tmp_path, capsys):
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,2\n")
    cfg = compose_cfg("data=file", f"data.path={data}", "data.target=y")
    runs = {}
    for name in ("a", "same", "b"):
        if name == "b":
            data.write_text("x,y\n1,3\n")
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        from omegaconf import OmegaConf

        OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
        record = {"config_hash": provenance.config_hash(cfg), "git_commit": "abc",
                  "data_files": provenance.data_files(cfg)}
        (run / "provenance.json").write_text(json.dumps(record))
        runs[name] = run
    assert provenance.data_files(cfg)[str(data)].startswith("sha256:")
    assert provenance.main([str(runs["a"]), str(runs["same"])]) == 0
    capsys.readouterr()
    assert provenance.main([str(runs["a"]), str(runs["b"])]) == 1
    assert "data_files:" in capsys.readouterr().out


# ----------------------------------------------------------------------------- extending a run
def cosine(T_max: int, steps: int) -> torch.optim.lr_scheduler.CosineAnnealingLR:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_max, eta_min=0.0)
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return scheduler


def lrs_after(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_extending_a_finished_cosine_follows_the_new_totals_curve_from_where_it_is():
    finished = cosine(T_max=4, steps=4)
    assert finished.optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    assert "T_max 4 -> 8" in replan(finished, 4, 8)
    lrs = lrs_after(finished, 4)  # epochs 5..8 train at these
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 8)) for e in range(4, 8)])
    assert all(lr > 0 for lr in lrs) and lrs == sorted(lrs, reverse=True)  # never 0, never climbing
    assert finished.get_last_lr()[0] == pytest.approx(0.0)  # the floor at the new end


def test_a_periodic_cosine_and_a_shrinking_total_are_left_as_configured():
    periodic = cosine(T_max=2, steps=4)
    assert replan(periodic, 4, 8) is None and periodic.T_max == 2
    assert replan(cosine(T_max=4, steps=4), 4, 4) is None


def test_warmup_cosine_keeps_its_horizon_in_the_checkpoint_and_is_replanned():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = warmup_cosine(optimizer, warmup_steps=1, total_steps=4, min_lr_ratio=0.0)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    saved = scheduler.state_dict()
    fresh = warmup_cosine(optimizer, warmup_steps=1, total_steps=8, min_lr_ratio=0.0)  # the resumed build
    fresh.load_state_dict(saved)
    assert fresh.lr_lambdas[0].total_steps == 4  # the horizon it trained with
    assert "total_steps 4 -> 8" in replan(fresh, 4, 8)
    expected = [0.1 * WarmupCosine(1, 8, 0.0)(step) for step in range(4, 8)]
    assert lrs_after(fresh, 4) == pytest.approx(expected) and min(expected) > 0


@pytest.mark.slow
def test_resume_extending_a_finished_cosine_run_replans_and_records_it(tmp_path):
    first = run_app(tmp_path, *FAST, "trainer.epochs=4")
    assert first.returncode == 0, first.stderr
    [run] = run_dirs(tmp_path)
    extended = run_app(tmp_path, f"resume={run}", "trainer.epochs=8")
    assert extended.returncode == 0, extended.stderr
    lrs = [float(v) for v in csv_column(run, "lr")]
    base = lrs[0]
    assert lrs[:4] == pytest.approx([base / 2 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    assert lrs[4:] == pytest.approx([base / 2 * (1 + math.cos(math.pi * e / 8)) for e in range(4, 8)])
    record = json.loads((run / "provenance.json").read_text())
    assert "T_max 4 -> 8" in record["resumes"][-1]["schedule_replanned"]
    assert Summary.read(run).epochs_run == 8


@pytest.mark.slow
def test_wandb_online_without_a_network_warns_once_and_logs_every_epoch_offline(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens there
    args = [a for a in FAST if not a.startswith("logger=")]
    proc = run_app(tmp_path, *args, "logger=wandb", "logger.wandb.mode=online", "logger.wandb.init_timeout=3", **env)
    assert proc.returncode == 0, proc.stderr
    [run] = run_dirs(tmp_path)
    log = (run / "train.log").read_text()
    assert log.count("W&B online: W&B did not accept the run within 3s") == 1
    assert [row["_step"] for row in wandb_history(run)] == ["1", "2", "3"]
