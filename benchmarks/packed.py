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

Rows 2 and 3: the same search as a real sweep, `python -m app --multirun
hparams_search=regression_optuna` in a subprocess (TPE over lr, weight decay, `model.nodes` in
{32,64,128} and `model.layers` in {2..5}, the preset's space), once with `pack=<--sweep-pack>`
(default auto) and once with `pack=false`, timed from the command's start to its end (startup,
study, every job, report): row 2 is trials/minute of each, row 3 the best val_loss each search
found (their samplers see different histories, so they agree within noise, not exactly). The
last line stays row 1's ratio and target.

    python benchmarks/packed.py --device cpu --threads 1                # 64 trials, 100 epochs
    python benchmarks/packed.py --device cpu --threads 1 --trials 16 --epochs 20
    python benchmarks/packed.py --device cpu --threads 1 --rows 2,3 --sweep-trials 32 --sweep-epochs 10
"""
from __future__ import annotations

import glob
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT  # (importing common puts the repository on sys.path)
from common import alternate, finish, header, median, parser, pick_device, spread, table, timed

import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from app.config import register_configs  # noqa: E402
from app.run.build import build_run  # noqa: E402
from app.search.configs import TrialConfigs  # noqa: E402
from omegaconf import open_dict  # noqa: E402
from app.train.packed import PackedTrainer, unpackable  # noqa: E402

TARGETS = {"cpu": 2.0, "cuda": 10.0}
GRAPHS: dict[str, tuple[bool, int]] = {}  # variant -> (CUDA graphs replayed, captures of its last fit)
BUILDING = [0.0]  # seconds the current sample spent composing configs and building runs
# Trial configs (set in main, inside Hydra's initialisation): one composer for the whole benchmark,
# as one sweep has one; `--compose full` composes every trial in full instead.
CONFIGS: TrialConfigs | None = None


def trial_overrides(trials: int, epochs: int, n_samples: int, device: str, seed: int = 0) -> list[list[str]]:
    """The search's trials as override lists (sampled once, seeded: both variants train these)."""
    rng = random.Random(seed)
    common = [f"trainer.epochs={epochs}", f"data.n_samples={n_samples}", "logger=none",
              f"device={device}", "trainer.progress_bar=false", "trainer.log_every=0"]
    return [[*common, f"optimizer.lr={math.exp(rng.uniform(math.log(1e-4), math.log(3e-2))):.6g}",
             f"optimizer.weight_decay={rng.uniform(0.0, 0.1):.6g}"] for _ in range(trials)]


def build(overrides: list[list[str]], root: Path) -> list:
    """Each trial built as the app builds a run, in its own run dir under `root`: its config
    composed as a sweep composes its trials (app/search/configs.py: Hydra's composition once,
    then the trials' values), Hydra's own node left out as Hydra leaves it out of a job's."""
    runs = []
    started = time.perf_counter()
    for i, args in enumerate(overrides):
        cfg = CONFIGS(args)
        with open_dict(cfg):
            del cfg["hydra"]
        runs.append(build_run(cfg, root / f"trial_{i}", run_name=f"trial_{i}"))
    BUILDING[0] += time.perf_counter() - started
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


def sweep(pack: str, trials: int, epochs: int, n_samples: int, device: str, threads: int | None,
          seed: int = 0) -> tuple[float, float]:
    """Rows 2 and 3: the preset's TPE search as `python -m app --multirun` with `pack=<pack>`, in
    a fresh directory; its wall time in seconds and the best val_loss it found."""
    args = ["--multirun", "hparams_search=regression_optuna", f"hydra.sweeper.n_trials={trials}",
            f"pack={pack}", f"trainer.epochs={epochs}", f"data.n_samples={n_samples}", "logger=none",
            f"device={device}", "trainer.progress_bar=false", "trainer.log_every=0", f"hydra.sweeper.sampler.seed={seed}",
            *([f"trainer.threads={threads}"] if threads else [])]
    with tempfile.TemporaryDirectory() as root:
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "WANDB_SILENT": "true",
                                   "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"the pack={pack} sweep failed:\n{proc.stderr[-3000:]}")
        from omegaconf import OmegaConf

        [results] = glob.glob(f"{root}/outputs/sweeps/*/*/optimization_results.yaml")
        best = OmegaConf.load(results).best_value
        packs = proc.stdout.count("pack of") + proc.stderr.count("pack of")
    print(f"sweep pack={pack} seed={seed}: {trials} trials in {seconds:.1f} s, {packs} packs, best val_loss {best}")
    return seconds, float(best) if best is not None else float("nan")


def sweep_rows(args, n_samples: int, device) -> None:
    """Rows 2 and 3 (see module docstring), `--sweep-repeats` times each, alternating."""
    found: dict[str, list[float]] = {"one trial per job (pack=false)": [], f"packed (pack={args.sweep_pack})": []}
    packs = {"one trial per job (pack=false)": "false", f"packed (pack={args.sweep_pack})": args.sweep_pack}

    def variant(name):
        def sample() -> float:  # repeat r of both variants: sampler seed --sweep-seed + r
            seconds, best = sweep(packs[name], args.sweep_trials, args.sweep_epochs, n_samples, device.type,
                                  args.threads, args.sweep_seed + len(found[name]))
            found[name].append(best)
            return seconds
        return sample

    samples = alternate({name: variant(name) for name in packs}, args.sweep_repeats)
    rows = [[name, args.sweep_trials, args.sweep_epochs, median(samples[name]),
             60 * args.sweep_trials / median(samples[name]), median(found[name])] for name in packs]
    print("Rows 2 and 3: TPE search over lr, weight decay, model.nodes {32,64,128}, model.layers {2..5}")
    table(["variant", "trials", "epochs", "seconds (median)", "trials/min", "best val_loss (median)"], rows)
    names = list(packs)
    print(f"row 2: speed-up {(60 * args.sweep_trials / median(samples[names[1]])) / (60 * args.sweep_trials / median(samples[names[0]])):.3f}"
          f" (target >= 3 on an H100)")
    print(f"row 3: best val_loss packed {median(found[names[1]]):.6g} vs one per job {median(found[names[0]]):.6g}")
    print()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=64, help="trials of the search")
    p.add_argument("--epochs", type=int, default=100, help="epochs per trial")
    p.add_argument("--pack", type=int, default=None, help="trials per pack (default: all)")
    p.add_argument("--compose", choices=["trials", "full"], default="trials",
                   help="row 1: compose trial configs as sweeps do (default), or each in full with Hydra")
    p.add_argument("--rows", default="1,2,3", help="which rows to run (1: in-process packs; 2,3: sweeps)")
    p.add_argument("--sweep-trials", type=int, default=64, help="rows 2-3: trials of each search")
    p.add_argument("--sweep-epochs", type=int, default=100, help="rows 2-3: epochs per trial")
    p.add_argument("--sweep-pack", default="auto", help="rows 2-3: pack= of the packed search")
    p.add_argument("--sweep-repeats", type=int, default=1, help="rows 2-3: timed sweeps per variant (sampler "
                   "seeds --sweep-seed, --sweep-seed + 1, ...: row 3 is the median best over them)")
    p.add_argument("--sweep-seed", type=int, default=0, help="rows 2-3: the first repeat's sampler seed")
    args = p.parse_args()
    rows_wanted = {int(r) for r in args.rows.split(",") if r.strip()}
    if args.quick:
        args.trials, args.epochs, n_samples, repeats = 4, 2, 600, 1
        args.sweep_trials, args.sweep_epochs, args.sweep_pack, args.sweep_repeats = 4, 2, "2", 1
    else:
        n_samples, repeats = 10000, args.repeats or 3
    device = pick_device(args.device, args.threads)
    register_configs()
    header("Many small trials: packed vs one at a time", device)
    if rows_wanted & {2, 3}:
        sweep_rows(args, n_samples, device)
    if 1 not in rows_wanted:
        return
    overrides = trial_overrides(args.trials, args.epochs, n_samples, device.type)
    size = args.pack or args.trials
    global CONFIGS
    initialize_config_dir(config_dir=str(ROOT / "conf")).__enter__()  # for the whole process
    hydra_compose = lambda o: compose("config", overrides=o, return_hydra_config=True)  # noqa: E731
    if args.compose == "full":
        CONFIGS = hydra_compose
    else:
        CONFIGS = TrialConfigs(hydra_compose, groups=list(hydra_compose([]).hydra.runtime.choices.keys()))
    bests: dict[str, list[float]] = {"one at a time": [], "packed": []}
    building: dict[str, list[float]] = {"one at a time": [], "packed": []}

    def run(name, fn):
        def sample() -> float:
            bests[name].clear()
            BUILDING[0] = 0.0
            seconds = timed(lambda: fn(overrides, bests[name]), device)
            building[name].append(BUILDING[0])
            return seconds
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
                     median(samples[name]), median(building[name]), median(rates[name]), spread(rates[name]),
                     min(finite) if finite else float("nan")])
    table(["variant", "trials", "epochs", "pack", "seconds (median)", "of which composing + building (s)",
           "trials/min", "spread (IQR)", "best val_loss"], rows)
    for name, (on, captures) in GRAPHS.items():
        print(f"{name}: CUDA graphs {'on' if on else 'off'} ({captures} captures in its last fit)")
    ratio = median(rates["packed"]) / median(rates["one at a time"])
    finish(ratio, TARGETS.get(device.type, TARGETS["cpu"]), better="higher")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
