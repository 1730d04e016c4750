"""The training loop: plain PyTorch, readable top to bottom.

`Trainer.fit(train, val)` runs epochs of (forward, loss, zero_grad, backward, step), validates
under `torch.no_grad()` in eval mode, tracks the monitored metric, steps the scheduler, and
stops on non-finite losses. Everything else (early stopping, checkpoints, logging, pruning)
plugs in through `app.callbacks.Callback` hooks; the loop does not know them.

Losses and metrics accumulate as sums on the device and are read back once per epoch, so the
loop never forces a host-device synchronisation per step. The gradient norm is accumulated the
same way, read with the same host read.

Each epoch's metrics (see `Trainer.metric_columns`): train_loss, val_loss and val_<metric>, the
learning rates, training health (grad_norm, grad_norm_max, samples_per_s, peak_memory_mib) and
epoch_time.

Speed options (mixed precision, torch.compile, CUDA graphs, gradient clipping and accumulation)
change what one step does, not the shape of the loop; their helpers live in `app.train.acceleration`.

Several processes (a process group, see `app.train.distributed`): the model is wrapped in
DistributedDataParallel and each rank trains on its part of every global batch (the batches
cut them, `TensorBatches`). Each rank's loss is weighted by its share of the global batch, so the
averaged gradient is the global batch's mean gradient, as one process would compute it; with
accumulation, the micro-batches before a window's last run under `no_sync` (no all-reduce). At an
epoch's end the loss and metric sums are summed over the ranks in the epoch's one host read, so
every rank reports what one process would on the same data. Callbacks run on rank 0 only; its
stop decision (early stopping, pruning, divergence) is then broadcast, so all ranks stop together.
Besides the all-reduce of the sums, an epoch's end has two small host collectives: every rank's
random generators gathered on rank 0 (checkpoints hold them) and that decision. Nothing per step.
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor, nn

from app.train import acceleration, distributed
from app.callbacks.base import Callback, improves
from app.run.reproducibility import rng_state
from app.train.tasks import Task

log = logging.getLogger(__name__)
Batches = Iterable[tuple[Tensor, Tensor]]  # also needs a `num_samples` attribute
# Metrics that time the run: they differ between runs that are otherwise bit for bit the same.
TIMING_METRICS = ("samples_per_s", "epoch_time")


@dataclass
class FitResult:
    """What `fit` returns. `stop_reason`: completed | early_stopped | diverged | pruned."""

    monitor: str
    mode: str
    best: float | None  # best monitored value seen (None if never measured)
    best_epoch: int | None
    last: float | None  # the monitored value at the last epoch that measured it
    epochs_run: int
    stop_reason: str
    message: str = ""
    last_metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Trains `model` with `optimizer` on `loss_fn`; see module docstring.

    Args:
        task: the loss and the metrics (sums over the batch) to report.
        scheduler: optional LR scheduler; `ReduceLROnPlateau` is stepped with the monitored
            metric after each validation, the others without arguments.
        scheduler_interval: "epoch" (after each epoch) or "step" (after each optimizer step).
        val_every: validate every N epochs (and always after the last epoch).
        monitor, mode: the metric that defines "best" (e.g. val_loss, min).
        precision: "32", "bf16-mixed" or "16-mixed" (autocast; 16-mixed also scales the loss).
        compile: run the model through `torch.compile` (eager, with a warning, where it fails).
        cuda_graph: replay forward, backward and optimizer step as CUDA graphs: "auto" on CUDA
            wherever they apply (off elsewhere, and with 16-mixed or several processes; one log
            line says why on CUDA), True required (ValueError where they cannot apply), False
            off. See `acceleration.GraphedStep`.
        grad_clip: clip the global L2 norm of the gradients to this before each step; 0: off.
        accumulate_grad_batches: step the optimizer (and a step-interval scheduler) once every N
            batches; each batch's loss is divided by the number of batches in its window.
        matmul_precision: float32 matmul precision during fit/evaluate ("highest", "high" =
            TF32, "medium"); None leaves torch's setting alone.
        track_grad_norm: report grad_norm and grad_norm_max; off saves computing the norm at
            every optimizer step where nothing else needs it (grad_clip computes it anyway).
        grad_norm_every: measure the norm at every N-th optimizer step of an epoch (its first
            step always): on small models a norm costs as much as a good part of the step.
            Steps that clip, or that replay a CUDA graph, measure it anyway (no extra cost there).

    Metrics of an epoch besides the losses:
        lr: param group 0's learning rate as the epoch ends (an epoch-interval scheduler steps
            after this is read); lr_<i>: group i's (i >= 1, only with several param groups).
        grad_norm, grad_norm_max: the mean and the max over the epoch's measured optimizer
            steps (all, or every `grad_norm_every`-th) of the
            global L2 norm of the gradients that step applies, taken before clipping (with
            accumulation: once per window, of the window's mean gradient; with 16-mixed:
            unscaled, and 0 for the steps the GradScaler skipped as non-finite). Non-finite
            gradients make them non-finite. Summed on the device, inside the captured step
            with CUDA graphs, and read with the epoch's losses.
        samples_per_s: training samples of the epoch / seconds its training part took (without
            validation): the host's clock; on CUDA, events on the device's timeline (the host
            runs ahead of a GPU), read after the epoch's one host read.
        peak_memory_mib: CUDA only: `torch.cuda.max_memory_allocated` over the epoch (training
            and validation), in MiB (2**20 bytes); its peak is reset as each epoch starts.
        epoch_time: host seconds of the whole epoch, validation and the host read included.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        task: Task,
        *,
        device: torch.device,
        epochs: int,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        val_every: int = 1,
        monitor: str = "val_loss",
        mode: str = "min",
        callbacks: Sequence[Callback] = (),
        precision: str = "32",
        compile: bool = False,
        cuda_graph: bool | str = False,
        grad_clip: float = 0.0,
        accumulate_grad_batches: int = 1,
        matmul_precision: str | None = None,
        track_grad_norm: bool = True,
        grad_norm_every: int = 1,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.device = device
        self.epochs = epochs
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.val_every = val_every
        self.monitor = monitor
        self.mode = mode
        self.callbacks = list(callbacks)
        self.metric_names = task.metric_names()
        self._plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.precision = str(precision)
        self.grad_clip = grad_clip
        self.accumulate = accumulate_grad_batches
        self.matmul_precision = matmul_precision
        self.track_grad_norm = track_grad_norm
        self.grad_norm_every = max(1, int(grad_norm_every))
        self._epoch_steps = self._norm_samples = 0  # host counters: optimizer steps, measured ones
        # The epoch's [sum] and [max] of the gradient norm over optimizer steps. Updated in place
        # (and zeroed in place as an epoch starts): a captured step writes to these very tensors.
        self._grad_norm_sum = torch.zeros(1, device=device)
        self._grad_norm_max = torch.zeros(1, device=device)
        self._train_clock = acceleration.DeviceClock(device)
        self.graphed: acceleration.GraphedStep | None = None
        # auto: graphs on CUDA wherever they apply, else off (one log line says why on CUDA);
        # True: required (ValueError where they cannot apply); False: off.
        use_graphs, why_not = acceleration.cuda_graph_decision(cuda_graph, device, self.precision,
                                                               distributed.active())
        if why_not is not None:
            log.info("trainer.cuda_graph=auto: CUDA graphs off (%s)", why_not)
        if use_graphs:
            acceleration.make_capturable(optimizer)
            self.graphed = acceleration.GraphedStep(self.train_step, optimizer, device,
                                                    required=cuda_graph is True)
        # `self.model` stays the module itself (checkpoints save its state_dict); `self.forward`
        # is what the loop calls: the module, or its compiled version.
        # Several processes: `self.ddp` is the DistributedDataParallel wrapper (None otherwise).
        self.world_size, self.rank = distributed.world_size(), distributed.rank()
        self.ddp = distributed.wrap(model.to(device), device) if distributed.active() else None
        self.forward = acceleration.CompiledModule(self.ddp or model) if compile else (self.ddp or model)
        # Evaluation needs no gradient sync: the module itself (each rank evaluates its part).
        self.eval_forward = self.forward if self.ddp is None else (
            acceleration.CompiledModule(model) if compile else model)
        # Every rank's random generators, gathered on rank 0 at each epoch's end (checkpoints
        # store them); None outside a process group.
        self.rank_rng_states: list[dict[str, Any]] | None = None
        self._no_context = nullcontext()  # reusable: what a step runs under without DDP's no_sync
        self.autocast = acceleration.autocast_context(device, self.precision,
                                                      cache_enabled=self.graphed is None)
        self.scaler = acceleration.grad_scaler(device, self.precision)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Gradients are freed right before a window's first backward, which then reuses their
        # memory (freed any earlier, the next forward takes it: measurably slower on CPUs).
        # CUDA graphs that accumulate across batches replay into the same buffers: zeroed.
        self._grads_to_none = self.graphed is None or self.accumulate == 1
        # Loop state, visible to callbacks.
        self.epoch = 0  # epochs completed
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.improved = False  # whether the epoch that just ended set a new best
        self.should_stop = False
        self.stop_reason = "completed"
        self.stop_message = ""
        self.last: float | None = None  # the monitored value at the last epoch that measured it
        self.history: list[dict[str, float]] = []
        self.train_batches: Batches | None = None  # what `fit` is training on (checkpoints save its order)

    # ------------------------------------------------------------------ control from callbacks
    def request_stop(self, reason: str, message: str = "") -> None:
        """Ask the loop to stop after the current epoch (callbacks call this)."""
        if not self.should_stop:
            self.should_stop, self.stop_reason, self.stop_message = True, reason, message

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """The loop's own state (model, optimizer, RNGs etc. are saved by the Checkpoint callback):
        epochs done, best/last monitored values, the stop decision, and every epoch's metrics."""
        return {
            "epoch": self.epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "last": self.last,
            "should_stop": self.should_stop,
            "stop_reason": self.stop_reason,
            "stop_message": self.stop_message,
            "history": [dict(metrics) for metrics in self.history],
            # float16 loss scale and its growth tracker (empty unless precision=16-mixed)
            "grad_scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`: the next `fit` starts at epoch `state["epoch"] + 1`."""
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.last = state["last"]
        self.should_stop, self.stop_reason = state["should_stop"], state["stop_reason"]
        self.stop_message = state["stop_message"]
        self.history = [dict(metrics) for metrics in state["history"]]
        if state.get("grad_scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])

    # ------------------------------------------------------------------ the loop
    def fit(self, train: Batches, val: Batches | None) -> FitResult:
        """Train for the remaining epochs; return the monitored metric's best and last values."""
        with acceleration.matmul_precision(self.matmul_precision):
            return self._fit(train, val)

    def _fit(self, train: Batches, val: Batches | None) -> FitResult:
        self.model.to(self.device)
        self.train_batches = train
        self._emit("on_fit_start")
        while self.epoch < self.epochs and not self.should_stop:
            epoch = self.epoch + 1
            started = time.perf_counter()
            self._start_health()
            self._train_clock.start()
            train_sums, steps = self.train_epoch(train)
            self._train_clock.stop()
            validate = val is not None and (epoch % self.val_every == 0 or epoch == self.epochs)
            sums = [train_sums]
            if validate:
                sums.append(self._eval_sums(val))
            # Loss and metric sums over every rank's samples (the gradients, and so their norm,
            # are the same on every rank: not summed).
            sums = [distributed.sum_over_ranks(torch.cat(sums))]
            if self.track_grad_norm:
                sums += [self._grad_norm_sum, self._grad_norm_max]
            # The one host read of the epoch.
            values = torch.cat(sums).tolist()
            metrics: dict[str, float] = {"epoch": epoch, "train_loss": values[0] / train.num_samples}
            if validate:
                names = ["val_loss", *(f"val_{name}" for name in self.task.metrics)]
                metrics.update(
                    {name: v / val.num_samples for name, v in zip(names, values[1:])}
                )
            metrics.update(self._health_metrics(values, steps, train.num_samples))
            metrics["epoch_time"] = time.perf_counter() - started
            self.epoch = epoch

            self.improved = False
            value = metrics.get(self.monitor)
            if value is not None:
                self.last = value
                if improves(value, self.best, self.mode):
                    self.best, self.best_epoch, self.improved = value, epoch, True

            losses = [metrics[k] for k in ("train_loss", "val_loss") if k in metrics]
            if not all(math.isfinite(v) for v in losses):
                self.request_stop(
                    "diverged",
                    f"non-finite loss at epoch {epoch} "
                    f"({', '.join(f'{k}={metrics[k]}' for k in ('train_loss', 'val_loss') if k in metrics)}): "
                    "training stopped; lower optimizer.lr or add trainer.grad_clip",
                )

            self.history.append(metrics)
            # Step before the callbacks so a checkpoint written at this epoch's end holds the
            # schedule as the next epoch will use it.
            if not self.should_stop and self.scheduler is not None and self.scheduler_interval == "epoch":
                if not self._plateau:
                    self.scheduler.step()
                elif value is not None:
                    self.scheduler.step(value)
            if self.ddp is not None:
                self.rank_rng_states = distributed.gather_to_main(rng_state(self.device))
            self._emit("on_epoch_end", metrics)
            if self.ddp is not None:  # rank 0's callbacks decided: every rank follows
                self.should_stop, self.stop_reason, self.stop_message = distributed.from_main(
                    (self.should_stop, self.stop_reason, self.stop_message))

        result = FitResult(
            monitor=self.monitor,
            mode=self.mode,
            best=self.best,
            best_epoch=self.best_epoch,
            last=self.last,
            epochs_run=self.epoch,
            stop_reason=self.stop_reason,
            message=self.stop_message,
            last_metrics=self.history[-1] if self.history else {},
        )
        self._emit("on_fit_end", result)
        return result

    def train_epoch(self, batches: Batches) -> tuple[Tensor, int]:
        """One pass over `batches`, updating the model. Returns ([loss_sum] on the device, the
        number of optimizer steps)."""
        self.model.train()
        loss_sum = torch.zeros(1, device=self.device)
        step_scheduler = self.scheduler is not None and self.scheduler_interval == "step"
        train_step = self.graphed.step if self.graphed is not None else self.train_step
        k = self.accumulate
        n_batches = len(batches) if hasattr(batches, "__len__") else None
        i = steps = 0
        for i, (x, y) in enumerate(batches, start=1):
            # Batches in this accumulation window: k, or fewer in the epoch's last window.
            window = k if n_batches is None else min(k, n_batches - (i - 1) // k * k)
            first, update = (i - 1) % k == 0, i % k == 0 or i == n_batches
            if self.ddp is None:
                loss = train_step(x, y, window, first, update)
            else:
                loss = self.train_step(x, y, window, first, update, share=self._share(batches, i, y))
            loss_sum += loss * y.shape[0]
            steps += update
            if update and step_scheduler:
                self.scheduler.step()
        if n_batches is None and i % k != 0:  # an iterable of unknown length: step what is left
            self.optimizer_step()
            steps += 1
            if step_scheduler:
                self.scheduler.step()
        return loss_sum, steps

    def _share(self, batches: Batches, i: int, y: Tensor) -> float:
        """Several processes: this rank's samples in the `i`-th global batch times the number of
        ranks, over the global batch's samples (host figures: the batches' global `batch_size`
        and `num_samples`, and the local batch's shape). DDP averages the ranks' gradients, so
        weighting each rank's mean loss by this makes the step follow the global batch's mean."""
        size = min(batches.batch_size, batches.num_samples - (i - 1) * batches.batch_size)
        return y.shape[0] * self.world_size / size

    def train_step(self, x: Tensor, y: Tensor, window: int = 1, first: bool = True,
                   update: bool = True, share: float = 1.0) -> Tensor:
        """One batch: forward, zero the gradients if it is the `first` of its accumulation
        window, backward (adding to `.grad`), and with `update` clip and step. Returns the
        detached batch-mean loss.

        The loss is divided by `window` (the batches accumulated into one optimizer step), so
        the step follows the mean gradient of the window. Several processes: it is also
        weighted by this rank's `share` of the global batch (`_share`), batches before a
        window's last skip DDP's all-reduce (`no_sync`), and a rank whose part of a batch is
        empty still takes part in the step's all-reduce, with zero gradients."""
        with self.ddp.no_sync() if self.ddp is not None and not update else self._no_context:
            with self.autocast:
                out = self.forward(x)
                # An empty part: the loss of no samples is NaN; out.sum() is 0 and reaches every weight.
                loss = self.task.loss(out, y) if y.shape[0] else out.sum()
            if first:
                self.optimizer.zero_grad(set_to_none=self._grads_to_none)
            scaled = loss / window if window > 1 else loss
            self.scaler.scale(scaled * share if share != 1 else scaled).backward()
        if update:
            self.optimizer_step()
        return loss.detach()

    def optimizer_step(self) -> None:
        """Clip (optionally) and step; with `track_grad_norm`, add the pre-clip gradient norm
        to the epoch's sum and max. No host sync: the norm is not read back here, and
        non-finite gradients surface as non-finite losses and grad_norm at the epoch's end."""
        measure = self.track_grad_norm and (self.grad_clip > 0 or self.graphed is not None
                                            or self._epoch_steps % self.grad_norm_every == 0)
        self._epoch_steps += 1
        self._norm_samples += measure
        if self.grad_clip > 0 or measure:
            self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            # foreach=None: multi-tensor kernels wherever the device has them (CPU and CUDA do).
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip,
                                                  error_if_nonfinite=False, foreach=None)
        elif measure:
            norm = grad_norm(self.params)
        if measure:
            if self.scaler.is_enabled():  # the scaler skips non-finite steps: they apply nothing
                norm = torch.nan_to_num(norm, nan=0.0, posinf=0.0, neginf=0.0)
            self._grad_norm_sum += norm
            torch.maximum(self._grad_norm_max, norm, out=self._grad_norm_max)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _start_health(self) -> None:
        """Zero the gradient-norm sums (in place: captured steps hold them) and the memory peak."""
        self._epoch_steps = self._norm_samples = 0
        if self.track_grad_norm:
            self._grad_norm_sum.zero_()
            self._grad_norm_max.zero_()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _health_metrics(self, values: list[float], steps: int, num_samples: int) -> dict[str, float]:
        """Learning rates and training health of the epoch just read back (`values`: the
        epoch's host read, which ends with the gradient-norm sum and max)."""
        metrics = {"lr": self.optimizer.param_groups[0]["lr"]}
        for i, group in enumerate(self.optimizer.param_groups[1:], start=1):
            metrics[f"lr_{i}"] = group["lr"]
        # Replayed CUDA graphs measure every step without passing through the host counter.
        measured = steps if self.graphed is not None else self._norm_samples
        if self.track_grad_norm and measured:
            metrics["grad_norm"] = values[-2] / measured
            metrics["grad_norm_max"] = values[-1]
        seconds = self._train_clock.seconds()
        if seconds > 0:
            metrics["samples_per_s"] = num_samples / seconds
        if self.device.type == "cuda":
            metrics["peak_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return metrics

    def metric_columns(self) -> list[str]:
        """Every key an epoch's metrics can have, in the order loggers show them."""
        groups = [f"lr_{i}" for i in range(1, len(self.optimizer.param_groups))]
        val = [f"val_{name}" for name in self.task.metrics]
        grad = ["grad_norm", "grad_norm_max"] if self.track_grad_norm else []
        memory = ["peak_memory_mib"] if self.device.type == "cuda" else []
        return ["epoch", "train_loss", "val_loss", "lr", *groups, *val, *grad, "samples_per_s",
                *memory, "epoch_time"]

    @torch.no_grad()
    def _eval_sums(self, batches: Batches) -> Tensor:
        """[loss_sum, metric_sums...] over `batches`, in eval mode, on the device."""
        self.model.eval()
        sums = torch.zeros(1 + len(self.task.metrics), device=self.device)
        for x, y in batches:
            if not y.shape[0]:  # this rank's part of a batch smaller than the number of ranks
                continue
            with self.autocast:
                out = self.eval_forward(x)
            out = out.float()  # loss and metrics in float32 whatever the autocast dtype
            parts = [self.task.loss(out, y) * y.shape[0]]
            parts += [fn(out, y) for fn in self.task.metrics.values()]
            sums += torch.stack([p.float() for p in parts])
        return sums

    def evaluate(self, batches: Batches, prefix: str = "test") -> dict[str, float]:
        """Loss and task metrics over `batches` as `{prefix}_loss`, `{prefix}_<metric>`."""
        with acceleration.matmul_precision(self.matmul_precision):
            values = distributed.sum_over_ranks(self._eval_sums(batches)).tolist()
        names = ["loss", *self.task.metrics]
        return {f"{prefix}_{name}": v / batches.num_samples for name, v in zip(names, values)}

    def _emit(self, hook: str, *args: Any) -> None:
        if self.rank != 0:  # callbacks write the run's records and talk to Optuna: rank 0 only
            return
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def grad_norm(params: list[Tensor]) -> Tensor:
    """The global L2 norm of the gradients of `params` (all on one device), as a device scalar.

    What `clip_grad_norm_` and `get_total_norm` compute, without their grouping by device and
    dtype: on a small model on the CPU that grouping takes as long as the norm itself."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
