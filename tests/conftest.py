"""Shared fixtures: composing configs in-process and running `python -m app` in a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
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
