"""Preflight: does this configuration train at all? Answered in seconds, before a long run.

    python -m app preflight=true [overrides]      # or: python -m app.tools.preflight [overrides]

Composes the config and builds the run exactly as `python -m app` does (app/run/build.py: data,
model, optimizer, scheduler, callbacks, batches, the Trainer with all its options), then takes the
Trainer's own steps: one batch (forward, loss, backward, optimizer step), a burst of up to
`BURST_STEPS` optimizer steps through the training loop's step (CUDA graphs, accumulation and
clipping as configured), a scheduler step and one validation batch, checking on the way that
output and target shapes agree, the loss and every gradient are finite, the weights stay finite,
the loss neither becomes non-finite nor explodes during the burst (a learning rate too large for
the model shows there), and a checkpoint of the full state can be written. Prints a pass/fail
table and the peak memory; writes no run directory. Exit status: 0 passed, 1 a check failed, 2
the configuration is invalid.
"""
from __future__ import annotations

import io
import math
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from omegaconf import DictConfig

from app.data import LimitedBatches
from app.errors import ConfigError
from app.run.build import Run, build_run
from app.run.device import describe
from app.run.reproducibility import determinism_refusal
from app.train import acceleration

BURST_STEPS = 32  # optimizer steps of the burst (about an epoch of the default task)
EXPLODED = 10.0  # the burst fails when a window's mean loss exceeds this x the first window's

CHECKS = (
    "config", "device", "data", "model", "optimizer", "scheduler", "callbacks", "batches", "trainer",
    "forward", "loss", "backward", "optimizer step", "train steps", "scheduler step", "validation",
    "checkpoint",
)


@dataclass
class Check:
    name: str
    status: str = "PASS"  # PASS | WARN | FAIL | SKIP
    detail: str = ""
    seconds: float = 0.0


class CheckFailed(Exception):
    """A preflight check found something wrong (not an error of the check itself)."""


class _Stop(Exception):
    pass


class Report:
    """The checks run so far; `check(name)` records one, and stops the preflight if it fails."""

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.config_error = False
        self.memory = ""
        self.started = time.perf_counter()

    @contextmanager
    def check(self, name: str) -> Iterator[Check]:
        row = Check(name)
        started = time.perf_counter()
        try:
            yield row
        except ConfigError as error:
            row.status, row.detail, self.config_error = "FAIL", str(error), True
            raise _Stop from None
        except CheckFailed as error:
            row.status, row.detail = "FAIL", str(error)
            raise _Stop from None
        except Exception as error:  # what a real run would have crashed with, said in one line
            refusal = determinism_refusal(error)
            if refusal is not None:
                row.status, row.detail, self.config_error = "FAIL", str(refusal), True
            else:
                text = str(error).strip().splitlines()[0] if str(error).strip() else ""
                row.status, row.detail = "FAIL", f"{type(error).__name__}: {text}"
            raise _Stop from None
        finally:
            row.seconds = time.perf_counter() - started
            self.checks.append(row)

    def describe(self, run: Run) -> None:
        """Details of the build steps, once the run is built."""
        cfg, model, optimizer, scheduler = run.cfg, run.model, run.optimizer, run.scheduler
        x, y = next(iter(run.train))
        short = lambda node: node._target_.rsplit(".", 1)[-1] if node else "none"  # noqa: E731
        details = {
            "config": (f"data={short(cfg.data)} model={short(cfg.model)} optimizer={short(cfg.optimizer)} "
                       f"scheduler={short(cfg.scheduler)}"),
            "device": describe(run.device) + (", deterministic algorithms" if cfg.deterministic else ""),
            "data": run.data.describe(),
            "model": f"{type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters",
            "optimizer": f"{type(optimizer).__name__}, lr={optimizer.param_groups[0]['lr']:g}",
            "scheduler": (f"{type(scheduler).__name__}, stepped per {run.trainer.scheduler_interval}"
                          if scheduler else "none"),
            "callbacks": ", ".join(type(cb).__name__ for cb in run.callbacks),
            "batches": (f"{len(run.train)} train batches; x {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}, "
                        f"y {tuple(y.shape)} {str(y.dtype).replace('torch.', '')}"),
            "trainer": f"{cfg.trainer.epochs} epochs, monitor {cfg.trainer.monitor} ({cfg.trainer.mode})",
        }
        for check in self.checks:
            check.detail = check.detail or details.get(check.name, "")

    @property
    def passed(self) -> bool:
        return all(c.status in ("PASS", "WARN") for c in self.checks)

    def exit_code(self) -> int:
        return 0 if self.passed else 2 if self.config_error else 1

    def table(self) -> str:
        done = {c.name for c in self.checks}
        rows = self.checks + [Check(n, "SKIP") for n in CHECKS if n not in done]
        width = max(len(r.name) for r in rows)
        lines = [f"{'check'.ljust(width)}  status  time     detail"]
        lines += [f"{r.name.ljust(width)}  {r.status.ljust(6)}  {r.seconds * 1000:5.0f}ms  {r.detail}" for r in rows]
        total = time.perf_counter() - self.started
        failed = next((c for c in self.checks if c.status == "FAIL"), None)
        verdict = "PASSED" if failed is None else f"FAILED at {failed.name}"
        lines.append(f"preflight {verdict} in {total:.1f}s; peak memory: {self.memory or 'n/a'}")
        return "\n".join(lines)


def _first_line(tensor_names: list[str], limit: int = 4) -> str:
    more = f" and {len(tensor_names) - limit} more" if len(tensor_names) > limit else ""
    return ", ".join(tensor_names[:limit]) + more


def shape_problem(task: str, out: torch.Tensor, target: torch.Tensor, out_features: int) -> str | None:
    """Why `out` cannot be scored against `target` for `task`, or None. out: [batch, ...]."""
    if out.shape[0] != target.shape[0]:
        return f"output has {out.shape[0]} rows for a batch of {target.shape[0]}"
    if task == "classification":
        if out.ndim != 2 or out.shape[1] != out_features:
            return f"output {tuple(out.shape)}: expected [batch, {out_features}] class scores"
        if target.ndim != 1 or target.is_floating_point():
            return f"target {tuple(target.shape)} {target.dtype}: expected [batch] class indices"
        return None
    if out.shape != target.shape:
        return (f"output {tuple(out.shape)} does not match target {tuple(target.shape)} "
                "(the loss would silently broadcast them)")
    return None


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.1f} MiB allocated on {device}"
    if device.type == "mps":
        return f"{torch.mps.driver_allocated_memory() / 2**20:.1f} MiB held by the MPS driver"
    try:
        import resource
    except ImportError:  # not on Windows
        return ""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return f"{rss / (2**20 if sys.platform == 'darwin' else 2**10):.0f} MiB process RSS (CPU)"


def run(cfg: DictConfig) -> Report:
    """All checks on `cfg`, in order, stopping at the first failure. The run is built exactly as
    `python -m app` builds it (app/run/build.py), and the steps are the real Trainer's, with every
    trainer option (precision, compile, CUDA graphs, clipping, accumulation, matmul precision)."""
    report = Report()
    device = torch.device("cpu")
    nowhere = Path(tempfile.gettempdir()) / "app-preflight-writes-nothing"  # no hook runs: nothing is written
    try:
        run = build_run(cfg, nowhere, run_name="preflight", stage=report.check)
        device, data, task, trainer = run.device, run.data, run.task, run.trainer
        model, optimizer, scheduler = run.model, run.optimizer, run.scheduler
        report.describe(run)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.to(device)
        x, y = next(iter(run.train))
        with report.check("forward") as row, acceleration.matmul_precision(trainer.matmul_precision):
            model.train()
            with trainer.autocast:
                out = trainer.forward(x)
            problem = shape_problem(data.task, out, y, data.out_features)
            if problem:
                raise CheckFailed(problem)
            row.detail = f"output {tuple(out.shape)}, target {tuple(y.shape)}"
        with report.check("loss") as row:
            value = float(task.loss(out.float(), y).detach())
            if not math.isfinite(value):
                raise CheckFailed(f"loss is {value} on the first batch (check the data and the model's output)")
            row.detail = f"{value:.6g}"
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        with report.check("backward") as row, acceleration.matmul_precision(trainer.matmul_precision):
            trainer.train_step(x, y, window=1, first=True, update=False)  # the Trainer's own forward + backward
            bad = [n for n, p in named if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                raise CheckFailed(f"non-finite gradients in {_first_line(bad)}")
            norms = [p.grad.norm() for _, p in named if p.grad is not None]
            row.detail = f"gradient norm {float(torch.stack(norms).norm()) if norms else 0.0:.4g}"
            unused = [n for n, p in named if p.grad is None]
            if unused:
                row.status = "WARN"
                row.detail += f"; no gradient for {_first_line(unused)} (unused parameters)"
        with report.check("optimizer step") as row:
            before = [p.detach().clone() for _, p in named]
            trainer.optimizer_step()  # clipping, gradient-norm tracking, loss scaling, step
            bad = [n for n, p in named if not torch.isfinite(p).all()]
            if bad:
                raise CheckFailed(f"non-finite weights after the step in {_first_line(bad)}")
            moved = sum(not torch.equal(b, p.detach()) for b, (_, p) in zip(before, named))
            row.detail = f"{moved} of {len(named)} parameter tensors changed"
        with report.check("train steps") as row, acceleration.matmul_precision(trainer.matmul_precision):
            window = max(2, cfg.trainer.accumulate_grad_batches)
            losses: list[float] = []
            steps = 0
            while steps < BURST_STEPS and len(losses) < BURST_STEPS:
                batches = LimitedBatches(run.train, window)
                loss_sum, taken = trainer.train_epoch(batches)  # the loop's own path: graphs, accumulation
                losses.append(float(loss_sum) / batches.num_samples)  # one read per window, not per step
                steps += taken
                if not math.isfinite(losses[-1]):
                    raise CheckFailed(
                        f"the loss became {losses[-1]} within {steps} optimizer steps (first batches: "
                        f"{losses[0]:.4g}); lower optimizer.lr or set trainer.grad_clip")
                if losses[-1] > EXPLODED * losses[0]:
                    raise CheckFailed(
                        f"the loss exploded from {losses[0]:.4g} to {losses[-1]:.4g} within {steps} optimizer "
                        f"steps; lower optimizer.lr or set trainer.grad_clip")
            row.detail = (f"{steps} optimizer step(s), mean loss {losses[0]:.4g} -> {losses[-1]:.4g} "
                          f"(precision {trainer.precision}, compile {bool(cfg.trainer.compile)}, "
                          f"cuda_graph {trainer.graphed is not None}, grad_clip {trainer.grad_clip:g}, "
                          f"accumulate {trainer.accumulate})")
        with report.check("scheduler step") as row:
            if scheduler is None:
                row.detail = "no scheduler"
            else:
                lr = optimizer.param_groups[0]["lr"]
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(value)
                else:
                    scheduler.step()
                row.detail = f"lr {lr:.4g} -> {optimizer.param_groups[0]['lr']:.4g}"
        with report.check("validation") as row:
            xv, yv = next(iter(run.val))
            model.eval()
            with torch.no_grad(), trainer.autocast:
                problem = shape_problem(data.task, trainer.forward(xv), yv, data.out_features)
            if problem:
                raise CheckFailed(problem)
            values = trainer.evaluate(LimitedBatches(run.val, 1), prefix="val")  # the Trainer's own evaluation
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            if bad:
                raise CheckFailed(f"non-finite {', '.join(bad)} on the first validation batch")
            row.detail = " ".join(f"{k}={v:.4g}" for k, v in values.items())
        with report.check("checkpoint") as row:
            from app.callbacks.checkpoint import load_checkpoint

            if run.checkpoint is None:
                row.detail = "no checkpoint callback"
            else:
                trainer.epoch = 1
                buffer = io.BytesIO()
                torch.save(run.checkpoint.state(trainer, {}), buffer)
                size = len(buffer.getvalue())
                buffer.seek(0)
                try:  # as resume and app.load_run load it: a callback state holding objects fails here
                    load_checkpoint(buffer, name="the checkpoint")
                except ValueError as error:
                    found = re.search(r"pickled Python objects \(([^)]+)\)", str(error))
                    raise CheckFailed(
                        (f"the checkpoint would hold a pickled {found.group(1)}, which resume and "
                         "app.load_run refuse (they load with weights_only=True): a callback's "
                         "state_dict must hold tensors and plain containers only") if found else str(error)
                    ) from None
                row.detail = f"full state {size / 2**20:.2f} MiB, loads with weights_only=True"
    except _Stop:
        pass
    report.memory = peak_memory(device)
    return report


def run_and_report(cfg: DictConfig) -> int:
    """Run the checks, print the table; the exit status (0 passed, 1 failed, 2 invalid config)."""
    report = run(cfg)
    print(report.table(), flush=True)
    return report.exit_code()


def compose_config(overrides: list[str]) -> DictConfig:
    """The job config `python -m app <overrides>` would run, composed without starting Hydra."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from app.config import register_configs
    from app import CONF_DIR

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR)):
            return compose("config", overrides=overrides)
    except HydraException as error:
        raise ConfigError("overrides", " ".join(overrides), "overrides `python -m app` accepts",
                          str(error).strip().splitlines()[0]) from None


def main(argv: list[str]) -> int:
    """`python -m app.tools.preflight [overrides]`; the exit status."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = compose_config([a for a in argv if a not in ("preflight=true", "preflight=True")])
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return run_and_report(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
