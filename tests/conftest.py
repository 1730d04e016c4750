"""Shared fixtures: composing configs in-process and running `python -m app` in a subprocess."""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from app.config import register_configs

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
register_configs()


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the composed job config (no Hydra run)."""

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF)):
            return compose("config", overrides=list(overrides), return_hydra_config=False)

    return _compose


def options_of(group: str, name: str, **overrides):
    """The options conf/<group>/<name>.yaml sets (no `_target_`), with `overrides`: constructors
    of callbacks and loggers have no defaults of their own, the YAML is the one copy."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{name}.yaml"))
    for key in ("_target_", "_partial_", "defaults"):
        node.pop(key, None)
    return {**node, **overrides}


# A tiny budget that still exercises every part of a run.
FAST = ["trainer.epochs=3", "data.n_samples=400", "logger=none", "device=cpu", "trainer.progress_bar=false"]


@pytest.fixture
def run_app(tmp_path):
    """run_app(*args) runs `python -m app *args` with cwd=tmp_path; returns CompletedProcess."""

    def _run(*args: str, timeout: float = 300, check: bool | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
        env.pop("HYDRA_FULL_ERROR")
        proc = subprocess.run(
            [sys.executable, "-m", "app", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    return _run


def app_in(cwd: Path, *args: str, kill: str | None = None, env: dict[str, str] | None = None,
           launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `python [launcher] -m app *args` in `cwd` (made if missing); `kill` arms one of
    app/run/faults.py's test kill points (APP_TEST_KILL_AT); `env` adds variables."""
    cwd.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **(env or {})}
    environment.pop("APP_TEST_KILL_AT", None)
    if kill:
        environment["APP_TEST_KILL_AT"] = kill
    return subprocess.run([sys.executable, *launcher, "-m", "app", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """`proc`, once its exit status is 0 (else the assertion shows its output's end)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv of a run (or seed) directory without the timing columns, as read."""
    from app.train.trainer import TIMING_METRICS

    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_METRICS} for row in csv.DictReader(f)]


def run_digest(run: Path) -> str:
    """Hash of a run directory's files but its log and lock file (what a refused or empty resume
    must leave alone; the lock names whichever process held it last)."""
    h = hashlib.sha256()
    for path in sorted(p for p in run.rglob("*") if p.is_file() and p.name not in ("train.log", ".lock")):
        h.update(str(path.relative_to(run)).encode() + path.read_bytes())
    return h.hexdigest()


def kill_sweep_mid_trial(cwd: Path, args: list[str], env: dict[str, str]) -> None:
    """Start `python -m app *args` (a sweep) in `cwd` and SIGKILL it once trial 1's metrics.csv
    has a few rows (the trial is half-way); fail if the sweep ended first."""
    sweep = subprocess.Popen([sys.executable, "-m", "app", *args], cwd=cwd, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sweep.poll() is None:
            metrics = list((cwd / "outputs" / "sweeps").glob("*/*/1/metrics.csv"))
            if metrics and len(metrics[0].read_text().splitlines()) >= 3:
                break
            time.sleep(0.02)  # polling the file, bounded by the deadline
        assert sweep.poll() is None, "the sweep ended before it could be killed"
        sweep.send_signal(signal.SIGKILL)
    finally:
        sweep.kill()
        sweep.wait()


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (holding .hydra/) under root/outputs, sorted."""
    return sorted(p.parent for p in (root / "outputs").rglob(".hydra"))


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server of the tests' own for the whole session (tests/postgres.py); each test
    makes its own database with `postgres_server.create_database(name)`."""
    from tests.postgres import PostgresServer, bin_dir

    binaries = bin_dir()
    if binaries is None:
        pytest.fail("PostgreSQL server binaries not found (no /usr/lib/postgresql/<version>/bin, no initdb on "
                    "PATH): install them, e.g. apt-get install -y postgresql (.ci/run does)")
    server = PostgresServer(binaries)
    try:
        yield server.start()
    finally:
        server.stop()
