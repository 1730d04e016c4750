"""Behavioural tests for app.data: generators, file loading, splits, errors and batching."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from app.data import (
    TASKS,
    DataSplits,
    Split,
    TensorBatches,
    blobs,
    load_table,
    regression_1d,
    spirals,
    split_indices,
)
from app.errors import ConfigError
from tests.conftest import options_of


# `load_table` takes every option as a keyword (conf/data/file.yaml holds the app's defaults:
# standard scaling, a test split, task auto); these tests were written for plain data.
PLAIN = dict(exclude=[], task="regression", scaling="none", target_scaling="none", val_fraction=0.2,
             test_fraction=0.0, seed=0)


def plain_table(path, features, target, **options):
    """`load_table` of `path`'s `features` -> `target` with PLAIN options unless given."""
    return load_table(path=path, features=features, target=target, **{**PLAIN, **options})


# ----------------------------------------------------------------------------- helpers
def all_rows(data: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    """x and y of every split concatenated (train, val, test)."""
    parts = [data.train, data.val] + ([data.test] if data.test is not None else [])
    return torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])


def expected_curve(x: torch.Tensor) -> torch.Tensor:
    """The documented noise-free target, written out independently of the implementation."""
    return torch.sin(4 * math.pi * x) + 0.5 * torch.sin(10 * math.pi * x) + 1.5 * x**2


def assert_data_error(excinfo: pytest.ExceptionInfo, key: str) -> str:
    """The error is a ConfigError for `key`, rendered as one line naming it; returns the message."""
    err = excinfo.value
    assert type(err) is ConfigError
    assert err.key == key
    message = str(err)
    assert message.startswith(f"Invalid value for `{key}`")
    assert "Accepted: " in message and "\n" not in message
    return message


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in [header, *rows]) + "\n")
    return path


# ----------------------------------------------------------------------------- regression_1d
def test_regression_1d_shapes_and_split_sizes() -> None:
    data = regression_1d(**options_of("data", "regression"))
    assert data.task == "regression" and data.in_features == 1 and data.out_features == 1
    assert data.train.x.shape == (8000, 1) and data.train.y.shape == (8000, 1)
    assert data.val.x.shape == (2000, 1) and data.val.y.shape == (2000, 1)
    assert data.test is None
    assert len(data.train) == 8000 and len(data.val) == 2000
    for t in (data.train.x, data.train.y, data.val.x, data.val.y):
        assert t.dtype == torch.float32
    assert data.describe() == "regression: 8000 train / 2000 val / 0 test, 1 -> 1"


def test_regression_1d_splits_are_disjoint_and_cover_everything() -> None:
    x, y = all_rows(regression_1d(**options_of("data", "regression")))
    # y carries continuous noise, so identical (x, y) rows would mean a sample in two splits.
    assert torch.unique(torch.cat([x, y], dim=1), dim=0).shape[0] == 10000


def test_regression_1d_follows_the_formula() -> None:
    x, y = all_rows(regression_1d(**options_of("data", "regression", noise_std=0.05, jitter=0.02)))
    assert x.min() >= 0 and x.max() <= 1
    residual = (y - expected_curve(x)).squeeze(1)
    assert abs(residual.std().item() - 0.05) < 0.005
    assert abs(residual.mean().item()) < 0.005

    x0, y0 = all_rows(regression_1d(**options_of("data", "regression", noise_std=0.0, jitter=0.0)))
    assert torch.allclose(torch.sort(x0.squeeze(1)).values, torch.linspace(0, 1, 10000))
    assert torch.allclose(y0, expected_curve(x0), atol=1e-5)


def test_regression_1d_jitter_shifts_x_up_by_at_most_jitter() -> None:
    x0, _ = all_rows(regression_1d(**options_of("data", "regression", noise_std=0.0, jitter=0.0, seed=3)))
    x1, _ = all_rows(regression_1d(**options_of("data", "regression", noise_std=0.0, jitter=0.1, seed=3)))
    shift = x1 - x0  # same seed -> same split, so rows correspond
    assert shift.min() >= 0 and shift.max() <= 0.1 + 1e-6
    assert abs(shift.mean().item() - 0.05) < 0.01  # U(0, 0.1), clamping at 1 barely matters


def test_regression_1d_is_reproducible_and_ignores_global_rng() -> None:
    torch.manual_seed(1)
    rng_before = torch.get_rng_state()
    a = regression_1d(**options_of("data", "regression", seed=7))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is not consumed
    torch.manual_seed(12345)
    b = regression_1d(**options_of("data", "regression", seed=7))
    c = regression_1d(**options_of("data", "regression", seed=8))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.train.y, c.train.y)


# ----------------------------------------------------------------------------- split_indices
def test_split_indices_partition_and_reproducibility() -> None:
    train, val, test = split_indices(1000, 0.2, 0.1, seed=0)
    assert (len(train), len(val), len(test)) == (700, 200, 100)
    assert torch.equal(torch.sort(torch.cat([train, val, test])).values, torch.arange(1000))
    torch.manual_seed(99)
    again = split_indices(1000, 0.2, 0.1, seed=0)
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), again))
    other = split_indices(1000, 0.2, 0.1, seed=1)
    assert not torch.equal(train, other[0])
    assert len(split_indices(10, 0.2, 0.0, seed=0)[2]) == 0


@pytest.mark.parametrize(
    ("n", "val", "test", "key"),
    [
        (100, 0.0, 0.0, "data.val_fraction"),
        (100, 1.0, 0.0, "data.val_fraction"),
        (100, -0.1, 0.0, "data.val_fraction"),
        (100, float("nan"), 0.0, "data.val_fraction"),
        (100, 0.2, -0.1, "data.test_fraction"),
        (100, 0.2, 1.0, "data.test_fraction"),
        (100, 0.5, 0.5, "data.test_fraction"),
        (3, 0.1, 0.0, "data.val_fraction"),  # rounds to 0 validation samples
        (5, 0.4, 0.05, "data.test_fraction"),  # rounds to 0 test samples
    ],
)
def test_split_indices_rejects_bad_fractions(n: int, val: float, test: float, key: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        split_indices(n, val, test, seed=0)
    assert_data_error(excinfo, key)


# ----------------------------------------------------------------------------- spirals / blobs
def test_spirals_shapes_dtypes_and_balance() -> None:
    data = spirals(**options_of("data", "spirals"))
    assert data.task == "classification" and data.in_features == 2 and data.out_features == 3
    assert (len(data.train), len(data.val), len(data.test)) == (2100, 450, 450)
    x, y = all_rows(data)
    assert x.dtype == torch.float32 and x.shape == (3000, 2)
    assert y.dtype == torch.int64 and y.shape == (3000,)
    assert torch.bincount(y).tolist() == [1000, 1000, 1000]
    assert torch.all((x.std(0) > 0.8) & (x.std(0) < 1.25)) and x.mean(0).abs().max() < 0.15

    _, y_odd = all_rows(spirals(**options_of("data", "spirals", n_samples=100, n_classes=3)))
    counts = torch.bincount(y_odd)
    assert counts.sum() == 100 and counts.max() - counts.min() <= 1


def test_spirals_are_nonlinear_but_learnable() -> None:
    data = spirals(**options_of("data", "spirals"))
    # 1-nearest-neighbour does well only if nearby points share a class (structure to learn) ...
    nearest = torch.cdist(data.val.x, data.train.x).argmin(dim=1)
    assert (data.train.y[nearest] == data.val.y).float().mean() > 0.9
    # ... while the best least-squares linear classifier stays far from that.
    design = torch.cat([data.train.x, torch.ones(len(data.train), 1)], dim=1).double()
    onehot = torch.nn.functional.one_hot(data.train.y, 3).double()
    weights = torch.linalg.lstsq(design, onehot).solution
    val_design = torch.cat([data.val.x, torch.ones(len(data.val), 1)], dim=1).double()
    assert ((val_design @ weights).argmax(1) == data.val.y).float().mean() < 0.7


def test_spirals_reproducible_and_seed_dependent() -> None:
    torch.manual_seed(0)
    a = spirals(**options_of("data", "spirals", seed=4))
    torch.manual_seed(1)
    assert torch.equal(a.train.x, spirals(**options_of("data", "spirals", seed=4)).train.x)
    assert not torch.equal(a.train.x, spirals(**options_of("data", "spirals", seed=5)).train.x)


def test_blobs_shapes_balance_and_spread() -> None:
    data = blobs(**options_of("data", "blobs", n_samples=2000, n_classes=4, n_features=5, cluster_std=0.5))
    assert data.in_features == 5 and data.out_features == 4
    x, y = all_rows(data)
    assert x.dtype == torch.float32 and x.shape == (2000, 5) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [500] * 4
    # documented scaling: within-class std = cluster_std / sqrt(100/3 + cluster_std²)
    within = torch.stack([x[y == c].std(0) for c in range(4)])
    expected = 0.5 / math.sqrt(100 / 3 + 0.25)
    assert torch.allclose(within, torch.full_like(within, expected), rtol=0.15)


@pytest.mark.parametrize(
    ("factory", "kwargs", "key"),
    [
        (regression_1d, {"n_samples": 5}, "data.n_samples"),
        (regression_1d, {"n_samples": 100.0}, "data.n_samples"),
        (regression_1d, {"noise_std": -0.1}, "data.noise_std"),
        (regression_1d, {"jitter": float("nan")}, "data.jitter"),
        (regression_1d, {"val_fraction": 0.0}, "data.val_fraction"),
        (regression_1d, {"test_fraction": 0.9}, "data.test_fraction"),
        (regression_1d, {"seed": "zero"}, "data.seed"),
        (spirals, {"n_classes": 1}, "data.n_classes"),
        (spirals, {"noise": -1.0}, "data.noise"),
        (spirals, {"turns": 0}, "data.turns"),
        (spirals, {"n_samples": 10, "n_classes": 11}, "data.n_samples"),
        (blobs, {"n_features": 0}, "data.n_features"),
        (blobs, {"cluster_std": 0.0}, "data.cluster_std"),
        (blobs, {"n_classes": True}, "data.n_classes"),
    ],
)
def test_generators_validate_arguments(factory, kwargs: dict, key: str) -> None:
    name = {regression_1d: "regression", spirals: "spirals", blobs: "blobs"}[factory]
    with pytest.raises(ConfigError) as excinfo:
        factory(**options_of("data", name, **kwargs))
    message = assert_data_error(excinfo, key)
    assert repr(next(iter(kwargs.values()))) in message


def test_data_error_survives_pickling() -> None:
    err = ConfigError("data.path", "x.csv", ".csv, .npz", "No such file")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is ConfigError and clone.key == "data.path" and str(clone) == str(err)
    assert str(err) == "Invalid value for `data.path`: 'x.csv'. No such file. Accepted: .csv, .npz."


# ----------------------------------------------------------------------------- load_table
def test_load_table_takes_every_option_of_the_yaml_by_keyword_and_has_no_defaults_of_its_own():
    import inspect

    parameters = inspect.signature(load_table).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty for p in parameters)
    assert {p.name for p in parameters} == set(options_of("data", "file"))  # conf/data/file.yaml is the one copy
    with pytest.raises(TypeError):
        load_table("x.csv", None, "y")  # noqa -- positional: refused


@pytest.fixture
def table_csv(tmp_path: Path) -> Path:
    """20 rows: a = i, b = 2i + 1, y = a + b, label = string class of i % 3."""
    names = ["cat", "dog", "bird"]
    rows = [[i, 2 * i + 1, 3 * i + 1, names[i % 3]] for i in range(20)]
    return write_csv(tmp_path / "table.csv", ["a", "b", "y", "label"], rows)


def test_load_csv_regression(table_csv: Path) -> None:
    data = plain_table(str(table_csv), ["a", "b"], "y", val_fraction=0.25)
    assert data.task == "regression" and data.in_features == 2 and data.out_features == 1
    assert (len(data.train), len(data.val), data.test) == (15, 5, None)
    x, y = all_rows(data)
    assert x.dtype == torch.float32 and y.dtype == torch.float32 and y.shape == (20, 1)
    assert torch.equal(torch.sort(x[:, 0]).values, torch.arange(20.0))
    assert torch.equal(x[:, 1], 2 * x[:, 0] + 1)  # rows stay intact through the split
    assert torch.equal(y[:, 0], x[:, 0] + x[:, 1])


def test_load_csv_relative_path_uses_cwd_without_hydra(table_csv: Path, monkeypatch) -> None:
    monkeypatch.chdir(table_csv.parent)
    assert plain_table("table.csv", ["a"], "y", val_fraction=0.25).in_features == 1


def test_load_csv_relative_path_uses_hydra_original_cwd(
    table_csv: Path, tmp_path: Path, monkeypatch
) -> None:
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    cfg.hydra.runtime.cwd = str(table_csv.parent)  # where the user launched the app
    run_dir = tmp_path / "outputs" / "run"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(run_dir)  # Hydra runs jobs inside their output directory
    HydraConfig.instance().set_config(cfg)
    try:
        assert len(plain_table("table.csv", ["a"], "y", val_fraction=0.25).train) == 15
    finally:
        HydraConfig.instance().cfg = None


def test_load_csv_string_labels_map_to_sorted_indices(table_csv: Path) -> None:
    data = plain_table(str(table_csv), ["a"], "label", task="classification", val_fraction=0.25,
                      test_fraction=0.25)
    assert data.task == "classification" and data.out_features == 3 and data.test is not None
    x, y = all_rows(data)
    assert y.dtype == torch.int64 and y.shape == (20,)
    sorted_names = sorted(["cat", "dog", "bird"])  # bird, cat, dog
    raw = ["cat", "dog", "bird"]
    expected = torch.tensor([sorted_names.index(raw[int(i) % 3]) for i in x[:, 0]])
    assert torch.equal(y, expected)


def test_load_integer_labels_map_numerically(tmp_path: Path) -> None:
    raw = [10, 5, 20, 10, 5, 20, 10, 5, 20, 10]
    path = write_csv(tmp_path / "c.csv", ["f", "cls"], [[i, c] for i, c in enumerate(raw)])
    data = plain_table(str(path), ["f"], "cls", task="classification")
    x, y = all_rows(data)
    mapping = {5: 0, 10: 1, 20: 2}
    assert torch.equal(y, torch.tensor([mapping[raw[int(i)]] for i in x[:, 0]]))


def test_load_npz_with_2d_features_and_multi_target(tmp_path: Path) -> None:
    n = 30
    feats = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    extra = np.linspace(0, 1, n)
    path = tmp_path / "d.npz"
    np.savez(path, X=feats, e=extra, t1=feats.sum(1), t2=-extra, unused=np.zeros(7))
    data = plain_table(str(path), ["X", "e"], ["t1", "t2"], val_fraction=0.2, test_fraction=0.1)
    assert data.in_features == 4 and data.out_features == 2
    assert (len(data.train), len(data.val), len(data.test)) == (21, 6, 3)
    x, y = all_rows(data)
    assert y.shape == (n, 2)
    assert torch.allclose(y[:, 0], x[:, :3].sum(1)) and torch.allclose(y[:, 1], -x[:, 3])


def test_load_npz_string_labels(tmp_path: Path) -> None:
    labels = np.array(["b", "a"] * 10)
    path = tmp_path / "d.npz"
    np.savez(path, f=(labels == "b").astype(np.float32), lab=labels)
    x, y = all_rows(plain_table(str(path), ["f"], "lab", task="classification"))
    assert torch.equal(y, x[:, 0].long())  # "a" -> 0, "b" -> 1


def test_load_missing_file_names_the_resolved_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as excinfo:
        plain_table("nope/missing.csv", ["a"], "y")
    message = assert_data_error(excinfo, "data.path")
    assert str(tmp_path / "nope" / "missing.csv") in message


def test_load_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("a,y\n1,2\n")
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["a"], "y")
    message = assert_data_error(excinfo, "data.path")
    assert ".csv" in message and ".npz" in message


@pytest.mark.parametrize(
    ("features", "target", "key", "fragment"),
    [
        (["a", "zz"], "y", "data.features", "zz"),
        (["a"], "nope", "data.target", "nope"),
        ([], "y", "data.features", "empty"),
        (["a", "a"], "y", "data.features", "twice"),
        (["a", "y"], "y", "data.target", "also listed"),
    ],
)
def test_load_bad_column_choices(table_csv: Path, features, target, key, fragment) -> None:
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(table_csv), features, target)
    message = assert_data_error(excinfo, key)
    assert fragment in message
    if "not found" in message:
        assert all(name in message for name in ("a", "b", "y", "label"))


def test_load_unknown_column_lists_available_names(table_csv: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(table_csv), ["colour"], "y")
    message = assert_data_error(excinfo, "data.features")
    assert "column names in the file: a, b, y, label" in message


def test_load_non_numeric_feature_names_column_and_row(tmp_path: Path) -> None:
    rows = [[1, 2], [2, 3], ["abc", 4], [4, 5], [5, 6]]
    path = write_csv(tmp_path / "t.csv", ["a", "y"], rows)
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["a"], "y")
    message = assert_data_error(excinfo, "data.features")
    assert "'a'" in message and "'abc'" in message and "row 3" in message and "line 4" in message


@pytest.mark.parametrize(
    ("cell_a", "cell_y", "key"),
    [("nan", 1, "data.features"), ("", 1, "data.features"), (1, "inf", "data.target")],
)
def test_load_rejects_missing_and_non_finite_values(tmp_path: Path, cell_a, cell_y, key) -> None:
    rows = [[i, i] for i in range(10)] + [[cell_a, cell_y]]
    path = write_csv(tmp_path / "t.csv", ["a", "y"], rows)
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["a"], "y")
    assert "row 11" in assert_data_error(excinfo, key)


def test_load_rejects_unknown_task(table_csv: Path) -> None:
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(table_csv), ["a"], "y", task="ranking")
    message = assert_data_error(excinfo, "data.task")
    assert all(task in message for task in TASKS)


def test_load_npz_mismatched_lengths(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, a=np.zeros(10), y=np.zeros(9))
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["a"], "y")
    message = assert_data_error(excinfo, "data.path")
    assert "a: 10" in message and "y: 9" in message


def test_load_too_few_rows_for_the_splits(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", ["a", "y"], [[1, 2], [2, 3]])
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["a"], "y", val_fraction=0.2)
    assert "2 data rows" in assert_data_error(excinfo, "data.path")


def test_load_ragged_csv_row(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,y\n1,2\n3\n")
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["a"], "y")
    assert "Line 3" in assert_data_error(excinfo, "data.path")


@pytest.mark.parametrize(
    ("labels", "target", "fragment"),
    [
        ([0, 1] * 5, ["y", "a"], "exactly one"),
        ([0, 0.5] * 5, "y", "non-integer"),
        ([3] * 10, "y", "single class"),
    ],
)
def test_load_bad_classification_targets(tmp_path: Path, labels, target, fragment) -> None:
    path = write_csv(tmp_path / "t.csv", ["x", "a", "y"], [[i, i, v] for i, v in enumerate(labels)])
    with pytest.raises(ConfigError) as excinfo:
        plain_table(str(path), ["x"], target, task="classification")
    assert fragment in assert_data_error(excinfo, "data.target")


# ----------------------------------------------------------------------------- TensorBatches
def indexed_split(n: int) -> Split:
    """x[i] = (i, -i) and y[i] = i, so a batch reveals which samples it holds and their pairing."""
    i = torch.arange(n)
    return Split(torch.stack([i.float(), -i.float()], dim=1), i)


def epoch_order(batches: TensorBatches) -> torch.Tensor:
    """The sample ids of one epoch, checking each x row still belongs to its y."""
    ys = []
    for xb, yb in batches:
        assert torch.equal(xb[:, 0].long(), yb)
        ys.append(yb)
    return torch.cat(ys)


CPU = torch.device("cpu")


@pytest.mark.parametrize("on_device", [True, False])
def test_shuffled_epochs_cover_every_sample_once(on_device: bool) -> None:
    batches = TensorBatches(indexed_split(103), 10, device=CPU, shuffle=True, on_device=on_device)
    first, second = epoch_order(batches), epoch_order(batches)
    for order in (first, second):
        assert torch.equal(torch.sort(order).values, torch.arange(103))
    assert not torch.equal(first, second)


def test_shuffle_is_reproducible_and_ignores_global_rng() -> None:
    torch.manual_seed(0)
    a = TensorBatches(indexed_split(50), 8, device=CPU, shuffle=True, seed=3)
    orders_a = [epoch_order(a) for _ in range(3)]
    torch.manual_seed(1)
    b = TensorBatches(indexed_split(50), 8, device=CPU, shuffle=True, seed=3)
    assert all(torch.equal(o, epoch_order(b)) for o in orders_a)
    c = TensorBatches(indexed_split(50), 8, device=CPU, shuffle=True, seed=4)
    assert not torch.equal(orders_a[0], epoch_order(c))


@pytest.mark.parametrize(
    ("drop_last", "sizes"), [(False, [3, 3, 3, 1]), (True, [3, 3, 3])]
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_batch_sizes_and_lengths(drop_last: bool, sizes: list[int], shuffle: bool) -> None:
    batches = TensorBatches(indexed_split(10), 3, device=CPU, shuffle=shuffle, drop_last=drop_last)
    assert batches.batch_size == 3
    assert len(batches) == len(sizes) and batches.num_samples == sum(sizes)
    got = [yb.shape[0] for _, yb in batches]
    assert got == sizes
    assert len(torch.unique(epoch_order(batches))) == sum(sizes)


def test_unshuffled_batches_are_in_order_views() -> None:
    split = indexed_split(10)
    batches = TensorBatches(split, 4, device=CPU, shuffle=False)
    for k, (xb, yb) in enumerate(batches):
        rows = slice(4 * k, 4 * k + 4)
        assert torch.equal(xb, split.x[rows]) and torch.equal(yb, split.y[rows])
        assert xb.untyped_storage().data_ptr() == split.x.untyped_storage().data_ptr()
        assert yb.untyped_storage().data_ptr() == split.y.untyped_storage().data_ptr()
    assert torch.equal(epoch_order(batches), torch.arange(10))


def test_state_dict_round_trip_reproduces_the_next_epoch() -> None:
    a = TensorBatches(indexed_split(40), 7, device=CPU, shuffle=True, seed=0)
    epoch_order(a)
    state = a.state_dict()
    next_a = epoch_order(a)
    b = TensorBatches(indexed_split(40), 7, device=CPU, shuffle=True, seed=123)
    assert not torch.equal(epoch_order(b), next_a)  # so the match below is the restore's doing
    b.load_state_dict(state)
    assert torch.equal(epoch_order(b), next_a)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("on_device", [True, False])
def test_iteration_never_syncs(monkeypatch, shuffle: bool, on_device: bool) -> None:
    split = indexed_split(25)
    batches = TensorBatches(split, 4, device=CPU, shuffle=shuffle, on_device=on_device)

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync during iteration")

    for name in ("item", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    shapes = [(xb.shape, yb.shape) for xb, yb in batches]
    monkeypatch.undo()
    assert len(shapes) == len(batches) == 7


def test_classification_labels_batch_with_matching_rows() -> None:
    data = spirals(**options_of("data", "spirals", n_samples=60))
    batches = TensorBatches(data.train, 16, device=CPU, shuffle=True)
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    assert y.dtype == torch.int64 and y.shape == (len(data.train),)
    # each x row arrives with its own label: sort both by a unique key and compare to the split
    order, ref = torch.argsort(x[:, 0]), torch.argsort(data.train.x[:, 0])
    assert torch.equal(x[order], data.train.x[ref]) and torch.equal(y[order], data.train.y[ref])


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_batch_size_must_be_positive_int(bad) -> None:
    with pytest.raises(ValueError):
        TensorBatches(indexed_split(5), bad, device=CPU, shuffle=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("on_device", [True, False])
def test_cuda_batches_match_cpu_batches(monkeypatch, on_device: bool) -> None:
    cuda = torch.device("cuda")
    split = indexed_split(1000)
    gpu = TensorBatches(split, 64, device=cuda, shuffle=True, seed=5, on_device=on_device,
                        pin_memory=True)
    cpu = TensorBatches(split, 64, device=CPU, shuffle=True, seed=5)
    monkeypatch.setattr(torch.Tensor, "item", lambda *a, **k: pytest.fail("sync"))
    got = [(xb, yb) for xb, yb in gpu]
    monkeypatch.undo()
    assert all(xb.device.type == "cuda" and yb.device.type == "cuda" for xb, yb in got)
    torch.cuda.synchronize()
    want = [(xb, yb) for xb, yb in cpu]
    assert all(torch.equal(g[0].cpu(), w[0]) and torch.equal(g[1].cpu(), w[1])
               for g, w in zip(got, want, strict=True))
