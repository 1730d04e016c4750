"""Weights & Biases logging. Offline by default: the run is written under `<run dir>/wandb/`
and can be uploaded later with `wandb sync`; no account or network is needed to train.

Online without an API key, or with a server that does not answer within `init_timeout` seconds
(no network, a bad key), the logger warns once and logs offline instead: the run's metrics are
all in `<run dir>/wandb/offline-run-*`, ready for `wandb sync`."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from app.callbacks.logger import Logger

log = logging.getLogger(__name__)
MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's older names, still seen in WANDB_MODE


class WandbLogger(Logger):
    """Starts a W&B run when fitting starts, logs each epoch's metrics at step=epoch, writes the
    run's summary (status, best, test metrics) and finishes the run in `on_run_end`, which the
    app calls even when the run fails, so no W&B run leaks into the next job of a sweep. A W&B
    failure warns once and turns the logger off (see `Logger`). Options and their defaults:
    conf/logger/wandb.yaml (`group` and `name`: None lets the app name them; `mode` defaults to
    the WANDB_MODE environment variable when it is set)."""

    def __init__(
        self,
        mode: str,
        project: str,
        entity: str | None,
        group: str | None,
        tags: Sequence[str],
        name: str | None,
        init_timeout: float,
        *,
        dir: str | Path | None = None,
    ) -> None:
        super().__init__(dir=dir, name=name, group=group)
        self.kwargs = dict(
            mode=MODE_ALIASES.get(mode, mode), project=project, entity=entity, group=group, tags=list(tags),
            name=name, dir=str(dir) if dir is not None else None,
        )
        self.init_timeout = init_timeout
        self.run = None

    def start(self, trainer) -> None:
        if self.run is not None or self.kwargs["mode"] == "disabled":
            return
        import wandb  # imported here: runs with W&B disabled never pay for the import

        if self.kwargs["dir"]:
            Path(self.kwargs["dir"]).mkdir(parents=True, exist_ok=True)
        if self.kwargs["mode"] == "online":
            # prompt=False: never ask on a terminal; verify=False: no network here, init tells
            if not wandb.login(prompt=False, verify=False):
                return self._offline("no W&B API key is set (`wandb login`, or WANDB_API_KEY)")
            try:
                self.run = self._init(wandb, self.kwargs)
            except Exception as error:  # noqa: BLE001 -- no network, a bad key, a server error
                wandb.finish(exit_code=1)  # whatever the failed init left behind
                text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                return self._offline(f"W&B did not accept the run within {self.init_timeout:g}s "
                                     f"({type(error).__name__}: {text})")
            return
        self.run = self._init(wandb, self.kwargs)

    def _init(self, wandb, kwargs: dict[str, Any]):
        return wandb.init(
            **kwargs,
            config=self.run_config,
            # create_new: the members of a pack (app/train/packed.py) each have a run open at once.
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, reinit="create_new",
                                    init_timeout=self.init_timeout),
        )

    def _offline(self, reason: str) -> None:
        """Online was asked for and cannot be had: warn once, log offline for the rest of the run."""
        import wandb

        log.warning("W&B online: %s; logging this run offline instead (upload it later with "
                    "`wandb sync %s/wandb/offline-run-*`)", reason, self.kwargs["dir"] or ".")
        self.kwargs["mode"] = "offline"
        self.run = self._init(wandb, self.kwargs)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def state(self) -> dict[str, Any]:
        """The W&B run id, so a resumed run logs into the same W&B run."""
        run_id = self.run.id if self.run is not None else self.kwargs.get("id")
        return {"run_id": run_id}

    def load_state(self, state: dict[str, Any]) -> None:
        # Offline, each attempt is its own offline-run-*-<id> folder with the same id; `wandb sync`
        # uploads them in order into one run. Online, W&B appends to the run.
        if state.get("run_id"):
            self.kwargs.update(id=state["run_id"], resume="allow")

    def finish(self, summary: dict[str, Any]) -> None:
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

    def abort(self) -> None:
        # Finish the broken run all the same: wandb keeps one global run per process, and the
        # next job of a sweep (same process) must not log into it.
        run, self.run = self.run, None
        if run is not None:
            run.finish(exit_code=1)
