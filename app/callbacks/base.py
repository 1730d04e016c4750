"""The hook interface through which behaviour plugs into `Trainer.fit`."""
from __future__ import annotations

import math
from typing import Any

# The loop imports this module, so it names the loop's types without importing them:
# `trainer` is the running `app.train.trainer.Trainer`, `result` its `FitResult`.
Trainer = FitResult = Any


class Callback:
    """Override the hooks you need; each receives the trainer (and what the hook is about).

    Order of calls in one fit: on_fit_start, then on_epoch_end after each epoch (metrics of that
    epoch as plain floats), then on_fit_end. `on_run_end` is called by the app once the run's
    summary is final (after testing), also when the run failed: release resources there.
    """

    # Whether on_epoch_end reads `trainer.model` or `trainer.optimizer`. In a pack
    # (app/train/packed.py) a member's model and optimizer are brought up to date with its row
    # of the pack for the callbacks that do (a copy per member and epoch); set False in a
    # callback that does not.
    reads_model = True

    def on_fit_start(self, trainer: "Trainer") -> None:
        pass

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        pass

    def on_fit_end(self, trainer: "Trainer", result: "FitResult") -> None:
        pass

    def on_run_end(self, summary: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """State to store in checkpoints so a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def improves(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `min_delta` (ABSOLUTE) in direction `mode`.
    Non-finite values never improve; any finite value improves on no best at all."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta
