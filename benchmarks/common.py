"""Shared by the benchmark scripts: A/B timing with alternation and medians, the machine's
description, the workloads (the default task and a wide MLP), and the output format.

Every script prints a Markdown table and, as its last line, `ratio=<value> target=<value>`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/<script>.py` from a plain checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="auto", help="auto (cuda if available, else cpu) | cpu | cuda")
    p.add_argument("--repeats", type=int, default=None, help="timed samples per variant (median)")
    p.add_argument("--quick", action="store_true", help="a tiny budget: checks the script runs, "
                   "its figures mean nothing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's "
                   "choice); 1 keeps a busy machine from oversubscribing its cores")
    return p


def pick_device(name: str, threads: int | None = None) -> torch.device:
    if threads:
        torch.set_num_threads(threads)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> str:
    """One line: the device, the host CPU, torch's version."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    host = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host: {host}); torch {torch.__version__}"
    return f"CPU: {host}; torch {torch.__version__}"


def header(title: str, device: torch.device) -> None:
    print(f"# {title}")
    print(f"machine: {machine(device)}")
    print(f"date: {_dt.date.today().isoformat()}")
    print()


def alternate(variants: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Call each variant `repeats` times, interleaved (A B C, then B C A, ...: the order rotates so
    no variant always runs right after another); each call returns its own measured seconds.
    Returns every sample per variant."""
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(variants[name]())
    return samples


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> str:
    """The interquartile range relative to the median, as a percentage."""
    if len(values) < 4:
        return "-"
    q = statistics.quantiles(values, n=4)
    return f"{100 * (q[2] - q[0]) / statistics.median(values):.1f}%"


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn()` takes, synchronizing the device before and after (outside `fn`).
    A garbage collection first, so one left over from the other variant is not billed here."""
    gc.collect()
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(_cell(v) for v in row) + " |")
    print()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def finish(ratio: float, target: float, better: str = "lower") -> None:
    met = ratio <= target if better == "lower" else ratio >= target
    print(f"target {'met' if met else 'MISSED'} ({'<=' if better == 'lower' else '>='} {target})")
    print(f"ratio={ratio:.3f} target={target}")


# ----------------------------------------------------------------------------- workloads
def conf_options(group: str, name: str, **overrides):
    """The options conf/<group>/<name>.yaml gives a builder (its one copy of the defaults)."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / group / f"{name}.yaml"))
    for key in ("_target_", "_partial_", "defaults"):
        node.pop(key, None)
    return {**node, **overrides}


@dataclass
class Workload:
    """What one benchmark row trains: the default task (regression_1d, 10000 samples, 80/20
    split, batch 256, eval batch 1024, AdamW lr 3e-3 wd 0.01, cosine over the epochs) with an
    MLP of `layers` x `nodes`."""

    name: str
    nodes: int = 64
    layers: int = 4
    batch_size: int = 256
    n_samples: int = 10000

    def data(self):
        from app.data import regression_1d

        return regression_1d(**conf_options("data", "regression", n_samples=self.n_samples))

    def model(self, seed: int = 0) -> torch.nn.Module:
        from app.models import MLP

        torch.manual_seed(seed)
        return MLP(1, 1, **conf_options("model", "mlp", nodes=self.nodes, layers=self.layers))

    def optimizer(self, model: torch.nn.Module, **kwargs) -> torch.optim.Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, **kwargs)

    def scheduler(self, optimizer: torch.optim.Optimizer, epochs: int):
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)

    def batches(self, data, device: torch.device, on_device: bool = True):
        from app.data import TensorBatches

        train = TensorBatches(data.train, self.batch_size, device=device, shuffle=True, seed=42,
                              on_device=on_device, pin_memory=True)
        val = TensorBatches(data.val, 4 * self.batch_size, device=device, shuffle=False,
                            on_device=on_device, pin_memory=True)
        return train, val


DEFAULT_TASK = Workload("default task (MLP 4x64)")
WIDE_MLP = Workload("wide MLP (4x1024)", nodes=1024)
