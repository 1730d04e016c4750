"""The speed options end to end through `python -m app`, what a run imports, and the benchmark
scripts with a tiny `--quick` budget (so they keep running; their figures are not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FAST, ROOT, run_dirs

pytestmark = pytest.mark.slow


def test_app_trains_with_cpu_speed_options(run_app, tmp_path):
    run_app(*FAST, "trainer.precision=bf16-mixed", "trainer.grad_clip=1.0",
            "trainer.accumulate_grad_batches=2", "trainer.matmul_precision=high",
            "trainer.cuda_graph=auto", check=True)  # cuda_graph=auto on a CPU: off, eager
    [run_dir] = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 3


def test_float16_on_cpu_is_a_config_error(run_app):
    proc = run_app(*FAST, "trainer.precision=16-mixed")
    assert proc.returncode == 2
    assert "Error: Invalid value for `trainer.precision`: '16-mixed'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_imports_no_optional_heavy_package(tmp_path):
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['app', *{FAST!r}, 'hydra.run.dir={tmp_path}/run']\n"
        "try:\n    runpy.run_module('app', run_name='__main__')\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'optuna', 'matplotlib', 'wandb', 'pandas', 'scipy', 'sqlalchemy'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "WANDB_SILENT": "true"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("script", ["overhead.py", "data_path.py", "startup.py", "gpu.py", "packed.py", "ddp.py"])
def test_benchmark_script_runs_and_ends_with_its_ratio(script):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio=") and " target=" in lines[-1]
    assert any(line.startswith("| ") for line in lines)  # the table


def test_checkpoint_benchmark_runs_and_ends_with_its_ratio():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--device", "cpu",
                           "--threads", "1", "--checkpoints"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio=") and " target=1.25" in lines[-1]
    assert any(line.startswith("| last.pt each epoch, background writer |") for line in lines)
    assert "losses identical" in proc.stdout  # every variant trained the same numbers


def test_async_sweep_benchmark_runs_and_ends_with_its_ratio():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "async_sweep.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("ratio=") and lines[-1].endswith(" target=1.3")
    rows = [line for line in lines if line.startswith("| 2 |")]
    assert [row.split(" | ")[1] for row in rows] == ["barrier", "no barrier"]


def test_sklearn_datasets_benchmark_scores_the_app_and_the_baseline_on_the_run_split(tmp_path):
    """One data set, a few epochs: the CSV export, the one-line command, the baseline on the run's
    own split (the script checks the run's checkpoint scores its summary on those rows)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sklearn_datasets.py"), "--datasets", "wine",
                           "--seeds", "0", "--threads", "1", "--out", str(tmp_path / "data"), "--runs",
                           str(tmp_path / "runs"), "--results", str(tmp_path / "results"), "--extra", "trainer.epochs=3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "$ python -m app data=file data.path=" in proc.stdout and "data.target=cultivar" in proc.stdout
    [row] = [line for line in proc.stdout.splitlines() if line.startswith("| wine |")]
    assert "| 178 | 13 | classification | 106/36/36 | test_accuracy |" in row
    [written] = (tmp_path / "results").glob("sklearn_datasets-*.csv")
    assert written.read_text().startswith("dataset,rows,features,task,split,metric,app,sklearn")


def test_pack_profile_runs_and_says_where_the_time_went():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_pack.py"), "3", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "build s " in proc.stdout and "fit s " in proc.stdout
    assert "PackedTrainer" not in proc.stderr and "_epoch" in proc.stdout  # the fit's own functions profiled
