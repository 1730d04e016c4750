"""optuna-dashboard (the `dashboard` extra) serves the app's studies: the live view of a sweep, on
each kind of storage (a SQLite file, PostgreSQL, a journal file)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_search import make_sweeper

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def _wait_for_socket(port: int, server: subprocess.Popen, deadline_s: float = 60.0) -> None:
    """The server prints "Listening on" before it binds its socket: connect until it accepts."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                return
        except OSError:
            assert server.poll() is None, f"optuna-dashboard exited with {server.returncode}"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # polling a condition with a deadline, not a fixed wait


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "journal"])
def test_optuna_dashboard_serves_a_study_with_trials_and_importances(tmp_path, request, kind):
    # The console script installed beside this interpreter (a venv's bin/), else on PATH.
    script = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which("optuna-dashboard")
    if script is None:
        pytest.skip("optuna-dashboard is not installed (the `dashboard` extra)")
    storage = None  # sqlite: the default file
    if kind == "postgresql":
        storage = request.getfixturevalue("postgres_server").create_database("dash")
    elif kind == "journal":
        storage = f"journal:///{tmp_path}/studies/unit.log"
    sweeper = make_sweeper(tmp_path, n_trials=6, params="interval(0, 0.9)", storage=storage)
    sweeper.sweep([])
    # what to give optuna-dashboard: the storage URL; for a journal, the file's path
    target = str(tmp_path / "studies" / "unit.log") if kind == "journal" else sweeper.url
    port = _free_port()
    server = subprocess.Popen([script, target, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        printed = []
        for line in server.stdout:  # "Listening on ..." is printed once the socket is bound
            printed.append(line)
            if "Listening on" in line:
                break
        assert printed and "Listening on" in printed[-1], "".join(printed)
        _wait_for_socket(port, server)
        studies = _get(port, "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["unit"]
        study = _get(port, f"/api/studies/{studies[0]['study_id']}")
        assert len(study["trials"]) == 6
        assert {t["state"] for t in study["trials"]} == {"Complete"}
        importances = _get(port, f"/api/studies/{studies[0]['study_id']}/param_importances")
        assert [item["name"] for item in importances["param_importances"][0]] == ["x"]
    finally:
        server.terminate()
        server.wait(timeout=30)
