"""The base of every experiment logger (W&B, TensorBoard, MLflow): a logger never stops training.

A logger talks to something outside the run (a server, a package, a disk) that can fail in ways
training does not care about: no network, a bad key, a full disk, a package not installed. So
`Logger` runs each of its subclass's steps under a guard: the first exception is reported once
(`logging.warning`, naming the logger and the reason) and the logger turns itself off for the
rest of the run; training goes on, and `metrics.csv` (the `CSVLogger`, not a `Logger`) stays
complete. Only `Exception`s are caught: Ctrl-C and `sys.exit` still stop the run.

What the app gives every logger:
- keyword arguments `dir` (the run directory), `name` (the run's name) and `group` (the sweep's
  or study's name; None outside sweeps), each only if the constructor accepts it, alongside the
  logger's own options from its YAML (`conf/logger/<name>.yaml`, the one place their defaults
  are written);
- attributes `run_config` (the run's resolved config as a plain dict) and `hparams` (the trial's
  parameters in a sweep, `{"optimizer.lr": 0.01, ...}`; empty outside sweeps). They are set after
  construction, not passed to it, because Hydra's `instantiate` would try to build the
  `_target_` entries a config holds.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from app.callbacks.base import Callback

log = logging.getLogger(__name__)


class Logger(Callback):
    """Override `start`, `log_metrics`, `finish` (and `abort`, `state`, `load_state` where needed);
    the Callback hooks call them under the guard described in the module docstring.

    Order: `start(trainer)` when fitting starts (also when a resumed run starts again),
    `log_metrics(metrics, step)` after each epoch (step = the epoch, 1-based; `metrics` without
    the `epoch` key), `finish(summary)` once the run's summary is final (also for failed runs).
    After the first failure, `abort()` is called once, right away, to release what `start`
    opened (a half-started logger included); what it raises is only logged at debug level.
    """

    reads_model = False  # (Callback.reads_model)

    def __init__(self, *, dir: str | Path | None = None, name: str | None = None,
                 group: str | None = None) -> None:
        self.dir = Path(dir) if dir is not None else None
        self.name = name
        self.group = group
        self.run_config: dict[str, Any] = {}
        self.hparams: dict[str, Any] = {}
        self.failed = False  # set by the first failure: the logger is off from then on
        self._aborted = False

    # ------------------------------------------------------------------ for subclasses
    def start(self, trainer) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass

    def abort(self) -> None:
        pass

    def state(self) -> dict[str, Any]:
        """What a checkpoint stores so a resumed run continues the same logger run."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ the guarded hooks
    def on_fit_start(self, trainer) -> None:
        self._guard(self.start, trainer)

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        step = int(metrics["epoch"])
        self._guard(self.log_metrics, {k: v for k, v in metrics.items() if k != "epoch"}, step)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._guard(self.finish, summary)
        if self.failed:
            self._abort()

    def state_dict(self) -> dict[str, Any]:
        state = self._guard(self.state)
        return state if state is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._guard(self.load_state, state)

    def _guard(self, step, *args: Any) -> Any:
        """`step(*args)`, unless the logger is off; the first exception turns it off."""
        if self.failed:
            return None
        try:
            return step(*args)
        except Exception as error:  # noqa: BLE001 -- any failure of a logger, by design
            self.failed = True
            log.warning("%s failed and is off for the rest of this run (training goes on, "
                        "metrics.csv stays complete): %s: %s",
                        type(self).__name__, type(error).__name__, error)
            self._abort()
            return None

    def _abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        try:
            self.abort()
        except Exception as error:  # noqa: BLE001 -- already reported once
            log.debug("%s: abort failed too: %s: %s", type(self).__name__, type(error).__name__, error)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level with dotted keys: {"optimizer": {"lr": 0.1}} ->
    {"optimizer.lr": 0.1}. Lists and other values are kept as they are."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
