"""Parallel trials without a batch barrier: trials per minute of an Optuna sweep on the default
task when a free slot gets the next trial at once, against batches that wait for their slowest
trial (`hydra.sweeper.batch_barrier=true`, the plugin's loop).

Each sample is one sweep, `python -m app --multirun hparams_search=regression_optuna
hydra/sweeper/pruner=median hydra/launcher=joblib hydra.sweeper.n_jobs=N` (TPE with the same
seed, the same n_trials, W&B off), run in a fresh temporary directory so each has its own study.
For each N the two variants alternate (barrier, no barrier, then the reverse order) and each is
repeated. Trials use `--threads` torch threads (default 1). Trials per minute = n_trials / (time
from the first trial's start to the last trial's end, from the study's records: process start-up
and the report are left out). The ratio is the median over repeats of (no barrier's trials/min) /
(barrier's trials/min) at the largest N. The table also shows the best value each sweep found.

    python benchmarks/async_sweep.py                     # 32 trials, N = 2 and 4, 2 repeats, CPU
    python benchmarks/async_sweep.py --epochs 20         # shorter trials (a busy machine)
    python benchmarks/async_sweep.py --quick             # checks the script runs; numbers mean nothing
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.3  # without the barrier, at least 1.3x as many trials per minute at the largest N
VARIANTS = {"barrier": "true", "no barrier": "false"}  # hydra.sweeper.batch_barrier


def sweep(barrier: str, jobs: int, trials: int, extra: list[str], workdir: Path, threads: int) -> dict:
    """Run one sweep; return its throughput, pruned count, best value and wall time."""
    import optuna

    command = [sys.executable, "-m", "app", "--multirun", "hparams_search=regression_optuna",
               "hydra/sweeper/pruner=median", "hydra/launcher=joblib", f"hydra.sweeper.n_jobs={jobs}",
               f"hydra.launcher.n_jobs={jobs}", f"hydra.sweeper.batch_barrier={barrier}",
               f"hydra.sweeper.n_trials={trials}", "logger=none", "trainer.progress_bar=false",
               "trainer.log_every=0", "pack=false", *extra]  # one trial per job: the loop is measured, not packs
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # keep the caller's
    env = {**os.environ, "PYTHONPATH": path, "WANDB_SILENT": "true", "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"sweep with batch_barrier={barrier}, n_jobs={jobs} failed:\n{proc.stderr[-3000:]}")
    [db] = (workdir / "outputs" / "studies").glob("*.db")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=db.stem, storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    complete = [t.value for t in finished if t.state.name == "COMPLETE"]
    return {
        "trials": len(finished), "span_s": span, "wall_s": wall, "trials_per_min": 60.0 * len(finished) / span,
        "pruned": sum(t.state.name == "PRUNED" for t in finished),
        "epochs": sum(len(t.intermediate_values) for t in finished),
        "best": min(complete) if complete else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32, help="n_trials of each sweep")
    parser.add_argument("--jobs", default="2,4", help="hydra.sweeper.n_jobs values; the ratio is the last's")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per variant and N (median)")
    parser.add_argument("--device", default="cpu", help="device.type of the trials")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.epochs of each trial (default: "
                        "the config's); fewer keeps a run on a busy machine short")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of each worker (1: the "
                        "comparison suffers least from other load on a shared machine)")
    parser.add_argument("--quick", action="store_true", help="4 trials of 4 epochs, N=2, 1 repeat: checks "
                        "the script runs, its numbers mean nothing")
    args = parser.parse_args()
    jobs = [int(n) for n in args.jobs.split(",")]
    extra = [f"device={args.device}"]
    trials, repeats = args.trials, args.repeats
    epochs = args.epochs
    if args.quick:
        trials, repeats, jobs, epochs = 4, 1, [2], 4
        extra.append("data.n_samples=400")
    if epochs:
        extra.append(f"trainer.epochs={epochs}")
    samples: dict[tuple[int, str], list[dict]] = {(n, v): [] for n in jobs for v in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for n in jobs:
                order = list(VARIANTS) if rep % 2 == 0 else list(VARIANTS)[::-1]
                for variant in order:
                    workdir = Path(tmp) / f"{n}-{variant.replace(' ', '_')}-{rep}"
                    workdir.mkdir()
                    sample = sweep(VARIANTS[variant], n, trials, extra, workdir, args.threads)
                    samples[(n, variant)].append(sample)
                    print(f"  repeat {rep + 1}/{repeats} n_jobs={n} {variant}: {sample['trials_per_min']:.1f} "
                          f"trials/min, {sample['pruned']} pruned, best {sample['best']:.4g}",
                          file=sys.stderr, flush=True)

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU") if Path("/proc/cpuinfo").exists() else "CPU"
    machine = (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, device={args.device}, "
               f"{args.threads} thread(s) per worker")
    print(f"Optuna sweep of the default task (regression_optuna, TPE seed 42, median pruner), {trials} "
          f"trials of {epochs or 'the configured'} epochs, {repeats} repeat(s); {machine}; {datetime.date.today().isoformat()}\n")
    print("| n_jobs | loop | trials/min (median) | pruned | epochs trained | best val_loss | sweep wall time (s) |")
    print("|---|---|---|---|---|---|---|")
    for (n, variant), runs in samples.items():
        print(f"| {n} | {variant} | {statistics.median(r['trials_per_min'] for r in runs):.1f} | "
              f"{statistics.median(r['pruned'] for r in runs):g} | {statistics.median(r['epochs'] for r in runs):g} | "
              f"{statistics.median(r['best'] for r in runs):.4g} | {statistics.median(r['wall_s'] for r in runs):.0f} |")
    ratios = {n: statistics.median(a["trials_per_min"] / b["trials_per_min"]
                                   for a, b in zip(samples[(n, "no barrier")], samples[(n, "barrier")]))
              for n in jobs}
    print("\n" + ", ".join(f"n_jobs={n}: no barrier / barrier = {r:.2f}x trials per minute"
                           for n, r in ratios.items()))
    print(f"ratio={ratios[jobs[-1]]:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
