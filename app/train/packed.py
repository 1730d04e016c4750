"""Train a pack of K runs of one model shape as one vectorized model (`torch.func`).

Each member is a real run built by `app.run.build.build_run`: its own model (initialised with its
own seed, exactly as a lone run), optimizer and scheduler (its hyperparameters), training batches
(its own shuffle order), callbacks (early stopping, checkpoints, metrics.csv, loggers) and
`Trainer` (its loop state: epoch, best, history, the stop decision). `PackedTrainer` trains them
together:

- parameters: one [K, P] tensor (row k: member k's parameters, flattened); buffers (BatchNorm
  statistics) stacked per member; forward and backward are one `vmap` of
  `torch.func.functional_call` over the members (dropout masks drawn per member:
  randomness="different"), each member on its own batch;
- the optimizer step: `app.train.stacked_optim.StackedOptimizer`, one update of the [K, P] tensor
  equal to each member's torch.optim step with its own hyperparameters (schedulers step each
  member's own optimizer; the pack reads the learning rates from there);
- each epoch, one host read for the whole pack; then, member by member, what `Trainer.fit` does at
  an epoch's end: best/last, the divergence check, the history, the epoch-interval scheduler step,
  the callbacks (the member's model and optimizer hold its slice of the pack by then, so its
  checkpoint is a plain single-model state, written by the usual Checkpoint callback);
- a member that stops (early stopping, divergence, pruning, its last epoch) stops updating at once
  (its row is masked); when a quarter of the rows are stopped members, the pack is compacted to
  the running ones, so stopped members stop costing compute.

Members may be at different epochs (a resumed pack whose members' last checkpoints differ) and may
have different epoch counts, validation intervals, early stopping and gradient clipping.
`unpackable` says why runs cannot be packed (the caller then trains them one at a time).
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from app.callbacks.base import improves
from app.callbacks.checkpoint import load_checkpoint
from app.data.batches import TensorBatches
from app.train import acceleration
from app.train.stacked_optim import StackedOptimizer, unsupported
from app.train.trainer import FitResult

# Compact the pack once at least this fraction of its rows belongs to stopped members.
COMPACT_FRACTION = 0.25


def unpackable_config(cfg: Any) -> str | None:
    """Why runs of `cfg` cannot train in a pack (a setting packs do not support), or None."""
    t = cfg.trainer
    if cfg.get("debug") is not None:
        return f"debug={cfg.debug.mode} runs check one run at a time"
    if str(t.precision) != "32":
        return f"trainer.precision={t.precision}: packs train in float32"
    if t.compile:
        return "trainer.compile=true: packs are not compiled"
    if t.accumulate_grad_batches != 1:
        return "trainer.accumulate_grad_batches > 1: packs step every batch"
    if t.get("devices", 1) > 1:
        return "trainer.devices > 1: a pack trains on one process"
    return None


def unpackable(runs: Sequence[Any]) -> str | None:
    """Why these built runs (app.run.build.Run) cannot train as one pack, or None when they can:
    their model shapes, batches or optimizers differ, or the model cannot be vectorized."""
    first = runs[0]
    shapes = [[(n, tuple(p.shape), p.dtype) for n, p in r.model.named_parameters()] for r in runs]
    if any(s != shapes[0] for s in shapes):
        return "the members' models differ in shape"
    if any(not p.requires_grad for p in first.model.parameters()):
        return "the model has frozen parameters (requires_grad=False)"
    if any(p.dtype != torch.float32 for p in first.model.parameters()):
        return "the model has parameters that are not float32"
    if any(type(r.model) is not type(first.model) for r in runs):
        return "the members' model classes differ"
    sizes = {(len(r.train), r.train.num_samples, getattr(r.train, "batch_size", None)) for r in runs}
    if len(sizes) > 1:
        return "the members' training batches differ in size"
    reason = unsupported([r.optimizer for r in runs])
    if reason is not None:
        return reason
    return _vmap_failure(first)


def _vmap_failure(run: Any) -> str | None:
    """Try a vectorized forward and backward of two copies of the model on two samples; the
    reason it fails, or None. The global random generators are left as they were."""
    model = run.model
    # On the run's device, where its batches are (the model moves there only when it is fitted).
    params = {n: torch.stack([p.detach().to(run.device)] * 2).requires_grad_(True)
              for n, p in model.named_parameters()}
    buffers = {n: torch.stack([b.detach().to(run.device, copy=True)] * 2) for n, b in model.named_buffers()}
    x, y = next(iter(run.val))
    x, y = torch.stack([x[:2]] * 2), torch.stack([y[:2]] * 2)
    devices = [run.device] if run.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            out = vmap(lambda p, b, xb: functional_call(model, (p, b), (xb,)), randomness="different")(
                params, buffers, x)
            vmap(run.task.loss)(out, y).sum().backward()
    except Exception as error:  # noqa: BLE001 -- any failure means: train it alone
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(model).__name__} cannot be vectorized with torch.func.vmap ({type(error).__name__}: {text[:200]})"
    return None


@dataclass
class _Layout:
    name: str
    start: int
    end: int
    shape: tuple[int, ...]


class PackedTrainer:
    """Trains the built runs `runs` (app.run.build.Run, checked with `unpackable`) as one pack;
    `fit()` returns each member's FitResult, in the order of `runs`. See module docstring."""

    def __init__(self, runs: Sequence[Any], cuda_graph: bool | str | None = None) -> None:
        self.runs = list(runs)
        first = self.runs[0]
        self.device, self.task = first.device, first.task
        self.template = first.model  # the module `functional_call` runs with each member's tensors
        self.layout: list[_Layout] = []
        offset = 0
        for name, param in first.model.named_parameters():
            self.layout.append(_Layout(name, offset, offset + param.numel(), tuple(param.shape)))
            offset += param.numel()
        self.buffer_names = [name for name, _ in first.model.named_buffers()]
        self.rows = list(range(len(self.runs)))  # row of the pack -> index into runs
        self.finished = [False] * len(self.runs)
        self.results: list[FitResult | None] = [None] * len(self.runs)
        self.clock = acceleration.DeviceClock(self.device)
        self._active_rows: list[int] | None = None
        self._active: Tensor | None = None
        # CUDA graphs (trainer.cuda_graph, the members' shared setting): the pack's whole step
        # (forward, loss, backward, norms and clipping, the stacked optimizer step, the loss sums)
        # replayed as one graph; see `_graph_epoch`.
        if cuda_graph is None:
            cfg = getattr(first, "cfg", None)
            cuda_graph = cfg.trainer.cuda_graph if cfg is not None else False
        self.use_graphs, why_not = acceleration.cuda_graph_decision(cuda_graph, self.device)
        self.graph_required = cuda_graph is True
        self.graphed: acceleration.GraphedStep | None = None
        self._share_data()
        # Checkpoints: a member's Checkpoint callback syncs its row into its model before each
        # write; with `pack_interval_s` > 0 the pack holds the member (its writes at most every
        # that many seconds, all members at one epoch; its best weights kept here meanwhile).
        self.checkpoints = [getattr(run, "checkpoint", None) for run in self.runs]
        intervals = [c.pack_interval_s for c in self.checkpoints if c is not None and c.pack_interval_s > 0]
        self.write_interval = min(intervals) if intervals else None
        self._synced: dict[int, int] = {}  # member -> the optimizer step its model holds
        self.best_flat: Tensor | None = None
        self.best_buffers: dict[str, Tensor] = {}
        # Other callbacks read a member's model at its epoch end unless they say they do not.
        self.reads_model = [any(getattr(cb, "reads_model", True) for cb in run.trainer.callbacks
                                if cb is not self.checkpoints[i]) for i, run in enumerate(self.runs)]

    # ------------------------------------------------------------------ pack <-> members
    def _stack(self) -> None:
        """Build the stacked tensors from the members' own model and optimizer state."""
        models = [self.runs[i].model for i in self.rows]
        for model in models:
            model.to(self.device)
        self.flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
        self.flat.requires_grad_(True)
        self.buffers = {name: torch.stack([dict(m.named_buffers())[name].detach() for m in models]).clone()
                        for name in self.buffer_names}
        self.optimizer = StackedOptimizer([self.runs[i].optimizer for i in self.rows],
                                          [list(m.parameters()) for m in models], self.flat)
        for i in self.rows:
            checkpoint = self.checkpoints[i]
            if checkpoint is not None:
                held = self.write_interval is not None and checkpoint.pack_interval_s > 0
                checkpoint.join_pack(lambda i=i: self._write_member(self.rows.index(i)),
                                     (lambda i=i: self._best_state(self.rows.index(i))) if held else None)
        if any(c is not None and c.held for c in self.checkpoints):
            self._stack_best(models)
        self._new_layout()

    def _stack_best(self, models: list[torch.nn.Module]) -> None:
        """The members' best weights so far, stacked as the pack's parameters: a member's
        current weights, or those of its best.pt when it resumes after its best epoch."""
        rows = []
        for i, model in zip(self.rows, models):
            trainer, checkpoint = self.runs[i].trainer, self.checkpoints[i]
            weights = {n: t.detach() for n, t in model.state_dict().items()}
            if (trainer.best_epoch is not None and trainer.best_epoch != trainer.epoch
                    and checkpoint is not None and checkpoint.best_path.exists()):
                weights = load_checkpoint(checkpoint.best_path)["model"]
            rows.append(weights)
        with torch.no_grad():
            self.best_flat = torch.stack([torch.cat([w[p.name].reshape(-1) for p in self.layout])
                                          for w in rows]).to(self.device)
            self.best_buffers = {n: torch.stack([w[n] if n in w else dict(m.named_buffers())[n]
                                                 for w, m in zip(rows, models)]).to(self.device)
                                 for n in self.buffer_names}

    def _best_state(self, row: int) -> dict[str, Tensor]:
        """Row `row`'s best weights as its model's state dict: copies, since torch.save writes a
        view's whole storage (here the whole pack's)."""
        state = {p.name: self.best_flat[row, p.start:p.end].view(p.shape) for p in self.layout}
        state.update({n: b[row] for n, b in self.best_buffers.items()})
        keys = self.template.state_dict().keys()  # (persistent buffers only, in the model's order)
        return {key: state[key].clone() for key in keys}

    def _keep_best(self, rows: list[int]) -> None:
        """Rows `rows` reached a new best this epoch: their weights become their best ones."""
        if self.best_flat is None or not rows:
            return
        index = torch.tensor(rows, device=self.device)
        with torch.no_grad():
            self.best_flat.index_copy_(0, index, self.flat.detach().index_select(0, index))
            for name, buffer in self.best_buffers.items():
                buffer.index_copy_(0, index, self.buffers[name].index_select(0, index))

    def _new_layout(self) -> None:
        """After stacking or compacting (new tensors, a new row count): the step's graphs are
        stale, and the mask is rebuilt."""
        self.graphed = None  # frees the old graphs (outside any capture)
        self._active_rows = None
        self._active = None
        self._graph_state: dict[str, Tensor] | None = None

    def _write_member(self, row: int) -> None:
        """Copy row `row` of the pack into its member's model and optimizer (for its callbacks:
        checkpoints save them), once per step of the pack."""
        if self._synced.get(self.rows[row]) == self.optimizer.steps[row]:
            return  # already holds this state
        self._synced[self.rows[row]] = self.optimizer.steps[row]
        model = self.runs[self.rows[row]].model
        with torch.no_grad():
            for part, param in zip(self.layout, model.parameters()):
                param.copy_(self.flat[row, part.start:part.end].view(part.shape))
            for name, buffer in model.named_buffers():
                buffer.copy_(self.buffers[name][row])
        self.optimizer.write_to(row)

    def _compact(self) -> None:
        keep = [row for row, i in enumerate(self.rows) if not self.finished[i]]
        index = torch.tensor(keep, device=self.device)
        with torch.no_grad():
            self.flat = self.flat.detach().index_select(0, index).requires_grad_(True)
            self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
            if self.best_flat is not None:
                self.best_flat = self.best_flat.index_select(0, index)
                self.best_buffers = {n: b.index_select(0, index) for n, b in self.best_buffers.items()}
        self.optimizer.keep(keep)
        self.rows = [self.rows[row] for row in keep]
        self._new_layout()

    def _params(self, detached: bool = False) -> dict[str, Tensor]:
        flat = self.flat.detach() if detached else self.flat
        return {p.name: flat[:, p.start:p.end].view(len(self.rows), *p.shape) for p in self.layout}

    def _forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.template, (params, buffers), (x,))

    def _active_mask(self, active: list[int]) -> Tensor:
        """[rows, 1] bool: the rows that step. One tensor per layout, updated in place (captured
        steps read it): a member that stops is masked without a new capture."""
        if active != self._active_rows:
            mask = torch.tensor([[row in active] for row in range(len(self.rows))])
            if self._active is None:
                self._active = mask.to(self.device)
            else:
                self._active.copy_(mask, non_blocking=True)
            self._active_rows = list(active)
        return self._active

    # ------------------------------------------------------------------ the loop
    def fit(self) -> list[FitResult]:
        matmul = self.runs[0].trainer.matmul_precision
        with acceleration.matmul_precision(matmul):
            self._fit()
        return [r for r in self.results]  # type: ignore[misc]

    def _fit(self) -> None:
        for i, run in enumerate(self.runs):
            run.model.to(self.device)
            run.trainer.train_batches = run.train
            _emit(run.trainer, "on_fit_start")
            if _done(run.trainer):
                self._finish(i)
        self.rows = [i for i in self.rows if not self.finished[i]]
        if not self.rows:
            return
        self._stack()
        self._last_write = time.monotonic()
        while self.rows:
            self._epoch()
            stopped = sum(self.finished[i] for i in self.rows)
            if stopped == len(self.rows):
                break
            if stopped and stopped >= COMPACT_FRACTION * len(self.rows):
                self._compact()

    def _epoch(self) -> None:
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        active = [row for row, i in enumerate(self.rows) if not self.finished[i]]
        trainers = [self.runs[self.rows[row]].trainer for row in range(len(self.rows))]
        epochs = {row: trainers[row].epoch + 1 for row in active}
        self.clock.start()
        train_epoch = self._graph_epoch if self.use_graphs else self._train_epoch
        loss_sums, norm_sum, norm_max, measured, steps = train_epoch(active)
        self.clock.stop()
        due = [row for row in active
               if epochs[row] % trainers[row].val_every == 0 or epochs[row] == trainers[row].epochs]
        parts = [loss_sums.unsqueeze(1), norm_sum.unsqueeze(1), norm_max.unsqueeze(1)]
        if due:
            parts.append(self._eval_sums(self.runs[self.rows[active[0]]].val))
        values = torch.cat(parts, dim=1).tolist()  # the one host read of the epoch
        seconds = self.clock.seconds()
        # Once for the pack (torch.cuda.memory_stats is not cheap, and the pack shares the device).
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        ended = []
        for row in active:
            run = self.runs[self.rows[row]]
            trainer = run.trainer
            num_samples = run.train.num_samples
            metrics: dict[str, float] = {"epoch": epochs[row], "train_loss": values[row][0] / num_samples}
            if row in due:
                names = ["val_loss", *(f"val_{name}" for name in self.task.metrics)]
                val_samples = run.val.num_samples
                metrics.update({name: v / val_samples for name, v in zip(names, values[row][3:])})
            metrics.update(self._health(trainer, values[row], measured[row], num_samples, seconds, peak))
            metrics["epoch_time"] = time.perf_counter() - started
            _record_epoch(trainer, metrics)
            ended.append((row, metrics))
        self._keep_best([row for row, _ in ended if trainers[row].improved])
        if self.write_interval is not None and time.monotonic() - self._last_write >= self.write_interval:
            self._last_write = time.monotonic()  # every held member writes at its next due epoch
            for row in active:
                checkpoint = self.checkpoints[self.rows[row]]
                if checkpoint is not None and checkpoint.held:
                    checkpoint.request_write()
        for row, metrics in ended:
            i = self.rows[row]
            if self.reads_model[i]:
                self._write_member(row)
            _emit(self.runs[i].trainer, "on_epoch_end", metrics)
            if _done(self.runs[i].trainer):
                self._finish(i)

    def _train_epoch(self, active: list[int]) -> tuple[Tensor, Tensor, Tensor, list[int], int]:
        """One pass of every active member over its own batches. Returns the per-row sums of
        the loss (x samples), of the measured gradient norms, their max, the number of steps
        measured per row and the number of steps."""
        rows = len(self.rows)
        runs = [self.runs[self.rows[row]] for row in range(rows)]
        trainers = [run.trainer for run in runs]
        self.template.train()
        loss_sums = torch.zeros(rows, device=self.device)
        norm_sum = torch.zeros(rows, device=self.device)
        norm_max = torch.zeros(rows, device=self.device)
        mask = self._active_mask(active)
        clip = torch.tensor([[float(t.grad_clip)] for t in trainers]).to(self.device, non_blocking=True)
        clipping = any(t.grad_clip > 0 for t in trainers)
        track = any(t.track_grad_norm for t in trainers)
        every = trainers[active[0]].grad_norm_every
        stepping = [row for row in active if runs[row].scheduler is not None
                    and trainers[row].scheduler_interval == "step"]
        batches = self._batches(active)
        forward = vmap(self._forward, in_dims=(0, 0, 0), randomness="different")
        clips = (clip.squeeze(1) > 0).to(clip.dtype)
        steps, measured = 0, [0] * rows
        for x, y in batches:
            losses = vmap(self.task.loss)(forward(self._params(), self.buffers, x), y)
            self.flat.grad = None
            losses.sum().backward()
            grad = self.flat.grad
            # As Trainer.optimizer_step: the norm at every `every`-th step, and at every step of
            # a member that clips (it is computed anyway).
            every_rows = track and steps % every == 0
            if every_rows or clipping:
                norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
                if clipping:  # as clip_grad_norm_: scale by max_norm / (norm + 1e-6) where that is < 1
                    coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
                    grad = grad * torch.where(clip > 0, coef, torch.ones_like(coef))
                if track:
                    taken = norm.squeeze(1) if every_rows else norm.squeeze(1) * clips
                    norm_sum += taken
                    torch.maximum(norm_max, taken, out=norm_max)
                    for row in range(rows):
                        measured[row] += every_rows or trainers[row].grad_clip > 0
            self.optimizer.step(self.flat, grad, None if len(active) == rows else mask)
            self.optimizer.count(active)
            loss_sums += losses.detach() * y.shape[1]
            steps += 1
            with _scheduling():
                for row in stepping:
                    runs[row].scheduler.step()
        self.flat.grad = None
        return loss_sums, norm_sum, norm_max, measured, steps

    def _batches(self, active: list[int]) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of stacked batches (x [rows, batch, ...], y [rows, batch, ...]): row r
        holds its member's own batch, a row that does not step the first active member's.

        When the members cut their batches from one shared split (`self.shared`: equal
        tensors, see `_share_data`), each step is one indexing of that split with every row's
        positions (the members' own orders, drawn from their own generators as their iterators
        would draw them), not an index per member and a stack."""
        rows = len(self.rows)
        batches = [self.runs[self.rows[row]].train for row in active]
        if self.shared is None:
            filler = active[0]
            for step in zip(*batches):
                by_row = dict(zip(active, step))
                yield (torch.stack([by_row.get(row, by_row[filler])[0] for row in range(rows)]),
                       torch.stack([by_row.get(row, by_row[filler])[1] for row in range(rows)]))
            return
        x, y = self.shared
        bounds = batches[0].bounds()
        if not batches[0].shuffle:
            for start, end in bounds:
                yield x[start:end].expand(rows, *x[start:end].shape), y[start:end].expand(rows, *y[start:end].shape)
            return
        orders = dict(zip(active, (b.next_order() for b in batches)))
        order = torch.stack([orders.get(row, orders[active[0]]) for row in range(rows)])
        order = order.to(x.device, non_blocking=True)  # one copy per epoch (see TensorBatches)
        for start, end in bounds:
            index = order[:, start:end]
            yield x[index], y[index]

    def _share_data(self) -> None:
        """`self.shared`: the members' one training split (x, y), when every member batches
        the same tensors the same way (TensorBatches on the device, one process); else None."""
        self.shared = None
        batches = [run.train for run in self.runs]
        first = batches[0]
        if not all(type(b) is TensorBatches and b.on_device and b.world_size == 1 for b in batches):
            return
        if any((b.batch_size, b.shuffle, b.drop_last, b.num_samples) !=
               (first.batch_size, first.shuffle, first.drop_last, first.num_samples) for b in batches):
            return
        x, y = first.tensors
        if all(b.tensors[0] is x and b.tensors[1] is y or
               (b.tensors[0].shape == x.shape and b.tensors[1].shape == y.shape
                and torch.equal(b.tensors[0], x) and torch.equal(b.tensors[1], y)) for b in batches):
            self.shared = (x, y)

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_epoch(self, active: list[int]) -> tuple[Tensor, Tensor, Tensor, list[int], int]:
        """`_train_epoch` with the step replayed as CUDA graphs (`acceleration.GraphedStep`: an
        eager step the first time a batch shape is seen, a capture the second, replays after).

        What the captured step reads lives in tensors kept for the layout and updated in place
        outside the graph: the parameters, buffers and optimizer state, the hyperparameters
        (`StackedOptimizer.hyperparameters`, refreshed before each replay: a scheduler's new lr
        is a host-to-device copy, no new capture), the active mask (a member that stops is
        masked, no new capture), the clipping thresholds and the epoch's sums. Only compaction
        (fewer rows: new shapes) captures anew. Every step is masked and measures the gradient
        norm (as replayed single runs do), so no step depends on a host-side counter."""
        rows = len(self.rows)
        runs = [self.runs[self.rows[row]] for row in range(rows)]
        trainers = [run.trainer for run in runs]
        self.template.train()
        self._active_mask(active)
        if self._graph_state is None:
            zeros = lambda: torch.zeros(rows, device=self.device)  # noqa: E731
            self._graph_state = {
                "loss_sums": zeros(), "norm_sum": zeros(), "norm_max": zeros(),
                "clip": torch.tensor([[float(t.grad_clip)] for t in trainers], device=self.device),
            }
            self._clipping = any(t.grad_clip > 0 for t in trainers)
            self._tracking = any(t.track_grad_norm for t in trainers)
            self.graphed = acceleration.GraphedStep(self._graph_step, None, self.device,
                                                    required=self.graph_required)
        g = self._graph_state
        for name in ("loss_sums", "norm_sum", "norm_max"):
            g[name].zero_()
        stepping = [row for row in active if runs[row].scheduler is not None
                    and trainers[row].scheduler_interval == "step"]
        batches = self._batches(active)
        steps = 0
        # The members' current settings, in place: they change only when a scheduler steps.
        self.optimizer.hyperparameters()
        for x, y in batches:
            self.graphed.step(x, y, 1, True, True)
            self.optimizer.count(active)
            steps += 1
            if stepping:
                with _scheduling():
                    for row in stepping:
                        runs[row].scheduler.step()
                self.optimizer.hyperparameters()
        measured = [steps if self._tracking else 0] * rows  # every step, replayed or not
        return g["loss_sums"], g["norm_sum"], g["norm_max"], measured, steps

    def _graph_step(self, x: Tensor, y: Tensor, window: int, first: bool, update: bool) -> Tensor:
        """The pack's whole training step on stacked batches `x`, `y` ([rows, batch, ...]), for
        capture: no host reads, no branches on tensor values. Returns the per-row losses."""
        g = self._graph_state
        forward = vmap(self._forward, in_dims=(0, 0, 0), randomness="different")
        losses = vmap(self.task.loss)(forward(self._params(), self.buffers, x), y)
        (grad,) = torch.autograd.grad(losses.sum(), self.flat)
        if self._tracking or self._clipping:
            norm = torch.linalg.vector_norm(grad, dim=1, keepdim=True)
            if self._clipping:  # as clip_grad_norm_: scale by max_norm / (norm + 1e-6) where < 1
                clip = g["clip"]
                coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
                grad = grad * torch.where(clip > 0, coef, torch.ones_like(coef))
            if self._tracking:  # (rows that do not step are not reported)
                taken = norm.squeeze(1)
                g["norm_sum"].add_(taken)
                torch.maximum(g["norm_max"], taken, out=g["norm_max"])
        self.optimizer.step(self.flat, grad, self._active)
        losses = losses.detach()
        g["loss_sums"].add_(losses * y.shape[1])
        return losses

    @torch.no_grad()
    def _eval_sums(self, batches: Any) -> Tensor:
        """[rows, 1 + metrics]: each row's loss and metric sums over `batches`, in eval mode."""
        self.template.eval()
        forward = vmap(self._forward, in_dims=(0, 0, None), randomness="different")
        params = self._params(detached=True)
        sums = torch.zeros(len(self.rows), 1 + len(self.task.metrics), device=self.device)
        for x, y in batches:
            out = forward(params, self.buffers, x).float()
            parts = [vmap(self.task.loss, in_dims=(0, None))(out, y) * y.shape[0]]
            parts += [vmap(fn, in_dims=(0, None))(out, y) for fn in self.task.metrics.values()]
            sums += torch.stack([p.float() for p in parts], dim=1)
        return sums

    def _health(self, trainer: Any, values: list[float], measured: int, num_samples: int,
                seconds: float, peak: float | None) -> dict[str, float]:
        """The member's learning rates and training health, as `Trainer` reports them."""
        metrics = {"lr": trainer.optimizer.param_groups[0]["lr"]}
        if trainer.track_grad_norm and measured:
            metrics["grad_norm"] = values[1] / measured
            metrics["grad_norm_max"] = values[2]
        if seconds > 0:
            metrics["samples_per_s"] = num_samples / seconds
        if peak is not None:
            metrics["peak_memory_mib"] = peak
        return metrics

    def _finish(self, i: int) -> None:
        trainer = self.runs[i].trainer
        if i in self.rows and getattr(self, "flat", None) is not None:
            self._write_member(self.rows.index(i))  # the member's model and optimizer: its final state
        self.finished[i] = True
        self.results[i] = result = FitResult(
            monitor=trainer.monitor, mode=trainer.mode, best=trainer.best, best_epoch=trainer.best_epoch,
            last=trainer.last, epochs_run=trainer.epoch, stop_reason=trainer.stop_reason,
            message=trainer.stop_message, last_metrics=trainer.history[-1] if trainer.history else {},
        )
        _emit(trainer, "on_fit_end", result)


# ----------------------------------------------------------------------------- a member's epoch end
def _emit(trainer: Any, hook: str, *args: Any) -> None:
    for callback in trainer.callbacks:
        getattr(callback, hook)(trainer, *args)


def _done(trainer: Any) -> bool:
    return trainer.should_stop or trainer.epoch >= trainer.epochs


def _record_epoch(trainer: Any, metrics: dict[str, float]) -> None:
    """What `Trainer.fit` does once an epoch's metrics are read, for a member's `trainer`, before
    its callbacks' on_epoch_end: the monitored value's best and last, the divergence check, the
    history, the epoch-interval scheduler step (before the callbacks, so a checkpoint holds the
    next epoch's schedule)."""
    epoch = int(metrics["epoch"])
    trainer.epoch = epoch
    trainer.improved = False
    value = metrics.get(trainer.monitor)
    if value is not None:
        trainer.last = value
        if improves(value, trainer.best, trainer.mode):
            trainer.best, trainer.best_epoch, trainer.improved = value, epoch, True
    losses = {k: metrics[k] for k in ("train_loss", "val_loss") if k in metrics}
    if not all(math.isfinite(v) for v in losses.values()):
        trainer.request_stop(
            "diverged",
            f"non-finite loss at epoch {epoch} ({', '.join(f'{k}={v}' for k, v in losses.items())}): "
            "training stopped; lower optimizer.lr or add trainer.grad_clip",
        )
    trainer.history.append(metrics)
    scheduler = trainer.scheduler
    if not trainer.should_stop and scheduler is not None and trainer.scheduler_interval == "epoch":
        with _scheduling():
            _step_scheduler(scheduler, value)


def _step_scheduler(scheduler: Any, value: float | None) -> None:
    """An epoch's scheduler step: ReduceLROnPlateau with the monitored value, the others without."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step()
    elif value is not None:
        scheduler.step(value)


@contextmanager
def _scheduling():
    """Step members' schedulers without torch's warning that their optimizer has not stepped:
    the pack steps the members' parameters, not their torch optimizers."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        yield
