"""Data: synthetic generators and file loaders (Hydra `_target_`s returning `DataSplits`), and
`TensorBatches` for iterating in-memory splits in mini-batches."""
from app.data.base import TASKS, DataSplits, Split, make_splits, split_indices
from app.data.batches import LimitedBatches, TensorBatches
from app.data.files import load_table
from app.data.synthetic import blobs, regression_1d, spirals

__all__ = [
    "TASKS",
    "DataSplits",
    "LimitedBatches",
    "Split",
    "TensorBatches",
    "blobs",
    "load_table",
    "make_splits",
    "regression_1d",
    "spirals",
    "split_indices",
]
