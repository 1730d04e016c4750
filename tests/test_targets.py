"""A config file is not code: `_target_`s outside app, torch, optuna and the user's
`trusted_modules` are refused before they run. Each refused target would leave a trace on disk
if it ran; a trusted user module leaves one, so the tests can tell the difference."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from app import targets
from app.errors import ConfigError
from tests.conftest import FAST

USER_MODULE = '''
from pathlib import Path
import torch

class Net(torch.nn.Linear):
    """A model that leaves a trace when it is built."""
    def __init__(self, in_features, out_features, trace):
        Path(trace).write_text("built")
        super().__init__(in_features, out_features)
'''


def test_patterns_take_module_prefixes_and_package_globs():
    allowed = targets.patterns(["my_lab", "other.*", " "])
    assert allowed == ("app.*", "torch.*", "optuna.*", "my_lab.*", "other.*")
    assert targets.is_allowed("my_lab.models.Net", allowed)
    assert not targets.is_allowed("my_labx.Net", allowed)  # a prefix is a module, not a string prefix
    assert not targets.is_allowed("os.makedirs", allowed)


def test_nested_targets_are_checked_and_named_by_their_full_key():
    node = OmegaConf.create({"_target_": "app.models.MLP", "block": {"act": [{"_target_": "os.system"}]}})
    with pytest.raises(ConfigError) as caught:
        targets.check(node, "model")
    assert caught.value.key == "model.block.act[0]._target_"
    assert "os.system" in str(caught.value) and "trusted_modules" in str(caught.value)
    assert targets.check(node.block.act[0], "x", ["os"]) == targets.patterns(["os"])


def test_untrusted_target_is_refused_without_running(tmp_path):
    trace = tmp_path / "made_by_config"
    with pytest.raises(ConfigError) as caught:
        targets.instantiate(OmegaConf.create({"_target_": "os.makedirs", "name": str(trace)}), "data")
    assert caught.value.key == "data._target_"
    assert not trace.exists()


def test_an_alias_of_an_untrusted_callable_is_refused_naming_what_it_is(tmp_path):
    trace = tmp_path / "made_by_alias"
    with pytest.raises(ConfigError) as caught:  # torch's module namespace holds `os`
        targets.instantiate(OmegaConf.create({"_target_": "torch.os.makedirs", "name": str(trace)}), "data")
    assert "os.makedirs" in str(caught.value) and "torch.os.makedirs" in str(caught.value)
    assert not trace.exists()


def _run(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "lib"), "WANDB_SILENT": "true"}
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_user_config_dir_with_foreign_or_untrusted_targets(tmp_path):
    conf = tmp_path / "my_conf"
    (conf / "data").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "data" / "evil.yaml").write_text(f"_target_: os.makedirs\nname: {tmp_path / 'evil_trace'}\n")
    (conf / "model" / "net.yaml").write_text(f"_target_: my_lab_models.Net\ntrace: {tmp_path / 'net_trace'}\n")
    (tmp_path / "lib" / "my_lab_models").mkdir(parents=True)
    (tmp_path / "lib" / "my_lab_models" / "__init__.py").write_text(USER_MODULE)

    refused = _run(tmp_path, "--config-dir", str(conf), "data=evil", *[o for o in FAST if "data." not in o])
    assert refused.returncode == 2
    assert "`data._target_`" in refused.stderr and "os.makedirs" in refused.stderr
    assert "trusted_modules" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "evil_trace").exists()

    untrusted = _run(tmp_path, "--config-dir", str(conf), "model=net", *FAST)
    assert untrusted.returncode == 2 and "`model._target_`" in untrusted.stderr
    assert "trusted_modules=[my_lab_models]" in untrusted.stderr
    assert not (tmp_path / "net_trace").exists()

    trusted = _run(tmp_path, "--config-dir", str(conf), "model=net", "trusted_modules=[my_lab_models]", *FAST)
    assert trusted.returncode == 0, trusted.stderr
    assert (tmp_path / "net_trace").read_text() == "built"
