"""`metrics.csv` in the run directory, one row per epoch, flushed as each epoch ends."""
from __future__ import annotations

import csv
from pathlib import Path

from app.callbacks.base import Callback


class CSVLogger(Callback):
    """Columns: epoch, train_loss, val_loss, lr, the task's val_ metrics, epoch_time.
    Epochs without validation leave the val_ cells empty. Each row is flushed to disk at once,
    so a crash loses nothing already done."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] = []

    def on_fit_start(self, trainer) -> None:
        val_metrics = [n for n in trainer.metric_names if n.startswith("val_") and n != "val_loss"]
        self.columns = ["epoch", "train_loss", "val_loss", "lr", *val_metrics, "epoch_time"]
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(self.columns)

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        row = [_format(metrics.get(column)) for column in self.columns]
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(row)


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
