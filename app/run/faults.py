"""FOR TESTS ONLY: inject a fault at a named point, to prove what a run does when it meets it:
the process SIGKILLs itself (a run killed there resumes exactly), or a file write fails as on a
full disk. Off unless the environment variable `APP_TEST_KILL_AT` is set, and then it costs
nothing on the training path but a wrapper around the training batches.

    APP_TEST_KILL_AT=batch:N             after the N-th training batch of this process (mid-epoch)
    APP_TEST_KILL_AT=epoch_start:N       as the N-th epoch of this process starts (between epochs)
    APP_TEST_KILL_AT=checkpoint_write:N  during the N-th checkpoint file write of this process,
                                         after half of the temp file is on disk
    APP_TEST_KILL_AT=disk_full:N         the N-th file write of the run's records (checkpoints,
                                         metrics.csv rows, summary.json, provenance.json) raises
                                         OSError(ENOSPC), as a disk that filled up would; the
                                         writes after it succeed (space was freed)

Counts start at 1 in each process, so the same setting kills at the same point every time.

    APP_TEST_KILL_TRIAL_ID=I             with one of the above: only in the job of the Optuna trial
                                         whose storage id is I (its APP_OPTUNA_TRIAL_ID); counts
                                         start at that job's first batch, epoch or write

With several processes, `@R` after the point kills rank R alone (`batch:8@1`); without it every
rank that reaches the point dies.
"""
from __future__ import annotations

import errno
import io
import os
import signal
from typing import Any, BinaryIO, Iterator

ENV = "APP_TEST_KILL_AT"
TRIAL_ENV = "APP_TEST_KILL_TRIAL_ID"
POINTS = ("batch", "epoch_start", "checkpoint_write", "disk_full")


def _parse(text: str | None) -> tuple[str, int, int | None] | None:
    if not text:
        return None
    text, _, only = text.partition("@")
    point, _, count = text.partition(":")
    if point not in POINTS or not count.isdigit() or int(count) < 1 or not (only.isdigit() or not only):
        raise ValueError(f"{ENV}={text!r}: expected one of {', '.join(POINTS)} followed by :N (N >= 1) "
                         "and optionally @R (rank R only)")
    return point, int(count), int(only) if only else None


KILL_AT = _parse(os.environ.get(ENV))
ONLY_TRIAL = os.environ.get(TRIAL_ENV) or None
_seen = {point: 0 for point in POINTS}


def _reached(point: str) -> bool:
    if KILL_AT is None or KILL_AT[0] != point:
        return False
    if ONLY_TRIAL is not None and os.environ.get("APP_OPTUNA_TRIAL_ID") != ONLY_TRIAL:
        return False
    # RANK: set for each rank by torchrun and the elastic launcher (looked up now: a worker of
    # the elastic launcher imports this module before its environment is set).
    if KILL_AT[2] is not None and int(os.environ.get("RANK", 0)) != KILL_AT[2]:
        return False
    _seen[point] += 1
    return _seen[point] == KILL_AT[1]


def _kill() -> None:
    os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))


class _KillingBatches:
    """Yields what `inner` yields, killing the process at the configured batch or epoch start;
    everything else (num_samples, state_dict, ...) is `inner`'s."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        if _reached("epoch_start"):
            _kill_settled()
        for batch in self.inner:
            yield batch
            if _reached("batch"):  # the trainer has taken this batch's step and asks for the next
                _kill_settled()


def _kill_settled() -> None:
    """Kill, once the checkpoint writes already asked for are on disk: checkpoints are written on
    a background thread, and a kill that raced them would leave last.pt at one epoch or another
    from one test run to the next (either is a valid checkpoint; `checkpoint_write` is the point
    that kills during a write)."""
    from app.callbacks.checkpoint import WRITER

    WRITER.drain()
    _kill()


def wrap_train_batches(batches: Any) -> Any:
    """`batches` itself unless a batch or epoch kill point is set."""
    if KILL_AT is None or KILL_AT[0] not in ("batch", "epoch_start"):
        return batches
    return _KillingBatches(batches)


def before_write(path: Any) -> None:
    """Called before each write of a run record (`path`): at the configured `disk_full` write,
    raise the OSError a full disk raises."""
    if _reached("disk_full"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))


def checkpoint_write_plan() -> str | None:
    """Count one checkpoint write at the `disk_full` and `checkpoint_write` points, on the thread
    that asks for the write (so the count follows the run's order of writes, wherever the write
    itself then happens): "disk_full", "kill" or None, for `apply_checkpoint_plan`."""
    if _reached("disk_full"):
        return "disk_full"
    if _reached("checkpoint_write"):
        return "kill"
    return None


def apply_checkpoint_plan(plan: str | None, obj: Any, file: BinaryIO) -> None:
    """Called by `atomic_save` with its open temp file and the write's plan: fail as a full disk
    would ("disk_full"), or put the first half of the serialized checkpoint in the file, flush it
    to disk, and die ("kill")."""
    if plan == "disk_full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file.name)
    if plan != "kill":
        return
    if isinstance(obj, (bytes, bytearray, memoryview)):  # already serialized
        data = bytes(obj)
    else:
        buffer = io.BytesIO()
        import torch

        torch.save(obj, buffer)
        data = buffer.getvalue()
    file.write(data[: len(data) // 2])
    file.flush()
    os.fsync(file.fileno())
    _kill()


def before_checkpoint_write(obj: Any, file: BinaryIO) -> None:
    """Plan and apply in one go (a write made where it is asked for)."""
    apply_checkpoint_plan(checkpoint_write_plan(), obj, file)
