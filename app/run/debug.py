"""Debug modes, `debug=<mode>` (conf/debug/<mode>.yaml): quick checks of a configuration that
run through the same builder and loop as a real run.

- fast_dev_run: `debug.batches` batch(es) of train, validation and test, one epoch; verdict line.
- overfit: the same `debug.batches` training batches every epoch (no shuffling), validated on
  them, until train_loss falls to `debug.target_ratio` x its first-epoch value; verdict line.
- limit: a normal run on at most `debug.limit_*_batches` batches per epoch of each split.
- profile: torch.profiler over a few training steps; a trace file and a table of top operators.

The YAML of each mode sets what config can (callbacks, loggers, the `debug` keys); this module
is what needs code: the batch limits (applied by `app.run.build.build_batches`, the one builder),
the epochs to run, the overfit stop, the profiler (around `fit` in `app.run.execute`) and the
verdicts. `debug.max_epochs` caps the epochs run, not `trainer.epochs`: schedules that follow
`trainer.epochs` (cosine's T_max, warmup_cosine's total_steps) keep the real run's horizon, so a
debug run's epochs are the real run's first epochs, learning rates included.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from app.callbacks.base import Callback

log = logging.getLogger("app")
PROFILE_DIR = "profile"
TRACE_FILE = "train.pt.trace.json"  # the name TensorBoard's profiler plugin looks for (*.pt.trace.json)


def mode(cfg: DictConfig) -> str | None:
    return cfg.debug.mode if cfg.get("debug") is not None else None


def epochs(cfg: DictConfig) -> int:
    """The epochs this run trains at most: trainer.epochs, capped by debug.max_epochs."""
    cap = cfg.debug.max_epochs if cfg.get("debug") is not None else None
    return min(cfg.trainer.epochs, cap) if cap is not None else cfg.trainer.epochs


@dataclass(frozen=True)
class Limits:
    """Batches per epoch of each split (None: all of them); `fixed`: the training batches are the
    same every epoch (no shuffling) and are also the validation batches (overfit)."""

    train: int | None = None
    val: int | None = None
    test: int | None = None
    fixed: bool = False


def limits(cfg: DictConfig) -> Limits:
    m = mode(cfg)
    if m == "fast_dev_run":
        return Limits(cfg.debug.batches, cfg.debug.batches, cfg.debug.batches)
    if m == "overfit":
        return Limits(cfg.debug.batches, cfg.debug.batches, None, fixed=True)
    if m == "limit":
        d = cfg.debug
        return Limits(d.limit_train_batches, d.limit_val_batches, d.limit_test_batches)
    return Limits()


def callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks a debug mode adds to the run (first in the list)."""
    return [OverfitStop(cfg.debug.target_ratio)] if mode(cfg) == "overfit" else []


class OverfitStop(Callback):
    """Stops the run once train_loss is at most `target_ratio` x the first epoch's train_loss."""

    reads_model = False  # (Callback.reads_model)

    def __init__(self, target_ratio: float) -> None:
        self.target_ratio = target_ratio
        self.first: float | None = None

    def on_epoch_end(self, trainer, metrics: dict[str, float]) -> None:
        loss = metrics["train_loss"]
        if self.first is None:
            self.first = loss
        elif math.isfinite(loss) and loss <= self.target_ratio * self.first:
            trainer.request_stop("early_stopped", f"overfit: train_loss {loss:.4g} <= {self.target_ratio:g} x "
                                                  f"{self.first:.4g} at epoch {metrics['epoch']}")


# ----------------------------------------------------------------------------- verdicts
@dataclass
class Verdict:
    passed: bool
    line: str

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "verdict": self.line}


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.6g}" for k, v in values.items())


def _used(batches: dict[str, Any]) -> str:
    """"1 train, 1 val, 1 test batch(es)" (or "..., no test split")."""
    used = ", ".join(f"{len(b)} {name}" for name, b in batches.items() if b is not None)
    return used + " batch(es)" + ("" if batches.get("test") is not None else ", no test split")


def describe(cfg: DictConfig, batches: dict[str, Any]) -> str | None:
    """What a debug mode changes about the run, in one line (None without one)."""
    m = mode(cfg)
    if m is None:
        return None
    line = f"debug={m}: {epochs(cfg)} of trainer.epochs={cfg.trainer.epochs} epochs at most; per epoch {_used(batches)}"
    return line + (" (the training batches, fixed, also validate)" if limits(cfg).fixed else "")


def verdict(cfg: DictConfig, history: list[dict[str, float]], test: dict[str, float],
            batches: dict[str, Any]) -> Verdict | None:
    """The one-line verdict of fast_dev_run and overfit (None for the other modes).
    `history`: the trainer's per-epoch metrics; `test`: the test metrics ({} without a test split);
    `batches`: {"train": the training batch iterable, ...} (what the run used)."""
    m = mode(cfg)
    if m == "fast_dev_run":
        last = history[-1] if history else {}
        losses = {k: last[k] for k in ("train_loss", "val_loss") if k in last}
        losses.update({k: v for k, v in test.items() if k == "test_loss"})
        missing = [k for k in ("train_loss", "val_loss") if k not in losses]
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        used = f"{_used(batches)}, {len(history)} epoch"
        if bad or missing:
            what = f"non-finite {_fmt({k: losses[k] for k in bad})}" if bad else f"no {', '.join(missing)}"
            return Verdict(False, f"fast_dev_run FAILED: {what} ({used})")
        return Verdict(True, f"fast_dev_run PASSED: {_fmt(losses)} ({used})")
    if m == "overfit":
        train = batches["train"]
        what = f"{len(train)} fixed batch(es), {train.num_samples} samples"
        if not history:
            return Verdict(False, f"overfit FAILED: no epoch ran on {what}")
        first, last = history[0]["train_loss"], history[-1]["train_loss"]
        ratio = last / first if math.isfinite(first) and first > 0 else math.nan
        target = cfg.debug.target_ratio
        if math.isfinite(ratio) and ratio <= target:
            return Verdict(True, f"overfit PASSED: the model learned {what}: train_loss {first:.4g} -> "
                                 f"{last:.4g} ({ratio:.3g} x first, target {target:g}) in {len(history)} epochs")
        return Verdict(False, f"overfit FAILED: the model did not learn {what}: train_loss {first:.4g} -> "
                              f"{last:.4g} ({ratio:.3g} x first, target {target:g}) in {len(history)} epochs; "
                              "check the model, the loss, optimizer.lr, or raise trainer.epochs")
    return None


# ----------------------------------------------------------------------------- profile
class StepProfiler:
    """torch.profiler over training steps: `wait` skipped, `warmup` traced and discarded,
    `active` recorded (torch.profiler.schedule, one cycle). `wrap(train)` gives the batches the
    Trainer iterates: each batch is one profiler step, from handing it out until the Trainer asks
    for the next. The trace goes to `<directory>/train.pt.trace.json` (Chrome trace format:
    Perfetto, TensorBoard's profiler plugin); `close()` ends a cycle the run was too short for
    and logs the table of top operators."""

    def __init__(self, directory: Path, device: torch.device, wait: int, warmup: int, active: int,
                 sort_by: str, row_limit: int) -> None:
        self.directory, self.sort_by, self.row_limit = Path(directory), sort_by, row_limit
        self.first_recorded, self.planned = wait + warmup + 1, wait + warmup + active
        self.steps = 0  # training steps done since profiling started
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(
            activities=activities, record_shapes=True,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=self._write_trace,
        )
        self.running = self.closed = False
        self.trace: Path | None = None

    def _write_trace(self, profiler: torch.profiler.profile) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.trace = self.directory / TRACE_FILE
        profiler.export_chrome_trace(str(self.trace))

    def wrap(self, batches: Any) -> "ProfiledBatches":
        return ProfiledBatches(batches, self)

    def begin(self) -> None:
        """A training step starts (profiling starts with the first)."""
        if not self.running and not self.closed:
            self.profiler.start()
            self.running = True

    def step(self) -> None:
        """A training step is done."""
        if self.closed:
            return
        self.profiler.step()
        self.steps += 1
        if self.steps >= self.planned:
            self.close()

    def close(self) -> None:
        """Stop profiling (writing the trace of a cycle cut short) and log the top operators."""
        if self.closed:
            return
        self.closed = True
        if not self.running:
            log.warning("profile: no training step ran, nothing was profiled")
            return
        self.profiler.stop()
        if self.trace is None:
            log.warning("profile: the run ended after %d training steps, before step %d (wait + warmup + 1) "
                        "that recording starts at: nothing recorded; lower debug.wait or debug.warmup",
                        self.steps, self.first_recorded)
            return
        table = self.profiler.key_averages().table(sort_by=self.sort_by, row_limit=self.row_limit)
        log.info("profile: top operators of training steps %d-%d, by %s:\n%s", self.first_recorded,
                 min(self.steps, self.planned), self.sort_by, table)
        log.info("profile: trace -> %s (open it in https://ui.perfetto.dev, or `tensorboard --logdir %s` "
                 "with the torch-tb-profiler plugin)", self.trace, self.directory)


class ProfiledBatches:
    """`batches` as the Trainer sees them, marking profiler steps around each training step;
    everything else (len, num_samples, state_dict, ...) is `batches`'."""

    def __init__(self, batches: Any, profiler: StepProfiler) -> None:
        self.batches, self.profiler = batches, profiler

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batches, name)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            self.profiler.begin()
            yield batch
            self.profiler.step()  # the Trainer asks for the next batch: this one's step is done


def profiler(cfg: DictConfig, run_dir: Path, device: torch.device) -> StepProfiler | None:
    """The profiler of debug=profile, None otherwise."""
    if mode(cfg) != "profile":
        return None
    d = cfg.debug
    return StepProfiler(Path(run_dir) / PROFILE_DIR, device, d.wait, d.warmup, d.active, d.sort_by, d.row_limit)
