"""Preflight (one checked training step) and doctor (the environment), in-process and once
through `python -m app preflight=true`."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from app.tools import doctor, preflight
from app.run.reproducibility import set_deterministic
from tests.conftest import FAST


class WrongWidth(nn.Module):
    """Predicts one column more than the data has: mse_loss would broadcast it silently."""

    def __init__(self, in_features, out_features, **_):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features + 1)

    def forward(self, x):
        return self.linear(x)


class NaNOutput(WrongWidth):
    def __init__(self, in_features, out_features, **_):
        nn.Module.__init__(self)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x):
        return self.linear(x) * float("nan")


class InfiniteGradient(NaNOutput):
    """Finite output and loss, infinite gradient: d sqrt(u)/du at u = 0."""

    def forward(self, x):
        return self.linear(x) + torch.sqrt(self.linear(x) * 0.0)


class NonDeterministicOp(NaNOutput):
    def forward(self, x):
        from torch._prims_common import alert_not_deterministic

        alert_not_deterministic("scatter_reduce_cuda_mean")  # what such an op does in deterministic mode
        return self.linear(x)


def statuses(report):
    return {check.name: check.status for check in report.checks}


def failure(report):
    return next(c for c in report.checks if c.status == "FAIL")


def test_default_config_passes_every_check(compose_cfg):
    report = preflight.run(compose_cfg("device=cpu"))
    assert [c.name for c in report.checks] == list(preflight.CHECKS)
    assert set(statuses(report).values()) == {"PASS"}
    assert report.exit_code() == 0
    assert "PASSED" in report.table() and "MiB" in report.table()


@pytest.mark.parametrize(
    "model, check, words",
    [
        ("WrongWidth", "forward", "does not match target"),
        ("NaNOutput", "loss", "loss is nan"),
        ("InfiniteGradient", "backward", "non-finite gradients in linear.weight"),
    ],
)
def test_broken_steps_fail_at_the_check_that_catches_them(compose_cfg, model, check, words):
    report = preflight.run(compose_cfg(*FAST, f"model._target_=tests.test_preflight.{model}", "trusted_modules=[tests]"))
    assert failure(report).name == check
    assert words in failure(report).detail
    assert report.exit_code() == 1
    table = report.table()
    assert f"FAILED at {check}" in table and "SKIP" in table  # later checks did not run


def test_invalid_config_fails_at_config_with_exit_2(compose_cfg):
    report = preflight.run(compose_cfg(*FAST, "optimizer.lr=-1"))
    assert failure(report).name == "config" and "`optimizer.lr`" in failure(report).detail
    assert report.exit_code() == 2


def test_deterministic_mode_names_the_refusing_op(compose_cfg):
    try:
        report = preflight.run(compose_cfg(*FAST, "deterministic=true",
                                           "model._target_=tests.test_preflight.NonDeterministicOp",
                                           "trusted_modules=[tests]"))
    finally:
        set_deterministic(False)
    assert failure(report).name == "forward"
    assert "scatter_reduce_cuda_mean has no deterministic implementation" in failure(report).detail
    assert "`deterministic`" in failure(report).detail and report.exit_code() == 2


def test_shape_problem_for_classification():
    target = torch.tensor([0, 2, 1])
    assert preflight.shape_problem("classification", torch.zeros(3, 3), target, 3) is None
    assert "class scores" in preflight.shape_problem("classification", torch.zeros(3, 2), target, 3)
    assert "class indices" in preflight.shape_problem("classification", torch.zeros(3, 3), target.float(), 3)
    assert "rows" in preflight.shape_problem("regression", torch.zeros(2, 1), torch.zeros(3, 1), 1)


@pytest.mark.slow
def test_preflight_from_the_command_line_writes_no_run(run_app, tmp_path):
    proc = run_app("preflight=true", *FAST, check=True)
    assert "preflight PASSED" in proc.stdout and "optimizer step" in proc.stdout
    assert not (tmp_path / "outputs").exists()
    proc = run_app("preflight=true", *FAST, "model._target_=app.models.Nope")
    assert proc.returncode == 2 and "FAILED at model" in proc.stdout


def test_doctor_reports_versions_and_writable_outputs(tmp_path, capsys):
    rows = {item: (status, detail) for item, status, detail in doctor.rows(tmp_path)}
    assert rows["torch"][1].startswith(torch.__version__)
    for item in ("python", "hydra-core", "optuna", "wandb", "wandb mode", "git"):
        assert item in rows
    assert rows["outputs/"][0] == "OK" and "writable" in rows["outputs/"][1]
    assert list(tmp_path.iterdir()) == []  # it created nothing
    assert rows.get("cuda", rows.get("cuda:0"))[0] in ("INFO", "OK")
    assert rows["app_optuna sweeper"] == ("OK", "entry point app.search.plugin:AppOptunaSweeper")
    assert "PostgreSQL through psycopg 3." in rows["sweep storage"][1]  # the dev extra installs both
    assert rows["SLURM launcher"][0] == "OK"

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    status, detail = doctor.outputs_row(not_a_directory)[1:]
    assert status == "FAIL" and "cannot write" in detail

    assert doctor.main() == 0
    assert "ready to run" in capsys.readouterr().out


def test_a_learning_rate_that_makes_the_loss_explode_fails_the_burst(compose_cfg):
    report = preflight.run(compose_cfg("device=cpu", "logger=none", "model=resmlp", "optimizer=sgd",
                                       "optimizer.lr=0.05", "optimizer.nesterov=true"))
    assert failure(report).name == "train steps"
    assert "the loss exploded" in failure(report).detail and "lower optimizer.lr" in failure(report).detail
    assert report.exit_code() == 1


def readme_examples() -> list[list[str]]:
    """The overrides of each `python -m app ...` line in the README's first example block."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("Pick an option with", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    examples = []
    for line in block.strip().splitlines():
        args = shlex.split(re.sub(r"\s+#.*$", "", line))[3:]  # after `python -m app`
        if args and not any(a.startswith("-") or a == "device=cuda" for a in args):
            examples.append(args)
    return examples


def test_the_readme_examples_pass_preflight(compose_cfg):
    examples = readme_examples()
    assert len(examples) >= 5 and examples[0][0] == "model=resmlp"
    for args in examples:
        report = preflight.run(compose_cfg(*args, "device=cpu"))
        assert report.passed, (args, report.table())
