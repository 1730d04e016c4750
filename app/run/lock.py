"""One process at a time trains in a run directory.

`RunDirLock` holds an exclusive `flock` on `<run dir>/.lock` while a run (or a resume of it)
trains there. The kernel releases the lock when the process ends, however it ends (a kill, a
crash, the machine's OOM killer), so a killed run can be resumed at once: there is no stale
lock file to clean up. A second process that finds the lock held is refused with one paragraph
naming the process that holds it, before it reads or writes anything of the run. On systems
without `fcntl` (Windows) runs are not locked.
"""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from app.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; runs go unlocked
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class RunDirLock:
    """`with RunDirLock(run_dir, key):` trains under the lock; raises ConfigError (about `key`,
    the config key that chose the directory: `resume` or `hydra.run.dir`) when another process
    holds it. The lock file stays behind (removing it would race with the next holder) and holds
    the last holder's pid, host and start time, for the refusal message."""

    def __init__(self, run_dir: str | Path, key: str = "hydra.run.dir") -> None:
        self.run_dir = Path(run_dir)
        self.key = key
        self.fd: int | None = None

    def acquire(self) -> "RunDirLock":
        if fcntl is None or self.fd is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EWOULDBLOCK: another process holds it
            holder = os.read(fd, 256).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ConfigError(
                self.key, str(self.run_dir),
                "a run directory no other process is training in: wait for that process to end "
                "(or stop it), then `python -m app resume=<run dir>` continues the run from its last checkpoint",
                f"{holder} is training in this run directory; a second process would interleave "
                "its metrics and checkpoints with that one's, so nothing was started or changed",
            ) from None
        os.ftruncate(fd, 0)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        os.write(fd, f"process {os.getpid()} on {platform.node()} (since {started})\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
