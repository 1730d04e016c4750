"""Full-state checkpoints in-process: what last.pt holds, restoring it bit for bit, atomic writes,
best.pt / snapshot bookkeeping, and the metrics.csv rewrite on resume."""
from __future__ import annotations

import csv
import io
import os
import random

import numpy as np
import pytest
import torch

from app.run import faults
from app.run.build import seed_everything
from app.callbacks import Callback, Checkpoint, CSVLogger, EarlyStopping, atomic_save
from app.callbacks import checkpoint as checkpoint_module
from app.data import TensorBatches, regression_1d
from app.models import MLP
from app.run.reproducibility import rng_state, set_rng_state
from tests.conftest import options_of
from app.train.tasks import TASKS
from app.train.trainer import TIMING_METRICS, Trainer


class Interrupted(Exception):
    pass


class InterruptAfter(Callback):
    """Raise once epoch `epoch` has ended (after the checkpoint and the csv row)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, metrics) -> None:
        if trainer.epoch == self.epoch:
            raise Interrupted


def make_run(run_dir, epochs=5, extra=(), every=1, keep_last_k=0):
    """A small run with every source of state: dropout (global RNG), shuffled batches (their own
    generator), AdamW moments, a cosine schedule, early stopping's patience."""
    seed_everything(0)
    data = regression_1d(**options_of("data", "regression", n_samples=320, seed=0))
    model = MLP(1, 1, **options_of("model", "mlp", nodes=16, layers=2, dropout=0.3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    train = TensorBatches(data.train, 32, device="cpu", shuffle=True, seed=0)
    val = TensorBatches(data.val, 64, device="cpu", shuffle=False)
    checkpoint = Checkpoint(run_dir / "checkpoints", every=every, keep_last_k=keep_last_k)
    callbacks = [EarlyStopping("val_loss", "min", patience=10, min_delta=0.0), checkpoint, CSVLogger(run_dir / "metrics.csv"), *extra]
    trainer = Trainer(model, optimizer, TASKS["regression"], device=torch.device("cpu"), epochs=epochs,
                      scheduler=scheduler, callbacks=callbacks)
    return trainer, checkpoint, train, val


def scramble_global_rngs():
    random.seed(1234)
    np.random.seed(1234)
    torch.manual_seed(1234)


def numbers(history):
    return [{k: v for k, v in m.items() if k not in TIMING_METRICS} for m in history]


def csv_numbers(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_METRICS} for row in csv.DictReader(f)]


def interrupted_then_resumed(tmp_path, skip=None, monkeypatch=None):
    full, _, train, val = make_run(tmp_path / "full")
    full.fit(train, val)

    part, _, train, val = make_run(tmp_path / "part", extra=[InterruptAfter(2)])
    with pytest.raises(Interrupted):
        part.fit(train, val)
    resumed, checkpoint, train, val = make_run(tmp_path / "part")
    scramble_global_rngs()  # whatever ran in between must not matter
    if skip == "rng":
        monkeypatch.setattr(checkpoint_module, "set_rng_state", lambda state: [])
    state = checkpoint.restore(resumed, None if skip == "data order" else train)
    assert state["epoch"] == 2 and resumed.epoch == 2
    resumed.fit(train, val)
    return full, resumed


def test_resumed_fit_is_bit_for_bit_the_uninterrupted_fit(tmp_path):
    full, resumed = interrupted_then_resumed(tmp_path)
    assert numbers(resumed.history) == numbers(full.history)
    assert (resumed.best, resumed.best_epoch, resumed.last) == (full.best, full.best_epoch, full.last)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert csv_numbers(tmp_path / "part" / "metrics.csv") == csv_numbers(tmp_path / "full" / "metrics.csv")
    assert [int(r["epoch"]) for r in csv_numbers(tmp_path / "part" / "metrics.csv")] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("skip", ["rng", "data order"])
def test_each_restored_state_matters(tmp_path, monkeypatch, skip):
    """Leaving one piece of state out of the restore changes the numbers: the test above can fail."""
    full, resumed = interrupted_then_resumed(tmp_path, skip=skip, monkeypatch=monkeypatch)
    assert numbers(resumed.history)[:2] == numbers(full.history)[:2]
    assert numbers(resumed.history)[2:] != numbers(full.history)[2:]


def test_last_pt_holds_the_full_state(tmp_path):
    trainer, checkpoint, train, val = make_run(tmp_path, epochs=2)
    trainer.fit(train, val)
    state = torch.load(checkpoint.last_path, weights_only=True)
    assert {"model", "optimizer", "scheduler", "trainer", "callbacks", "train_batches", "rng", "epoch"} <= set(state)
    assert state["trainer"]["epoch"] == 2 and len(state["trainer"]["history"]) == 2
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["callbacks"]["EarlyStopping"]["best"] == trainer.best
    assert state["scheduler"]["last_epoch"] == 2  # stepped before the checkpoint: ready for epoch 3


def test_metrics_csv_is_rewritten_from_the_checkpointed_history(tmp_path):
    path = tmp_path / "metrics.csv"
    trainer, _, _, _ = make_run(tmp_path, epochs=5)
    trainer.history = [{"epoch": e, "train_loss": 1.0 / e, "lr": 0.1, "epoch_time": 0.5} for e in (1, 2, 3)]
    trainer.epoch = 3
    logger = CSVLogger(path)
    path.write_text("epoch,train_loss\n1,1.0\n2,0.5\n3,0.3\n4,0.25\n5,0.2\n")  # rows after the checkpoint
    logger.on_fit_start(trainer)
    assert [r["epoch"] for r in csv_numbers(path)] == ["1", "2", "3"]
    path.write_text("epoch,train_loss\n1,1.0\n")  # killed before it wrote rows 2 and 3
    logger.on_fit_start(trainer)
    rows = csv_numbers(path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and rows[1]["train_loss"] == repr(0.5)


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1, "weights": torch.ones(1000)}, path)

    def die():
        raise Interrupted

    monkeypatch.setattr(faults, "KILL_AT", ("checkpoint_write", 1, None))
    monkeypatch.setattr(faults, "_seen", {point: 0 for point in faults.POINTS})
    monkeypatch.setattr(faults, "_kill", die)
    with pytest.raises(Interrupted):
        atomic_save({"epoch": 2, "weights": torch.zeros(1000)}, path)
    [torn] = tmp_path.glob(".last.pt.*tmp")  # the temp file of this process
    assert 0 < torn.stat().st_size
    with pytest.raises(RuntimeError, match="zip archive"):  # torn: no central directory
        torch.load(torn, weights_only=True)
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_restore_never_loads_a_torn_temp_file_and_removes_it(tmp_path):
    trainer, checkpoint, train, val = make_run(tmp_path, epochs=2)
    trainer.fit(train, val)
    data = checkpoint.last_path.read_bytes()
    torn = checkpoint.directory / ".last.pt.tmp"
    torn.write_bytes(data[: len(data) // 2])
    fresh, checkpoint, train, _ = make_run(tmp_path, epochs=4)
    state = checkpoint.restore(fresh, train)
    assert state["epoch"] == 2 and fresh.epoch == 2
    assert not torn.exists()


def test_best_pt_follows_last_pt_and_is_never_ahead_of_it(tmp_path):
    trainer, checkpoint, train, val = make_run(tmp_path, epochs=4, every=100)  # only improvements and the end
    seen = []

    def epochs():  # best.pt read first: a write between the two reads only moves last.pt on
        best = torch.load(checkpoint.best_path, weights_only=True)["epoch"] if checkpoint.best_path.exists() else 0
        last = torch.load(checkpoint.last_path, weights_only=True)["epoch"] if checkpoint.last_path.exists() else 0
        return last, best

    class Watch(Callback):
        def on_epoch_end(self, trainer, metrics):
            last, best = epochs()  # while the background write may be under way
            assert best <= last
            checkpoint.flush()  # the write of this epoch, on disk
            seen.append((trainer.improved, *epochs()))

    trainer.callbacks.append(Watch())
    trainer.fit(train, val)
    for epoch, (improved, last, best) in enumerate(seen, start=1):
        assert best <= last
        if improved:
            assert last == epoch and best == epoch
    assert os.path.samefile(checkpoint.best_path, checkpoint.last_path) == seen[-1][0]


def test_restore_makes_the_best_link_a_kill_prevented_and_drops_later_snapshots(tmp_path):
    trainer, checkpoint, train, val = make_run(tmp_path, epochs=3, keep_last_k=5)
    trainer.fit(train, val)
    # As if killed after last.pt of a best epoch was written, before best.pt was linked to it,
    # and with a snapshot of an epoch the resume will train again.
    state = torch.load(checkpoint.last_path, weights_only=True)
    state["trainer"]["best_epoch"] = state["trainer"]["epoch"]
    atomic_save(state, checkpoint.last_path)
    checkpoint.best_path.unlink()
    torch.save({"epoch": 9}, checkpoint.directory / "epoch-0009.pt")
    fresh, checkpoint, train, _ = make_run(tmp_path, epochs=10, keep_last_k=5)
    checkpoint.restore(fresh, train)
    assert os.path.samefile(checkpoint.best_path, checkpoint.last_path)
    assert [e for e, _ in checkpoint.snapshots()] == [1, 2, 3]


def test_keep_last_k_keeps_the_last_k_periodic_snapshots(tmp_path):
    trainer, checkpoint, train, val = make_run(tmp_path, epochs=6, every=2, keep_last_k=2)
    trainer.fit(train, val)
    snapshots = checkpoint.snapshots()
    assert [e for e, _ in snapshots] == [4, 6]
    assert [torch.load(p, weights_only=True)["epoch"] for _, p in snapshots] == [4, 6]


def test_restore_without_last_pt_starts_from_scratch_and_clears_leftovers(tmp_path):
    trainer, checkpoint, train, _ = make_run(tmp_path, epochs=3)
    checkpoint.directory.mkdir(parents=True)
    (checkpoint.directory / ".last.pt.tmp").write_bytes(b"torn")
    assert checkpoint.restore(trainer, train) is None
    assert trainer.epoch == 0 and list(checkpoint.directory.iterdir()) == []


def test_checkpoint_of_an_older_format_is_refused(tmp_path):
    trainer, checkpoint, train, _ = make_run(tmp_path, epochs=3)
    checkpoint.directory.mkdir(parents=True)
    torch.save({"epoch": 1, "model": trainer.model.state_dict()}, checkpoint.last_path)
    with pytest.raises(ValueError, match="format-1 checkpoint of an earlier version"):
        checkpoint.restore(trainer, train)


def test_checkpoint_with_pickled_objects_is_refused_without_running_them(tmp_path):
    """A format-2 checkpoint (numpy arrays in the RNG state) or a planted object: weights_only
    loading refuses it before anything in the file runs."""
    trainer, checkpoint, train, _ = make_run(tmp_path, epochs=3)
    checkpoint.directory.mkdir(parents=True)
    torch.save({"format": 2, "epoch": 1, "model": trainer.model.state_dict(),
                "rng": {"numpy": np.random.get_state()}}, checkpoint.last_path)
    with pytest.raises(ValueError, match="pickled Python objects.*earlier version"):
        checkpoint.restore(trainer, train)
    assert trainer.epoch == 0

    ran = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (os.mkdir, (str(ran),))

    torch.save({"format": 3, "model": {}, "payload": Planted()}, checkpoint.last_path)
    with pytest.raises(ValueError, match="pickled Python objects"):
        checkpoint.restore(trainer, train)
    assert not ran.exists()


def test_checkpoint_holds_only_what_weights_only_loading_accepts(tmp_path):
    trainer, checkpoint, train, val = make_run(tmp_path, epochs=2)
    trainer.fit(train, val)
    state = torch.load(checkpoint.last_path, weights_only=True)
    assert state["format"] == checkpoint_module.FORMAT and state["epoch"] == 2
    kind, keys, *_ = state["rng"]["numpy"]
    assert kind == "MT19937" and isinstance(keys, torch.Tensor) and keys.shape == (624,)


def test_rng_state_round_trip_on_cpu():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3))
    assert set_rng_state(state) == []
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_state_round_trip():
    torch.zeros(1, device="cuda")  # CUDA in use: its generators are part of the state
    state = rng_state(torch.device("cuda"))
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = torch.rand(3, device="cuda")
    torch.cuda.manual_seed_all(99)
    assert set_rng_state(state) == []
    assert torch.equal(first, torch.rand(3, device="cuda"))


def test_cuda_state_without_cuda_is_reported_not_fatal(monkeypatch):
    state = {**rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)]}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    warnings = set_rng_state(state)
    assert len(warnings) == 1 and "CUDA" in warnings[0]


def test_wandb_logger_keeps_its_run_id_across_a_resume():
    from app.callbacks import WandbLogger

    logger = WandbLogger(**options_of("logger", "wandb", tags=[]))
    assert logger.state_dict() == {"run_id": None}
    logger.load_state_dict({"run_id": "abc123"})
    assert (logger.kwargs["id"], logger.kwargs["resume"]) == ("abc123", "allow")  # what wandb.init gets
    assert logger.state_dict() == {"run_id": "abc123"}


def test_unreadable_last_pt_is_reported_not_loaded(tmp_path):
    trainer, checkpoint, train, _ = make_run(tmp_path, epochs=3)
    checkpoint.directory.mkdir(parents=True)
    checkpoint.last_path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoint.restore(trainer, train)


# ----------------------------------------------------------------------------- background writes
def test_a_failed_background_write_surfaces_on_the_training_thread_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    """Epoch 2's last.pt fails on the writer thread as a full disk would: the error reaches the
    training thread at its next checkpoint (epoch 3's), the temp file is gone, last.pt still
    holds epoch 1, and a resume continues from there."""
    import errno
    import threading

    from app.run.record import disk_full

    import stat

    trainer, checkpoint, train, val = make_run(tmp_path, epochs=4, extra=())
    real_fsync = os.fsync
    writes = []

    def fsync(fd):  # the file fsyncs of the checkpoint writes: the 2nd (epoch 2's last.pt) fails
        if stat.S_ISREG(os.fstat(fd).st_mode):
            writes.append(threading.current_thread().name)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError) as raised:
        trainer.fit(train, val)
    assert disk_full(raised.value) is not None
    assert trainer.epoch == 3  # surfaced at epoch 3's checkpoint, before it was written
    assert writes == ["checkpoint-writer", "checkpoint-writer"]  # written off the training thread
    assert not list(checkpoint.directory.glob(".*.tmp"))  # the failed write's temp file was removed
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert torch.load(checkpoint.last_path, weights_only=True)["epoch"] == 1
    fresh, checkpoint, train, _ = make_run(tmp_path, epochs=4)
    assert checkpoint.restore(fresh, train)["epoch"] == 1


def test_background_and_synchronous_checkpoints_hold_the_same_state(tmp_path):
    states = []
    for background in (True, False):
        trainer, checkpoint, train, val = make_run(tmp_path / str(background), epochs=3)
        checkpoint.background = background
        trainer.fit(train, val)  # returns with the writes on disk
        states.append(torch.load(checkpoint.last_path, weights_only=True))
    a, b = states
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key])
    for (pa, sa), (pb, sb) in zip(a["optimizer"]["state"].items(), b["optimizer"]["state"].items()):
        for name in sa:
            assert torch.equal(sa[name], sb[name]), name
    for metrics_a, metrics_b in zip(a["trainer"]["history"], b["trainer"]["history"]):
        assert {k: v for k, v in metrics_a.items() if k not in TIMING_METRICS} == \
               {k: v for k, v in metrics_b.items() if k not in TIMING_METRICS}
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_the_serialized_state_is_a_copy_training_cannot_change():
    weights = torch.ones(3)
    state = {"model": {"w": weights, "tied": weights}, "history": [{"loss": 1.0}]}
    data = checkpoint_module.serialize(state)
    weights.add_(1)
    state["history"][0]["loss"] = 2.0
    copy = torch.load(io.BytesIO(bytes(data)), weights_only=True)
    assert torch.equal(copy["model"]["w"], torch.ones(3)) and copy["history"][0]["loss"] == 1.0
    assert copy["model"]["w"] is copy["model"]["tied"]  # shared stays shared
