"""Sweep bookkeeping: `sweep_summary.csv`, a table of every job in a sweep directory, made from
what the jobs' run directories say (so it is right whatever the launcher or a job's fate).
`app.search.callback.SweepSummary` keeps it up to date during a sweep.

Several objectives (a list `trainer.monitor`): `objective` is the first one's value (the run's
monitor), and each objective has a column `objective:<metric>` after it, in the monitor's order."""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from app.run.record import SUMMARY_FILE as SUMMARY_JSON
from app.run.record import Summary

log = logging.getLogger(__name__)
SUMMARY_FILE = "sweep_summary.csv"
COLUMNS = ["job", "overrides", "status", "objective", "best_epoch", "epochs_run", "wall_time_s", "run_dir"]
OBJECTIVE_PREFIX = "objective:"  # + a metric name: the column of one objective of several


def _job_number(path: Path) -> tuple[int, str]:
    return (int(path.name), "") if path.name.isdigit() else (math.inf, path.name)  # type: ignore[return-value]


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when `path` is written (the app replaces its records whole): None when absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


# job dir -> (its files' stamps, its row). A sweep rewrites the summary after each job: without
# this every rewrite read every job's files again, so a sweep of N trials read N^2 / 2 of them.
_ROWS: dict[str, tuple[tuple, dict[str, Any]]] = {}


def collect(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job directory under `sweep_dir` (each has `.hydra/overrides.yaml`); a job's
    files are read again only when they changed since this process last read them."""
    rows = []
    jobs = sorted((p.parent.parent for p in Path(sweep_dir).glob("*/.hydra/overrides.yaml")), key=_job_number)
    for job in jobs:
        stamps = (_stamp(job / ".hydra" / "overrides.yaml"), _stamp(job / SUMMARY_JSON))
        known = _ROWS.get(str(job))
        if known is not None and known[0] == stamps:
            rows.append(dict(known[1]))
            continue
        rows.append(_row(job))
        _ROWS[str(job)] = (stamps, dict(rows[-1]))
    return rows


def _row(job: Path) -> dict[str, Any]:
    overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
    summary = Summary.read(job)
    row = {
        "job": job.name,
        "overrides": " ".join(str(o) for o in overrides),
        "status": summary.status.value if summary is not None else "running",
        "objective": summary.objective if summary is not None else None,
        "best_epoch": summary.best_epoch if summary is not None else None,
        "epochs_run": summary.epochs_run if summary is not None else None,
        "wall_time_s": summary.wall_time_s if summary is not None else None,
        "run_dir": str(job),
    }
    for name, value in ((summary.objectives or {}) if summary is not None else {}).items():
        row[OBJECTIVE_PREFIX + name] = value
    return row


def columns(rows: list[dict[str, Any]]) -> list[str]:
    """COLUMNS, with the objectives' columns (in the order the rows first name them) after `objective`."""
    extra = list(dict.fromkeys(key for row in rows for key in row if key.startswith(OBJECTIVE_PREFIX)))
    at = COLUMNS.index("objective") + 1
    return [*COLUMNS[:at], *extra, *COLUMNS[at:]]


def write_summary(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """Rewrite `<sweep_dir>/sweep_summary.csv` atomically; return its rows."""
    rows = collect(sweep_dir)
    path = Path(sweep_dir) / SUMMARY_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    os.replace(tmp, path)
    return rows


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain-text table for the terminal."""
    columns = columns or ["job", "status", "objective", "epochs_run", "overrides"]
    cells = [[format_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_cell(value: Any, digits: int = 6) -> str:
    """A table cell: empty for None, floats to `digits` significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def refresh_summary() -> None:
    """In a multirun job, rewrite the sweep's summary (used when a job ends abnormally)."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return
    if hydra_cfg.mode == RunMode.MULTIRUN:
        write_summary(hydra_cfg.sweep.dir)
