"""Optimizer steps over stacked parameters: K members' updates in one set of tensor operations.

A pack (app/train/packed.py) keeps the parameters of its K members as one tensor `flat` of shape
[K, P] (row k: member k's parameters, flattened and concatenated in `model.parameters()` order).
`StackedOptimizer.step(flat, grad, active)` applies to each row what `torch.optim.AdamW`, `Adam`
or `SGD` (momentum, nesterov) with that member's hyperparameters would apply to that member's
parameters, in a handful of element-wise operations over [K, P] tensors instead of K optimizer
calls. Rows whose member has stopped (`active` false) keep their parameters and their state
exactly.

Each member keeps its own `torch.optim` optimizer: its `param_groups` are where the member's
hyperparameters live (its scheduler changes them there, checkpoints save them), and `write_to`
puts the member's slice of the stacked state into its `state`, so a member's checkpoint holds
the plain single-model optimizer state a lone run would save (and `read_from` takes it back).
The results equal the torch.optim steps up to float32 rounding: the bias corrections are
computed per row on the device instead of in double precision on the host.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# The optimizer classes a pack can step, and what their step does to the weight decay.
KINDS: dict[type, str] = {torch.optim.AdamW: "adamw", torch.optim.Adam: "adam", torch.optim.SGD: "sgd"}


def unsupported(optimizers: Sequence[torch.optim.Optimizer]) -> str | None:
    """Why these members' optimizers cannot be stepped as one (None when they can)."""
    classes = sorted({type(o).__name__ for o in optimizers})
    if len(classes) > 1:
        return f"the members use different optimizers ({', '.join(classes)})"
    optimizer = optimizers[0]
    if type(optimizer) not in KINDS:
        return f"{type(optimizer).__name__} has no stacked step (AdamW, Adam and SGD have)"
    for o in optimizers:
        if len(o.param_groups) != 1:
            return f"{type(o).__name__} with {len(o.param_groups)} parameter groups (a pack steps one)"
        group = o.param_groups[0]
        for flag in ("amsgrad", "maximize", "differentiable"):
            if group.get(flag):
                return f"{type(o).__name__}({flag}=True) has no stacked step"
        if group.get("dampening"):
            return "SGD with dampening has no stacked step"
        if type(o) is torch.optim.Adam and group.get("decoupled_weight_decay"):
            return "Adam(decoupled_weight_decay=True) has no stacked step (use AdamW)"
        if any(isinstance(group.get(k), Tensor) for k in ("lr", "weight_decay")):
            return f"{type(o).__name__} with a tensor learning rate or weight decay"
    return None


class StackedOptimizer:
    """The optimizer state of K members as [K, P] tensors (see module docstring).

    Args:
        optimizers: each member's torch.optim optimizer (one class, one param group each).
        params: each member's parameters in the order of the flat layout.
        flat: the stacked parameters [K, P] (for the state's shape, dtype and device).
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], params: Sequence[Sequence[Tensor]],
                 flat: Tensor) -> None:
        reason = unsupported(optimizers)
        if reason is not None:
            raise ValueError(reason)
        self.optimizers = list(optimizers)
        self.params = [list(p) for p in params]
        self.kind = KINDS[type(optimizers[0])]
        k, device = flat.shape[0], flat.device
        self.step_count = torch.zeros(k, 1, dtype=flat.dtype, device=device)  # per row, on the device
        self.steps = [0] * k  # the same on the host (no read-back needed to know it)
        if self.kind == "sgd":
            self.state = {"momentum_buffer": torch.zeros_like(flat)}
        else:
            self.state = {"exp_avg": torch.zeros_like(flat), "exp_avg_sq": torch.zeros_like(flat)}
        self._key: tuple | None = None
        self._hyper: dict[str, Tensor] = {}
        self._hyper64: dict[str, Tensor] = {}
        for row in range(k):
            self.read_from(row)

    # ------------------------------------------------------------------ hyperparameters
    def _settings(self, group: dict) -> tuple:
        if self.kind == "sgd":
            return (group["lr"], group["weight_decay"], group["momentum"], bool(group["nesterov"]))
        return (group["lr"], group["weight_decay"], *group["betas"], group["eps"])

    def hyperparameters(self) -> dict[str, Tensor]:
        """Each row's hyperparameters, and the coefficients derived from them, as [K, 1] tensors;
        rebuilt only when a member's changed (a scheduler steps the member's param_groups): a
        host-to-device copy, never a read. Derived coefficients (1 - beta, 1 - lr * wd) are
        computed in double precision, as torch computes them from Python floats.

        The tensors are made once and then updated in place, so a captured CUDA graph of the
        step (app/train/packed.py) reads each replay's settings: refresh them (call this) before
        a replay, never inside a capture."""
        settings = tuple(self._settings(o.param_groups[0]) for o in self.optimizers)
        if settings != self._key:
            names = (("lr", "weight_decay", "momentum", "nesterov") if self.kind == "sgd"
                     else ("lr", "weight_decay", "beta1", "beta2", "eps"))
            h = {name: torch.tensor([[float(v)] for v in column], dtype=torch.float64)
                 for name, column in zip(names, zip(*settings))}
            if self.kind != "sgd":
                h["1-beta1"], h["1-beta2"] = 1 - h["beta1"], 1 - h["beta2"]
                h["1-lr*wd"] = 1 - h["lr"] * h["weight_decay"]
            ref = self.step_count
            wide = torch.float32 if ref.device.type == "mps" else torch.float64  # MPS has no float64
            if self._hyper and self._hyper["lr"].shape[0] == ref.shape[0]:
                for k, v in h.items():
                    self._hyper64[k].copy_(v.to(wide), non_blocking=True)
                    self._hyper[k].copy_(v.to(ref.dtype), non_blocking=True)
            else:
                self._hyper64 = {k: v.to(wide).to(ref.device, non_blocking=True) for k, v in h.items()}
                self._hyper = {k: v.to(ref.dtype).to(ref.device, non_blocking=True) for k, v in h.items()}
            self._key = settings
        return self._hyper

    # ------------------------------------------------------------------ the step
    @torch.no_grad()
    def step(self, flat: Tensor, grad: Tensor, active: Tensor | None = None) -> None:
        """Update `flat` [K, P] in place from `grad` [K, P] (which it may overwrite); rows where
        `active` [K, 1] (bool) is false keep their parameters and state exactly. `active=None`:
        every row steps, in place, without the masking (the same arithmetic)."""
        h = self.hyperparameters()
        lr, wd = h["lr"], h["weight_decay"]
        step = self.step_count + (1 if active is None else active.to(self.step_count.dtype))
        if self.kind == "sgd":
            grad = grad + wd * flat
            buffer = self.state["momentum_buffer"]
            # A fresh buffer is zeros, so the first step's buffer is the gradient itself, as in torch.
            new_buffer = buffer * h["momentum"] + grad
            direction = torch.where(h["nesterov"] > 0, grad + h["momentum"] * new_buffer, new_buffer)
            update = lr * direction
            _commit(buffer, new_buffer, active)
            _commit(flat, flat - update, active)
        else:
            # Bias corrections in float64 on [K, 1] (torch computes them in double on the host).
            step64 = step.to(self._hyper64["lr"].dtype)
            correction1 = 1 - self._hyper64["beta1"] ** step64
            correction2_sqrt = (1 - self._hyper64["beta2"] ** step64).sqrt().to(flat.dtype)
            step_size = (self._hyper64["lr"] / correction1).to(flat.dtype)
            if self.kind == "adam":
                grad = grad + wd * flat
            exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
            squared = h["1-beta2"] * grad
            squared.mul_(grad)
            if active is None:
                exp_avg.lerp_(grad, h["1-beta1"])
                new_avg, new_avg_sq = exp_avg, exp_avg_sq.mul_(h["beta2"]).add_(squared)
            else:
                new_avg = torch.lerp(exp_avg, grad, h["1-beta1"])
                new_avg_sq = (exp_avg_sq * h["beta2"]).add_(squared)
            denom = new_avg_sq.sqrt().div_(correction2_sqrt).add_(h["eps"])
            # Rows that never stepped (inactive at step 0) divide by zero: the mask discards them.
            update = (new_avg * step_size).div_(denom)
            if active is None:
                if self.kind == "adamw":
                    flat.mul_(h["1-lr*wd"])
                flat.sub_(update)
            else:
                decayed = flat * h["1-lr*wd"] if self.kind == "adamw" else flat
                _commit(flat, decayed - update, active)
                _commit(exp_avg, new_avg, active)
                _commit(exp_avg_sq, new_avg_sq, active)
        self.step_count.copy_(step)

    def count(self, rows: Sequence[int]) -> None:
        """Record on the host that `rows` took a step (mirrors `step_count`)."""
        for row in rows:
            self.steps[row] += 1

    # ------------------------------------------------------------------ members' own state
    def _slices(self, row: int):
        offset = 0
        for param in self.params[row]:
            yield param, slice(offset, offset + param.numel())
            offset += param.numel()

    def write_to(self, row: int) -> None:
        """Put row `row`'s state into its member's torch optimizer, as that optimizer's own step
        would have left it (nothing before the first step)."""
        optimizer = self.optimizers[row]
        group = optimizer.param_groups[0]
        optimizer.state.clear()
        if self.steps[row] == 0:
            return
        for param, part in self._slices(row):
            if self.kind == "sgd":
                if group["momentum"] != 0:
                    optimizer.state[param] = {"momentum_buffer": self._member_tensor(row, "momentum_buffer", part, param)}
                continue
            on_device = group.get("capturable") or group.get("fused")
            optimizer.state[param] = {
                "step": torch.tensor(float(self.steps[row]), dtype=torch.float32,
                                     device=param.device if on_device else "cpu"),
                "exp_avg": self._member_tensor(row, "exp_avg", part, param),
                "exp_avg_sq": self._member_tensor(row, "exp_avg_sq", part, param),
            }

    def _member_tensor(self, row: int, name: str, part: slice, param: Tensor) -> Tensor:
        return self.state[name][row, part].detach().clone().view(param.shape).to(param.device)

    def read_from(self, row: int) -> None:
        """Take row `row`'s state from its member's torch optimizer (a fresh one: zeros)."""
        optimizer = self.optimizers[row]
        steps = 0
        for param, part in self._slices(row):
            state = optimizer.state.get(param) or {}
            for name, stacked in self.state.items():
                value = state.get(name)
                stacked[row, part] = 0 if value is None else value.detach().reshape(-1).to(stacked.device)
            if "step" in state:
                steps = int(float(state["step"]))
            elif state.get("momentum_buffer") is not None:
                steps = max(steps, 1)  # SGD keeps no count; only "has it stepped" matters
        self.steps[row] = steps
        self.step_count[row] = steps

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (compaction): the state of the others is dropped."""
        index = torch.tensor(list(rows), device=self.step_count.device)
        self.state = {name: t.index_select(0, index) for name, t in self.state.items()}
        self.step_count = self.step_count.index_select(0, index)
        self.steps = [self.steps[r] for r in rows]
        self.optimizers = [self.optimizers[r] for r in rows]
        self.params = [self.params[r] for r in rows]
        self._key = None
        self._hyper, self._hyper64 = {}, {}  # fewer rows: new tensors


def _commit(target: Tensor, new: Tensor, active: Tensor | None) -> None:
    """target <- new, in the rows where `active` (every row for None)."""
    target.copy_(new if active is None else torch.where(active, new, target))
