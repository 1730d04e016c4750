"""The app on scikit-learn's small tabular datasets, next to a scikit-learn baseline on the same split.

    python benchmarks/sklearn_datasets.py --threads 1        # a few minutes on one core

Exports digits, wine, breast_cancer (classification) and diabetes (regression) as CSV files
(header row, class names as labels where scikit-learn has them) under `--out`, trains the app
on each with the one-line command a user would type (printed), and fits StandardScaler +
LogisticRegression / Ridge on exactly the rows the app trained on, scored on exactly its test
rows. The split is the app's own: `app.data.split_indices` with the data seed and fractions the
run recorded (`data.seed`, `data.val_fraction`, `data.test_fraction` of its .hydra/config.yaml,
also `app.load_run(run_dir).cfg.data`); the script checks it is the run's by scoring the run's
best checkpoint on those rows with `app.load_run` and comparing with the run's summary.json. Prints a Markdown table and writes it as CSV to benchmarks/results/cpu/.

Needs scikit-learn (`pip install scikit-learn`).
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/<script>.py` from a plain checkout
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# name: (scikit-learn loader, target column, task)
DATASETS = {
    "digits": ("load_digits", "digit", "classification"),
    "wine": ("load_wine", "cultivar", "classification"),
    "breast_cancer": ("load_breast_cancer", "diagnosis", "classification"),
    "diabetes": ("load_diabetes", "progression", "regression"),
}


def export(name: str, out: Path) -> tuple[Path, int, int]:
    """Write dataset `name` as <out>/<name>.csv; (path, rows, features)."""
    import sklearn.datasets

    loader, target, task = DATASETS[name]
    bunch = getattr(sklearn.datasets, loader)()
    x, y = bunch.data, bunch.target
    names = [str(n).replace(" ", "_") for n in bunch.feature_names]
    if task == "classification" and name != "digits":  # class names as labels, as a user's file has
        labels = [str(t) for t in bunch.target_names]
        y = np.asarray(labels, dtype=object)[y]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, target])
        for row, label in zip(x.tolist(), y.tolist()):
            writer.writerow([*(repr(v) for v in row), label])
    return path, x.shape[0], x.shape[1]


def command(path: Path, target: str, run_dir: Path, threads: int | None) -> list[str]:
    """The one line a user types (plus where the run goes, so this script can read it)."""
    args = [sys.executable, "-m", "app", "data=file", f"data.path={path}", f"data.target={target}"]
    if threads:
        args.append(f"trainer.threads={threads}")
    return [*args, "logger=none", f"hydra.run.dir={run_dir}"]


def shown(args: list[str]) -> str:
    """The command as a user types it (`python`, paths relative to the repository)."""
    def rel(arg: str) -> str:
        for prefix in (str(ROOT) + "/",):
            arg = arg.replace(prefix, "")
        return arg
    return " ".join(["python", *(shlex.quote(rel(a)) for a in args[1:])])


def baseline(run_dir: Path, path: Path, task: str, target: str) -> tuple[float, dict]:
    """The scikit-learn test score on the split of the app's run, and the split."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, mean_squared_error
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from app.data import split_indices
    from app.run.load import load_run

    header = path.read_text().splitlines()[0].split(",")
    column = header.index(target)
    raw = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=str)
    x = np.delete(raw, column, axis=1).astype(np.float64)
    y = raw[:, column] if task == "classification" else raw[:, column].astype(np.float64)
    d = load_run(run_dir).cfg.data  # the run's data seed and fractions
    train, val, test = (i.numpy() for i in split_indices(len(x), d["val_fraction"], d["test_fraction"], d["seed"]))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=10000) if task == "classification"
                          else Ridge(alpha=1.0))
    model.fit(x[train], y[train])
    pred = model.predict(x[test])
    score = accuracy_score(y[test], pred) if task == "classification" else mean_squared_error(y[test], pred)
    return float(score), {"x": x, "y": y, "test": test,
                          "sizes": (len(train), len(val), len(test))}


def app_score_on(run_dir: Path, split: dict, task: str) -> float:
    """The run's best checkpoint scored by hand on the rows this script takes as its test split."""
    from app.run.load import load_run

    run = load_run(run_dir)
    pred = run.predict(split["x"][split["test"]])
    truth = split["y"][split["test"]]
    if task == "classification":
        labels = np.asarray([str(p) for p in pred])
        return float(np.mean(labels == np.asarray([str(t) for t in truth])))
    return float(np.mean((pred - truth) ** 2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", default="outputs/datasets", help="where the CSV files go (default outputs/datasets)")
    p.add_argument("--runs", default="outputs/benchmarks/sklearn", help="the app's run dirs")
    p.add_argument("--threads", type=int, default=None, help="trainer.threads for the app's runs (1 on a busy machine)")
    p.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "cpu"),
                   help="where the CSV of the table goes")
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every app run (e.g. trainer.epochs=200)")
    p.add_argument("--seeds", type=int, default=5, help="also train each data set with seeds=[1..N] (one run, "
                   "mean +- std of the test metric over training seeds, same split); 0: skip")
    args = p.parse_args(argv)
    out, runs = Path(args.out).absolute(), Path(args.runs).absolute()
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    rows = []
    for name in args.datasets:
        _, target, task = DATASETS[name]
        path, n_rows, n_features = export(name, out)
        run_dir = runs / stamp / name
        cmd = command(path, target, run_dir, args.threads) + list(args.extra)
        print(f"$ {shown(cmd)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            raise SystemExit(f"{name}: the app exited with {done.returncode}")
        print("  " + next((line for line in reversed(done.stderr.splitlines() + done.stdout.splitlines())
                           if "test_" in line), "(no final line)").strip())
        summary = json.loads((run_dir / "summary.json").read_text())
        metric = "test_accuracy" if task == "classification" else "test_mse"
        app_score = summary["test"][metric]
        sk_score, split = baseline(run_dir, path, task, target)
        check = app_score_on(run_dir, split, task)
        same_split = abs(check - app_score) <= 1e-4 * max(1.0, abs(app_score))
        if not same_split:
            raise SystemExit(f"{name}: the run's {metric} {app_score} is not its checkpoint's score "
                             f"{check} on the split this script computed: the splits differ")
        row = {"dataset": name, "rows": n_rows, "features": n_features, "task": task,
               "split": "/".join(map(str, split["sizes"])), "metric": metric,
               "app": app_score, "sklearn": sk_score, "epochs": summary["epochs_run"],
               "status": summary["status"], "app_seconds": round(seconds, 1), "command": shown(cmd),
               "app_seeds_mean": None, "app_seeds_std": None, "seeds_command": None}
        if args.seeds:  # the training seed's share of the spread: same split, N seeds in one run
            seeds_dir = runs / stamp / f"{name}-seeds"
            seeds_cmd = command(path, target, seeds_dir, args.threads) + list(args.extra) + [
                f"seeds=[{','.join(str(i) for i in range(1, args.seeds + 1))}]"]
            print(f"$ {shown(seeds_cmd)}", flush=True)
            done = subprocess.run(seeds_cmd, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
                raise SystemExit(f"{name} with seeds: the app exited with {done.returncode}")
            seeded = json.loads((seeds_dir / "summary.json").read_text())
            row.update(app_seeds_mean=seeded["test"][metric], app_seeds_std=seeded["test_std"][metric],
                       seeds_command=shown(seeds_cmd))
        rows.append(row)
    print()
    print(f"| dataset | rows | features | task | train/val/test | metric | app | app, {args.seeds} seeds | "
          "scikit-learn | app epochs | app s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        fmt = "{:.4f}" if r["task"] == "classification" else "{:.1f}"
        seeded = (f"{fmt.format(r['app_seeds_mean'])} +- {fmt.format(r['app_seeds_std'])}"
                  if r["app_seeds_mean"] is not None else "-")
        print(f"| {r['dataset']} | {r['rows']} | {r['features']} | {r['task']} | {r['split']} | {r['metric']} | "
              f"{fmt.format(r['app'])} | {seeded} | {fmt.format(r['sklearn'])} | {r['epochs']} ({r['status']}) | "
              f"{r['app_seconds']} |")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    target_file = results / f"sklearn_datasets-{stamp[:10]}.csv"
    with open(target_file, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"\nwrote {target_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
