"""Data: synthetic generators and file loaders (Hydra `_target_`s returning `DataSplits`), and
`TensorBatches` for iterating in-memory splits in mini-batches."""
from app.data.base import TASKS, DataError, DataSplits, Split, split_indices
from app.data.batches import TensorBatches
from app.data.files import load_table
from app.data.synthetic import blobs, regression_1d, spirals

__all__ = [
    "TASKS",
    "DataError",
    "DataSplits",
    "Split",
    "TensorBatches",
    "blobs",
    "load_table",
    "regression_1d",
    "spirals",
    "split_indices",
]

# The task each builder produces, known before any data is made (see app.tasks.task_of).
regression_1d.task = "regression"
spirals.task = "classification"
blobs.task = "classification"
