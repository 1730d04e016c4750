"""Reproducibility: PyTorch's deterministic mode, and saving/restoring every random number
generator a run draws from, so a resumed run continues the exact random streams.

Seeding itself is `app.run.build.seed_everything`; the shuffling order of the training data has its
own generator, saved by `TensorBatches.state_dict`.
"""
from __future__ import annotations

import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch

from app.errors import ConfigError

log = logging.getLogger(__name__)

# cuBLAS picks reduction strategies per call unless told a fixed workspace; PyTorch refuses
# cuBLAS matmuls in deterministic mode without one. ":4096:8" is the setting PyTorch documents.
CUBLAS_WORKSPACE = ":4096:8"


def set_deterministic(enabled: bool) -> None:
    """Turn PyTorch's deterministic algorithms on or off for this process.

    Called for every run (also with False), so a job of a sweep never inherits the previous job's
    setting. With `enabled`, an op that has no deterministic implementation on the device raises
    a RuntimeError when it runs; `determinism_refusal` turns that into a ConfigError naming it.
    """
    if enabled and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            log.warning(
                "deterministic=true after CUDA was initialised in this process: cuBLAS may keep its "
                "non-deterministic workspace; export CUBLAS_WORKSPACE_CONFIG=%s before starting",
                CUBLAS_WORKSPACE,
            )
    if torch.are_deterministic_algorithms_enabled() != enabled:  # the call imports inductor: ~1 s
        torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    if enabled:
        torch.backends.cudnn.benchmark = False  # autotuning picks kernels by timing: not repeatable


_REFUSED_OP = re.compile(r"^(.*?) does not have a deterministic implementation")


def determinism_refusal(error: BaseException) -> ConfigError | None:
    """The ConfigError to show for a RuntimeError raised by deterministic mode, else None."""
    if not isinstance(error, RuntimeError) or not torch.are_deterministic_algorithms_enabled():
        return None
    message = str(error)
    match = _REFUSED_OP.search(message.strip())
    if match:
        return ConfigError(
            "deterministic", True,
            "deterministic=false, or a model whose operations all have deterministic "
            "implementations on this device",
            f"{match.group(1).strip()} has no deterministic implementation, so PyTorch refused to run it",
        )
    if "CUBLAS_WORKSPACE_CONFIG" in message:
        return ConfigError(
            "deterministic", True,
            f"deterministic=false, or export CUBLAS_WORKSPACE_CONFIG={CUBLAS_WORKSPACE} before "
            "starting the app",
            "cuBLAS was initialised without a fixed workspace, so its matmuls cannot be made deterministic",
        )
    return None


# ----------------------------------------------------------------------------- RNG state
def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every global generator a run may draw from: python `random`, numpy, torch CPU, and the
    CUDA generators of all devices (only once CUDA is in use: reading them would start CUDA) or
    the MPS generator when training on MPS."""
    # Plain containers and tensors only (a checkpoint loads with `weights_only=True`): numpy's
    # legacy state tuple holds an ndarray, kept here as an int64 tensor of the same keys.
    # Python's Mersenne Twister state (625 ints) as one int64 tensor: pickled as 625 objects it
    # was a third of a checkpoint's serializing time on small models, written every epoch.
    version, internal, python_gauss = random.getstate()
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": (version, torch.tensor(internal, dtype=torch.int64), python_gauss),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if device is not None and device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> list[str]:
    """Restore `rng_state()`'s generators. Returns warnings for generators this machine cannot
    restore (a CUDA state without CUDA, fewer GPUs): the run continues, but not bit for bit."""
    warnings = []
    version, internal, python_gauss = state["python"]
    if isinstance(internal, torch.Tensor):
        internal = tuple(internal.tolist())
    random.setstate((version, tuple(internal), python_gauss))
    kind, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda")
    if cuda_states is not None:
        if not torch.cuda.is_available():
            warnings.append("the checkpoint holds CUDA generator states but CUDA is not available here")
        else:
            count = torch.cuda.device_count()
            for index, generator_state in enumerate(cuda_states[:count]):
                torch.cuda.set_rng_state(generator_state.cpu(), index)
            if len(cuda_states) != count:
                warnings.append(
                    f"the checkpoint holds {len(cuda_states)} CUDA generator states, this machine has "
                    f"{count} GPUs"
                )
    if state.get("mps") is not None:
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            torch.mps.set_rng_state(state["mps"].cpu())
        else:
            warnings.append("the checkpoint holds an MPS generator state but MPS is not available here")
    return warnings
