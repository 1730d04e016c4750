"""Trial configs composed once per structure (app/search/configs.py) equal Hydra's own."""
from __future__ import annotations

import random

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from app.search.configs import TrialConfigs
from tests.conftest import CONF


@pytest.fixture
def hydra_compose():
    with initialize_config_dir(config_dir=str(CONF)):
        yield lambda overrides: compose("config", overrides=list(overrides), return_hydra_config=True)


def _plain(cfg):
    return OmegaConf.to_container(cfg, resolve=False)


def _search(rng, n):
    """Override lists as the preset's TPE search makes them (lr, weight decay, shapes), plus the
    per-job trial id the sweeper adds."""
    return [[f"optimizer.lr={rng.uniform(1e-4, 3e-2):.6g}", f"optimizer.weight_decay={rng.uniform(0, 0.1):.6g}",
             f"model.nodes={rng.choice([32, 64, 128])}", f"model.layers={rng.randint(2, 5)}",
             "trainer.epochs=3", f"++hydra.job.env_set.APP_OPTUNA_TRIAL_ID={i}"] for i in range(n)]


def test_trials_that_differ_in_values_are_composed_once_and_equal_hydras_composition(hydra_compose):
    configs = TrialConfigs(hydra_compose, groups=["optimizer", "model", "data"])
    for overrides in _search(random.Random(0), 12):
        ours = configs(overrides)
        assert _plain(ours) == _plain(hydra_compose(overrides))
        assert list(ours.hydra.overrides.task) == overrides[:-1]
        assert ours.hydra.job.env_set.APP_OPTUNA_TRIAL_ID == overrides[-1].split("=")[1]
        ours.optimizer.lr = 123.0  # a caller may change its config: the next trial's is its own
    assert configs.full == 1


def test_a_config_group_choice_is_structure(hydra_compose):
    # `optimizer` is named as a group: each choice is composed in full once, its own fields apply
    configs = TrialConfigs(hydra_compose, groups=["optimizer"])
    runs = [["optimizer=sgd", "optimizer.lr=0.1", "optimizer.momentum=0.5"],
            ["optimizer=adamw", "optimizer.lr=0.01"],
            ["optimizer=sgd", "optimizer.lr=0.2", "optimizer.momentum=0.9"],
            ["optimizer=adamw", "optimizer.lr=0.02"]]
    for overrides in runs:
        assert _plain(configs(overrides)) == _plain(hydra_compose(overrides))
    assert configs.full == 2


def test_a_key_found_not_to_be_a_value_becomes_structure(hydra_compose):
    # not told that `optimizer` is a group: its first composition shows it is a config, not a value
    configs = TrialConfigs(hydra_compose)
    for overrides in (["optimizer=sgd"], ["optimizer=adamw"], ["optimizer=sgd"]):
        assert _plain(configs(overrides)) == _plain(hydra_compose(overrides))
    assert configs.full == 2


@pytest.mark.parametrize("overrides", [["+extra=1"], ["+extra=2"], ["trainer.epochs=3", "~callbacks.early_stopping"]])
def test_additions_and_deletions_are_structure(hydra_compose, overrides):
    configs = TrialConfigs(hydra_compose)
    configs(["+extra=7"])
    assert _plain(configs(overrides)) == _plain(hydra_compose(overrides))
    assert configs.full == 2


def test_a_value_the_config_refuses_is_refused_as_hydra_refuses_it(hydra_compose):
    configs = TrialConfigs(hydra_compose)
    configs(["trainer.epochs=3"])
    with pytest.raises(Exception) as ours:
        configs(["trainer.epochs=many"])
    with pytest.raises(Exception) as theirs:
        hydra_compose(["trainer.epochs=many"])
    assert type(ours.value) is type(theirs.value) and str(ours.value) == str(theirs.value)


def test_a_sweeps_jobs_composed_once_per_structure_get_the_configs_hydra_composes(tmp_path, hydra_compose):
    """The basic launcher's jobs of a search are composed through TrialConfigs (ComposedOnceLoader):
    each job's saved config is the one Hydra composes for its overrides, its own values included."""
    from tests.conftest import FAST, app_in, ok, run_dirs

    ok(app_in(tmp_path, "--multirun", "hparams_search=regression_optuna", "hydra.sweeper.n_trials=4", "pack=false",
              *FAST))
    jobs = [d for d in run_dirs(tmp_path) if d.name.isdigit()]
    assert len(jobs) == 4
    assert len({job.parent for job in jobs}) == 1  # one sweep dir: ${now:...} resolved as the sweep's
    values = set()
    for job in jobs:
        overrides = list(OmegaConf.load(job / ".hydra" / "overrides.yaml"))
        saved = OmegaConf.load(job / ".hydra" / "config.yaml")
        composed = {k: v for k, v in _plain(hydra_compose(overrides)).items() if k != "hydra"}
        assert _plain(saved) == composed, overrides
        hydra = OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra
        assert list(hydra.overrides.task) == overrides and hydra.job.num == int(job.name)
        values.add((saved.optimizer.lr, saved.model.nodes, saved.model.layers))
    assert len(values) == 4  # four trials, each with its own sampled values


def test_the_launchers_loader_composes_in_full_once_per_structure_and_leaves_the_rest_to_hydras(hydra_compose):
    from app.search.configs import ComposedOnceLoader

    class Loader:  # Hydra's loader, counting its compositions
        calls: list = []

        def load_sweep_config(self, master, overrides):
            self.calls.append((master, list(overrides)))
            return hydra_compose(overrides)

        def some_other_method(self):
            return "hydra's"

    loader, master, other = Loader(), OmegaConf.create({"a": 1}), OmegaConf.create({"a": 2})
    composed_once = ComposedOnceLoader(
        loader, master, TrialConfigs(lambda o: loader.load_sweep_config(master, o), groups=["optimizer", "model"]))
    trials = _search(random.Random(1), 5)
    for overrides in trials:
        cfg = composed_once.load_sweep_config(master, overrides)
        assert _plain(cfg) == _plain(hydra_compose(overrides))
    assert len(loader.calls) == 1  # the first trial's; the others differ in values only
    composed_once.load_sweep_config(other, trials[0])  # another master config: Hydra's own composition
    assert loader.calls[-1][0] is other and len(loader.calls) == 2
    assert composed_once.some_other_method() == "hydra's"
