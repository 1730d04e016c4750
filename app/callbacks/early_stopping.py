"""Stop when the monitored metric stops improving."""
from __future__ import annotations

from typing import Any

from app.callbacks.base import Callback, improves


class EarlyStopping(Callback):
    """Stops training after `patience` consecutive validation checks without improvement.

    `min_delta` is ABSOLUTE: a value improves on the best so far only if it is lower than
    `best - min_delta` (mode=min) or higher than `best + min_delta` (mode=max). Epochs that do
    not measure `monitor` (no validation that epoch) neither count nor reset the patience.
    Options and their defaults: conf/callbacks/early_stopping.yaml.
    """

    reads_model = False  # (Callback.reads_model)

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float) -> None:
        if mode == "auto":  # follows the monitor, as trainer.mode=auto does
            from app.config import monitor_mode

            mode = monitor_mode(monitor, mode)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            return
        if improves(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            trainer.request_stop(
                "early_stopped",
                f"early stopping at epoch {metrics['epoch']}: {self.monitor} did not improve on "
                f"{self.best:.6g} by more than {self.min_delta:g} for {self.patience} checks",
            )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]
