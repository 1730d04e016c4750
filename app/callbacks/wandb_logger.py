"""Weights & Biases logging. Offline by default: the run is written under `<run dir>/wandb/`
and can be uploaded later with `wandb sync`; no account or network is needed to train."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from app.callbacks.base import Callback

log = logging.getLogger(__name__)


class WandbLogger(Callback):
    """Starts a W&B run when fitting starts, logs each epoch's metrics at step=epoch, writes the
    run's summary (status, best, test metrics) and finishes the run in `on_run_end`, which the
    app calls even when the run fails, so no W&B run leaks into the next job of a sweep."""

    def __init__(
        self,
        mode: str = "offline",
        project: str = "hydra-torch-app",
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        name: str | None = None,
        *,
        dir: str | Path | None = None,
    ) -> None:
        self.kwargs = dict(
            mode=mode, project=project, entity=entity, group=group, tags=list(tags), name=name,
            dir=str(dir) if dir is not None else None,
        )
        self.run_config: dict[str, Any] = {}  # the run's resolved config, shown in W&B
        self.run = None

    def on_fit_start(self, trainer) -> None:
        if self.run is not None or self.kwargs["mode"] == "disabled":
            return
        import wandb  # imported here: runs with W&B disabled never pay for the import

        if self.kwargs["dir"]:
            Path(self.kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            **self.kwargs,
            config=self.run_config,
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
        )

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        if self.run is not None:
            step = int(metrics["epoch"])
            self.run.log({k: v for k, v in metrics.items() if k != "epoch"}, step=step)

    def state_dict(self) -> dict[str, Any]:
        """The W&B run id, so a resumed run logs into the same W&B run."""
        run_id = self.run.id if self.run is not None else self.kwargs.get("id")
        return {"run_id": run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Offline, each attempt is its own offline-run-*-<id> folder with the same id; `wandb sync`
        # uploads them in order into one run. Online, W&B appends to the run.
        if state.get("run_id"):
            self.kwargs.update(id=state["run_id"], resume="allow")

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            for key, value in summary.items():
                if isinstance(value, (int, float, str, bool)) or value is None:
                    self.run.summary[key] = value
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        self.run.summary[f"{key}/{sub}"] = v
            failed = summary.get("status") == "failed"
            self.run.finish(exit_code=1 if failed else 0)
        finally:
            self.run = None
