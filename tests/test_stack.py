"""The current stack (Hydra 1.4, Optuna 5) runs clean: no Python warning in a run or a sweep."""
from __future__ import annotations

import re

import pytest

from tests.conftest import FAST

pytestmark = pytest.mark.slow

# A Python warning as the warnings module prints it: "<file>:<line>: SomeWarning: message"
WARNING = re.compile(r"\w+Warning: ")


@pytest.mark.parametrize("args", [
    ["logger=wandb"],  # the default logger (offline), which FAST turns off
    ["--multirun", "optimizer.lr=1e-3,3e-3"],
    ["--multirun", "hparams_search=regression_optuna", "hydra.sweeper.n_trials=2", "hydra/sweeper/pruner=median"],
], ids=["run", "grid", "optuna"])
def test_no_warnings_in_a_run_a_grid_sweep_or_an_optuna_sweep(run_app, args):
    proc = run_app(*FAST, *args, check=True)
    output = proc.stdout + proc.stderr
    assert not WARNING.findall(output), output
    assert "completed" in output
