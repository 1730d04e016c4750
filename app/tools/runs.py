"""`python -m app.runs [dir]`: the runs and sweeps under `dir` (default `outputs/`) at a glance.

    python -m app.runs                                  # a table of every run, grouped by folder
    python -m app.runs --compare A B ...                # config keys that differ, results side by side
    python -m app.runs --plot A B ... --out curves.png  # their metrics.csv curves overlaid

The table shows each run's status (`unfinished`: no summary.json, the run is still training or
was killed), its best monitored value, test metrics, epochs, wall time and the overrides that
differ between the listed runs; a sweep's folder header adds its job count and best job. Every
figure comes from the run directories themselves (summary.json, .hydra/, metrics.csv).
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from app.errors import ConfigError
from app.run.record import Summary, read_json

PLOT_SUFFIXES = (".png", ".pdf", ".svg")
_SHORT = {"accuracy": "acc"}  # test metric names in the table


@dataclass
class RunInfo:
    """What the table and the comparison read of one run directory."""

    path: Path
    summary: Summary | None
    overrides: list[str]
    problem: str = ""  # why a record could not be read

    @property
    def status(self) -> str:
        if self.problem:
            return "unreadable"
        if self.summary is None:
            return "unfinished"
        return "interrupted" if self.summary.interrupted else self.summary.status.value


def read_run(path: Path) -> RunInfo:
    """The run's summary and overrides; a damaged record is reported, not raised."""
    problem, summary, overrides = "", None, []
    try:
        if (path / "summary.json").exists():
            summary = Summary.from_dict(read_json(path / "summary.json"))
        if (path / ".hydra" / "overrides.yaml").exists():
            overrides = [str(o) for o in OmegaConf.load(path / ".hydra" / "overrides.yaml")]
    except Exception as error:  # hand-edited or torn records: JSON, YAML, OS errors
        problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return RunInfo(path, summary, overrides, problem)


def find_runs(root: Path) -> list[Path]:
    """Every run directory (it holds .hydra/config.yaml) under `root`, in path order."""
    return sorted(p.parent.parent for p in root.rglob(".hydra/config.yaml"))


# ----------------------------------------------------------------------------- formatting
def _sig(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ("" if value is None else str(value))


def duration(seconds: float | None) -> str:
    """4.1s, 3m12s, 2h05m."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def best_text(summary: Summary | None) -> str:
    if summary is None or summary.best is None:
        return ""
    text = f"{summary.monitor} {_sig(summary.best)}"
    return text + (f" +- {_sig(summary.best_std)}" if summary.best_std is not None else "")


def test_text(summary: Summary | None) -> str:
    if summary is None or not summary.test:
        return ""
    parts = []
    metrics = {key[len("test_"):] if key.startswith("test_") else key: value for key, value in summary.test.items()}
    if len(metrics) > 1:  # the task's metrics say it (a scaled regression's loss is not in the target's units)
        metrics.pop("loss", None)
    stds = summary.test_std or {}  # a multi-seed run: mean +- std over its seeds
    for name, value in metrics.items():
        std = stds.get(f"test_{name}")
        parts.append(f"{_SHORT.get(name, name)} {_sig(value)}" + (f" +- {_sig(std)}" if std is not None else ""))
    return " ".join(parts)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def differing_overrides(runs: list[RunInfo]) -> dict[Path, str]:
    """Each run's overrides whose key is not set to the same value in every listed run."""
    ignored = ("resume", "resume_force", "hydra.")
    values = [{_key(o): o for o in run.overrides if not _key(o).startswith(ignored)} for run in runs]
    keys = set().union(*values) if values else set()
    varying = {k for k in keys if len({v.get(k) for v in values}) > 1}
    return {run.path: " ".join(v[k] for k in v if k in varying) for run, v in zip(runs, values)}


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def layout(rows: list[list[str]], width: int) -> list[str]:
    """Columns padded to their widest cell. The last column (free text) follows on the same
    line where it fits in `width` characters, else on a line of its own below, indented."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    heads = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1])) for row in rows]
    room = width - len(heads[0]) - 2
    fits = all(len(row[-1]) <= room for row in rows[1:])
    lines = []
    for head, row in zip(heads, rows):
        if fits:
            lines.append(f"{head}  {row[-1]}".rstrip())
        else:
            lines.append(head.rstrip())
            if row[-1] and row is not rows[0]:
                lines.append("    " + _cut(row[-1], width - 4))
    return lines


def sweep_header(folder: Path, runs: list[RunInfo]) -> str:
    """`(sweep: N jobs, statuses, best job K: monitor value)` for a sweep folder."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    done = [r for r in runs if r.summary is not None and r.summary.status.ended_normally
            and isinstance(r.summary.best, (int, float)) and math.isfinite(r.summary.best)]
    text = f"sweep: {len(runs)} jobs, " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    if done:
        best = (max if done[0].summary.mode == "max" else min)(done, key=lambda r: r.summary.best)
        text += f"; best job {best.path.name}: {best_text(best.summary)}"
    return text


def _note(run: RunInfo, overrides: str) -> str:
    """The overrides, and why a run that did not end normally ended."""
    if run.summary is not None and not run.summary.status.ended_normally and run.summary.reason:
        return f"{overrides}  ({run.summary.reason})" if overrides else f"({run.summary.reason})"
    return overrides


def runs_table(root: Path, width: int) -> str:
    """The table of every run under `root`, one block per folder (a date, or a sweep)."""
    paths = find_runs(root)
    if not paths:
        return f"no runs under {root}"
    runs = [read_run(p) for p in paths]
    blocks: dict[Path, list[RunInfo]] = {}
    for run in runs:
        blocks.setdefault(run.path.parent, []).append(run)
    lines = []
    header = ["run", "status", "best", "test", "epochs", "time", "overrides that differ"]
    for folder, members in blocks.items():
        differ = differing_overrides(members)
        title = str(folder.relative_to(root)) if folder != root else "."
        if (folder / "multirun.yaml").exists():
            title += f"  ({sweep_header(folder, members)})"
        lines += ["", _cut(title, width)]
        rows = [header] + [[
            run.path.name, run.status, best_text(run.summary), test_text(run.summary),
            _sig(run.summary.epochs_run) if run.summary else "", duration(run.summary.wall_time_s) if run.summary else "",
            run.problem or _note(run, differ[run.path]),
        ] for run in members]
        lines += ["  " + line for line in layout(rows, width - 2)]
    return "\n".join(lines[1:])


# ----------------------------------------------------------------------------- compare
def _run_dirs(values: list[str], key: str) -> list[Path]:
    from app.run.load import run_directory

    return [run_directory(value, key) for value in values]


_MISSING = object()


def _cell(value: Any, width: int = 24) -> str:
    """A config value: `-` where a run's config has no such key, `null` for None."""
    if value is _MISSING:
        return "-"
    text = "null" if value is None else _sig(value) if not isinstance(value, (list, dict)) else str(value)
    return _cut(text, width)


def compare(values: list[str], width: int) -> str:
    """Config keys that differ between the runs, then their results, side by side."""
    from app.run.load import read_config
    from app.run.provenance import flatten, to_plain

    paths = _run_dirs(values, "--compare")
    names = [f"[{i}]" for i in range(1, len(paths) + 1)]
    lines = [f"{n} {p}" for n, p in zip(names, paths)]
    configs = [flatten(to_plain(read_config(p, "--compare"))) for p in paths]
    keys = sorted(k for k in set().union(*configs) if len({repr(c.get(k)) for c in configs}) > 1
                  and not k.startswith(("resume", "hydra.")))
    rows = [["config", *names]] + [[k, *(_cell(c.get(k, _MISSING)) for c in configs)] for k in keys]
    lines += [""] + (layout_all(rows) if keys else ["config: identical"])

    runs = [read_run(p) for p in paths]
    results = [["result", *names], ["status", *(r.status for r in runs)]]
    monitors = {r.summary.monitor for r in runs if r.summary is not None}
    if len(monitors) == 1:
        results.append([f"best {monitors.pop()}", *(_sig(r.summary.best) if r.summary else "" for r in runs)])
    else:
        results.append(["best", *(best_text(r.summary) for r in runs)])
    results.append(["best epoch", *(_sig(r.summary.best_epoch) if r.summary else "" for r in runs)])
    results.append(["epochs", *(_sig(r.summary.epochs_run) if r.summary else "" for r in runs)])
    results.append(["wall time", *(duration(r.summary.wall_time_s) if r.summary else "" for r in runs)])
    for source in ("test", "last_metrics"):
        metric_keys = []
        for r in runs:
            for k in (getattr(r.summary, source) or {}) if r.summary else {}:
                if k not in metric_keys and (source == "test" or k.endswith("loss") or k.startswith("val_")):
                    metric_keys.append(k)
        prefix = "" if source == "test" else "last "
        results += [[prefix + k, *(_sig((getattr(r.summary, source) or {}).get(k)) if r.summary else "" for r in runs)]
                    for k in metric_keys]
    lines += [""] + layout_all(results)
    return "\n".join(lines)


def layout_all(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


# ----------------------------------------------------------------------------- plot
def plot(values: list[str], out: str, metrics: list[str] | None = None) -> Path:
    """Overlaid curves of `metrics` (default: the runs' monitored metrics and train_loss), one
    panel per metric, one line per run (a multi-seed run: the mean over its seeds)."""
    from app.search.report import read_curve

    paths = _run_dirs(values, "--plot")
    target = Path(out)
    if target.suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError("--out", out, f"a file name ending in {', '.join(PLOT_SUFFIXES)}",
                          "The plot is written as an image")
    if not metrics:
        metrics = []
        for summary in (read_run(p).summary for p in paths):
            if summary is not None and summary.monitor and summary.monitor not in metrics:
                metrics.append(summary.monitor)
        metrics += [m for m in ("train_loss", "val_loss") if m not in metrics][: max(0, 2 - len(metrics))]
    curves = {}
    for path in paths:
        for metric in metrics:
            try:
                curves[(path, metric)] = read_curve(path, metric)
            except (OSError, ValueError, KeyError) as error:
                raise ConfigError("--plot", str(path), "run directories with a readable metrics.csv",
                                  f"{path / 'metrics.csv'} cannot be read ({type(error).__name__}: {error})") from None
    for metric in metrics:
        if not any(curves[(path, metric)][0] for path in paths):
            raise ConfigError("--metric", metric, "a column of the runs' metrics.csv, e.g. val_loss, train_loss",
                              "None of the runs has a value of it (or they have no metrics.csv yet)")

    labels = _labels(paths)
    for metric in metrics:  # a run without the metric (e.g. val_mse of a classifier) is left out, said once
        lacking = [labels[path] for path in paths if not curves[(path, metric)][0]]
        if lacking:
            print(f"note: no {metric} in {', '.join(lacking)}: not in its panel", file=sys.stderr)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), dpi=100, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        positive = True
        for path in paths:
            epochs, ys = curves[(path, metric)]
            if epochs:
                ax.plot(epochs, ys, linewidth=1.4, label=labels[path])
                positive &= all(v > 0 for v in ys if math.isfinite(v))
        if positive and metric.endswith("loss"):
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(target)
    except OSError as error:
        raise ConfigError("--out", out, "a file path in a writable directory", f"{error.strerror or error}") from None
    finally:
        plt.close(fig)
    return target


def _labels(paths: list[Path]) -> dict[Path, str]:
    """Short legend labels: the last path parts that tell the runs apart."""
    for depth in range(2 if any(p.name.isdigit() for p in paths) else 1, 6):  # a sweep job: "<sweep>/3"
        labels = {p: "/".join(p.parts[-depth:]) for p in paths}
        if len(set(labels.values())) == len(paths):
            return labels
    return {p: str(p) for p in paths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.runs",
        description="Runs and sweeps at a glance: a table of everything under a directory, a "
                    "comparison of runs, or their curves overlaid.")
    parser.add_argument("dir", nargs="?", default="outputs", help="where to look for runs (default: outputs)")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="run directories to compare side by side")
    parser.add_argument("--plot", nargs="+", metavar="RUN", help="run directories whose curves to overlay")
    parser.add_argument("--out", default="runs.png", help="the plot's file (.png, .pdf, .svg; default runs.png)")
    parser.add_argument("--metric", action="append", help="a metrics.csv column to plot (repeatable; default: "
                        "the monitored metric and train_loss)")
    args = parser.parse_args(argv)
    width = shutil.get_terminal_size((100, 24)).columns
    try:
        if args.compare:
            print(compare(args.compare, width))
        elif args.plot:
            path = plot(args.plot, args.out, args.metric)
            print(f"wrote {path}")
        else:
            root = Path(args.dir).expanduser()
            if not root.is_dir():
                raise ConfigError("dir", args.dir, "a directory holding runs, e.g. outputs (where `python -m app` "
                                  "writes them, under the directory you launched it from)",
                                  f"{root.absolute()} is not a directory")
            print(runs_table(root.absolute(), width))
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
