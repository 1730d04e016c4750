"""A researcher's own table in one line: `data=file data.path=x.csv data.target=label`.

Features default to every other column (patterns allowed), the task is inferred from the
target, a test split is held out, features are scaled with train statistics only, and values
beyond float32 are refused naming the file, column and row."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from app.data import load_table, split_indices
from app.errors import ConfigError
from app.run import build
from tests.conftest import run_dirs


# `load_table` takes every option as a keyword (conf/data/file.yaml holds the app's defaults:
# standard scaling, a test split, task auto); these tests were written for plain data.
PLAIN = dict(exclude=[], task="regression", scaling="none", target_scaling="none", val_fraction=0.2,
             test_fraction=0.0, seed=0)


def plain_table(path, features, target, **options):
    """`load_table` of `path`'s `features` -> `target` with PLAIN options unless given."""
    return load_table(path=path, features=features, target=target, **{**PLAIN, **options})


def write_csv(path: Path, header: list[str], rows) -> Path:
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


@pytest.fixture
def wine_csv(tmp_path) -> Path:
    from sklearn.datasets import load_wine

    data = load_wine()  # 13 features and `target` (0, 1, 2)
    rows = [[i, *map(repr, x), t] for i, (x, t) in enumerate(zip(data.data.tolist(), data.target))]
    return write_csv(tmp_path / "wine.csv", ["id", *data.feature_names, "target"], rows)


@pytest.fixture
def cancer_csv(tmp_path) -> Path:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()  # text labels: malignant / benign
    rows = [[*map(repr, x), data.target_names[t]] for x, t in zip(data.data.tolist(), data.target)]
    return write_csv(tmp_path / "cancer.csv", [n.replace(" ", "_") for n in data.feature_names] + ["target"], rows)


# ----------------------------------------------------------------------------- float32 range
@pytest.mark.parametrize("value", ["1e39", "1e300", "-3.5e38"])
def test_values_beyond_float32_are_refused_naming_file_column_and_row(tmp_path, value):
    path = write_csv(tmp_path / "big.csv", ["a", "b", "y"], [[1, 2, 3], [4, value, 6], [7, 8, 9], [1, 1, 1]])
    with pytest.raises(ConfigError) as caught:
        plain_table(str(path), ["a", "b"], "y")
    message = str(caught.value)
    assert caught.value.key == "data.features" and "'b'" in message and "row 2 (line 3 of the file)" in message
    assert str(path) in message and "float32" in message and "3.402823e+38" in message


def test_target_beyond_float32_is_refused(tmp_path):
    path = write_csv(tmp_path / "big.csv", ["a", "y"], [[1, 3], [4, 6], [7, -1e300], [1, 1]])
    with pytest.raises(ConfigError, match=r"Column 'y' has value -1e\+300 at row 3") as caught:
        plain_table(str(path), ["a"], "y")
    assert caught.value.key == "data.target"


def test_float32_max_itself_is_accepted(tmp_path):
    big = float(np.finfo(np.float32).max)
    path = write_csv(tmp_path / "edge.csv", ["a", "y"], [[repr(big), 1], [1, 2], [2, 3], [3, 4], [4, 5]])
    data = plain_table(str(path), ["a"], "y")
    assert torch.isfinite(torch.cat([data.train.x, data.val.x])).all()


# ----------------------------------------------------------------------------- features
@pytest.fixture
def mixed_csv(tmp_path) -> Path:
    rows = [[i, f"{i / 10}", f"{i % 7}", f"{i * 2}", i % 2, f"2024-01-{1 + i % 28:02d}"] for i in range(60)]
    return write_csv(tmp_path / "mixed.csv", ["id", "pixel_1", "pixel_2", "other", "label", "date"], rows)


def test_features_default_to_every_other_column_less_exclude(mixed_csv):
    data = plain_table(str(mixed_csv), None, "label", exclude=["id", "date"], scaling="standard")
    assert data.scaling.features == ["pixel_1", "pixel_2", "other"] and data.in_features == 3


def test_feature_patterns_and_exclude_patterns(mixed_csv):
    assert plain_table(str(mixed_csv), "pixel_*", "label", scaling="minmax").scaling.features == ["pixel_1", "pixel_2"]
    data = plain_table(str(mixed_csv), ["other", "pixel_?"], "label", scaling="minmax")
    assert data.scaling.features == ["other", "pixel_1", "pixel_2"]
    data = plain_table(str(mixed_csv), None, "label", exclude=["id", "d*", "pixel_2"], scaling="minmax")
    assert data.scaling.features == ["pixel_1", "other"]


@pytest.mark.parametrize("features, exclude, what", [
    ("colour_*", None, "Pattern 'colour_*' matches no column"),
    (["pixel_1", "colour"], None, "Column 'colour' not found"),
    (None, ["identifier"], "Column 'identifier' not found"),
])
def test_unknown_name_or_empty_pattern_lists_the_columns(mixed_csv, features, exclude, what):
    with pytest.raises(ConfigError) as caught:
        plain_table(str(mixed_csv), features, "label", exclude=exclude)
    message = str(caught.value)
    assert what in message and "id, pixel_1, pixel_2, other, label, date" in message
    assert len(message.splitlines()) == 1


def test_a_text_column_left_in_the_features_is_named(mixed_csv):
    with pytest.raises(ConfigError, match="'date' has non-numeric value '2024-01-01'"):
        plain_table(str(mixed_csv), None, "label", exclude=["id"])


# ----------------------------------------------------------------------------- task inference
def test_task_inferred_and_logged(wine_csv, cancer_csv, mixed_csv, caplog):
    with caplog.at_level(logging.INFO):
        wine = plain_table(str(wine_csv), None, "target", task="auto")
        cancer = plain_table(str(cancer_csv), None, "target", task="auto")
        ids = plain_table(str(mixed_csv), ["pixel_1"], "id", task="auto")  # 60 distinct integers
        fractional = plain_table(str(mixed_csv), ["id"], "pixel_1", task="auto")
    assert (wine.task, wine.out_features) == ("classification", 3)
    assert (cancer.task, cancer.out_features) == ("classification", 2)
    assert ids.task == fractional.task == "regression"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data.task=auto")]
    assert lines[0] == ("data.task=auto: classification ('target' holds 3 distinct integers in 178 rows); "
                        "set data.task=regression to override")
    assert "text labels" in lines[1] and "data.task=regression" in lines[1]
    assert "data.task=classification to override" in lines[2] and "60 distinct integers" in lines[2]


def test_explicit_task_wins_over_inference(wine_csv):
    assert plain_table(str(wine_csv), None, "target", task="regression").task == "regression"


# ----------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("method", ["standard", "minmax"])
def test_scaling_is_fitted_on_the_train_split_only(wine_csv, method):
    raw = np.loadtxt(wine_csv, delimiter=",", skiprows=1)[:, 1:14]  # the 13 features, file order
    train_idx, val_idx, test_idx = split_indices(len(raw), 0.2, 0.2, 0)
    data = plain_table(str(wine_csv), None, "target", exclude=["id"], task="classification",
                      scaling=method, test_fraction=0.2, seed=0)
    train_raw = torch.tensor(raw[train_idx.numpy()], dtype=torch.float32)
    full_raw = torch.tensor(raw, dtype=torch.float32)
    if method == "standard":
        expected_shift, other_shift = train_raw.mean(0), full_raw.mean(0)
        assert torch.allclose(data.train.x.mean(0), torch.zeros(13), atol=1e-4)
        assert torch.allclose(data.train.x.std(0, unbiased=False), torch.ones(13), atol=1e-3)
    else:
        expected_shift, other_shift = train_raw.amin(0), full_raw.amin(0)
        assert data.train.x.min() == 0 and data.train.x.amax(0).max() == pytest.approx(1.0)
    assert torch.allclose(data.scaling.shift, expected_shift, rtol=1e-5)
    assert not torch.allclose(data.scaling.shift, other_shift, rtol=1e-5)  # not the whole file's
    # val and test went through the same train statistics
    val_raw = torch.tensor(raw[val_idx.numpy()], dtype=torch.float32)
    assert torch.allclose(data.val.x, (val_raw - data.scaling.shift) / data.scaling.scale, atol=1e-5)
    assert data.scaling.to_dict()["features"][0] == "alcohol"


def test_file_defaults_hold_out_a_test_split_and_scale(compose_cfg, wine_csv):
    cfg = compose_cfg("data=file", f"data.path={wine_csv}", "data.target=target")
    data = build.build_data(cfg)
    assert data.task == "classification" and data.test is not None and data.scaling.method == "standard"
    assert data.in_features == 14  # id included: nothing excluded by default
    assert (len(data.train), len(data.val), len(data.test)) == (106, 36, 36)


def test_synthetic_data_sets_are_unchanged(compose_cfg):
    data = build.build_data(compose_cfg("data=regression", "data.n_samples=100"))
    assert data.test is None and data.scaling is None


# ----------------------------------------------------------------------------- one line, end to end
@pytest.mark.slow
@pytest.mark.parametrize("csv_name, metric", [("wine_csv", "test_accuracy"), ("cancer_csv", "test_accuracy")])
def test_one_line_command_trains_and_reports_a_test_metric(run_app, tmp_path, request, csv_name, metric):
    path = request.getfixturevalue(csv_name)
    proc = run_app("data=file", f"data.path={path.name}", "data.target=target", "trainer.epochs=3",
                   "logger=none", "device=cpu", "trainer.progress_bar=false", check=True)
    [run_dir] = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 <= summary["test"][metric] <= 1
    assert "data.task=auto: classification" in proc.stderr + proc.stdout
