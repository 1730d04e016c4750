"""Tabular data from a user's file (.csv with a header row, or .npz), as `DataSplits`.

Every user mistake becomes a `ConfigError` naming the config key, the offending value and what is
accepted, so the app can print one paragraph instead of a traceback.
"""
from __future__ import annotations

import csv
import fnmatch
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.data.base import (
    SCALINGS,
    TASKS,
    DataSplits,
    is_int,
    make_splits,
    min_samples,
    sizes_ok,
    validate_fractions,
)
from app.errors import ConfigError

log = logging.getLogger(__name__)
SUFFIXES = (".csv", ".npz")
FLOAT32_MAX = float(np.finfo(np.float32).max)
_MAX_LISTED_COLUMNS = 30  # enough to spot a typo without flooding the message


@dataclass
class _Table:
    """Raw columns of one file.

    columns: name -> array of n rows (CSV: 1-D str; npz: 1-D, or 2-D [n, k] for k columns).
    line_numbers: CSV file line of each data row (for error messages); None for npz.
    """

    given: Any  # the path as the user wrote it, shown as the value in errors
    path: Path  # resolved, absolute
    columns: dict[str, np.ndarray]
    line_numbers: list[int] | None

    def where(self, row: int) -> str:
        """Human description of data row `row` (0-based), e.g. 'row 3 (line 4 of the file)'."""
        if self.line_numbers is None:
            return f"index {row}"
        return f"row {row + 1} (line {self.line_numbers[row]} of the file)"

    def available(self) -> str:
        """Comma-separated column names, shortened if there are many."""
        names = list(self.columns)
        shown = ", ".join(names[:_MAX_LISTED_COLUMNS])
        if len(names) > _MAX_LISTED_COLUMNS:
            shown += f", ... ({len(names) - _MAX_LISTED_COLUMNS} more)"
        return shown


def load_table(
    *,
    path: str,
    target: str | list[str],
    features: str | list[str] | None,
    exclude: list[str] | None,
    task: str,
    scaling: str,
    target_scaling: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> DataSplits:
    """Load named columns of a .csv/.npz file and split them with `split_indices`.

    Keyword arguments only, every one given: the defaults are conf/data/file.yaml's, the one
    copy (`hydra.utils.instantiate` of a composed `data=file` config calls this with them).
    features: column names or fnmatch patterns (`pixel_*`); None: every column but the target
    and `exclude` (names or patterns too). x: float32 [n, in_features] (a 2-D npz array counts
    as its k columns), scaled per `scaling` (standard | minmax | none) with statistics of the
    train split only (kept on `DataSplits.scaling`).
    task: regression | classification | auto (inferred from the target, see `infer_task`).
    y (regression): float32 [n, out_features] from `target` (one name or a list of names), scaled
    per `target_scaling` (standard | minmax | none) with statistics of the train split only (kept
    on `DataSplits.target_scaling`; metrics are reported in the original units).
    y (classification): int64 [n], the single `target` column's values (integers or strings)
    mapped to 0..K-1 in sorted order; out_features = K. `target_scaling` does not apply.
    Relative paths resolve against the directory the app was launched from, not Hydra's run dir.
    Values must be finite and within float32's range.
    """
    if task not in (*TASKS, "auto"):
        raise ConfigError("data.task", task, " | ".join((*TASKS, "auto")), "Unknown task")
    if scaling not in SCALINGS:
        raise ConfigError("data.scaling", scaling, " | ".join(SCALINGS), "Unknown feature scaling")
    if target_scaling not in SCALINGS:
        raise ConfigError("data.target_scaling", target_scaling, " | ".join(SCALINGS) + " (regression targets)",
                          "Unknown target scaling")
    validate_fractions(val_fraction, test_fraction)
    if not is_int(seed):
        raise ConfigError("data.seed", seed, "an integer", "The data seed must be an integer")
    if target is None:
        raise ConfigError("data.target", target, "the name of the column to predict, e.g. data.target=label")
    target_names = _column_names("data.target", target)
    exclude_names = _column_names("data.exclude", exclude, allow_empty=True) if exclude is not None else []
    feature_items = _column_names("data.features", features) if features is not None else None

    table = _read(path)
    _check_columns(table, "data.target", target, target_names)
    excluded = _match(table, "data.exclude", exclude, exclude_names)
    if feature_items is None:
        feature_names = [c for c in table.columns if c not in target_names and c not in excluded]
        if not feature_names:
            raise ConfigError("data.features", None, f"column names in the file: {table.available()}",
                              f"{table.path} has no column left besides the target and data.exclude")
    else:
        explicit = [name for name in feature_items if not _is_pattern(name)]
        overlap = [name for name in target_names if name in explicit]
        if overlap:
            raise ConfigError("data.target", target, "target columns that are not features",
                              f"Column(s) {', '.join(overlap)} are also listed in data.features, which "
                              "would hand the model its own answer")
        feature_names = [c for c in _match(table, "data.features", features, feature_items)
                         if c not in target_names and c not in excluded]  # a pattern may match the target
        if not feature_names:
            raise ConfigError("data.features", features, f"column names in the file: {table.available()}",
                              "Nothing is left after removing the target and data.exclude")
    if task == "auto":
        task = infer_task(table, target_names)
    if task == "classification" and len(target_names) != 1:
        raise ConfigError("data.target", target, "a single column name holding integer or string class labels",
                        "Classification needs exactly one target column")
    n = _common_length(table, feature_names + target_names)
    if not sizes_ok(n, val_fraction, test_fraction):
        need = min_samples(val_fraction, test_fraction)
        raise ConfigError("data.path", path,
                        f"a file with at least {need} rows for val_fraction={val_fraction}, "
                        f"test_fraction={test_fraction}",
                        f"{table.path} has {n} data rows, too few to give every split a sample")

    x = _numeric_matrix(table, "data.features", feature_names)
    classes = None
    if task == "regression":
        y = torch.from_numpy(_numeric_matrix(table, "data.target", target_names)).float()
        out_features = y.shape[1]
    else:
        y, classes = _class_labels(table, target_names[0])
        out_features = len(classes)
    splits = make_splits(
        task, torch.from_numpy(x).float(), y, out_features, val_fraction, test_fraction, seed,
        scaling=scaling, feature_names=_expanded(table, feature_names),
        target_scaling=target_scaling, target_names=_expanded(table, target_names),
    )
    splits.features, splits.feature_columns = _expanded(table, feature_names), list(feature_names)
    splits.targets, splits.classes = list(target_names), classes
    return splits


def read_columns(path: str, columns: list[str], key: str, why: str) -> np.ndarray:
    """float64 [n, k]: the named columns of a .csv/.npz file side by side (a 2-D npz array
    contributes its k columns), checked as `load_table` checks features: every value a finite
    number within float32's range. Errors are ConfigErrors about `key` (the argument that named
    the file); `why` says where `columns` come from when one is missing."""
    try:
        table = _read(path)
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise ConfigError(key, path, f"a file with the columns {why}: {', '.join(columns)}",
                              f"{table.path} has no column {', '.join(map(repr, missing))} "
                              f"(its columns: {table.available()})")
        _common_length(table, columns)
        return _numeric_matrix(table, key, columns)
    except ConfigError as error:
        if error.key == key:
            raise
        raise ConfigError(key, path, error.accepted, error.reason) from None


# At most this many distinct integer values, and on average at least this many rows per value,
# make an integer target classes rather than a quantity.
MAX_INFERRED_CLASSES = 20
MIN_ROWS_PER_CLASS = 5


def infer_task(table: _Table, target_names: list[str]) -> str:
    """The task for `data.task=auto`, logged in one line with how to override it:
    classification for one target column of strings, or of integers with at most
    MAX_INFERRED_CLASSES distinct values and >= MIN_ROWS_PER_CLASS rows per value on average;
    regression otherwise (several target columns, fractional numbers, many distinct integers)."""
    name = target_names[0]
    array = table.columns[name]
    if len(target_names) > 1 or array.ndim != 1:
        task, why = "regression", f"{len(target_names)} target columns"
    else:
        values = np.char.strip(array.astype(str)) if array.dtype.kind in "US" else array
        try:
            numbers = values.astype(np.float64)
        except ValueError:
            numbers = None
        if numbers is None:
            task, why = "classification", f"{name!r} holds text labels"
        else:
            finite = numbers[np.isfinite(numbers)]
            distinct = len(np.unique(finite))
            integers = finite.size == numbers.size and bool(np.all(finite == np.round(finite)))
            if integers and distinct <= MAX_INFERRED_CLASSES and distinct * MIN_ROWS_PER_CLASS <= len(numbers):
                task, why = "classification", f"{name!r} holds {distinct} distinct integers in {len(numbers)} rows"
            elif integers:
                task, why = "regression", f"{name!r} holds {distinct} distinct integers in {len(numbers)} rows"
            else:
                task, why = "regression", f"{name!r} holds fractional numbers"
    other = "regression" if task == "classification" else "classification"
    log.info("data.task=auto: %s (%s); set data.task=%s to override", task, why, other)
    return task


# ----------------------------------------------------------------------------- arguments
def _column_names(key: str, value: Any, allow_empty: bool = False) -> list[str]:
    """Normalize one name or a sequence of names to a (non-empty) list of unique strings."""
    accepted = "a column name or a non-empty list of column names"
    items = [value] if isinstance(value, str | int) and not isinstance(value, bool) else value
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ConfigError(key, value, accepted, "Expected column names")
    if len(items) == 0 and not allow_empty:
        raise ConfigError(key, value, accepted, "The list of columns is empty")
    names = []
    for item in items:
        # Hydra parses `[0,1]` on the command line as ints; CSV headers like "0" are strings.
        if isinstance(item, bool) or not isinstance(item, str | int) or str(item).strip() == "":
            raise ConfigError(key, value, accepted, f"{item!r} is not a column name")
        names.append(str(item).strip())
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(key, value, "each column at most once",
                        f"Column(s) listed twice: {', '.join(duplicates)}")
    return names


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute path of `path`; relative ones are taken from the original launch directory.

    Hydra changes the working directory for a run, so the original cwd comes from Hydra when it
    is initialized; in plain Python (tests, notebooks) it is the current directory.
    """
    expanded = os.path.expanduser(os.fspath(path))
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.utils import to_absolute_path

        if HydraConfig.initialized():
            return Path(to_absolute_path(expanded))
    except Exception:  # Hydra missing or half-initialized: fall back to the plain cwd.
        pass
    return Path(expanded).absolute()


# ----------------------------------------------------------------------------- reading
def _read(path: Any) -> _Table:
    """Resolve, check and read `path` into raw columns."""
    if not isinstance(path, str | os.PathLike) or os.fspath(path) == "":
        raise ConfigError("data.path", path, "a path to a .csv or .npz file", "Expected a file path")
    resolved = resolve_path(path)
    suffix = resolved.suffix.lower()
    if suffix not in SUFFIXES:
        shown = repr(suffix) if suffix else "(no suffix)"
        raise ConfigError("data.path", path, ", ".join(SUFFIXES),
                        f"Unsupported file type {shown}")
    if not resolved.exists():
        raise ConfigError("data.path", path, "an existing .csv or .npz file (relative paths are taken from the "
                        "directory the app was launched in)",
                        f"No such file: {resolved}")
    if not resolved.is_file():
        raise ConfigError("data.path", path, "a path to a .csv or .npz file",
                        f"{resolved} is not a regular file")
    return _read_csv(path, resolved) if suffix == ".csv" else _read_npz(path, resolved)


def _read_csv(path: Any, resolved: Path) -> _Table:
    """Columns of a comma-separated file with one header row; values kept as strings."""
    accepted = "a comma-separated UTF-8 file with a header row of column names"
    try:
        with open(resolved, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next((row for row in reader if row), None)
            if header is None:
                raise ConfigError("data.path", path, accepted, f"{resolved} is empty")
            names = [name.strip() for name in header]
            _check_header(path, resolved, names, accepted)
            rows, line_numbers = [], []
            for row in reader:
                if not row or all(not field.strip() for field in row):
                    continue  # blank lines, e.g. a trailing newline, are not data rows
                if len(row) != len(names):
                    raise ConfigError(
                        "data.path", path,
                        accepted, f"Line {reader.line_num} of {resolved} has {len(row)} fields but the "
                        f"header has {len(names)}",
                    )
                rows.append(row)
                line_numbers.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error, OSError) as err:
        raise ConfigError("data.path", path, accepted,
                        f"Could not read {resolved} as CSV ({err})") from None
    columns = {
        name: np.array([row[j] for row in rows], dtype=str) for j, name in enumerate(names)
    }
    return _Table(path, resolved, columns, line_numbers)


def _check_header(path: Any, resolved: Path, names: list[str], accepted: str) -> None:
    """Header names must be non-empty and unique."""
    if any(name == "" for name in names):
        raise ConfigError("data.path", path, accepted,
                        f"The header of {resolved} has an empty column name")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError("data.path", path,
                        accepted,
                        f"The header of {resolved} repeats column(s) {', '.join(duplicates)}")


def _read_npz(path: Any, resolved: Path) -> _Table:
    """Arrays of an .npz archive, one per key (pickled object arrays are refused)."""
    accepted = "an .npz file (numpy.savez) of numeric or string arrays, one per column name"
    try:
        loaded = np.load(resolved, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a single .npy array under an .npz name
            raise ConfigError("data.path", path, accepted,
                              f"{resolved} holds a single array ({loaded.shape}, a .npy file), not named columns")
        with loaded as archive:
            columns = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConfigError("data.path", path, accepted,
                        f"Could not read {resolved} as .npz ({err})") from None
    if not columns:
        raise ConfigError("data.path", path, accepted, f"{resolved} holds no arrays")
    return _Table(path, resolved, columns, None)


# ----------------------------------------------------------------------------- columns
def _check_columns(table: _Table, key: str, value: Any, names: list[str]) -> None:
    """Every requested name must be a column of the file."""
    missing = [name for name in names if name not in table.columns]
    if missing:
        raise ConfigError(key, value,
                        f"column names in the file: {table.available()}",
                        f"Column(s) {', '.join(map(repr, missing))} not found in {table.path}")


def _is_pattern(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def _match(table: _Table, key: str, value: Any, items: list[str]) -> list[str]:
    """The file's columns that `items` (names, or fnmatch patterns such as `pixel_*`) name, in
    the order of `items` (a pattern's matches in file order), each once. An unknown name or a
    pattern that matches nothing is refused, listing the file's columns."""
    found: list[str] = []
    for item in items:
        matches = fnmatch.filter(list(table.columns), item) if _is_pattern(item) else (
            [item] if item in table.columns else [])
        if not matches:
            what = f"Pattern {item!r} matches no column" if _is_pattern(item) else f"Column {item!r} not found"
            raise ConfigError(key, value, f"column names in the file: {table.available()} (or fnmatch "
                              "patterns of them: *, ?, [abc])", f"{what} in {table.path}")
        found += [m for m in matches if m not in found]
    return found


def _expanded(table: _Table, names: list[str]) -> list[str]:
    """One label per feature column: a 2-D npz array `a` of k columns gives a[0] .. a[k-1]."""
    labels = []
    for name in names:
        array = table.columns[name]
        labels += [name] if array.ndim == 1 else [f"{name}[{j}]" for j in range(array.shape[1])]
    return labels


def _common_length(table: _Table, names: list[str]) -> int:
    """Number of rows shared by the used columns (npz arrays must agree; 1-D or 2-D only)."""
    lengths = {}
    for name in names:
        array = table.columns[name]
        if array.ndim not in (1, 2):
            raise ConfigError("data.path", table.given,
                            "1-D arrays [n], or 2-D arrays [n, k] used as k columns",
                            f"Array {name!r} has shape {array.shape}")
        lengths[name] = array.shape[0]
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise ConfigError("data.path", table.given,
                        "arrays with the same number of rows",
                        f"The columns have different lengths ({shown})")
    return next(iter(lengths.values()))


def _numeric_matrix(table: _Table, key: str, names: list[str]) -> np.ndarray:
    """float64 [n, k]: the named columns side by side (a 2-D column contributes its k columns)."""
    blocks = []
    for name in names:
        array = _to_float(table, key, name, table.columns[name])
        blocks.append(array.reshape(array.shape[0], -1))
    return np.concatenate(blocks, axis=1)


def _to_float(table: _Table, key: str, name: str, array: np.ndarray) -> np.ndarray:
    """float64 copy of one column, refusing non-numeric and non-finite values."""
    accepted = "numeric values (finite numbers, no NaN, inf or empty cells)"
    if array.dtype.kind in "biuf":
        values = array.astype(np.float64)
    elif array.dtype.kind in "US":
        strings = array.astype(str)
        try:
            values = strings.astype(np.float64)
        except ValueError:
            row = _first_unparsable(strings)
            raise ConfigError(key, name,
                            accepted,
                            f"Column {name!r} has non-numeric value {str(strings.flat[row])!r} at "
                            f"{table.where(row // _width(strings))} of {table.path}") from None
    else:
        raise ConfigError(key, name, accepted,
                        f"Column {name!r} has unsupported dtype {array.dtype}")
    finite = np.isfinite(values)
    if not finite.all():
        flat = int(np.argmin(finite.reshape(-1)))
        raise ConfigError(key, name,
                        accepted, f"Column {name!r} has value {values.flat[flat]} at "
                        f"{table.where(flat // _width(values))} of {table.path}")
    beyond = np.abs(values) > FLOAT32_MAX  # finite in float64, inf once the app casts to float32
    if beyond.any():
        flat = int(np.argmax(beyond.reshape(-1)))
        raise ConfigError(key, name, f"numbers with |x| <= {FLOAT32_MAX:.7g} (float32's largest: the "
                          "model computes in float32)",
                          f"Column {name!r} has value {values.flat[flat]:g} at "
                          f"{table.where(flat // _width(values))} of {table.path}, beyond float32's range "
                          "(rescale the column, e.g. to other units or its logarithm)")
    return values


def _width(array: np.ndarray) -> int:
    """Columns per row of a 1-D or 2-D array (to turn a flat index into a row)."""
    return 1 if array.ndim == 1 else array.shape[1]


def _first_unparsable(strings: np.ndarray) -> int:
    """Flat index of the first string that float() rejects."""
    for index, text in enumerate(strings.reshape(-1)):
        try:
            float(text)
        except ValueError:
            return index
    raise AssertionError("numpy refused a column that float() accepts")


def _class_labels(table: _Table, name: str) -> tuple[torch.Tensor, list[str] | list[int]]:
    """int64 [n] class indices 0..K-1 and the K labels (sorted; integers or strings), from one
    target column.

    Integer-valued numbers sort numerically; any other text is treated as string labels.
    """
    accepted = "one column of integer or string class labels with at least 2 distinct values"
    array = table.columns[name]
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ConfigError("data.target", name,
                        accepted,
                        f"Column {name!r} has shape {array.shape}, not one label per row")
    if array.dtype.kind in "US":
        labels = np.char.strip(array.astype(str))
        try:
            numbers = labels.astype(np.float64)
        except ValueError:
            numbers = None  # genuine string labels
    elif array.dtype.kind in "biuf":
        labels, numbers = None, array.astype(np.float64)
    else:
        raise ConfigError("data.target", name, accepted, f"Column {name!r} has unsupported dtype "
                        f"{array.dtype}")

    if numbers is not None:
        bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
        if bad.any():
            row = int(np.argmax(bad))
            raise ConfigError("data.target", name,
                            accepted, f"Column {name!r} has non-integer label {numbers[row]} at "
                            f"{table.where(row)} of {table.path}")
        classes, codes = np.unique(numbers, return_inverse=True)
    else:
        empty = labels == ""
        if empty.any():
            row = int(np.argmax(empty))
            raise ConfigError("data.target", name,
                            accepted, f"Column {name!r} has an empty label at {table.where(row)} of "
                            f"{table.path}")
        classes, codes = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ConfigError("data.target", name,
                        accepted, f"Column {name!r} holds a single class ({classes[0].item()!r})")
    names = [int(c) for c in classes] if numbers is not None else [str(c) for c in classes]
    return torch.from_numpy(codes.reshape(-1).astype(np.int64)), names
