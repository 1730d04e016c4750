"""Many small trials: trials per minute trained as one pack (app/train/packed.py) against the
same trials trained one at a time, in one process, alternating.

Row 1 of the issue's table: a random search of the default task over optimizer.lr (log-uniform
1e-4..3e-2) and optimizer.weight_decay (uniform 0..0.1), the model's shape fixed. Each trial is a
real run built by `app.run.build.build_run` from the composed config (its run dir with
metrics.csv and checkpoints, `logger=none`), timed from building to the end of its fit; the
unpacked variant fits each run's own `Trainer`, the packed one fits packs of `--pack` runs with
`PackedTrainer`. Both use the app's defaults for the device. The ratio is the median packed
trials/minute over the median unpacked trials/minute (higher is better); the table also gives
the best val_loss each search found (they agree within noise: the same trials, trained the same
way up to float32 rounding).

    python benchmarks/packed.py --device cpu --threads 1                # 64 trials, 100 epochs
    python benchmarks/packed.py --device cpu --threads 1 --trials 16 --epochs 20
"""
from __future__ import annotations

import math
import random
import tempfile
from pathlib import Path

from common import ROOT  # (importing common puts the repository on sys.path)
from common import alternate, finish, header, median, parser, pick_device, spread, table, timed

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from app.config import register_configs  # noqa: E402
from app.run.build import build_run  # noqa: E402
from app.train.packed import PackedTrainer, unpackable  # noqa: E402

TARGETS = {"cpu": 2.0, "cuda": 10.0}
GRAPHS: dict[str, tuple[bool, int]] = {}  # variant -> (CUDA graphs replayed, captures of its last fit)


def trial_overrides(trials: int, epochs: int, n_samples: int, device: str, seed: int = 0) -> list[list[str]]:
    """The search's trials as override lists (sampled once, seeded: both variants train these)."""
    rng = random.Random(seed)
    common = [f"trainer.epochs={epochs}", f"data.n_samples={n_samples}", "logger=none",
              f"device={device}", "trainer.progress_bar=false", "trainer.log_every=0"]
    return [[*common, f"optimizer.lr={math.exp(rng.uniform(math.log(1e-4), math.log(3e-2))):.6g}",
             f"optimizer.weight_decay={rng.uniform(0.0, 0.1):.6g}"] for _ in range(trials)]


def build(overrides: list[list[str]], root: Path) -> list:
    """Each trial built as the app builds a run, in its own run dir under `root`."""
    runs = []
    for i, args in enumerate(overrides):
        with initialize_config_dir(config_dir=str(ROOT / "conf")):
            cfg = compose("config", overrides=args)
        runs.append(build_run(cfg, root / f"trial_{i}", run_name=f"trial_{i}"))
    return runs


def one_at_a_time(overrides: list[list[str]], bests: list[float]) -> None:
    with tempfile.TemporaryDirectory() as root:
        for args in overrides:
            [run] = build([args], Path(root))
            result = run.trainer.fit(run.train, run.val)
            bests.append(result.best)
            graphed = run.trainer.graphed
            GRAPHS["one at a time"] = (graphed is not None and graphed.enabled, graphed.captures if graphed else 0)


def packed(overrides: list[list[str]], size: int, bests: list[float]) -> None:
    with tempfile.TemporaryDirectory() as root:
        for start in range(0, len(overrides), size):
            runs = build(overrides[start:start + size], Path(root))
            reason = unpackable(runs)
            if reason is not None:
                raise SystemExit(f"these trials cannot be packed: {reason}")
            trainer = PackedTrainer(runs)
            bests.extend(result.best for result in trainer.fit())
            GRAPHS["packed"] = (trainer.use_graphs and trainer.graphed is not None and trainer.graphed.enabled,
                                trainer.graphed.captures if trainer.graphed is not None else 0)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64, help="trials of the search")
    p.add_argument("--epochs", type=int, default=100, help="epochs per trial")
    p.add_argument("--pack", type=int, default=None, help="trials per pack (default: all)")
    args = p.parse_args()
    if args.quick:
        args.trials, args.epochs, n_samples, repeats = 4, 2, 600, 1
    else:
        n_samples, repeats = 10000, args.repeats or 3
    device = pick_device(args.device, args.threads)
    register_configs()
    header("Many small trials: packed vs one at a time", device)
    overrides = trial_overrides(args.trials, args.epochs, n_samples, device.type)
    size = args.pack or args.trials
    bests: dict[str, list[float]] = {"one at a time": [], "packed": []}

    def run(name, fn):
        def sample() -> float:
            bests[name].clear()
            return timed(lambda: fn(overrides, bests[name]), device)
        return sample

    samples = alternate({
        "one at a time": run("one at a time", one_at_a_time),
        "packed": run("packed", lambda o, b: packed(o, size, b)),
    }, repeats)
    rates = {name: [60 * args.trials / s for s in values] for name, values in samples.items()}
    rows = []
    for name in samples:
        finite = [b for b in bests[name] if b is not None and math.isfinite(b)]
        rows.append([name, args.trials, args.epochs, size if name == "packed" else 1,
                     median(samples[name]), median(rates[name]), spread(rates[name]),
                     min(finite) if finite else float("nan")])
    table(["variant", "trials", "epochs", "pack", "seconds (median)", "trials/min", "spread (IQR)",
           "best val_loss"], rows)
    for name, (on, captures) in GRAPHS.items():
        print(f"{name}: CUDA graphs {'on' if on else 'off'} ({captures} captures in its last fit)")
    ratio = median(rates["packed"]) / median(rates["one at a time"])
    finish(ratio, TARGETS.get(device.type, TARGETS["cpu"]), better="higher")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
