"""Stop a run that a pruner judges hopeless (hyperparameter searches)."""
from __future__ import annotations

import math
from typing import Callable

from app.callbacks.base import Callback


class Pruning(Callback):
    """After each epoch that measures `monitor`, passes (epoch, value) to `should_prune`, which
    records it (e.g. reports it to an Optuna trial) and answers whether to stop; on yes the run
    stops after this epoch with status `pruned`. Non-finite values are not passed on: the trainer
    stops such a run itself as diverged.

    Put it first among the callbacks, so that checkpoints and loggers running after it in the
    same epoch already see that the run is stopping.
    """

    reads_model = False  # (Callback.reads_model)

    def __init__(self, should_prune: Callable[[int, float], bool], monitor: str = "val_loss",
                 pruner_name: str = "the pruner") -> None:
        self.should_prune, self.monitor, self.pruner_name = should_prune, monitor, pruner_name

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        epoch = int(metrics["epoch"])
        if self.should_prune(epoch, value):
            trainer.request_stop(
                "pruned",
                f"pruned at epoch {epoch} by {self.pruner_name}: {self.monitor}={value:.6g} "
                f"(best so far {trainer.best:.6g}) is not promising compared with finished trials",
            )
