"""Startup: wall time of `python -m app` with a one-epoch budget, from launch to exit, vs
`python -c "import torch"`. Reference rows: a hand-written one-epoch script (import torch,
make the same data, model and AdamW, train one epoch), and the app with its default logger
(W&B offline) when wandb is installed. Samples alternate; ratios are medians of paired ratios.

    python benchmarks/startup.py                 # the app on cuda if available, else cpu
    python benchmarks/startup.py --device cpu
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, alternate, finish, header, median, parser, pick_device, spread, table

TARGET = 1.3
HEAVY = ("optuna", "matplotlib", "wandb", "pandas", "scipy", "sqlalchemy", "sklearn")

# The same run written by hand: the default task's data, a 4x64 MLP, AdamW, one epoch.
HAND_WRITTEN = """
import math, torch
from torch import nn
device = torch.device({device!r})
g = torch.Generator().manual_seed(0)
x = (torch.linspace(0, 1, 10000) + 0.02 * torch.rand(10000, generator=g)).clamp(0, 1)[:, None]
y = torch.sin(4 * math.pi * x) + 0.5 * torch.sin(10 * math.pi * x) + 1.5 * x**2
x, y = x.to(device), y.to(device)
layers, width = [], 1
for _ in range(4):
    layers += [nn.Linear(width, 64), nn.GELU()]
    width = 64
model = nn.Sequential(*layers, nn.Linear(64, 1)).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
perm = torch.randperm(8000).to(device)
for i in range(0, 8000, 256):
    idx = perm[i:i + 256]
    loss = nn.functional.mse_loss(model(x[idx]), y[idx])
    opt.zero_grad(); loss.backward(); opt.step()
with torch.no_grad():
    print(nn.functional.mse_loss(model(x[8000:]), y[8000:]).item())
"""

IMPORTS_OF_A_RUN = """
import runpy, sys
sys.argv = ["app", *{args!r}]
try:
    runpy.run_module("app", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))) or "none")
"""


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stderr}")
    return elapsed


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    device = pick_device(args.device, args.threads)
    repeats = args.repeats or (1 if args.quick else 9)
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("HYDRA_FULL_ERROR", None)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    py = sys.executable
    header("Startup: python -m app (one epoch) vs python -c 'import torch'", device)

    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        counter = iter(range(10**6))
        app_args = ["trainer.epochs=1", "logger=none", f"device={device.type}", "trainer.progress_bar=false"]
        if args.quick:
            app_args.append("data.n_samples=500")

        def app(extra: list[str]) -> float:
            return run([py, "-m", "app", *app_args, *extra, f"hydra.run.dir={tmp}/run{next(counter)}"], cwd, env)

        variants = {
            "python -c 'import torch'": lambda: run([py, "-c", "import torch"], cwd, env),
            "python -m app trainer.epochs=1 logger=none": lambda: app([]),
            "hand-written one-epoch script (reference)":
                lambda: run([py, "-c", HAND_WRITTEN.format(device=device.type)], cwd, env),
        }
        try:
            import wandb  # noqa: F401

            if not args.quick:
                variants["python -m app trainer.epochs=1 (W&B offline, the default logger)"] = (
                    lambda: run([py, "-m", "app", *[a for a in app_args if a != "logger=none"],
                                 f"hydra.run.dir={tmp}/run{next(counter)}"], cwd, env))
        except ImportError:
            pass
        if not args.quick:
            for fn in variants.values():  # warm the file cache
                fn()
        samples = alternate(variants, repeats)
        imported = subprocess.run(
            [py, "-c", IMPORTS_OF_A_RUN.format(args=[*app_args, f"hydra.run.dir={tmp}/imports"], heavy=HEAVY)],
            cwd=cwd, env=env, capture_output=True, text=True)
        imported_line = imported.stdout.strip().splitlines()[-1] if imported.returncode == 0 else imported.stderr

    base_name = next(iter(variants))
    base = samples[base_name]
    rows = []
    for name, values in samples.items():
        ratios = [v / b for v, b in zip(values, base)]
        rows.append([name, median(values), f"{median(ratios):.2f}", spread(values)])
    table(["command", "wall s", "ratio vs import torch", "IQR"], rows)
    print(f"{repeats} alternating samples per command; the app ran on {device.type}")
    print(f"optional packages a `logger=none` run imports (of {', '.join(HEAVY)}): {imported_line}")
    app_name = "python -m app trainer.epochs=1 logger=none"
    finish(median([a / b for a, b in zip(samples[app_name], base)]), TARGET)


if __name__ == "__main__":
    main()
