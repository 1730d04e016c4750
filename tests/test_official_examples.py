"""The scenarios of hydra-optuna-sweeper 1.4's own examples and tests, run against `app_optuna`:
the sphere (one objective, TPE; fixed and deleted parameters from the command line), the grid
sampler, two objectives (Binh and Korn: random and NSGA-III samplers), a custom search space with
conditional parameters, max_failure_rate, results the sweeper must refuse, the removed MOTPE
sampler, sampler settings, and the plugin's parsing of the search space. The task functions and
configs are in tests/official_examples/ (plain Hydra apps, not this app's runs).

Where `app_optuna` deliberately differs from the plugin (README, "Differences from
hydra-optuna-sweeper"), the test says so next to the assertion.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from app.search.report import dominates
from tests.test_search import make_sweeper

EXAMPLES = Path(__file__).resolve().parent / "official_examples"
SCRIPT = EXAMPLES / "objectives.py"


def sweep(tmp_path: Path, *args: str, config: str = "sphere", check: bool = True) -> subprocess.CompletedProcess:
    """`objectives.py --multirun --config-name=<config> <args>` in `tmp_path`; the sweep dir is tmp_path/sweep."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--multirun", f"--config-name={config}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
         *args], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def results(tmp_path: Path) -> DictConfig:
    return OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")


def study_of(tmp_path: Path, name: str) -> optuna.Study:
    # Difference: `storage: null` keeps the study in outputs/studies/<name>.db (resumable)
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/outputs/studies/{name}.db")


# ----------------------------------------------------------------------------- sweeps
@pytest.mark.slow
@pytest.mark.parametrize("with_commandline, n_trials", [(True, 10), (False, 20)])
def test_sphere_with_tpe_finds_a_good_point(tmp_path, with_commandline, n_trials):
    extra = ["x=choice(0, 1, 2)", "y=0"] if with_commandline else []  # y=0: a fixed parameter
    sweep(tmp_path, "hydra.job.chdir=True", f"hydra.sweeper.n_trials={n_trials}", "hydra.sweeper.n_jobs=1",
          "hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=123", "~z", *extra)
    returns, study = results(tmp_path), study_of(tmp_path, "sphere")
    best = study.best_trial
    assert returns.name == "optuna" and returns.best_value == best.value
    assert returns.best_params.x == best.params["x"] and len(study.trials) == n_trials
    if with_commandline:
        assert "y" not in returns.best_params and "y" not in best.params
        assert {t.params["x"] for t in study.trials} <= {0, 1, 2} and best.user_attrs["y"] == "0"
    else:
        assert returns.best_params.y == best.params["y"]
    assert all(t.value == t.params["x"] ** 2 + (0 if with_commandline else t.params["y"]) ** 2
               for t in study.trials)  # z was deleted (`~z`): not part of the sum
    assert returns.best_value <= 2.27  # the plugin's bound: the 95th percentile of TPE over 1000 seeds


@pytest.mark.slow
def test_grid_sampler_runs_each_point_once_at_most_the_grid(tmp_path):
    sweep(tmp_path, "hydra.sweeper.n_trials=10", "hydra.sweeper.sampler.seed=123", config="grid")
    returns, trials = results(tmp_path), study_of(tmp_path, "grid").trials
    points = {(t.params["x"], t.params["y"], t.params["z"]) for t in trials}
    assert len(trials) == 8 and points == {(x, y, z) for x in (-1, 1) for y in (-1.0, 0.0) for z in ("foo", "bar")}
    assert returns.best_value == 1 and returns.best_params.x in (-1, 1) and returns.best_params.y == 0.0
    assert returns.best_params.z in ("foo", "bar")


@pytest.mark.slow
@pytest.mark.parametrize("sampler, with_commandline", [("random", True), ("nsgaiii", False)])
def test_two_objectives_give_a_pareto_front_of_grid_points(tmp_path, sampler, with_commandline):
    extra = ["x=range(0, 5)", "y=range(0, 3)"] if with_commandline else []
    sweep(tmp_path, "hydra.job.chdir=True", "hydra.sweeper.n_trials=10", f"hydra/sweeper/sampler={sampler}",
          "hydra.sweeper.sampler.seed=123", *extra, config="binh_korn")
    solutions = results(tmp_path).solutions
    study = study_of(tmp_path, "binh_korn")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    assert sorted(tuple(s["values"]) for s in solutions) == sorted(tuple(t.values) for t in study.best_trials)
    steps = {0} if with_commandline else {0, 0.5}
    for solution in solutions:
        x, y = solution["params"]["x"], solution["params"]["y"]
        assert x % 1 in steps and y % 1 in steps
        assert solution["values"] == [4 * x ** 2 + 4 * y ** 2, (x - 5) ** 2 + (y - 5) ** 2]
        for other in study.trials:  # no trial beats a solution in both objectives
            assert not dominates(other.values, solution["values"], ["minimize", "minimize"])


@pytest.mark.slow
def test_custom_search_space_adds_conditional_and_new_parameters(tmp_path):
    sweep(tmp_path, "hydra.job.chdir=True", "hydra.sweeper.n_trials=10", "hydra/sweeper/sampler=random",
          "hydra.sweeper.sampler.seed=123", "max_z_difference_from_x=0.3", config="custom_space")
    best = results(tmp_path).best_params
    assert abs(best.x - best.z) <= 0.3 and 0 <= best["+w"] <= 1
    for t in study_of(tmp_path, "custom_space").trials:
        assert abs(t.params["x"] - t.params["z"]) <= 0.3
        assert t.value == pytest.approx(sum(t.params[k] ** 2 for k in ("x", "y", "z", "+w")))


@pytest.mark.slow
@pytest.mark.parametrize("max_failure_rate", [0.5, 1.0])
def test_max_failure_rate_stops_the_sweep_or_lets_it_finish(tmp_path, max_failure_rate):
    proc = sweep(tmp_path, "hydra.job.chdir=True", "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2",
                 "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=123",
                 f"hydra.sweeper.max_failure_rate={max_failure_rate}", "error=true", check=False)
    trials = study_of(tmp_path, "sphere").trials
    assert all(t.state == TrialState.FAIL and t.user_attrs["reason"] == "RuntimeError: cfg.error is True"
               for t in trials)
    if max_failure_rate < 1.0:
        assert proc.returncode != 0 and "RuntimeError: cfg.error is True" in proc.stderr
        # Difference: the rate is of the trials the sweep set out to run (6), not of one batch
        assert len(trials) == 4  # more than 0.5 x 6 failed
    else:
        assert proc.returncode == 0 and "RuntimeError: cfg.error is True" not in proc.stderr
        assert len(trials) == 6


@pytest.mark.slow
@pytest.mark.parametrize("config, reason", [("sphere", "non-finite"), ("binh_korn", "1 values for 2 objectives")])
def test_a_result_the_study_cannot_take_fails_its_trial(tmp_path, config, reason):
    # nan for one objective; one value for two. Difference: such a trial counts against
    # max_failure_rate (0 by default) like a raised error.
    sweep(tmp_path, "hydra/sweeper/sampler=grid", "x=1", "y=1", "reject=choice(true, false)",
          "hydra.sweeper.max_failure_rate=0.5", config=config)
    trials = study_of(tmp_path, config).trials
    assert len(trials) == 2  # the grid: reject true and false
    for t in trials:
        assert (t.state == TrialState.FAIL) == t.params["reject"]
        assert (reason in t.user_attrs["reason"]) == t.params["reject"]
    assert {t.state for t in trials} == {TrialState.FAIL, TrialState.COMPLETE}


@pytest.mark.slow
def test_the_removed_motpe_sampler_is_refused_with_the_plugins_advice(tmp_path):
    proc = sweep(tmp_path, config="motpe", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    [message] = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert "motpe" in message and "sampler was removed in Optuna 4.0" in message
    assert not (tmp_path / "sweep" / "0").exists()


# ----------------------------------------------------------------------------- settings and parsing
@pytest.mark.parametrize("sampler, setting, expected", [
    ("grid", "seed=123", 123),
    ("tpe", "group=true", True),
    ("tpe", "constant_liar=true", True),
    ("cmaes", "popsize=12", 12),
    ("cmaes", "with_margin=true", True),
    ("nsgaii", "population_size=10", 10),
    ("random", "seed=7", 7),
])
def test_sampler_settings_override_like_the_plugins(sampler, setting, expected):
    with initialize_config_dir(config_dir=str(EXAMPLES / "conf")):
        cfg = compose("grid", overrides=[f"hydra/sweeper/sampler={sampler}", f"hydra.sweeper.sampler.{setting}"],
                      return_hydra_config=True)
    assert cfg.hydra.sweeper.sampler[setting.split("=")[0]] == expected
    assert cfg.hydra.sweeper._target_ == "app.search.plugin.AppOptunaSweeper"


@pytest.mark.parametrize("override, expected", [
    ("x=choice(1,2)", CategoricalDistribution([1, 2])),
    ("x=choice('hello', 'world')", CategoricalDistribution(["hello", "world"])),
    ("x=range(1,3)", IntDistribution(1, 2)),
    ("x=range(0.5, 5.5, step=1)", FloatDistribution(0.5, 4.5, step=1)),
    ("x=interval(1, 5)", FloatDistribution(1, 5)),
    ("x=int(interval(1, 5))", IntDistribution(1, 5)),
    ("x=tag(log, interval(1, 5))", FloatDistribution(1, 5, log=True)),
    ("x=tag(log, int(interval(1, 5)))", IntDistribution(1, 5, log=True)),
])
def test_search_space_is_parsed_as_the_plugin_does(tmp_path, override, expected):
    sweeper = make_sweeper(tmp_path)
    sweeper.params = None
    space, fixed, deletions, is_grid = sweeper._search_space([override, "y=5", "~z"])
    assert space == {"x": expected} and fixed == {"y": "5"} and deletions == ["~z"] and not is_grid


def test_the_grid_spans_only_the_parameters_still_searched(tmp_path):
    import functools

    sweeper = make_sweeper(tmp_path, n_trials=20)
    sweeper.params = OmegaConf.create({"x": "choice(0.1, 0.2, 0.3)", "y": "range(0, 4)"})
    sweeper.sampler = functools.partial(optuna.samplers.GridSampler, seed=0)
    sweeper.sweep(["y=5"])  # y fixed on the command line: a grid of x alone, each point once
    trials = optuna.load_study(study_name="unit", storage=f"sqlite:///{tmp_path}/outputs/studies/unit.db").trials
    assert sorted(t.params["x"] for t in trials) == [0.1, 0.2, 0.3]
    assert all(set(t.params) == {"x"} and t.user_attrs["y"] == "5" for t in trials)
