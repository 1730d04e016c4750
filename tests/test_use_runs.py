"""Using what you trained: checkpoints that load with weights_only=True and carry what inference
needs, `app.evaluate`, `app.predict`, `app.load_run`, and `app.runs` (table, compare, plot).

Two small runs on the user's own CSV files (string class labels; a regression target in large
units, features on very different scales) are trained once, in-process, through the app's own
`execute`; the command lines are run in a subprocess once (slow)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from app.data import split_indices
from app.errors import ConfigError
from app.run.execute import execute
from app.run.load import load_run
from app.tools import evaluate, predict, runs
from tests.conftest import CONF, ROOT

N = 240
COMMON = ["trainer.epochs=6", "logger=none", "device=cpu", "trainer.progress_bar=false", "trainer.batch_size=32"]


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


def train(run_dir: Path, overrides: list[str], launch_dir: Path):
    """One run of the app in-process, its directory laid out as `python -m app` lays it out."""
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir, cfg.hydra.runtime.cwd = str(run_dir), str(launch_dir)
    HydraConfig.instance().set_config(cfg)
    try:
        job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        (run_dir / ".hydra").mkdir(parents=True)
        OmegaConf.save(job, run_dir / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"cwd": str(launch_dir)}}}), run_dir / ".hydra" / "hydra.yaml")
        return execute(job, run_dir)
    finally:
        HydraConfig.instance().cfg = None  # later tests see no Hydra run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{"classify": run dir, "regress": run dir, "root": outputs dir, "x", "kinds", "price"}."""
    root = tmp_path_factory.mktemp("use")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 3)) * [1.0, 10.0, 1000.0] + [0.0, 50.0, 5000.0]
    kinds = np.array(["cat", "dog", "eel"])[(x[:, 0] > 0).astype(int) + (x[:, 1] > 50).astype(int)]
    price = 3000.0 * x[:, 0] + 200.0 * x[:, 1] + 5.0 * x[:, 2]  # ~3.5e4 +- 6e3: a target in large units
    write_csv(root / "animals.csv", ["id", "a", "b", "c", "kind"],
              [[i, *map(repr, row), k] for i, (row, k) in enumerate(zip(x.tolist(), kinds))])
    write_csv(root / "prices.csv", ["a", "b", "c", "price"],
              [[*map(repr, row), repr(p)] for row, p in zip(x.tolist(), price.tolist())])
    outputs = root / "outputs" / "runs" / "2026-01-01"
    os.chdir(root)  # relative data paths, as a user types them, are taken from the launch dir
    try:
        summaries = {
            "classify": train(outputs / "10-00-00-000001", ["data=file", "data.path=animals.csv", "data.target=kind",
                                                            "data.exclude=[id]", *COMMON], root),
            "regress": train(outputs / "10-00-00-000002", ["data=file", "data.path=prices.csv", "data.target=price",
                                                           "optimizer.lr=0.01", *COMMON], root),
        }
    finally:
        os.chdir(ROOT)
    assert all(s.status.ended_normally for s in summaries.values())
    return {"classify": outputs / "10-00-00-000001", "regress": outputs / "10-00-00-000002",
            "root": root, "x": x, "kinds": kinds, "price": price}


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def split_of_the_runs(n_val=0.2, n_test=0.2):
    return split_indices(N, n_val, n_test, 0)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_loads_with_weights_only_and_carries_what_inference_needs(trained):
    state = torch.load(trained["classify"] / "checkpoints" / "best.pt", weights_only=True)
    record = state["inference"]
    assert record["task"] == "classification" and record["classes"] == ["cat", "dog", "eel"]
    assert record["features"] == ["a", "b", "c"] and record["targets"] == ["kind"]
    assert record["model"]["_target_"] == "app.models.MLP" and (record["in_features"], record["out_features"]) == (3, 3)
    train_idx, _, _ = split_of_the_runs()
    raw = torch.from_numpy(trained["x"]).float().index_select(0, train_idx)
    assert record["scaling"]["method"] == "standard"
    assert torch.allclose(torch.tensor(record["scaling"]["shift"]), raw.mean(dim=0), rtol=1e-6)
    assert torch.allclose(torch.tensor(record["scaling"]["scale"]), raw.std(dim=0, unbiased=False), rtol=1e-5)
    regress = torch.load(trained["regress"] / "checkpoints" / "last.pt", weights_only=True)["inference"]
    assert regress["task"] == "regression" and regress["classes"] is None and regress["targets"] == ["price"]


# ----------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("name", ["classify", "regress"])
def test_evaluate_reproduces_the_run_test_metrics(trained, name):
    result = evaluate.evaluate(str(trained[name]))
    assert result["split"] == "test" and result["samples"] == len(split_of_the_runs()[2])
    assert result["metrics"] == summary(trained[name])["test"]  # same checkpoint, split, batches: same sums


def test_evaluate_last_checkpoint_on_val_matches_the_last_epoch(trained):
    run_dir = trained["classify"]
    result = evaluate.evaluate(str(run_dir), checkpoint="last", split="val")
    with open(run_dir / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    assert result["epoch"] == int(last["epoch"]) == 6
    assert result["metrics"]["val_loss"] == pytest.approx(float(last["val_loss"]), rel=1e-6)
    assert result["metrics"]["val_accuracy"] == pytest.approx(float(last["val_accuracy"]))


def test_evaluate_another_file_scales_with_the_run_statistics_and_maps_its_labels(trained, tmp_path):
    """The test rows only, columns reordered, two of the three classes: the stored scaling and
    class order must be used (refitting either would change the numbers)."""
    _, _, test_idx = split_of_the_runs()
    rows = [i for i in test_idx.tolist() if trained["kinds"][i] != "cat"]
    x, kinds = trained["x"][rows], trained["kinds"][rows]
    path = write_csv(tmp_path / "new.csv", ["kind", "c", "b", "a", "note"],
                     [[k, repr(r[2]), repr(r[1]), repr(r[0]), "n"] for r, k in zip(x.tolist(), kinds)])
    result = evaluate.evaluate(str(trained["classify"]), [f"data.path={path}"])
    assert result["split"] == "all" and result["samples"] == len(rows)
    run = load_run(trained["classify"])
    expected = float(np.mean(run.predict(x) == kinds))
    assert result["metrics"]["all_accuracy"] == pytest.approx(expected)
    logits = run.outputs(x)
    labels = torch.tensor([run.classes.index(k) for k in kinds])
    assert result["metrics"]["all_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)


# ----------------------------------------------------------------------------- predict / load_run
def test_predict_writes_class_names_whose_accuracy_is_the_run_test_accuracy(trained, tmp_path):
    _, _, test_idx = split_of_the_runs()
    x = trained["x"][test_idx.numpy()]
    path = write_csv(tmp_path / "in.csv", ["c", "a", "b"], [[repr(r[2]), repr(r[0]), repr(r[1])] for r in x.tolist()])
    header, rows = predict.predict_file(str(trained["classify"]), str(path))
    assert header == ["kind", "p_cat", "p_dog", "p_eel"]
    labels = [row[0] for row in rows]
    assert set(labels) <= {"cat", "dog", "eel"}
    probabilities = np.array([[float(v) for v in row[1:]] for row in rows])
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    accuracy = float(np.mean(np.array(labels) == trained["kinds"][test_idx.numpy()]))
    assert accuracy == pytest.approx(summary(trained["classify"])["test"]["test_accuracy"])


def test_predict_regression_values_are_in_the_target_units(trained, tmp_path):
    _, _, test_idx = split_of_the_runs()
    x, price = trained["x"][test_idx.numpy()], trained["price"][test_idx.numpy()]
    path = tmp_path / "in.npz"
    np.savez(path, a=x[:, 0], b=x[:, 1], c=x[:, 2])
    header, rows = predict.predict_file(str(trained["regress"]), str(path))
    assert header == ["price"]
    values = np.array([float(r[0]) for r in rows])
    assert float(np.mean(np.abs(values - price))) == pytest.approx(summary(trained["regress"])["test"]["test_mae"], rel=1e-4)


# ----------------------------------------------------------------------------- target scaling
def test_a_regression_target_is_scaled_on_the_train_split_and_travels_in_the_checkpoint(trained):
    record = torch.load(trained["regress"] / "checkpoints" / "best.pt", weights_only=True)["inference"]
    train_idx, _, _ = split_of_the_runs()
    price = torch.from_numpy(trained["price"]).float().index_select(0, train_idx)
    scaling = record["target_scaling"]
    assert scaling["method"] == "standard" and scaling["features"] == ["price"]
    assert scaling["shift"][0] == pytest.approx(price.mean().item(), rel=1e-6)
    assert scaling["scale"][0] == pytest.approx(price.std(unbiased=False).item(), rel=1e-5)
    assert torch.load(trained["classify"] / "checkpoints" / "best.pt", weights_only=True)["inference"]["target_scaling"] is None


def test_reported_test_mse_is_predicts_mse_in_the_target_units_and_the_model_trained_well(trained, tmp_path):
    _, _, test_idx = split_of_the_runs()
    x, price = trained["x"][test_idx.numpy()], trained["price"][test_idx.numpy()]
    path = write_csv(tmp_path / "in.csv", ["a", "b", "c"], [list(map(repr, row)) for row in x.tolist()])
    assert predict.main([str(trained["regress"]), str(path), "--out", str(tmp_path / "preds.csv")]) == 0
    values = np.loadtxt(tmp_path / "preds.csv", delimiter=",", skiprows=1)
    test = summary(trained["regress"])["test"]
    assert float(np.mean((values - price) ** 2)) == pytest.approx(test["test_mse"], rel=1e-5)
    assert float(np.mean(np.abs(values - price))) == pytest.approx(test["test_mae"], rel=1e-5)
    # R^2 > 0.9 after 6 short epochs (unscaled, the outputs would still be crawling towards 3.5e4)
    assert test["test_mse"] < 0.1 * float(np.var(trained["price"]))
    # test_loss is the training loss on the scaled target: MSE / scale^2 for one target
    scale = load_run(trained["regress"]).target_scaling.scale.item()
    assert test["test_loss"] == pytest.approx(test["test_mse"] / scale**2, rel=1e-4)


def test_evaluate_on_another_file_scores_in_the_target_units_with_the_stored_statistics(trained, tmp_path):
    rows = list(range(0, N, 7))  # rows of every split: refitting anything would change the numbers
    x, price = trained["x"][rows], trained["price"][rows]
    path = write_csv(tmp_path / "more.csv", ["price", "c", "b", "a"],
                     [[repr(p), repr(r[2]), repr(r[1]), repr(r[0])] for r, p in zip(x.tolist(), price.tolist())])
    result = evaluate.evaluate(str(trained["regress"]), [f"data.path={path}"])
    values = load_run(trained["regress"]).predict(x)
    assert result["samples"] == len(rows)
    assert result["metrics"]["all_mse"] == pytest.approx(float(np.mean((values - price) ** 2)), rel=1e-5)
    assert result["metrics"]["all_mae"] == pytest.approx(float(np.mean(np.abs(values - price))), rel=1e-5)


def test_every_epoch_reports_val_errors_in_the_target_units(trained):
    with open(trained["regress"] / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    scale = load_run(trained["regress"]).target_scaling.scale.item()
    for row in rows:
        assert float(row["val_mse"]) == pytest.approx(float(row["val_loss"]) * scale**2, rel=1e-4)
    assert float(rows[-1]["val_mae"]) > 100  # dollars, not standard deviations


def test_load_run_undoes_the_target_scaling_and_old_checkpoints_without_it_still_load(trained, tmp_path):
    run = load_run(trained["regress"])
    x = trained["x"][:4]
    raw = run.outputs(x)
    assert np.allclose(run.predict(x), (raw * run.target_scaling.scale + run.target_scaling.shift).numpy()[:, 0])
    assert torch.equal(run.untransform(run.transform_target(torch.tensor([[1e4]]))), torch.tensor([[1e4]]))
    old = fake_run(tmp_path, trained["regress"])  # a checkpoint of a version that scaled no target
    (old / "checkpoints").mkdir()
    state = torch.load(trained["regress"] / "checkpoints" / "best.pt", weights_only=True)
    del state["inference"]["target_scaling"]
    torch.save(state, old / "checkpoints" / "best.pt")
    config = OmegaConf.load(old / ".hydra" / "config.yaml")  # nor had its config the key
    del config.data["target_scaling"]
    OmegaConf.save(config, old / ".hydra" / "config.yaml")
    legacy = load_run(old)
    assert legacy.target_scaling is None and np.allclose(legacy.predict(x), raw.numpy()[:, 0])
    result = evaluate.evaluate(str(old))
    assert result["samples"] == len(split_of_the_runs()[2]) and result["metrics"]["test_mse"] > 0


def test_load_run_gives_an_eval_model_on_the_cpu_and_its_transforms(trained):
    run = load_run(trained["classify"])
    assert not run.model.training and next(run.model.parameters()).device.type == "cpu"
    assert run.cfg.data.target == "kind" and run.checkpoint.name == "best.pt"
    x = trained["x"][:5]
    scaled = run.transform(x)
    assert torch.allclose(scaled, (torch.from_numpy(x).float() - run.scaling.shift) / run.scaling.scale)
    table = {"b": x[:, 1], "c": x[:, 2], "a": x[:, 0], "kind": ["?"] * 5}  # by name, any order
    assert list(run.predict(table)) == list(run.predict(x))
    assert run.predict_proba(x).shape == (5, 3)
    regress = load_run(trained["regress"], "last")
    assert regress.predict(x).shape == (5,) and regress.epoch == 6
    import app

    assert app.load_run is load_run


def test_load_run_refuses_wrong_inputs_in_one_paragraph(trained):
    run = load_run(trained["classify"])
    with pytest.raises(ConfigError, match="lacks 'c'"):
        run.predict({"a": [1.0], "b": [2.0]})
    with pytest.raises(ConfigError, match=r"\[n, 3\]"):
        run.predict(np.zeros((2, 4)))


# ----------------------------------------------------------------------------- refusals
def fake_run(tmp_path: Path, source: Path) -> Path:
    """A copy of `source`'s records without its checkpoints."""
    run_dir = tmp_path / "copy"
    shutil.copytree(source / ".hydra", run_dir / ".hydra")
    return run_dir


def refusal(main, argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: Invalid value for `") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1  # one paragraph
    return err


def test_refusals_are_one_paragraph(trained, tmp_path, capsys):
    run_dir = str(trained["classify"])
    assert "not a run directory" in refusal(evaluate.main, [str(tmp_path)], capsys)
    assert "does not exist" in refusal(predict.main, [str(tmp_path / "nope"), "x.csv"], capsys)
    no_checkpoints = fake_run(tmp_path, trained["classify"])
    assert "no checkpoints/best.pt" in refusal(evaluate.main, [str(no_checkpoints)], capsys)
    (tmp_path / "in.txt").write_text("a,b,c\n1,2,3\n")
    assert "Unsupported file type '.txt'" in refusal(predict.main, [run_dir, str(tmp_path / "in.txt")], capsys)
    write_csv(tmp_path / "in.csv", ["a", "b"], [[1, 2]])
    assert "has no column 'c'" in refusal(predict.main, [run_dir, str(tmp_path / "in.csv")], capsys)
    write_csv(tmp_path / "text.csv", ["a", "b", "c"], [[1, 2, "x"]])
    assert "non-numeric value 'x'" in refusal(predict.main, [run_dir, str(tmp_path / "text.csv")], capsys)
    assert "data.<key>=<value>" in refusal(evaluate.main, [run_dir, "model.nodes=3"], capsys)
    assert "has no key 'bogus'" in refusal(evaluate.main, [run_dir, "data.bogus=1"], capsys)
    write_csv(tmp_path / "fish.csv", ["a", "b", "c", "kind"], [[1, 2, 3, k] for k in ("fish", "cat") * 3])
    assert "never saw" in refusal(evaluate.main, [run_dir, f"data.path={tmp_path / 'fish.csv'}"], capsys)
    assert "--checkpoint" in refusal(evaluate.main, [run_dir, "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert "Not a device name" in refusal(evaluate.main, [run_dir, "--device", "gpu"], capsys)
    if not torch.cuda.is_available():
        assert "CUDA is not available" in refusal(predict.main, [run_dir, "in.csv", "--device", "cuda"], capsys)
    write_csv(tmp_path / "ok.csv", ["a", "b", "c"], [[1, 2, 3]])
    assert "a .csv file path" in refusal(predict.main, [run_dir, str(tmp_path / "ok.csv"), "--out", str(tmp_path / "p.txt")], capsys)


def test_old_or_pickled_checkpoints_are_refused_in_one_paragraph(trained, tmp_path, capsys):
    run_dir = fake_run(tmp_path, trained["classify"])
    (run_dir / "checkpoints").mkdir()
    torch.save({"format": 2, "model": {}, "rng": {"numpy": np.random.get_state()}}, run_dir / "checkpoints" / "best.pt")
    assert "pickled Python objects" in refusal(evaluate.main, [str(run_dir)], capsys)
    torch.save({"format": 2, "model": {}}, run_dir / "checkpoints" / "best.pt")
    assert "format-2 checkpoint of an earlier version" in refusal(evaluate.main, [str(run_dir)], capsys)
    (run_dir / "checkpoints" / "best.pt").write_bytes(b"torn")
    assert "cannot be read as a checkpoint" in refusal(evaluate.main, [str(run_dir)], capsys)


# ----------------------------------------------------------------------------- runs at a glance
@pytest.fixture
def outputs(trained, tmp_path):
    """The two runs, and a sweep of two jobs that differ in optimizer.lr."""
    root = tmp_path / "outputs"
    shutil.copytree(trained["root"] / "outputs", root)
    sweep = root / "sweeps" / "2026-01-02" / "09-00-00-000000"
    for job, lr in (("0", "0.001"), ("1", "0.01")):
        shutil.copytree(trained["regress"], sweep / job)
        OmegaConf.save(OmegaConf.create(["data=file", "data.target=price", f"optimizer.lr={lr}"]),
                       sweep / job / ".hydra" / "overrides.yaml")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    running = root / "runs" / "2026-01-03" / "11-00-00-000000"
    shutil.copytree(trained["classify"] / ".hydra", running / ".hydra")
    return root


def test_runs_table_lists_runs_and_sweeps_in_100_columns(outputs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert runs.main([str(outputs)]) == 0
    out = capsys.readouterr().out
    assert all(len(line) <= 100 for line in out.splitlines())
    classify = summary(outputs / "runs" / "2026-01-01" / "10-00-00-000001")
    line = next(l for l in out.splitlines() if "10-00-00-000001" in l)
    assert "completed" in line and f"{classify['monitor']} {classify['best']:.4g}" in line
    assert f"acc {classify['test']['test_accuracy']:.4g}" in line and " 6 " in line
    assert "data.path=animals.csv" in out and "data.path=prices.csv" in out  # they differ between the runs
    assert "unfinished" in next(l for l in out.splitlines() if "11-00-00-000000" in l)
    assert "sweep: 2 jobs, 2 completed; best job" in out
    job = next(l for l in out.splitlines() if l.strip().startswith("0 "))
    assert job.endswith("optimizer.lr=0.001") and "data.target" not in job  # only what differs in the sweep


def test_runs_compare_shows_config_differences_and_results(trained, capsys):
    assert runs.main(["--compare", str(trained["classify"]), str(trained["regress"])]) == 0
    out = capsys.readouterr().out
    target = next(l for l in out.splitlines() if l.startswith("data.target "))
    assert target.split()[1:] == ["kind", "price"]
    assert not any(l.startswith("trainer.epochs ") for l in out.splitlines())  # the same in both
    status = next(l for l in out.splitlines() if l.startswith("status "))
    assert status.split()[1:] == ["completed", "completed"]
    accuracy = next(l for l in out.splitlines() if l.startswith("test_accuracy "))
    assert accuracy.split()[1] == f"{summary(trained['classify'])['test']['test_accuracy']:.4g}"


def test_runs_plot_writes_a_valid_image(trained, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "curves.png"
    assert runs.main(["--plot", str(trained["classify"]), str(trained["regress"]), "--out", str(out),
                      "--metric", "val_loss", "--metric", "train_loss"]) == 0
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 2 * image.size[1]  # two panels side by side
    assert "Error" not in capsys.readouterr().err
    assert "ending in .png" in refusal(runs.main, ["--plot", str(trained["classify"]), "--out", str(tmp_path / "x.txt")], capsys)
    assert "None of the runs has a value" in refusal(runs.main, ["--plot", str(trained["classify"]), "--out", str(out),
                                                             "--metric", "val_loss", "--metric", "nope"], capsys)


# ----------------------------------------------------------------------------- the command lines
@pytest.mark.slow
def test_command_lines(trained, tmp_path):
    def app(module, *args):
        return subprocess.run([sys.executable, "-m", f"app.{module}", *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "100"})

    proc = app("evaluate", trained["classify"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["metrics"] == summary(trained["classify"])["test"]
    write_csv(tmp_path / "in.csv", ["a", "b", "c"], [[0.5, 60.0, 5000.0], [-1.0, 40.0, 4000.0]])
    proc = app("predict", trained["classify"], "in.csv", "--out", "preds.csv")
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "preds.csv").read_text().splitlines()
    assert lines[0] == "kind,p_cat,p_dog,p_eel" and len(lines) == 3
    proc = app("runs", trained["root"] / "outputs")
    assert proc.returncode == 0 and "10-00-00-000002" in proc.stdout
    proc = app("predict", trained["classify"], "missing.csv")
    assert proc.returncode == 2 and proc.stderr.startswith("Error: ") and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_resume_keeps_the_target_scaling_and_its_units(trained, tmp_path):
    shutil.copy(trained["root"] / "prices.csv", tmp_path / "prices.csv")

    def app(*args):
        return subprocess.run([sys.executable, "-m", "app", "data=file", "data.path=prices.csv", "data.target=price",
                               "trainer.threads=1", *COMMON[1:], *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})

    first = app("trainer.epochs=3")
    assert first.returncode == 0, first.stderr
    [run] = sorted(p.parent for p in (tmp_path / "outputs").rglob(".hydra"))
    before = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["inference"]["target_scaling"]
    resumed = subprocess.run([sys.executable, "-m", "app", f"resume={run}", "trainer.epochs=5"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "WANDB_SILENT": "true"})
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["inference"]["target_scaling"] == before
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4", "5"]
    for row in rows:  # the resumed epochs too: val_mse in dollars^2, val_loss on the scaled target
        assert float(row["val_mse"]) == pytest.approx(float(row["val_loss"]) * before["scale"][0] ** 2, rel=1e-4)
    values = load_run(run).predict(trained["x"][split_of_the_runs()[2].numpy()])
    truth = trained["price"][split_of_the_runs()[2].numpy()]
    assert float(np.mean((values - truth) ** 2)) == pytest.approx(summary(run)["test"]["test_mse"], rel=1e-5)


def test_preflight_fails_a_callback_state_that_checkpoints_could_not_load(compose_cfg, monkeypatch):
    from app.callbacks.early_stopping import EarlyStopping
    from app.tools import preflight
    from tests.conftest import FAST

    assert preflight.run(compose_cfg(*FAST)).exit_code() == 0
    monkeypatch.setattr(EarlyStopping, "state_dict", lambda self: {"best": np.float64(1.0)})
    report = preflight.run(compose_cfg(*FAST))
    failed = next(c for c in report.checks if c.status == "FAIL")
    assert failed.name == "checkpoint" and "would hold a pickled numpy" in failed.detail
    assert report.exit_code() == 1


def test_a_multi_seed_run_is_used_one_seed_at_a_time(trained, tmp_path, capsys):
    run_dir = tmp_path / "seeds"
    shutil.copytree(trained["classify"] / ".hydra", run_dir / ".hydra")
    shutil.copytree(trained["classify"] / "checkpoints", run_dir / "seed_1" / "checkpoints")
    assert "multi-seed run: its checkpoints are in seed_1" in refusal(evaluate.main, [str(run_dir)], capsys)
    # The seed's config is its parent's; its relative data.path is taken from where the run was launched.
    result = evaluate.evaluate(str(run_dir / "seed_1"))
    assert result["metrics"] == summary(trained["classify"])["test"]


def test_a_bare_checkpoint_file_loads_and_builds_only_trusted_models(trained, tmp_path):
    state = torch.load(trained["classify"] / "checkpoints" / "best.pt", weights_only=True)
    torch.save(state, tmp_path / "sent.pt")
    run = load_run(tmp_path / "sent.pt")
    assert run.cfg is None and run.classes == ["cat", "dog", "eel"]
    assert list(run.predict(trained["x"][:4])) == list(load_run(trained["classify"]).predict(trained["x"][:4]))
    state["inference"]["model"]["_target_"] = "os.system"
    torch.save(state, tmp_path / "planted.pt")
    with pytest.raises(ConfigError, match="model._target_.*os.system"):
        load_run(tmp_path / "planted.pt")


def test_evaluate_refuses_data_that_does_not_fit_the_model(trained, tmp_path, capsys):
    regress = str(trained["regress"])
    write_csv(tmp_path / "two.csv", ["a", "b", "c", "price", "tax"], [[1, 2, 3, 4, 5]] * 6)
    assert "1 target column(s): price" in refusal(evaluate.main, [regress, f"data.path={tmp_path / 'two.csv'}",
                                                                   "data.target=[price,tax]"], capsys)
    assert "3 features the model was trained on" in refusal(
        evaluate.main, [regress, f"data.path={tmp_path / 'two.csv'}", "data.features=[a,b,c,tax]"], capsys)


def test_import_app_stays_cheap():
    code = "import sys, app; print('torch' in sys.modules, callable(app.load_run), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["False", "True", "True"]  # torch comes with load_run, not with `import app`


def test_runs_table_test_column_shows_task_metrics_and_the_seeds_spread():
    from app.run.record import Status, Summary

    single = Summary(Status.COMPLETED, test={"test_loss": 0.53, "test_mae": 45.57, "test_mse": 3148.8})
    assert runs.test_text(single) == "mae 45.57 mse 3149"  # a scaled target's loss is not in its units
    seeds = Summary(Status.COMPLETED, test={"test_loss": 0.2, "test_accuracy": 0.95},
                    test_std={"test_loss": 0.01, "test_accuracy": 0.0135})
    assert runs.test_text(seeds) == "acc 0.95 +- 0.0135"
    assert runs.test_text(Summary(Status.COMPLETED, test={"test_loss": 0.25})) == "loss 0.25"
