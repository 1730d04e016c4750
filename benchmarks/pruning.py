"""Pruning: trials per minute of an Optuna sweep on the default task, with and without a pruner.

Each sample is one sweep, `python -m app --multirun hparams_search=regression_optuna` (TPE with
the same seed, the same n_trials, W&B off), run in a fresh temporary directory so each has its
own study; the variants alternate (none, median, ... then the reverse order) and each is
repeated. Trials use `--threads` torch threads (default 1). Trials per minute = n_trials / (time from the first trial's start to the last
trial's end, from the study's records: process start-up and the report are left out). The ratio
is the median over repeats of (median pruner's trials/min) / (no pruner's trials/min). The table
also shows the best value each sweep found (pruning must not buy its speed with worse results).

    python benchmarks/pruning.py                         # 20 trials, 2 repeats, on the CPU
    python benchmarks/pruning.py --figure docs/img/pruning.png
    python benchmarks/pruning.py --quick                 # checks the script runs; numbers mean nothing
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.5  # the median pruner should run at least 1.5x as many trials per minute
BASELINE = "none"


def sweep(pruner: str, trials: int, extra: list[str], workdir: Path, threads: int) -> dict:
    """Run one sweep; return its trials' (start, end, state, value) and the wall time."""
    import optuna

    command = [sys.executable, "-m", "app", "--multirun", "hparams_search=regression_optuna",
               f"hydra/sweeper/pruner={pruner}", f"hydra.sweeper.n_trials={trials}", "logger=none",
               "trainer.progress_bar=false", "trainer.log_every=0", *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "WANDB_SILENT": "true", "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep with pruner={pruner} failed:\n{proc.stderr[-3000:]}")
    [db] = (workdir / "outputs" / "studies").glob("*.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    complete = [t.value for t in finished if t.state.name == "COMPLETE"]
    return {
        "pruner": pruner, "trials": len(finished), "span_s": span, "wall_s": wall,
        "trials_per_min": 60.0 * len(finished) / span,
        "pruned": sum(t.state.name == "PRUNED" for t in finished),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "best": min(complete) if complete else float("nan"),
        "timeline": sorted(((t.datetime_complete - min(x.datetime_start for x in finished)).total_seconds(),
                            t.value if t.state.name == "COMPLETE" else None) for t in finished),
    }


def figure(samples: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.6, 3.3), dpi=100)
    names = list(samples)
    rates = [statistics.median(s["trials_per_min"] for s in samples[n]) for n in names]
    bars = left.bar(names, rates, color=[f"C{i}" for i in range(len(names))])
    left.bar_label(bars, labels=[f"{r:.1f}" for r in rates], fontsize=8)
    left.set_ylabel("trials per minute (median)")
    left.set_title("Throughput", fontsize=10)
    for i, name in enumerate(names):
        runs = sorted(samples[name], key=lambda r: r["trials_per_min"])
        run = runs[len(runs) // 2]  # the repeat with the median throughput
        minutes = [t / 60 for t, _ in run["timeline"]]
        right.step([0.0, *minutes], range(len(minutes) + 1), where="post", color=f"C{i}",
                   label=f"{name}: {run['pruned']} pruned, best {run['best']:.3g}")
    right.set_xlabel("minutes into the sweep (median repeat)")
    right.set_ylabel("trials finished")
    right.set_title("Trials finished against time", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="n_trials of each sweep")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per variant (median)")
    parser.add_argument("--pruners", default="none,median,extrapolation",
                        help="hydra/sweeper/pruner options to compare; the first is the baseline")
    parser.add_argument("--device", default="cpu", help="device.type of the trials")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the trials (1: the "
                        "comparison suffers least from other load on a shared machine)")
    parser.add_argument("--figure", type=Path, help="write a PNG figure here")
    parser.add_argument("--quick", action="store_true", help="4 trials of 8 epochs, 1 repeat: checks the "
                        "script runs, its numbers mean nothing")
    args = parser.parse_args()
    pruners = args.pruners.split(",")
    if pruners[0] != BASELINE or "median" not in pruners:
        raise SystemExit(f"--pruners must start with {BASELINE} and include median")
    extra = [f"device={args.device}"]
    trials, repeats = args.trials, args.repeats
    if args.quick:
        trials, repeats = 4, 1
        extra.append("trainer.epochs=8")
    samples: dict[str, list[dict]] = {p: [] for p in pruners}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            order = pruners if rep % 2 == 0 else pruners[::-1]
            for pruner in order:
                workdir = Path(tmp) / f"{pruner}-{rep}"
                workdir.mkdir()
                sample = sweep(pruner, trials, extra, workdir, args.threads)
                samples[pruner].append(sample)
                print(f"  repeat {rep + 1}/{repeats} pruner={pruner}: {sample['trials_per_min']:.1f} trials/min, "
                      f"{sample['pruned']} pruned, best {sample['best']:.4g}", file=sys.stderr, flush=True)

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    machine = (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, device={args.device}, "
               f"{args.threads} thread(s)")
    print(f"Optuna sweep of the default task (regression_optuna, TPE seed 42), {trials} trials, "
          f"{repeats} repeat(s); {machine}\n")
    print("| pruner | trials/min (median) | pruned | epochs trained | best val_loss | sweep wall time (s) |")
    print("|---|---|---|---|---|---|")
    for pruner, runs in samples.items():
        print(f"| {pruner} | {statistics.median(r['trials_per_min'] for r in runs):.1f} | "
              f"{statistics.median(r['pruned'] for r in runs):g} | {statistics.median(r['epochs'] for r in runs):g} | "
              f"{statistics.median(r['best'] for r in runs):.4g} | {statistics.median(r['wall_s'] for r in runs):.0f} |")
    ratios = {p: statistics.median(a["trials_per_min"] / b["trials_per_min"]
                                   for a, b in zip(samples[p], samples[BASELINE])) for p in pruners[1:]}
    print("\n" + ", ".join(f"{p} / none = {r:.2f}x trials per minute" for p, r in ratios.items()))
    if args.figure:
        figure(samples, args.figure, f"{trials}-trial Optuna sweeps of the default task; {machine}")
        print(f"figure: {args.figure}")
    print(f"ratio={ratios['median']:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
