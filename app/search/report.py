"""The sweep report: what a sweep tried, what won, what mattered, what to change.

    python -m app.search.report <sweep dir>                      # any sweep: grid or Optuna
    python -m app.search.report --storage sqlite:///outputs/studies/<name>.db [--study <name>]
    python -m app.search.report --storage postgresql+psycopg://user@host/db --study <name>
    python -m app.search.report --storage journal:////shared/studies/<name>.log

Written after every `--multirun` (by `app.search.callback.SweepSummary`) and on demand, into the sweep
dir (or `--out`):

- `report.md`: a table of trials (number, state, value, epochs run, duration, parameters), the
  best trial and its run dir, parameter importances (Optuna sweeps), and warnings when the best
  value of a parameter sits at the edge of its search range; with several objectives (a list
  `trainer.monitor`), a column per objective and the Pareto front (the trials no other trial
  beats in every objective) instead of a single best, and `report_pareto.png`;
- `report_curves.png`: validation curves (the monitored metric per epoch) of the best trials,
  the other trials in grey; `report_history.png` (objective per trial and best so far) and
  `report_importances.png` for Optuna sweeps.

An Optuna sweep's report covers its whole study (`study.json` in the sweep dir names it), so a
study resumed over several invocations is reported as one. A grid sweep's covers its jobs
(`sweep_summary.csv`, the basic sweeper), with the overrides that vary as parameters.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.run.record import Status, Summary
from app.search.summary import collect, format_cell, format_table
from app.train.tasks import metric_direction

log = logging.getLogger(__name__)
REPORT_FILE = "report.md"
EDGE_FRACTION = 0.05  # a best value within 5% of a range's end (log scale for log ranges) is "at the edge"
TOP_CURVES = 5


@dataclass
class Report:
    title: str
    monitor: str | None
    direction: str  # minimize | maximize
    rows: list[dict[str, Any]]  # trial, state, value, epochs, duration_s, run_dir, <params>, reason
    param_names: list[str]
    best: dict[str, Any] | None = None
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""
    warnings: list[str] = field(default_factory=list)
    optuna: bool = False
    # several objectives: their names (a column each in `rows`), directions, and the Pareto front
    objectives: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)
    pareto: list[dict[str, Any]] = field(default_factory=list)
    importance_target: str = ""  # the objective the importances are of (several objectives: the first)

    @property
    def values(self) -> list[str]:
        """The value columns: one per objective, or `value`."""
        return self.objectives or ["value"]

    def columns(self) -> list[str]:
        return ["trial", "state", *self.values, "epochs", "duration_s", *self.param_names]

    def table(self) -> str:
        return format_table(self.rows, self.columns())

    def pareto_table(self) -> str:
        return format_table(self.pareto, ["trial", *self.objectives, *self.param_names, "run_dir"])

    def text(self) -> str:
        lines = [self.title, "", self.table(), ""]
        if self.objectives:
            if self.pareto:
                lines += [f"Pareto front: {len(self.pareto)} trial{'s' if len(self.pareto) > 1 else ''} "
                          "(no other trial is as good in every objective and better in one)", self.pareto_table()]
            else:
                lines.append("Pareto front: no trial completed")
        elif self.best:
            lines.append(f"Best: trial {self.best['trial']}  value={_fmt(self.best['value'])}  "
                         f"{_params_text(self.best, self.param_names)}  run dir: {self.best['run_dir']}")
        else:
            lines.append("Best: no trial completed")
        of = f" (for {self.importance_target})" if self.importance_target else ""
        if self.importances:
            lines.append(f"Parameter importances{of}: " + ", ".join(f"{k} {v:.2f}" for k, v in self.importances.items()))
        elif self.importance_note:
            lines.append(f"Parameter importances{of}: {self.importance_note}")
        lines += [f"Warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def dominates(a: list[float], b: list[float], directions: list[str]) -> bool:
    """Whether values `a` are at least as good as `b` in every objective and better in one."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    at_least = all(s * x <= s * y for s, x, y in zip(signs, a, b))
    return at_least and any(s * x < s * y for s, x, y in zip(signs, a, b))


def pareto_front(rows: list[dict[str, Any]], names: list[str], directions: list[str]) -> list[dict[str, Any]]:
    """The completed rows no other completed row dominates (objective values under `names`),
    sorted by the first objective, best first."""
    done = [r for r in rows if _completed(r) and all(_finite(r.get(n)) for n in names)]
    front = [r for r in done if not any(dominates([o[n] for n in names], [r[n] for n in names], directions)
                                        for o in done)]
    return sorted(front, key=lambda r: r[names[0]], reverse=directions[0] == "maximize")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _completed(row: dict[str, Any]) -> bool:
    return row["state"] in ("COMPLETE", "completed", "early_stopped")


# ----------------------------------------------------------------------------- building
def _fmt(value: Any) -> str:
    return format_cell(value, digits=4)


def _params_text(row: dict[str, Any], names: list[str]) -> str:
    return " ".join(f"{n}={_fmt(row.get(n))}" for n in names)


def _reason(summary: Summary | None) -> str:
    return summary.reason if summary is not None else ""


def optuna_report(storage: str, study_name: str) -> Report:
    """The report of an Optuna study, from its storage and its trials' run dirs."""
    from optuna.trial import TrialState

    from app.search.study import load_study

    study = load_study(storage, study_name)
    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    names = sorted({name for t in trials for name in t.params})
    directions = [d.name.lower() for d in study.directions]
    objectives: list[str] = []
    rows, monitor = [], None
    for t in trials:
        run_dir = t.user_attrs.get("run_dir")
        summary = Summary.read(run_dir)
        monitor = monitor or (summary.monitor if summary is not None else None)
        if len(directions) > 1 and not objectives and summary is not None and summary.objectives:
            objectives = list(summary.objectives)
        state = t.state.name
        if t.user_attrs.get("interrupted"):
            state += " (interrupted)"
        elif t.state == TrialState.PRUNED and t.user_attrs.get("status") == "diverged":
            state += " (diverged)"
        duration = ((t.datetime_complete - t.datetime_start).total_seconds()
                    if t.datetime_complete and t.datetime_start else None)
        epochs = t.user_attrs.get("epochs_run")
        if epochs is None:
            epochs = summary.epochs_run if summary is not None else len(t.intermediate_values) or None
        rows.append({
            "trial": t.number, "state": state, "value": t.values[0] if t.values else None, "epochs": epochs,
            "values": list(t.values) if t.values else None,
            "duration_s": round(duration, 1) if duration is not None else None,
            "run_dir": run_dir, "reason": t.user_attrs.get("reason") or _reason(summary),
            **{n: t.params.get(n) for n in names},
        })
    counts = {s: sum(r["state"].startswith(s) for r in rows) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    if len(directions) > 1:  # several objectives: named after the metrics the runs returned
        if len(objectives) != len(directions):
            objectives = [f"objective_{i}" for i in range(len(directions))]
        for row in rows:
            row.update(zip(objectives, row["values"] or [None] * len(objectives)))
        goal = ", ".join(f"{d} {n}" for d, n in zip(directions, objectives))
    else:
        goal = f"{directions[0]} {monitor or 'objective'}"
    title = (f"Study {study.study_name!r} ({goal}): {len(rows)} trials, "
             + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n))
    report = Report(title, monitor, directions[0], rows, names, optuna=True)
    if len(directions) > 1:
        report.objectives, report.directions = objectives, directions
        report.pareto = pareto_front(rows, objectives, directions)
        report.importance_target = objectives[0]
        report.importances, report.importance_note = importances(study, target=lambda t: t.values[0])
        return report
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        report.best = next(r for r in rows if r["trial"] == best.number)
        report.warnings = [w for name, d in best.distributions.items()
                           if (w := edge_warning(name, best.params[name], distribution_range(d)))]
    report.importances, report.importance_note = importances(study)
    return report


def grid_report(sweep_dir: str | Path) -> Report:
    """The report of a basic-sweeper sweep from its jobs' run dirs."""
    jobs = collect(sweep_dir)
    overrides = [dict(o.split("=", 1) for o in job["overrides"].split() if "=" in o) for job in jobs]
    keys = sorted({k for o in overrides for k in o})
    varying = [k for k in keys if len({o.get(k) for o in overrides}) > 1] or keys
    monitor, mode, objectives = None, "min", []
    rows = []
    for job, params in zip(jobs, overrides):
        summary = Summary.read(job["run_dir"])
        if summary is not None:
            monitor, mode = monitor or summary.monitor, summary.mode or mode
            objectives = objectives or list(summary.objectives or {})
        rows.append({
            "trial": job["job"], "state": job["status"], "value": job["objective"],
            "epochs": job["epochs_run"], "duration_s": job["wall_time_s"], "run_dir": job["run_dir"],
            "reason": _reason(summary), **{k: _number(params.get(k)) for k in varying},
            **((summary.objectives or {}) if summary is not None else {}),
        })
    direction = "maximize" if mode == "max" else "minimize"
    directions = [direction] + [{"max": "maximize"}.get(metric_direction(n), "minimize") for n in objectives[1:]]
    goal = (", ".join(f"{d} {n}" for d, n in zip(directions, objectives)) if objectives
            else f"{direction} {monitor or 'objective'}")
    report = Report(f"Sweep {Path(sweep_dir).name} ({goal}): {len(rows)} jobs", monitor, direction, rows, varying)
    if objectives:  # several objectives: the Pareto front instead of a best job
        report.objectives, report.directions = objectives, directions
        report.pareto = pareto_front(rows, objectives, directions)
        return report
    done = [r for r in rows if Status.of(r["state"]).ended_normally
            and isinstance(r["value"], (int, float)) and math.isfinite(r["value"])]
    if done:
        report.best = (max if direction == "maximize" else min)(done, key=lambda r: r["value"])
        for name in varying:
            values = sorted({r[name] for r in rows if isinstance(r[name], (int, float))})
            if len(values) >= 3 and (w := edge_warning(name, report.best[name], ("choices", values))):
                report.warnings.append(w)
    return report


def _number(text: str | None) -> Any:
    if text is None:
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def distribution_range(distribution: Any) -> tuple | None:
    """("range", low, high, log, integer) or ("choices", sorted numeric choices) or None."""
    from optuna import distributions as d

    if isinstance(distribution, (d.UniformDistribution, d.DiscreteUniformDistribution)):
        return ("range", distribution.low, distribution.high, False, False)
    if isinstance(distribution, d.LogUniformDistribution):
        return ("range", distribution.low, distribution.high, True, False)
    if isinstance(distribution, d.IntUniformDistribution):
        return ("range", distribution.low, distribution.high, False, True)
    if isinstance(distribution, d.IntLogUniformDistribution):
        return ("range", distribution.low, distribution.high, True, True)
    if isinstance(distribution, d.CategoricalDistribution):
        numeric = [c for c in distribution.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if len(numeric) == len(distribution.choices) and len(numeric) >= 3:
            return ("choices", sorted(numeric))
    return None


def edge_warning(name: str, value: Any, space: tuple | None) -> str | None:
    """A warning when `value` (the best trial's) lies at an end of its search `space`."""
    if space is None or not isinstance(value, (int, float)):
        return None
    if space[0] == "choices":
        choices = space[1]
        side = "smallest" if value == choices[0] else "largest" if value == choices[-1] else None
        if side:
            return (f"{name}: the best trial took the {side} choice ({_fmt(value)} of {choices}); "
                    f"try values beyond it")
        return None
    _, low, high, log_scale, integer = space
    if integer:
        position = 0.0 if value <= low else 1.0 if value >= high else 0.5
    else:
        to = math.log if log_scale else float
        position = (to(value) - to(low)) / (to(high) - to(low)) if high > low else 0.5
    if position <= EDGE_FRACTION or position >= 1 - EDGE_FRACTION:
        edge = "lower" if position <= EDGE_FRACTION else "upper"
        return (f"{name}: the best value {_fmt(value)} is at the {edge} edge of its search range "
                f"[{_fmt(low)}, {_fmt(high)}]; widen the range, the optimum may lie beyond it")
    return None


def importances(study: Any, target: Any = None) -> tuple[dict[str, float], str]:
    """Optuna's fANOVA parameter importances: the share of the objective's variance each
    parameter explains, from a random forest (scikit-learn) fitted to the completed trials.
    `target`: FrozenTrial -> the value to explain (required by Optuna for several objectives)."""
    import optuna
    from optuna.trial import TrialState

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        return {}, f"need 2 or more completed trials, have {len(completed)}"
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator, target=target)
        return {name: float(value) for name, value in found.items()}, ""
    except (ValueError, RuntimeError, ImportError) as error:
        return {}, f"unavailable ({error})"


# ----------------------------------------------------------------------------- curves and plots
def read_curve(run_dir: str | Path, monitor: str) -> tuple[list[int], list[float]]:
    """(epochs, values) of `monitor` from a run dir's metrics.csv; a multi-seed run's curve is
    the mean over its seed_<n>/ dirs at each epoch."""
    run_dir = Path(run_dir)
    files = [run_dir / "metrics.csv"] if (run_dir / "metrics.csv").exists() else sorted(run_dir.glob("seed_*/metrics.csv"))
    per_epoch: dict[int, list[float]] = {}
    for path in files:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                value = row.get(monitor)
                if value not in (None, ""):
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(value))
    epochs = sorted(per_epoch)
    return epochs, [sum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]


def _ranked(report: Report) -> list[dict[str, Any]]:
    done = [r for r in report.rows if isinstance(r["value"], (int, float)) and math.isfinite(r["value"])
            and r["state"] in ("COMPLETE", "completed", "early_stopped")]
    return sorted(done, key=lambda r: r["value"], reverse=report.direction == "maximize")


def plot_curves(report: Report, path: Path, top: int = TOP_CURVES) -> bool:
    if not report.monitor:
        return False
    import matplotlib.pyplot as plt

    best = _ranked(report)[:top]
    best_ids = {r["trial"] for r in best}
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    drawn, positive = 0, True
    for row in report.rows:
        if row["trial"] in best_ids or not row.get("run_dir") or not Path(row["run_dir"]).is_dir():
            continue
        epochs, values = read_curve(row["run_dir"], report.monitor)
        if epochs:
            ax.plot(epochs, values, color="0.75", linewidth=0.8, zorder=1)
            positive &= all(v > 0 for v in values if math.isfinite(v))
            drawn += 1
    for rank, row in enumerate(best):
        if not row.get("run_dir") or not Path(row["run_dir"]).is_dir():
            continue
        epochs, values = read_curve(row["run_dir"], report.monitor)
        if epochs:
            ax.plot(epochs, values, linewidth=1.6, zorder=3 + top - rank,
                    label=f"trial {row['trial']}: {_fmt(row['value'])}")
            positive &= all(v > 0 for v in values if math.isfinite(v))
            drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    if positive and report.monitor.endswith("loss"):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(report.monitor)
    ax.set_title(f"{report.monitor}: best {len(best)} trials (grey: the others)", fontsize=10)
    if best:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_history(report: Report, path: Path) -> bool:
    import matplotlib.pyplot as plt

    points = [r for r in report.rows if isinstance(r["value"], (int, float)) and math.isfinite(r["value"])]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for state, style in (("COMPLETE", dict(marker="o", color="C0")), ("PRUNED", dict(marker="x", color="0.5"))):
        chosen = [r for r in points if r["state"].startswith(state)]
        if chosen:
            label = "completed" if state == "COMPLETE" else "pruned (last reported value)"
            ax.scatter([r["trial"] for r in chosen], [r["value"] for r in chosen], s=18, label=label, **style)
    best_so_far, xs, ys = None, [], []
    better = max if report.direction == "maximize" else min
    for r in sorted((r for r in points if r["state"] == "COMPLETE"), key=lambda r: r["trial"]):
        best_so_far = r["value"] if best_so_far is None else better(best_so_far, r["value"])
        xs.append(r["trial"])
        ys.append(best_so_far)
    if xs:
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    if all(r["value"] > 0 for r in points) and max(r["value"] for r in points) > 20 * min(r["value"] for r in points):
        ax.set_yscale("log")
    ax.set_xlabel("trial")
    ax.set_ylabel(report.monitor or "objective")
    ax.set_title("Optimization history", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_pareto(report: Report, path: Path) -> bool:
    """Completed trials in the plane of each pair of objectives (the first three pairs), the
    Pareto front highlighted and joined in the order of the first objective of the pair."""
    if len(report.objectives) < 2:
        return False
    import matplotlib.pyplot as plt

    names = report.objectives
    done = [r for r in report.rows if _completed(r) and all(_finite(r.get(n)) for n in names)]
    if not done:
        return False
    front_ids = {r["trial"] for r in report.pareto}
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))][:3]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), dpi=100, squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        x, y = names[i], names[j]
        others = [r for r in done if r["trial"] not in front_ids]
        ax.scatter([r[x] for r in others], [r[y] for r in others], s=18, color="0.65", label="other trials")
        front = sorted((r for r in done if r["trial"] in front_ids), key=lambda r: r[x])
        ax.plot([r[x] for r in front], [r[y] for r in front], marker="o", color="C3", linewidth=1,
                markersize=5, label="Pareto front")
        for r in front:
            ax.annotate(str(r["trial"]), (r[x], r[y]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(f"{x} ({report.directions[i]})")
        ax.set_ylabel(f"{y} ({report.directions[j]})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Pareto front: {len(front_ids)} of {len(done)} completed trials", fontsize=10)
    return _save(fig, path)


def plot_importances(report: Report, path: Path) -> bool:
    if not report.importances:
        return False
    import matplotlib.pyplot as plt

    names = list(report.importances)[::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.5 + 0.4 * len(names)), dpi=100)
    ax.barh(names, [report.importances[n] for n in names], color="C0")
    ax.set_xlabel("importance (share of explained variance)")
    ax.set_title("Parameter importances", fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> bool:
    """Write a finished figure and free it (a sweep process may draw many)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- writing
def _markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def markdown(report: Report, images: list[str]) -> str:
    parts = [f"# {report.title}", "", _markdown_table(report.rows, report.columns()), ""]
    if report.objectives:
        parts += ["## Pareto front", ""]
        if report.pareto:
            parts += [f"{len(report.pareto)} trials: no other trial is as good in every objective and better in one.",
                      "", _markdown_table(report.pareto, ["trial", *report.objectives, *report.param_names, "run_dir"]),
                      ""]
        else:
            parts += ["No trial completed.", ""]
    elif report.best:
        parts += [f"**Best:** trial {report.best['trial']}, value {_fmt(report.best['value'])}, "
                  f"{_params_text(report.best, report.param_names)}  ", f"run dir: `{report.best['run_dir']}`", ""]
    else:
        parts += ["**Best:** no trial completed.", ""]
    if report.importances:
        parts += [f"## Parameter importances{f' (for {report.importance_target})' if report.importance_target else ''}",
                  ""]
        parts += [f"- {k}: {v:.3f}" for k, v in report.importances.items()] + [""]
    elif report.importance_note and report.optuna:
        parts += [f"Parameter importances: {report.importance_note}.", ""]
    if report.warnings:
        parts += ["## Warnings", ""] + [f"- {w}" for w in report.warnings] + [""]
    unfinished = [r for r in report.rows if r.get("reason") and r["state"] not in ("COMPLETE", "completed")]
    if unfinished:
        parts += ["## Trials that did not complete", ""]
        parts += [f"- trial {r['trial']} ({r['state']}): {r['reason']}" for r in unfinished] + [""]
    parts += [f"![{name}]({name})" for name in images]
    return "\n".join(parts) + "\n"


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write report.md and the plots into `out_dir`; return the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    plots = [("report_curves.png", plot_curves)]
    if report.objectives:
        plots.append(("report_pareto.png", plot_pareto))
    if report.optuna:
        plots += [("report_history.png", plot_history), ("report_importances.png", plot_importances)]
    images = [name for name, plot in plots if plot(report, out_dir / name)]
    (out_dir / REPORT_FILE).write_text(markdown(report, images))
    return [out_dir / REPORT_FILE, *(out_dir / name for name in images)]


def report_sweep(sweep_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Report, list[Path]]:
    """Build and write the report of a sweep dir (Optuna if it has study.json, else grid)."""
    from app.search.study import StudyFile

    info = StudyFile.read(sweep_dir)
    report = optuna_report(info.storage, info.study_name) if info else grid_report(sweep_dir)
    return report, write_report(report, out_dir or sweep_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.search.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", nargs="?", help="a sweep directory (outputs/sweeps/<date>/<time>)")
    parser.add_argument("--storage", help="a study storage URL as hydra.sweeper.storage takes it: "
                                          "sqlite:///outputs/studies/<name>.db, postgresql+psycopg://user@host/db, "
                                          "journal:///studies/<name>.log")
    parser.add_argument("--study", help="the study's name (default: the storage's only study)")
    parser.add_argument("--out", help="where to write report.md and the plots (default: the sweep dir, "
                                      "or <storage file>-report/)")
    args = parser.parse_args(argv)
    try:
        report, files = _run(args)
    except ReportError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    print(report.text())
    print("\nWrote " + ", ".join(str(f) for f in files))
    return 0


class ReportError(Exception):
    """What the user asked for cannot be reported (printed as one line, exit status 2)."""


def _run(args: argparse.Namespace) -> tuple[Report, list[Path]]:
    from app.search.study import absolute_storage, display_url, open_storage, storage_file, storage_refusal

    if bool(args.sweep_dir) == bool(args.storage):
        raise ReportError("give a sweep directory, or --storage <url> (one of the two)")
    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir)
        if not sweep_dir.is_dir():
            raise ReportError(f"{sweep_dir} is not a directory; give a sweep directory such as outputs/sweeps/<date>/<time>")
        if not (sweep_dir / "study.json").exists() and not any(sweep_dir.glob("*/.hydra/overrides.yaml")):
            raise ReportError(f"{sweep_dir} holds no sweep jobs (no <job>/.hydra/overrides.yaml) and no study.json")
        return report_sweep(sweep_dir, args.out)
    url = absolute_storage(args.storage, Path.cwd())
    path = storage_file(url)
    if path is not None and not path.exists():
        raise ReportError(f"no such storage file: {path}")
    import optuna

    try:
        names = [s.study_name for s in optuna.study.get_all_study_summaries(open_storage(url))]
    except Exception as error:  # noqa: BLE001 - an unreachable or malformed storage: one paragraph
        refusal = storage_refusal(url, error, key="--storage")
        if refusal is None:
            raise
        raise ReportError(str(refusal)) from None
    name = args.study or (names[0] if len(names) == 1 else None)
    if name not in names:
        shown = display_url(url)
        raise ReportError(f"study {args.study!r} is not in {shown}; it has: {', '.join(names) or 'no study'}"
                          if args.study else
                          f"{shown} has several studies ({', '.join(names)}): choose one with --study")
    out = Path(args.out) if args.out else (path.with_name(f"{path.stem}-report") if path else Path(f"{name}-report"))
    report = optuna_report(url, name)
    return report, write_report(report, out)


if __name__ == "__main__":
    sys.exit(main())
