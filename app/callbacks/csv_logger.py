"""`metrics.csv` in the run directory, one row per epoch, flushed as each epoch ends."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from app.callbacks.base import Callback
from app.run import faults
from app.run.record import temp_path


class CSVLogger(Callback):
    """Columns: every metric the trainer reports (`Trainer.metric_columns`: epoch, losses, learning
    rates, the task's val_ metrics, training health, epoch_time). Epochs without validation leave
    the val_ cells empty. Each row is flushed to disk at once, so a crash loses nothing already
    done. When fitting starts, the file is rewritten from the trainer's history: a resumed run
    drops the rows its interrupted attempt wrote after the checkpoint it continues from, and
    restores any it did not get to write."""

    reads_model = False  # (Callback.reads_model)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.columns: list[str] = []

    def on_fit_start(self, trainer) -> None:
        self.columns = trainer.metric_columns()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(self.path)
        faults.before_write(self.path)  # test-only fault point; a no-op otherwise
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self.columns)
            writer.writerows(self._row(metrics) for metrics in trainer.history)
        os.replace(tmp, self.path)

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        faults.before_write(self.path)
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow(self._row(metrics))

    def _row(self, metrics: dict[str, float]) -> list[str]:
        return [_format(metrics.get(column)) for column in self.columns]


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
