"""Speed options of the Trainer: mixed precision, torch.compile, CUDA-graph replay of the step,
and the float32 matmul precision. The loop in `app/train/trainer.py` stays plain; what it needs from
here is a context manager, a scaler, a callable model and, with CUDA graphs, `GraphedStep`;
and, to time its epochs, `DeviceClock`.

Nothing here synchronizes host and device per step.
"""
from __future__ import annotations

import gc
import logging
import time
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Hashable, Iterator

import torch
from torch import Tensor, nn

from app.config import MATMUL_PRECISIONS, PRECISIONS
from app.errors import ConfigError

log = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
COMPILE_BACKEND = "inductor"  # torch.compile's default; tests swap in a cheap backend


def check_device_options(precision: str, device: torch.device, cuda_graph: Any = False) -> None:
    """Refuse a precision this device cannot run (raises ConfigError naming trainer.precision),
    and `trainer.cuda_graph=true` (required) off a CUDA device."""
    if cuda_graph is True and device.type != "cuda":
        raise ConfigError(
            "trainer.cuda_graph", True, f"auto or false on {device.type} (auto turns CUDA graphs on "
            "wherever they apply)", "true requires CUDA graphs, and they need a CUDA device")
    precision = str(precision)
    if precision not in PRECISIONS:
        raise ConfigError("trainer.precision", precision, ", ".join(PRECISIONS))
    if precision == "16-mixed" and device.type == "cpu":
        raise ConfigError(
            "trainer.precision", precision, "32 or bf16-mixed on the CPU (16-mixed needs a CUDA or MPS GPU)",
            "float16 autocast with a GradScaler is a GPU feature",
        )
    if precision == "bf16-mixed" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "trainer.precision", precision, "32 or 16-mixed on this GPU",
            f"{torch.cuda.get_device_name(device)} has no bfloat16 support",
        )


def autocast_context(device: torch.device, precision: str, cache_enabled: bool = True) -> ContextManager:
    """A reusable context for forward passes: autocast to bf16/fp16, or nothing for "32".

    `cache_enabled=False` with CUDA graphs: autocast's cast cache must not outlive a capture.
    """
    dtype = AUTOCAST_DTYPES.get(str(precision))
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache_enabled)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler that is active only for "16-mixed" (float16 gradients underflow without it);
    disabled, `scale` returns the loss as is and `step` is `optimizer.step`.

    An enabled scaler reads `found_inf` on the host in `step` (a sync per step) unless the
    optimizer is fused (`optimizer.fused=true`), whose kernel takes the scale itself."""
    enabled = str(precision) == "16-mixed"
    return torch.amp.GradScaler(device.type if enabled else "cpu", enabled=enabled)


@contextmanager
def matmul_precision(value: str | None) -> Iterator[None]:
    """Set `torch.set_float32_matmul_precision(value)` inside the block and restore it after,
    so one run's setting does not leak into the next job of a sweep. None: leave it alone.

    highest: full float32; high: TF32 tensor cores on NVIDIA GPUs (about 8x the float32 matmul
    rate on Ampere and later, 10-bit mantissa products); medium: bfloat16 products."""
    if value is None:
        yield
        return
    if value not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision must be one of {MATMUL_PRECISIONS}, got {value!r}")
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(value)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class CompiledModule:
    """Calls `torch.compile(module)`; where compiling fails (no C++/Triton toolchain, a Python
    or platform torch.compile does not support, an op it cannot trace) it warns once and calls
    the module eagerly from then on. The module itself is untouched: its `state_dict` keeps the
    original keys (no `_orig_mod.` prefix), and `train()`/`eval()` on it still apply.

    Compiling happens at the first call of each new input shape or mode (train/eval), not here.
    """

    def __init__(self, module: nn.Module, mode: str | None = None) -> None:
        self.module = module
        self.compiled: Callable[..., Any] | None
        try:
            self.compiled = torch.compile(module, backend=COMPILE_BACKEND, mode=mode)
        except Exception as error:  # e.g. a Python version torch.compile does not support
            self.compiled = None
            _warn_fallback(error)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as error:
                # A genuine error in the model raises again below, from the eager call.
                self.compiled = None
                _warn_fallback(error)
        return self.module(*args, **kwargs)


def _warn_fallback(error: BaseException) -> None:
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    warnings.warn(f"trainer.compile: torch.compile failed ({type(error).__name__}: {reason[:300]}); "
                  "training continues without compiling", RuntimeWarning, stacklevel=3)


class DeviceClock:
    """Seconds from `start()` to `stop()` of work issued to `device`, without a host-device sync
    of its own: read `seconds()` only after something has waited for that work (the Trainer's
    one host read per epoch).

    On CUDA the two marks are events on the current stream, so the time is the device's: the host
    only queues kernels and would stop its clock before the GPU is done. Elsewhere, the host's
    clock (CPU work is done when the call returns)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events = None
        if device.type == "cuda":
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        self._started = self._stopped = 0.0

    def start(self) -> None:
        if self._events is not None:
            self._events[0].record(torch.cuda.current_stream(self.device))
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._events is not None:
            self._events[1].record(torch.cuda.current_stream(self.device))
        self._stopped = time.perf_counter()

    def seconds(self) -> float:
        if self._events is not None:
            return self._events[0].elapsed_time(self._events[1]) / 1000  # milliseconds
        return self._stopped - self._started


# ----------------------------------------------------------------------------- CUDA graphs
# trainer.cuda_graph=auto: past this many distinct step shapes (a new graph each), the batches
# change shape too often for graphs to pay (dynamic shapes): the run goes on eagerly.
AUTO_MAX_GRAPHS = 8


def cuda_graph_decision(setting: Any, device: torch.device, precision: str = "32",
                        distributed: bool = False) -> tuple[bool, str | None]:
    """Whether a run replays its steps as CUDA graphs under `trainer.cuda_graph=setting`
    (auto | True | False), and, when auto turns them off on CUDA, why (one sentence for the log;
    None where there is nothing to say: off on request, or off a CUDA device, where graphs never
    apply). True where they cannot apply raises ValueError (the app refuses those settings in its
    config checks first)."""
    auto = setting == "auto" and not isinstance(setting, bool)
    if not auto and not setting:
        return False, None
    if device.type != "cuda":
        if auto:
            return False, None
        raise ValueError(f"cuda_graph=True needs a CUDA device, not {device.type}")
    reason = None
    if str(precision) == "16-mixed":
        reason = ("precision 16-mixed: its GradScaler decides on the host whether to step, which a "
                  "graph cannot replay (bf16-mixed can)")
    elif distributed:
        reason = "several processes: DDP all-reduces gradients outside a captured graph"
    if reason is None:
        return True, None
    if auto:
        return False, reason
    raise ValueError(f"cuda_graph=True does not work with {reason}")


def make_capturable(optimizer: torch.optim.Optimizer) -> None:
    """Switch optimizers that have a `capturable` flag (Adam, AdamW, ...) to it: their step
    counter then lives on the device, so a replayed step advances it (a host counter would be
    frozen into the graph)."""
    for group in optimizer.param_groups:
        if "capturable" in group and not group["capturable"]:
            group["capturable"] = True
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                step = state.get("step")
                if isinstance(step, Tensor) and step.device != param.device:
                    state["step"] = step.to(param.device, torch.float32)


class GraphedStep:
    """Replays training steps as CUDA graphs: one launch instead of hundreds of small kernel
    launches, which is what small models on a GPU wait on.

    Wraps the Trainer's `train_step(x, y, window, first, update) -> detached loss []`: forward,
    zeroing the gradients (`first` of a window), backward of one batch and, with `update`,
    clip + optimizer step. A step is run eagerly the first time its key is seen, captured the
    second time, replayed after that. The key is the batch's shapes and dtypes, `window`,
    `first`, `update` and, for updates, the optimizer's scalar settings (betas, weight decay,
    ...), which a graph bakes in: the partial last batch of an epoch gets its own graph.

    The learning rate is not baked in where the optimizer can read it from device memory
    (`capturable` or `fused` ones: Adam, AdamW, ...): during a capture each param group's lr is
    a device tensor, refreshed from the group's float before a replay whenever a scheduler
    changed it (a fill kernel, no sync). `param_groups` keep plain floats for schedulers,
    logging and checkpoints. Other optimizers (SGD) bake the lr in: a new lr means one eager
    step and a new capture, so an lr that changes every step leaves their updates eager.

    Gradients: with one batch per step the whole step is one graph and its gradients live in
    the graph's memory (zero them with `set_to_none=True`); with accumulation they must stay
    allocated across graphs, accumulated in place (zero them with `set_to_none=False`).

    Eager steps run on a side stream (library handles and optimizer state are created there,
    outside any capture); every graph has its own memory pool. If a capture fails (an op that
    syncs with the host, say): `required` (trainer.cuda_graph=true) raises a ConfigError naming
    the option; otherwise (auto) one log line says why and everything runs eagerly from then on.
    Under auto, batches that keep changing shape (more than `AUTO_MAX_GRAPHS` live graphs, or
    eight times as many shapes seen) turn graphs off the same way.
    """

    def __init__(self, train_step: Callable[[Tensor, Tensor, int, bool, bool], Tensor],
                 optimizer: torch.optim.Optimizer | None, device: torch.device, required: bool = True) -> None:
        # A weak reference: the trainer owns this object, and a cycle would keep its graphs'
        # memory alive until a garbage collection (see `_capture` for why those must not run).
        self._train_step = weakref.WeakMethod(train_step)
        self.optimizer = optimizer
        self.device = device
        self.enabled = True
        self.required = required
        self._side = torch.cuda.Stream(device)
        # optimizer None: the step keeps its settings in device tensors of its own (a pack's
        # StackedOptimizer), nothing to key graphs on or swap in.
        groups = optimizer.param_groups if optimizer is not None else []
        self._lr: list[Tensor] | None = None  # per param group, read by captured updates
        if groups and all(g.get("capturable") or g.get("fused") for g in groups) and "lr" in groups[0]:
            self._lr = [torch.tensor(float(g["lr"]), device=device) for g in groups]
            self._lr_values = [float(g["lr"]) for g in groups]
        self._settings: Hashable = None  # the optimizer settings the update graphs were made with
        self._seen: set[Hashable] = set()
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}
        self.captures = 0  # graphs captured so far (tests and benchmarks read it)

    def step(self, x: Tensor, y: Tensor, window: int, first: bool, update: bool) -> Tensor:
        if not self.enabled:
            return self._train_step()(x, y, window, first, update)
        settings = self._optimizer_settings() if update else None
        if update and settings != self._settings:  # update graphs of older settings are stale
            self._settings = settings
            self._graphs = {k: v for k, v in self._graphs.items() if not k[-2]}
            self._seen = {k for k in self._seen if not k[-2]}
        key = (tuple(x.shape), x.dtype, tuple(y.shape), y.dtype, window, first, update, settings)
        entry = self._graphs.get(key)
        if entry is None:
            if not self.required and (len(self._graphs) >= AUTO_MAX_GRAPHS
                                      or len(self._seen) >= 8 * AUTO_MAX_GRAPHS):
                self.disable(f"the batches keep changing shape ({len(self._seen)} step shapes so far; "
                             "each needs a graph of its own)")
                return self._train_step()(x, y, window, first, update)
            if key not in self._seen:
                self._seen.add(key)
                return self._eager(x, y, window, first, update)
            entry = self._capture(key, x, y, window, first, update)
            if entry is None:
                return self._train_step()(x, y, window, first, update)
        graph, static_x, static_y, loss = entry
        static_x.copy_(x)
        static_y.copy_(y)
        if update and self._lr is not None:
            self._refresh_lr()
        graph.replay()
        return loss

    def disable(self, reason: str) -> None:
        """Run every step eagerly from now on, saying why in one log line (auto mode)."""
        self.enabled = False
        self._graphs.clear()
        log.info("trainer.cuda_graph=auto: CUDA graphs off, %s; training continues eagerly", reason)

    def _optimizer_settings(self) -> Hashable:
        if self.optimizer is None:
            return None
        skip = {"params", "lr", "initial_lr"} if self._lr is not None else {"params"}
        return tuple(
            tuple((k, v) for k, v in group.items() if k not in skip and isinstance(v, Hashable))
            for group in self.optimizer.param_groups
        )

    def _refresh_lr(self) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            if group["lr"] != self._lr_values[i]:
                self._lr[i].fill_(group["lr"])
                self._lr_values[i] = group["lr"]

    def _eager(self, x: Tensor, y: Tensor, window: int, first: bool, update: bool) -> Tensor:
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side), warnings.catch_warnings():
            # Adam & co. warn when a capturable instance steps outside a capture; here that is
            # the plan (the first step with new settings), not a misconfiguration.
            warnings.filterwarnings("ignore", message="This instance was constructed with capturable=True")
            loss = self._train_step()(x, y, window, first, update)
        current.wait_stream(self._side)
        return loss

    def _capture(self, key: Hashable, x: Tensor, y: Tensor, window: int, first: bool, update: bool):
        """Capture (not run) a step on the side stream into a new graph; None if that failed.

        Uses capture_begin/capture_end rather than `torch.cuda.graph`, whose entry synchronizes
        the device and empties the allocator's cache: this runs again whenever settings change.
        Garbage collection is off meanwhile: a collection that frees another run's CUDA graph
        during the capture (a sweep's earlier job, say) makes the capture fail."""
        static_x, static_y = x.clone(), y.clone()
        graph = torch.cuda.CUDAGraph()
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        swap = update and self._lr is not None
        if swap:
            self._refresh_lr()
            for group, lr in zip(self.optimizer.param_groups, self._lr):
                group["lr"] = lr
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.stream(self._side):
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    loss = self._train_step()(static_x, static_y, window, first, update)
                finally:
                    graph.capture_end()
        except Exception as error:
            detail = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            if self.required:
                self.enabled = False
                self._graphs.clear()
                raise ConfigError(
                    "trainer.cuda_graph", True, "auto (graphs wherever they can be captured) or false "
                    "for this model", f"capturing the training step as a CUDA graph failed ({detail}); "
                    "a step that reads values back to the host cannot be captured") from None
            self.disable(f"capturing the training step failed ({detail})")
            return None
        finally:
            if collecting:
                gc.enable()
            if swap:
                for group, value in zip(self.optimizer.param_groups, self._lr_values):
                    group["lr"] = value
        current.wait_stream(self._side)
        self.captures += 1
        entry = self._graphs[key] = (graph, static_x, static_y, loss)
        return entry
