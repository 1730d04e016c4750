"""Checkpoints in the run directory: `checkpoints/last.pt`, `checkpoints/best.pt`, and optional
snapshots `checkpoints/epoch-NNNN.pt`.

`last.pt` holds everything a run needs to continue exactly: model, optimizer, scheduler, the
trainer's loop state (epoch, best so far, every epoch's metrics, the stop decision), each
callback's state (early stopping's patience, the W&B run id), the training data's shuffle state,
and every random generator (python, numpy, torch CPU, CUDA). It also holds what inference needs
(`inference`: the task, the model's config and sizes, feature names, class names, the fitted
scaling; see app/run/load.py). Files are written atomically, so a kill at any instant leaves the
previous checkpoint or the new one, never a torn one.

A checkpoint is data, not code: it holds tensors and plain containers only (dicts, lists,
tuples, strings, numbers), and every load uses `torch.load(weights_only=True)`, which refuses
anything else, so opening a checkpoint someone sent you runs nothing from it.

Several processes (DDP): rank 0 writes, and the checkpoint also holds `world_size` and every
rank's generators (`rng_ranks`); each rank restores its own, and a run is resumed only with the
same number of processes.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import shutil
import threading
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

from app.errors import ConfigError
from app.run import faults
from app.run.record import disk_full, temp_path
from app.callbacks.base import Callback
from app.run.reproducibility import rng_state, set_rng_state

log = logging.getLogger(__name__)
# 3: plain containers only (weights_only=True loads it) and the inference record;
# 2: full state (trainer, RNGs, data order), pickled objects; 1: weights and optimizer only.
FORMAT = 3
SNAPSHOT = re.compile(r"^epoch-(\d+)\.pt$")


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; elsewhere the rename alone has to do)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_UNPLANNED = object()


def atomic_save(obj: Any, path: Path, plan: Any = _UNPLANNED) -> None:
    """Write `obj` with torch.save to a temp file beside `path`, then rename over it, so a
    kill at any instant leaves either the old file or the new one, never a torn one. A write
    that fails (a full disk) removes its temp file and leaves the old file as it was.
    `plan`: the test-only fault plan of this write when it was made elsewhere (CheckpointWriter)."""
    path = Path(path)
    tmp = temp_path(path)
    if plan is _UNPLANNED:
        plan = faults.checkpoint_write_plan()  # test-only fault point; None otherwise
    try:
        with open(tmp, "wb") as f:
            faults.apply_checkpoint_plan(plan, obj, f)
            if isinstance(obj, (bytes, bytearray, memoryview)):  # serialized already (`serialize`)
                f.write(obj)
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        if isinstance(error, OSError) or disk_full(error) is not None:  # the disk gets its space back
            tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def serialize(obj: Any) -> memoryview:
    """`obj` as the bytes torch.save writes: a copy training can no longer change."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def _copied(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a checkpoint's state training can no longer change: tensors copied to the CPU
    (shared ones stay shared), containers rebuilt, the rest (immutable) as is."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, torch.Tensor):
        copy = obj.detach().to("cpu", copy=True)
    elif isinstance(obj, dict):
        copy = {key: _copied(value, memo) for key, value in obj.items()}
    elif isinstance(obj, (list, tuple)):
        copy = type(obj)(_copied(value, memo) for value in obj)
    else:
        return obj
    memo[id(obj)] = copy
    return copy


class CheckpointWriter:
    """Writes checkpoints on one background thread, so that serializing and fsyncing them does
    not hold up training (on small models, a per-epoch last.pt took longer than the epoch).

    `submit(key, work, plan)` queues `work` (a callable doing the writes of one checkpoint: the
    atomic last.pt, then its links) for the file set `key`; there is at most one pending write
    per key: a new submit for a key first waits for that key's previous write to finish, and
    raises its error, if it failed, on the submitting (training) thread. `wait(key)` does the
    same without a new write: callers flush before fit returns, before reading a checkpoint
    back, and at the end of a run. Writes of different keys (the members of a pack) queue in
    order on the one thread. The thread ends when the queue is empty and is not a daemon, so an
    exiting interpreter finishes a write in flight. A write whose test-only fault `plan` is set
    (app/run/faults.py) is waited for at once, so the fault lands at the same point of the run
    every time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._pending: dict[str, _Job] = {}
        self._thread: threading.Thread | None = None

    def submit(self, key: str, work: Callable[[], None], plan: Any = None) -> None:
        self.wait(key)
        job = _Job(work)
        with self._lock:
            self._pending[key] = job
            self._queue.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="checkpoint-writer", daemon=False)
                self._thread.start()
        if plan is not None:
            self.wait(key)

    def wait(self, key: str) -> None:
        """Block until `key`'s pending write is done; raise its error if it failed."""
        with self._lock:
            job = self._pending.get(key)
        if job is None:
            return
        job.done.wait()
        with self._lock:
            if self._pending.get(key) is job:
                del self._pending[key]
        if job.error is not None:
            error, job.error = job.error, None
            raise error

    def drain(self) -> None:
        """Block until every write submitted so far is done (their errors stay for `wait`)."""
        with self._lock:
            jobs = list(self._pending.values())
        for job in jobs:
            job.done.wait()

    def pending(self, key: str) -> bool:
        with self._lock:
            return key in self._pending

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                job = self._queue.popleft()
            try:
                job.work()
            except BaseException as error:  # noqa: BLE001 -- handed to the training thread
                job.error = error
            finally:
                job.done.set()


class _Job:
    def __init__(self, work: Callable[[], None]) -> None:
        self.work = work
        self.done = threading.Event()
        self.error: BaseException | None = None


WRITER = CheckpointWriter()  # the process's one checkpoint writer


def atomic_link(source: Path, path: Path) -> None:
    """Make `path` the same file as `source` (a hard link, or a copy where links are not
    supported), atomically like `atomic_save`."""
    path = Path(path)
    if path.exists() and os.path.samefile(source, path):
        return  # already linked (renaming a link over itself would leave the temp behind)
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)
    _sync_directory(path.parent)


def load_checkpoint(path: str | Path | BinaryIO, name: str | None = None) -> dict[str, Any]:
    """A checkpoint's contents, tensors on the CPU (loading puts them where the run's are),
    loaded with `weights_only=True`. Raises ValueError, saying why in one sentence, for a file
    that is not a checkpoint this version of the app wrote (unreadable, torn, pickled objects,
    an older format). `name`: what the messages call it (default: the path)."""
    shown = name or path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # torch's weights_only unpickler names the refused object as "GLOBAL module.name"
        found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL (\S+)", str(error))
        if found is None:
            raise ValueError(f"{shown} cannot be read as a checkpoint (not a torch.save file, or damaged)") from None
        raise ValueError(
            f"{shown} holds pickled Python objects ({found.group(1)}), which loading would have to run "
            f"as code, so it was not loaded: it was written by an earlier version of this app "
            f"(checkpoint format 2 or older; this version writes and reads format {FORMAT}, tensors "
            "and plain containers only) or by another program") from None
    except Exception as error:  # torch raises RuntimeError, EOFError, OSError... for damaged files
        raise ValueError(f"{shown} cannot be read as a checkpoint ({type(error).__name__}: "
                         f"{str(error).strip().splitlines()[0] if str(error).strip() else 'no detail'})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{shown} is not a checkpoint of this app (no model state in it)")
    if state.get("format", 1) < FORMAT:
        raise ValueError(f"{shown} is a format-{state.get('format', 1)} checkpoint of an earlier version "
                         f"of this app; this version reads format {FORMAT}")
    return state


def best_checkpoint(state: dict[str, Any], history: list[dict[str, float]]) -> dict[str, Any]:
    """best.pt for the last.pt `state` of a pack member whose best epoch is an earlier one: the
    weights `state["best_model"]`, that epoch's metrics and what inference needs. It is for
    using the model (evaluate, predict, the test with the best weights), not for resuming:
    resumes read last.pt."""
    epoch = state["best_epoch"]
    metrics = next((m for m in history if m.get("epoch") == epoch), {})
    keys = ("format", "monitor", "mode", "best", "best_epoch", "inference")
    return {**{key: state[key] for key in keys}, "epoch": epoch, "model": state["best_model"],
            "metrics": dict(metrics)}


def _epoch_of(path: Path) -> int | None:
    """The epoch of the checkpoint at `path`; None when there is none or it cannot be read."""
    try:
        return int(load_checkpoint(path).get("epoch"))
    except (ValueError, TypeError, OSError):
        return None


class Checkpoint(Callback):
    """Saves `last.pt` every `every` epochs, at the end, and whenever the monitored metric
    reaches a new best; `best.pt` is then the same file (a hard link: no second write).
    `keep_last_k` > 0 also keeps `epoch-NNNN.pt` for the last k of the every-N epochs.

    A member of a pack (app/train/packed.py) with `pack_interval_s` > 0 is *held* by its pack
    (`join_pack`): its last.pt is written at the end, at its snapshot epochs, and at the first due
    epoch after the pack asks for it (`request_write`: the pack does so for all its members at
    once, at most every `pack_interval_s` seconds, so a killed pack resumes with its members at
    one epoch). Its best weights live in the pack meanwhile; a write whose epoch is not the best
    one also writes best.pt from them and keeps them in last.pt (`best_model`), from which a
    resume rewrites a best.pt that a kill left behind.

    `directory` is taken relative to `run_dir` (the run directory, which the app passes) unless
    it is absolute. Options and their defaults: conf/callbacks/checkpoint.yaml."""

    # The pack copies a member's slice into its model only for the callbacks that read it.
    reads_model = False

    def __init__(self, directory: str | Path, every: int, keep_last_k: int, *,
                 run_dir: str | Path | None = None, background: bool = True,
                 serialize_in_background: bool = False, pack_interval_s: float = 0.0) -> None:
        self.directory = Path(run_dir) / directory if run_dir is not None else Path(directory)
        self.every = every
        self.keep_last_k = keep_last_k
        self.background = background
        if isinstance(pack_interval_s, bool) or not isinstance(pack_interval_s, (int, float)) \
                or not pack_interval_s >= 0:
            raise ConfigError("callbacks.checkpoint.pack_interval_s", pack_interval_s,
                              "a number of seconds >= 0 (0: a pack member writes last.pt at every due epoch, "
                              "as a lone run)")
        self.pack_interval_s = float(pack_interval_s)
        # Set by the pack that trains this member (see `join_pack`).
        self._sync: Callable[[], None] | None = None
        self._best_model: Callable[[], dict[str, torch.Tensor]] | None = None
        self._write_requested = False
        self._best_on_disk: int | None = None  # the epoch best.pt holds, as far as this run knows
        # Also pickle on the writer thread (a copy of the state is made here instead): measured
        # by benchmarks/overhead.py --checkpoints against the default, pickling here.
        self.serialize_in_background = serialize_in_background
        self.last_path = self.directory / "last.pt"
        self.best_path = self.directory / "best.pt"
        # What a trained model needs to be used (app.run.load.inference_record): set by the
        # run builder once the data exists; plain containers only.
        self.inference: dict[str, Any] | None = None

    def on_fit_start(self, trainer) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def state(self, trainer, metrics: dict[str, float]) -> dict[str, Any]:
        batches = getattr(trainer, "train_batches", None)
        return {
            "format": FORMAT,
            "epoch": trainer.epoch,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "monitor": trainer.monitor,
            "mode": trainer.mode,
            "best": trainer.best,
            "best_epoch": trainer.best_epoch,
            "metrics": metrics,
            "trainer": trainer.state_dict(),
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks},
            "train_batches": batches.state_dict() if hasattr(batches, "state_dict") else None,
            "rng": rng_state(trainer.device),
            "inference": self.inference,
            **({"world_size": len(trainer.rank_rng_states), "rng_ranks": trainer.rank_rng_states}
               if getattr(trainer, "rank_rng_states", None) else {}),
        }

    # ------------------------------------------------------------------ in a pack
    def join_pack(self, sync: Callable[[], None],
                  best_model: Callable[[], dict[str, torch.Tensor]] | None = None) -> None:
        """Called by the pack that trains this member: `sync()` puts the member's current state
        (its row of the pack) into its model and optimizer, and runs before each write; with
        `best_model` (a pack holding the member, see the class docstring; only for
        `pack_interval_s` > 0) the pack schedules the writes, and `best_model()` returns the
        member's weights of its best epoch so far (a model state dict)."""
        self._sync = sync
        self._best_model = best_model

    @property
    def held(self) -> bool:
        return self._best_model is not None

    def request_write(self) -> None:
        """The pack asks for last.pt at this member's next due epoch."""
        self._write_requested = True

    def writes(self, trainer) -> bool:
        """Whether `on_epoch_end` writes at `trainer`'s epoch, whose end state is final."""
        final = trainer.should_stop or trainer.epoch == trainer.epochs
        due = trainer.epoch % self.every == 0
        if self.held:
            return final or (due and (self._write_requested or self.keep_last_k > 0))
        return due or final or trainer.improved

    # ------------------------------------------------------------------ writing
    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        if not self.writes(trainer):
            return
        due = trainer.epoch % self.every == 0 or trainer.should_stop or trainer.epoch == trainer.epochs
        epoch = trainer.epoch
        improved = trainer.improved
        if self._sync is not None:
            self._sync()
        state = self.state(trainer, metrics)
        best = None
        if self.held:
            self._write_requested = False
            if trainer.best_epoch is not None and trainer.best_epoch != epoch:
                # best.pt cannot be a link to this last.pt: its weights come from the pack
                state["best_model"] = self._best_model()
                if self._best_on_disk != trainer.best_epoch:
                    best = best_checkpoint(state, trainer.history)
        if improved:
            self._best_on_disk = epoch
        elif best is not None:
            self._best_on_disk = trainer.best_epoch
        if not self.background:
            self._write(state, improved, due, epoch, best=best)
            return
        # On the training thread: serialize the state to memory (a copy training cannot change)
        # and count the write's test-only fault point; writing and fsyncing go to the writer.
        # Serializing is pickling, which holds the GIL: on a second thread it slowed training
        # down more than it saved (benchmarks/README.md, checkpoints); the file write and the
        # fsync, the larger part, release it.
        if self.serialize_in_background:
            state, best = _copied(state), _copied(best)
        else:
            state, best = serialize(state), serialize(best) if best is not None else None
        plan = faults.checkpoint_write_plan()
        WRITER.submit(self._key, lambda: self._write(state, improved, due, epoch, plan, best), plan)

    def _write(self, state: dict[str, Any], improved: bool, due: bool, epoch: int,
               plan: Any = _UNPLANNED, best: Any = None) -> None:
        # last.pt first, then best.pt as a link to it: best.pt is never ahead of last.pt, so a
        # resume from last.pt never finds a best.pt from epochs it is about to train again.
        # (A held member's best.pt of an earlier epoch is written after last.pt, which holds
        # its weights too: `restore` rewrites it if a kill came between the two.)
        atomic_save(state, self.last_path, plan)
        if improved:
            atomic_link(self.last_path, self.best_path)
        elif best is not None:
            atomic_save(best, self.best_path)
        if self.keep_last_k and due:
            atomic_link(self.last_path, self.directory / f"epoch-{epoch:04d}.pt")
            for _, old in self.snapshots()[: -self.keep_last_k]:
                old.unlink(missing_ok=True)

    @property
    def _key(self) -> str:
        return os.path.abspath(self.last_path)

    def flush(self) -> None:
        """Wait until this callback's checkpoint writes are on disk; raise the error of one that
        failed (a full disk), here on the calling thread."""
        WRITER.wait(self._key)

    def on_fit_end(self, trainer, result) -> None:
        self.flush()  # fit returns with its checkpoints on disk (best.pt is read next)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        """A run that failed or was interrupted with a write in flight: finish it (a completed
        epoch's checkpoint, which a resume continues from); its own error is only logged, the
        run's error is already on its way."""
        try:
            self.flush()
        except Exception as error:  # noqa: BLE001
            log.warning("checkpoint write failed after the run stopped: %s", error)

    def snapshots(self) -> list[tuple[int, Path]]:
        """(epoch, path) of the `epoch-NNNN.pt` snapshots, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := SNAPSHOT.match(p.name))]
        return sorted(found)

    def load_best_weights(self, model: torch.nn.Module) -> bool:
        """Load best.pt's weights into `model`; False when no best checkpoint was written."""
        self.flush()
        if not self.best_path.exists():
            return False
        model.load_state_dict(load_checkpoint(self.best_path)["model"])
        return True

    # ------------------------------------------------------------------ resuming
    def restore(self, trainer, train_batches: Any = None) -> dict[str, Any] | None:
        """Put `trainer` (its model, optimizer, scheduler, callbacks), `train_batches` and the
        random generators back where `last.pt` left them; None (nothing touched) without one.

        Also tidies what a kill can leave: torn temp files, a best.pt link not yet made, and
        snapshots of epochs after last.pt (they will be trained again); with several processes
        rank 0 alone tidies, the others only read.
        """
        self.flush()  # a write of this process still in flight (a resume in the same process)
        main = getattr(trainer, "rank", 0) == 0
        for tmp in self.directory.glob(".*.tmp") if self.directory.is_dir() and main else ():
            log.info("removing %s, a checkpoint write that was interrupted", tmp)
            tmp.unlink()
        if not self.last_path.exists():
            for stale in [self.best_path, *(p for _, p in self.snapshots())] if main else ():
                stale.unlink(missing_ok=True)
            return None
        state = load_checkpoint(self.last_path)  # ValueError: atomic writes rule out torn files,
        # so this is damage from outside or a checkpoint of an earlier version
        written_by, world_size = state.get("world_size", 1), getattr(trainer, "world_size", 1)
        if written_by != world_size:
            raise ConfigError(
                "trainer.devices", world_size,
                f"{written_by}, the number of processes the run trained with (trainer.devices={written_by}, "
                f"or torchrun --nproc_per_node={written_by})",
                f"{self.last_path} holds the data order and random generators of {written_by} process(es); "
                "a resume continues with the same number",
            )

        trainer.model.load_state_dict(state["model"])
        trainer.model.to(trainer.device)
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scheduler is not None and state["scheduler"] is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.load_state_dict(state["trainer"])
        for callback in trainer.callbacks:
            saved = state["callbacks"].get(type(callback).__name__)
            if saved is not None:
                callback.load_state_dict(saved)
        if train_batches is not None and state["train_batches"] is not None:
            train_batches.load_state_dict(state["train_batches"])

        if main and trainer.best_epoch is not None and trainer.best_epoch == trainer.epoch:
            atomic_link(self.last_path, self.best_path)  # killed before the link was made
        elif main and state.get("best_model") is not None and _epoch_of(self.best_path) != trainer.best_epoch:
            # a pack member killed between its last.pt and its best.pt of an earlier epoch
            atomic_save(best_checkpoint(state, trainer.history), self.best_path)
        self._best_on_disk = trainer.best_epoch
        for epoch, path in self.snapshots() if main else ():
            if epoch > trainer.epoch:
                path.unlink()
        # Last: nothing above may draw from the generators the next epoch continues.
        rng = state["rng_ranks"][trainer.rank] if state.get("rng_ranks") else state["rng"]
        for warning in set_rng_state(rng):
            log.warning("resume: %s; the run continues, but not bit for bit", warning)
        return state
