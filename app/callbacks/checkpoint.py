"""Checkpoints in the run directory: `checkpoints/last.pt` and `checkpoints/best.pt`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from app.callbacks.base import Callback


def atomic_save(obj: Any, path: Path) -> None:
    """Write `obj` with torch.save to a temp file beside `path`, then rename over it, so a
    kill at any instant leaves either the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint(Callback):
    """Saves `last.pt` every `every` epochs and at the end, and `best.pt` whenever the
    monitored metric reaches a new best. Each holds model, optimizer and scheduler state,
    the epoch, the best value so far, and the callbacks' state."""

    def __init__(self, directory: str | Path, every: int = 1) -> None:
        self.directory = Path(directory)
        self.every = every
        self.last_path = self.directory / "last.pt"
        self.best_path = self.directory / "best.pt"

    def on_fit_start(self, trainer) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def state(self, trainer, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "epoch": trainer.epoch,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
            "monitor": trainer.monitor,
            "mode": trainer.mode,
            "best": trainer.best,
            "best_epoch": trainer.best_epoch,
            "metrics": metrics,
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in trainer.callbacks},
        }

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        last_due = trainer.epoch % self.every == 0 or trainer.should_stop or trainer.epoch == trainer.epochs
        if not (trainer.improved or last_due):
            return
        state = self.state(trainer, metrics)
        if trainer.improved:
            atomic_save(state, self.best_path)
        if last_due:
            atomic_save(state, self.last_path)

    def load_best_weights(self, model: torch.nn.Module) -> bool:
        """Load best.pt's weights into `model`; False when no best checkpoint was written."""
        if not self.best_path.exists():
            return False
        state = torch.load(self.best_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        return True
