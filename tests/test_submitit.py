"""SLURM through hydra-submitit-launcher: the `hydra/launcher=slurm` and `slurm_local` presets
compose with the app's sweeper, and an Optuna sweep runs end to end through submitit's local
executor (each trial a job of its own process, as on a cluster)."""
from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest
from hydra import compose, initialize_config_dir
from optuna.trial import TrialState

from app.search.study import open_storage
from tests.conftest import CONF, FAST

SEARCH = ["hparams_search=regression_optuna", "hydra/sweeper/sampler=random", "model.nodes=16", "model.layers=2",
          "optimizer.weight_decay=0"]


def hydra_config(*overrides):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra


def test_the_slurm_preset_composes_with_the_sweeper_and_takes_the_usual_keys():
    hydra = hydra_config(*SEARCH, "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                         "hydra.launcher.timeout_min=30", "hydra.sweeper.n_jobs=8")
    assert hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert hydra.sweeper._target_ == "app.search.plugin.AppOptunaSweeper" and hydra.sweeper.n_jobs == 8
    launcher = hydra.launcher
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 30)  # the command line's
    assert (launcher.gpus_per_task, launcher.cpus_per_task, launcher.mem_gb, launcher.array_parallelism) == (1, 8, 32, 32)
    assert launcher.submitit_folder == "outputs/submitit/%j"


def test_the_local_variant_composes_with_the_submitit_local_executor():
    hydra = hydra_config(*SEARCH, "hydra/launcher=slurm_local")
    assert hydra.launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert hydra.launcher.timeout_min == 60 and "partition" not in hydra.launcher


@pytest.mark.slow
def test_an_optuna_sweep_runs_end_to_end_through_the_submitit_local_launcher(run_app, tmp_path):
    proc = run_app("--multirun", *SEARCH, *FAST, "hydra/launcher=slurm_local", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.n_jobs=2", "hydra.sweep.dir=outputs/sweeps/slurm_local",
                   "~hydra.callbacks.sweep_summary", check=True)
    assert "Submitit 'local'" in proc.stdout + proc.stderr
    storage = open_storage(f"sqlite:///{tmp_path}/outputs/studies/train-regression_optuna.db")
    trials = optuna.load_study(study_name="train-regression_optuna", storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2  # exactly n_trials
    sweep_dir = tmp_path / "outputs" / "sweeps" / "slurm_local"
    for t in trials:
        assert (sweep_dir / str(t.number) / "summary.json").exists()
        assert t.user_attrs["run_dir"] == str(sweep_dir / str(t.number))  # the job reported to its trial
    job_logs = list((tmp_path / "outputs" / "submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2  # each trial ran as a submitit job of its own


FAKE_SBATCH = """#!/bin/sh
# SLURM's sbatch, faked (no cluster here): keep the batch script it was given, refuse the submission
for arg; do script="$arg"; done
cp "$script" "$SBATCH_COPY"
echo "sbatch: error: invalid partition specified: gpu" >&2
exit 1
"""


@pytest.mark.slow
def test_the_slurm_preset_writes_the_batch_script_and_a_refused_submission_is_one_paragraph(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit looks for it on PATH
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "batch.sh"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBATCH_COPY": str(script),
           "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--multirun", *SEARCH, *FAST, "hydra/launcher=slurm",
         "hydra.launcher.partition=gpu", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2",
         "~hydra.callbacks.sweep_summary"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and error[0].startswith("Error: Invalid value for `hydra/launcher`: 'slurm'")
    assert "invalid partition specified: gpu" in error[0] and "Traceback" not in proc.stderr
    lines = script.read_text().splitlines()
    for flag in ("--partition=gpu", "--time=60", "--gpus-per-task=1", "--cpus-per-task=8", "--mem=32GB",
                 "--ntasks-per-node=1"):
        assert f"#SBATCH {flag}" in lines
    assert any(line.startswith("#SBATCH --output=") and f"{tmp_path}/outputs/submitit/" in line for line in lines)
    # nothing lost: the trials asked are failed as interrupted, and their retries (same
    # parameters) may already be queued, so the same command runs them again
    storage = open_storage(f"sqlite:///{tmp_path}/outputs/studies/train-regression_optuna.db")
    trials = optuna.load_study(study_name="train-regression_optuna", storage=storage).trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    queued = [t for t in trials if t.state == TrialState.WAITING]
    # (a slot's submission is refused before the next slot's trial is asked: one trial or two)
    assert 1 <= len(failed) <= 2 and len(failed) + len(queued) == len(trials)
    assert all(t.user_attrs.get("interrupted") for t in failed)
    by_number = {t.number: t for t in failed}
    assert all(t.user_attrs.get("retry_of") in by_number for t in queued)
    assert all(t.system_attrs["fixed_params"] == by_number[t.user_attrs["retry_of"]].params for t in queued)
