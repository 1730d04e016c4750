"""Bad sweeper settings, given on the real command line: one paragraph naming the key and what is
accepted, exit status 2, no traceback, no trial run. (A few of each kind here; every refusal
through the sweeper's API, with a study already stored: tests/test_sweep_workers.py and
tests/test_multi_objective.py.)"""
from __future__ import annotations

import pytest

from tests.conftest import FAST
from tests.test_search import make_sweeper

SEARCH = ["--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random", *FAST]

# (overrides, the key named, text the message must contain)
CASES = [
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials", "an integer >= 1"),
    (["hydra.sweeper.storage=notaurl"], "hydra.sweeper.storage", "not a database URL"),
    (["optimizer.lr=interval(1e-1,1e-5)"], "hydra.sweeper.params.optimizer.lr", "low <= high"),
    (["optimizer.lr=tag(log,interval(0,1))"], "hydra.sweeper.params.optimizer.lr", "low > 0"),
    (["hydra.sweeper.sampler._target_=optuna.samplers.FooSampler"], "hydra.sweeper.sampler", "FooSampler"),
    (["trainer.monitor=[val_loss,val_mae]", "hydra.sweeper.direction=minimize"], "hydra.sweeper.direction",
     "2 directions, one per metric of trainer.monitor (val_loss, val_mae)"),
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides, key, expected", CASES, ids=[" ".join(c[0])[:50] for c in CASES])
def test_bad_sweeper_settings_on_the_command_line_are_refused_in_one_paragraph(run_app, tmp_path, overrides,
                                                                                key, expected):
    proc = run_app(*SEARCH, *overrides, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    [message] = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert message.startswith(f"Error: Invalid value for `{key}`") and expected in message and "Accepted:" in message
    assert not list(tmp_path.glob("outputs/sweeps/*/*/0"))  # no trial ran


@pytest.mark.slow
def test_an_unknown_sampler_name_gets_hydras_list_of_samplers(run_app, tmp_path):
    proc = run_app(*SEARCH, "hydra/sweeper/sampler=sobol", timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert "Could not find 'hydra/sweeper/sampler/sobol'" in proc.stderr
    assert "tpe" in proc.stderr and "nsgaii" in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("sampler, expected", [
    ({"_target_": "optuna.samplers.NoSuchSampler"}, "NoSuchSampler"),
    ({"_target_": "hydra_plugins.hydra_optuna_sweeper.config.raise_motpe_removed"}, "removed in Optuna 4.0"),
    ({"_target_": "optuna.samplers.TPESampler", "no_such_setting": 1}, "no_such_setting"),
])
def test_samplers_that_cannot_be_built_are_refused_in_one_paragraph(tmp_path, capsys, sampler, expected):
    sweeper = make_sweeper(tmp_path)
    sweeper.sampler = sampler
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("Error: Invalid value for `hydra.sweeper.sampler`") and expected in message
    assert "\n" not in message and sweeper.launcher.launched == []
