"""A throwaway PostgreSQL server for tests (the `postgres_server` fixture in tests/conftest.py).

The server binaries come from the system (Debian's `postgresql` package: the newest
/usr/lib/postgresql/<version>/bin, else `initdb` on PATH; `.ci/run` installs the package where
it is missing). `initdb` makes a cluster in a fresh temp dir, the server listens on a free local
port with its unix socket in that dir, and it is stopped (`pg_ctl stop -m immediate`) and the dir
removed afterwards. PostgreSQL refuses to run as root: under root the dir is chowned to the
`postgres` user and every server command runs as that user (runuser).

Connections from 127.0.0.1 need the password (scram-sha-256), so wrong credentials are refused
as on a real server; the unix socket trusts the local user (for `createdb`).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER, PASSWORD = "app", "app-test-password"
START_TIMEOUT_S = 60.0


def bin_dir() -> Path | None:
    """The newest PostgreSQL binaries on this machine, or None."""
    versions = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if (path / "initdb").exists() and re.fullmatch(r"\d+(\.\d+)?", path.parent.name):
            versions.append((float(path.parent.name), path))
    if versions:
        return max(versions)[1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One server in its own temp dir. `url(database)` is the SQLAlchemy URL for the psycopg 3
    driver; `create_database(name)` makes an empty database and returns its URL."""

    def __init__(self, bin_path: Path) -> None:
        self.bin = bin_path
        self.as_postgres = os.geteuid() == 0  # the server refuses to run as root
        self.dir = Path(tempfile.mkdtemp(prefix="app-postgres-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.log = self.dir / "server.log"
        self.started = False

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin / command[0]), *command[1:]]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                               + (f"\nserver log:\n{self.log.read_text()}" if self.log.exists() else ""))
        return proc

    def start(self) -> "PostgresServer":
        password_file = self.dir / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(password_file, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", USER, f"--pwfile={password_file}", "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        return self.resume()

    def pause(self) -> None:
        """Stop the server (its clients' connections drop at once; what they committed is kept:
        `-m fast`, as synchronous_commit is off), keeping its data for `resume()`."""
        self._run("pg_ctl", "-D", str(self.data), "stop", "-m", "fast")
        self.started = False

    def resume(self) -> "PostgresServer":
        """Start the server on its data dir and port; return once it accepts connections."""
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-W", "start")
        self.started = True
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # ready once it accepts connections on the TCP port
            if self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-t", "1", check=False).returncode == 0:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not accept connections within {START_TIMEOUT_S:.0f} s:\n"
                                   + (self.log.read_text() if self.log.exists() else "(no server log)"))
            time.sleep(0.05)  # between polls of pg_isready, bounded by the deadline above

    def url(self, database: str, password: str = PASSWORD) -> str:
        return f"postgresql+psycopg://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", str(self.dir), "-p", str(self.port), "-U", USER, name)
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            self._run("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate", check=False)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
