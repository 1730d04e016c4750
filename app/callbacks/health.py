"""Warnings about training health, read from each epoch's metrics: exploding or vanishing
gradients, and validation loss drifting away from training loss. It never stops a run."""
from __future__ import annotations

import logging
import math
from typing import Any

from app.callbacks.base import Callback

log = logging.getLogger(__name__)


class HealthMonitor(Callback):
    """Logs one warning per kind of problem, at the first epoch that shows it; never stops training.

    exploding gradients: the epoch's largest gradient norm (`grad_norm_max`) is above
        `max_grad_norm`, or the gradient norm is non-finite.
    vanishing gradients: the epoch's mean gradient norm (`grad_norm`) stays below
        `min_grad_norm` for `vanishing_epochs` epochs in a row.
    overfitting: at `overfit_patience` validations in a row, val_loss rose while train_loss fell
        (each against the previous validation epoch); or, with `max_val_train_ratio` set,
        val_loss / train_loss exceeds it (None: off; classification losses near zero have
        large ratios in runs that generalize well).

    The gradient checks read the Trainer's grad_norm metrics (`track_grad_norm`, on by default).
    Its state (the warnings given, the streaks) travels in checkpoints: a resumed run neither
    repeats a warning nor restarts a streak. Options and their defaults:
    conf/callbacks/health.yaml.
    """

    reads_model = False  # (Callback.reads_model)

    def __init__(self, max_grad_norm: float, min_grad_norm: float, vanishing_epochs: int,
                 overfit_patience: int, max_val_train_ratio: float | None) -> None:
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0, got {max_grad_norm}")
        if not min_grad_norm >= 0:
            raise ValueError(f"min_grad_norm must be >= 0, got {min_grad_norm}")
        if vanishing_epochs < 1 or overfit_patience < 1:
            raise ValueError(f"vanishing_epochs and overfit_patience must be >= 1, got "
                             f"{vanishing_epochs} and {overfit_patience}")
        if max_val_train_ratio is not None and not max_val_train_ratio > 1:
            raise ValueError(f"max_val_train_ratio must be > 1 or None, got {max_val_train_ratio}")
        self.max_grad_norm, self.min_grad_norm = max_grad_norm, min_grad_norm
        self.vanishing_epochs, self.overfit_patience = vanishing_epochs, overfit_patience
        self.max_val_train_ratio = max_val_train_ratio
        self.warned: list[str] = []  # kinds warned about: exploding, vanishing, overfitting
        self.small_grad_epochs = 0  # consecutive epochs with grad_norm < min_grad_norm
        self.overfit_streak = 0  # consecutive validations with val_loss up and train_loss down
        self.previous: list[float] | None = None  # [train_loss, val_loss] at the last validation
        self.streak_start: list[float] | None = None  # the same, where the current streak began

    def on_fit_start(self, trainer) -> None:
        if not getattr(trainer, "track_grad_norm", True):
            log.warning("HealthMonitor: the trainer does not track the gradient norm "
                        "(track_grad_norm=False): no checks for exploding or vanishing gradients")

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        epoch = int(metrics["epoch"])
        self._check_gradients(epoch, metrics)
        self._check_overfitting(epoch, metrics)

    def _check_gradients(self, epoch: int, metrics: dict[str, float]) -> None:
        norm, largest = metrics.get("grad_norm"), metrics.get("grad_norm_max")
        if norm is None or largest is None:
            return
        if not (math.isfinite(norm) and math.isfinite(largest)):
            self._warn("exploding", f"epoch {epoch}: exploding gradients: the gradient norm is "
                       f"non-finite (grad_norm={norm}, grad_norm_max={largest}); lower "
                       "optimizer.lr or set trainer.grad_clip")
        elif largest > self.max_grad_norm:
            self._warn("exploding", f"epoch {epoch}: exploding gradients: grad_norm_max="
                       f"{largest:.4g} > max_grad_norm={self.max_grad_norm:g} (epoch mean "
                       f"{norm:.4g}); lower optimizer.lr or set trainer.grad_clip")
        self.small_grad_epochs = self.small_grad_epochs + 1 if norm < self.min_grad_norm else 0
        if self.small_grad_epochs >= self.vanishing_epochs:
            self._warn("vanishing", f"epoch {epoch}: vanishing gradients: grad_norm < "
                       f"min_grad_norm={self.min_grad_norm:g} for {self.small_grad_epochs} epochs "
                       f"(now {norm:.3g}, train_loss={metrics['train_loss']:.4g}); the weights "
                       "barely move: unless the loss is at its floor, look for saturated "
                       "activations, dead ReLUs, a too-small initialization or frozen parameters")

    def _check_overfitting(self, epoch: int, metrics: dict[str, float]) -> None:
        train, val = metrics.get("train_loss"), metrics.get("val_loss")
        if train is None or val is None:
            return
        if self.previous is not None and val > self.previous[1] and train < self.previous[0]:
            if self.overfit_streak == 0:
                self.streak_start = list(self.previous)
            self.overfit_streak += 1
        else:
            self.overfit_streak, self.streak_start = 0, None
        self.previous = [train, val]
        advice = "consider early stopping, more regularization (dropout, weight decay) or more data"
        if self.overfit_streak >= self.overfit_patience:
            (train_0, val_0) = self.streak_start
            self._warn("overfitting", f"epoch {epoch}: overfitting: over the last "
                       f"{self.overfit_streak} validations val_loss rose ({val_0:.4g} -> {val:.4g}) "
                       f"while train_loss fell ({train_0:.4g} -> {train:.4g}); {advice}")
        elif self.max_val_train_ratio is not None and train > 0 and val > self.max_val_train_ratio * train:
            self._warn("overfitting", f"epoch {epoch}: overfitting: val_loss={val:.4g} is "
                       f"{val / train:.3g}x train_loss={train:.4g} (max_val_train_ratio="
                       f"{self.max_val_train_ratio:g}); {advice}")

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self.warned:
            self.warned.append(kind)
            log.warning(message)

    def state_dict(self) -> dict[str, Any]:
        return {"warned": list(self.warned), "small_grad_epochs": self.small_grad_epochs,
                "overfit_streak": self.overfit_streak, "previous": self.previous,
                "streak_start": self.streak_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = list(state["warned"])
        self.small_grad_epochs, self.overfit_streak = state["small_grad_epochs"], state["overfit_streak"]
        self.previous, self.streak_start = state["previous"], state["streak_start"]
