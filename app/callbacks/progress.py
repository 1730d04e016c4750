"""Human-readable progress: a metrics line in the log every N epochs, and a one-line epoch bar
on interactive terminals. Works from the per-epoch metrics only: it never reads the device."""
from __future__ import annotations

import logging
import sys
import time

from app.callbacks.base import Callback

log = logging.getLogger("app.train.trainer")


def format_metrics(metrics: dict[str, float]) -> str:
    parts = []
    for key, value in metrics.items():
        if key in ("epoch", "epoch_time"):
            continue
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class ProgressLogger(Callback):
    """A metrics line every `log_every` epochs (0: never; also the first and last epoch); a bar
    on `stream` (stderr) with `progress_bar` when it is a terminal. Options and their defaults:
    conf/callbacks/progress.yaml."""

    reads_model = False  # (Callback.reads_model)

    def __init__(self, log_every: int, progress_bar: bool, stream=None) -> None:
        self.log_every = log_every
        self.stream = stream or sys.stderr
        self.bar = progress_bar and self.stream.isatty()
        self.started = 0.0

    def on_fit_start(self, trainer) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        epoch, total = int(metrics["epoch"]), trainer.epochs
        if self.bar:
            width = 24
            done = int(width * epoch / total)
            elapsed = time.perf_counter() - self.started
            self.stream.write(
                f"\r[{'#' * done}{'.' * (width - done)}] epoch {epoch}/{total} "
                f"{format_metrics(metrics)} ({elapsed:.1f}s)\033[K"
            )
            self.stream.flush()
        if self.log_every and (epoch % self.log_every == 0 or epoch == 1 or trainer.should_stop
                               or epoch == total):
            if self.bar:
                self.stream.write("\r\033[K")
            log.info("epoch %d/%d %s", epoch, total, format_metrics(metrics))

    def on_fit_end(self, trainer, result) -> None:
        if self.bar:
            self.stream.write("\r\033[K")
            self.stream.flush()
        if result.message:
            log.warning(result.message) if result.stop_reason == "diverged" else log.info(result.message)
