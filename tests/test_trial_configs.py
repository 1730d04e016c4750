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
