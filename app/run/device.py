"""Pick the torch device from `conf/device/`, refusing one this machine does not have."""
from __future__ import annotations

import torch

from app.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(type: str = "auto", index: int = 0) -> torch.device:
    """`auto` tries cuda, then mps, then cpu. An explicit cuda/mps that is not available, or a
    cuda index past the number of GPUs, raises `ConfigError` naming what this machine has."""
    available = ["cpu"]
    if torch.cuda.is_available():
        available.insert(0, f"cuda (indices 0..{torch.cuda.device_count() - 1})")
    if _mps_available():
        available.insert(0, "mps")
    accepted = "auto or a device this machine has: " + ", ".join(available)

    if type == "auto":
        if torch.cuda.is_available():
            type = "cuda"
            index = index if index < torch.cuda.device_count() else 0
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if type == "cpu":
        return torch.device("cpu")
    if type == "mps":
        if not _mps_available():
            raise ConfigError("device.type", "mps", accepted, "MPS is not available on this machine")
        return torch.device("mps")
    if type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device.type", "cuda", accepted, "CUDA is not available on this machine")
        if index >= torch.cuda.device_count():
            raise ConfigError(
                "device.index", index, f"0..{torch.cuda.device_count() - 1}",
                f"this machine has {torch.cuda.device_count()} CUDA device(s)",
            )
        return torch.device("cuda", index)
    raise ConfigError("device.type", type, "auto, cpu, cuda, mps")


def set_threads(threads: int | None) -> int | None:
    """Use `threads` torch CPU threads (intra-op; `trainer.threads`); None leaves torch's own
    choice. Returns the count before, for the run to give back (jobs of a sweep share a process),
    or None when nothing changed."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        return None
    torch.set_num_threads(threads)
    return before


def describe(device: torch.device) -> str:
    """A human name for the device: the GPU's name, or the CPU's architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    import platform

    return f"CPU ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"
