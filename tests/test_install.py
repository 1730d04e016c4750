"""A regular install: the wheel carries conf/ and the `hydra-torch-app` command runs from any
directory, with Hydra's shell completion."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import FAST

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the project's wheel installed (no deps: those come, offline, from this
    environment's site-packages through a .pth line). Returns the venv's bin directory."""
    root = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "wheel"), str(ROOT)], check=True, capture_output=True)
    [wheel] = (root / "wheel").glob("hydra_torch_app-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # a path, not a site dir
    return venv / "bin"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "APP_TEST_KILL_AT")}
    return {**env, "WANDB_SILENT": "true", **extra}


def test_the_wheel_finds_its_configs_inside_the_install(installed, tmp_path):
    out = subprocess.run([str(installed / "python"), "-c", "import app; print(app.__file__); print(app.CONF_DIR)"],
                         cwd=tmp_path, env=clean_env(), capture_output=True, text=True, check=True).stdout
    module, conf = out.split()
    assert module.startswith(str(installed.parent)) and conf.startswith(str(installed.parent))
    assert (Path(conf) / "config.yaml").is_file() and (Path(conf) / "model" / "resmlp.yaml").is_file()


def test_the_console_command_runs_from_another_directory(installed, tmp_path):
    proc = subprocess.run([str(installed / "hydra-torch-app"), *FAST], cwd=tmp_path, env=clean_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "completed:" in proc.stderr + proc.stdout
    assert list((tmp_path / "outputs" / "runs").rglob("summary.json"))
    help_text = subprocess.run([str(installed / "python"), "-m", "app", "--help"], cwd=tmp_path,
                               env=clean_env(), capture_output=True, text=True, check=True).stdout
    assert "resmlp" in help_text and "optimizer" in help_text  # the groups come from the packaged conf/


def test_shell_completion_installs_and_completes_groups_and_keys(installed, tmp_path):
    command = str(installed / "hydra-torch-app")
    script = subprocess.run([command, "--shell-completion", "install=bash"], cwd=tmp_path,
                            env=clean_env(), capture_output=True, text=True, check=True).stdout
    assert "complete -o nospace -o default -F hydra_bash_completion hydra-torch-app" in script
    for line, expected in (("hydra-torch-app optimizer=", "optimizer=sgd"),
                           ("hydra-torch-app trainer.thr", "trainer.threads=")):
        choices = subprocess.run([command, "-sc", "query=bash"], cwd=tmp_path, capture_output=True, text=True,
                                 env=clean_env(COMP_LINE=line, COMP_POINT=str(len(line))), check=True).stdout
        assert expected in choices.split(), (line, choices)
