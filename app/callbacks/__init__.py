"""Behaviour that plugs into the Trainer through hooks (see `Callback`)."""
from app.callbacks.base import Callback, improves
from app.callbacks.checkpoint import Checkpoint, atomic_save
from app.callbacks.csv_logger import CSVLogger
from app.callbacks.early_stopping import EarlyStopping
from app.callbacks.health import HealthMonitor
from app.callbacks.logger import Logger
from app.callbacks.mlflow_logger import MLflowLogger
from app.callbacks.progress import ProgressLogger
from app.callbacks.tensorboard_logger import TensorBoardLogger
from app.callbacks.wandb_logger import WandbLogger

__all__ = [
    "Callback",
    "Checkpoint",
    "CSVLogger",
    "EarlyStopping",
    "HealthMonitor",
    "Logger",
    "MLflowLogger",
    "ProgressLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "atomic_save",
    "improves",
]
