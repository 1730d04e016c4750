"""A pruner that predicts a trial's final value from its learning curve so far."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import optuna
from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def extrapolate(steps: Sequence[float], values: Sequence[float], horizon: float, maximize: bool,
                window: int = 10) -> float:
    """Predict the best value a curve reaches by step `horizon`.

    The running best of `values` (best so far at each step) over the last `window` steps is
    fitted as `a + b * log(step)` by least squares and evaluated at `horizon`. Learning curves
    flatten faster than that line (their slope in log-steps shrinks), so the prediction is
    optimistic: a trial is pruned only when even this prediction is bad. It is never worse than
    the best value already reached. Non-finite values are ignored.
    """
    pairs = [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and s > 0]
    if not pairs:
        return -math.inf if not maximize else math.inf  # nothing known: cannot be called bad
    s = np.array([p[0] for p in pairs], dtype=float)
    v = np.array([p[1] for p in pairs], dtype=float)
    best = np.maximum.accumulate(v) if maximize else np.minimum.accumulate(v)
    s, best = s[-window:], best[-window:]
    current = float(best[-1])
    if len(s) < 2 or horizon <= s[-1] or np.ptp(np.log(s)) == 0:
        return current
    slope, intercept = np.polyfit(np.log(s), best, 1)
    predicted = float(intercept + slope * math.log(horizon))
    return max(predicted, current) if maximize else min(predicted, current)


class CurveExtrapolationPruner(BasePruner):
    """Prune a trial whose extrapolated final value is worse than `percentile` of the finished
    (COMPLETE) trials' values.

    After `n_warmup_steps` epochs, and once `n_startup_trials` trials have completed, the trial's
    curve is extrapolated to `horizon` (see `extrapolate`); the trial is pruned when the
    prediction is worse than the `percentile`-th best of the completed trials' values (50: their
    median; 25: only trials predicted to reach the best quarter survive). The horizon is the
    trial's `trainer.epochs` (the `epochs` user attribute the app sets on every trial), or, when
    it is None, the longest curve among completed trials.
    """

    def __init__(self, n_startup_trials: int = 5, n_warmup_steps: int = 5, window: int = 10,
                 percentile: float = 50.0, horizon: int | None = None) -> None:
        if n_startup_trials < 0 or n_warmup_steps < 0:
            raise ValueError("n_startup_trials and n_warmup_steps must be >= 0")
        if window < 2:
            raise ValueError(f"window must be >= 2 (points to fit a line), got {window}")
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {percentile}")
        if horizon is not None and horizon < 1:
            raise ValueError(f"horizon must be >= 1 or None, got {horizon}")
        self.n_startup_trials, self.n_warmup_steps = n_startup_trials, n_warmup_steps
        self.window, self.percentile, self.horizon = window, percentile, horizon

    def prune(self, study: "optuna.study.Study", trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.n_warmup_steps:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        finished = [t.value for t in completed if t.value is not None and math.isfinite(t.value)]
        if not finished or len(finished) < self.n_startup_trials:
            return False
        horizon = self.horizon or trial.user_attrs.get("epochs") or max(
            (t.last_step or 0 for t in completed), default=step)
        maximize = study.direction == StudyDirection.MAXIMIZE
        steps = sorted(trial.intermediate_values)
        predicted = extrapolate(steps, [trial.intermediate_values[s] for s in steps], horizon,
                                maximize, self.window)
        if maximize:
            return bool(predicted < float(np.percentile(finished, 100.0 - self.percentile)))
        return bool(predicted > float(np.percentile(finished, self.percentile)))
