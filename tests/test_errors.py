"""A user's mistake gets one clear paragraph and a non-zero exit, never a Python traceback, and
leaves earlier runs untouched."""
from __future__ import annotations

import json

import pytest

from tests.conftest import FAST, run_dirs

pytestmark = pytest.mark.slow

BASE = ["logger=none", "device=cpu", "trainer.progress_bar=false"]


def _table(tmp_path):
    (tmp_path / "table.csv").write_text("a,b,y\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(40)))
    return "table.csv"  # relative: resolved against the directory the app is launched in


# (overrides, text the message must contain: the key, and what is accepted)
CASES = [
    (["trainer.epochs=0"], ["`trainer.epochs`", "integer >= 1"]),
    (["trainer.batch_size=-8"], ["`trainer.batch_size`", "integer >= 1"]),
    (["optimizer.lr=-0.1"], ["`optimizer.lr`", "> 0"]),
    (["callbacks.early_stopping.patience=0"], ["`callbacks.early_stopping.patience`", ">= 1"]),
    (["++trainer.fast_dev_run=true"], ["`trainer.fast_dev_run`", "epochs, batch_size"]),
    (["+model.foo=1"], ["`model.foo`", "nodes, layers"]),
    (["~callbacks.checkpoint"], ["`callbacks`", "exactly one checkpoint"]),
    (["trainer.mode=maximise"], ["`trainer.mode`", "min or max"]),
    (["trainer.monitor=val_accuracy"], ["`trainer.monitor`", "val_loss, val_mae"]),
    (["device=cuda"], ["`device.type`", "cpu"]),
    (["model.activation=swish"], ["`model.activation`", "gelu"]),
    (["data=file"], ["`data.path`", "required"]),  # features default to every other column
    (["data=file", "data.path=missing.csv", "data.features=[a]", "data.target=y"], ["`data.path`", "missing.csv"]),
    (["data=file", "data.path={table}", "data.features=[a,nope]", "data.target=y"], ["`data.features`", "nope"]),
    (["data=file", "data.path={table}", "data.features=[a]", "data.target=y", "data.task=ranking"], ["`data.task`", "classification"]),
    (["data.val_fraction=1.5"], ["`data.val_fraction`"]),
    (["scheduler=plateau", "scheduler.interval=step"], ["`scheduler.interval`", "epoch"]),
    (["optimizer=sgd", "optimizer.momentum=0", "optimizer.nesterov=true"], ["`optimizer.nesterov`", "momentum"]),
]


@pytest.mark.parametrize("overrides, expected", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_exits_nonzero_with_one_paragraph(run_app, tmp_path, overrides, expected):
    table = _table(tmp_path)
    proc = run_app(*BASE, *(o.format(table=table) for o in overrides))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    [message] = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    for text in expected:
        assert text in message
    assert "Accepted:" in message
    # The failed attempt is recorded as such, with the same message.
    [run_dir] = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] in message


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model=transformer"], ["Could not find 'model/transformer'", "mlp", "resmlp"]),
        (["trainer.epochs=abc"], ["trainer.epochs", "could not be converted to Integer"]),
        (["model.depth=3"], ["Key 'depth' not in 'MLPConf'"]),
    ],
)
def test_composition_errors_are_hydras_readable_ones(run_app, tmp_path, overrides, expected):
    proc = run_app(*BASE, *overrides)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    for text in expected:
        assert text in proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was run


def test_bad_job_in_a_sweep_stops_it_and_keeps_completed_jobs(run_app, tmp_path):
    proc = run_app("--multirun", *FAST, "optimizer.lr=1e-3,-1")
    assert proc.returncode == 2
    assert "`optimizer.lr`" in proc.stderr and "Traceback" not in proc.stderr
    good, bad = run_dirs(tmp_path)
    assert json.loads((good / "summary.json").read_text())["status"] == "completed"
    assert (good / "checkpoints" / "best.pt").exists()
    assert json.loads((bad / "summary.json").read_text())["status"] == "failed"
    rows = (good.parent / "sweep_summary.csv").read_text().splitlines()
    assert len(rows) == 3 and "completed" in rows[1] and "failed" in rows[2]
