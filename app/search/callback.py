"""`SweepSummary`, the Hydra callback configured under `hydra.callbacks` in conf/config.yaml: it
creates the sweep directory before the sweeper starts, rewrites `sweep_summary.csv` after each
job and at the end of the sweep, and then writes the sweep report (app/search/report.py)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from app.search.summary import SUMMARY_FILE, format_table, write_summary

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Hydra callback keeping `sweep_summary.csv` up to date (see module docstring)."""

    reads_model = False  # (Callback.reads_model)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_summary(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        if not rows and not (sweep_dir / "study.json").exists():  # a resumed study may run no job
            return
        from app.search.report import report_sweep  # matplotlib and optuna: only when reporting

        try:
            report, files = report_sweep(sweep_dir)
        except Exception as error:  # the sweep's results are all on disk: report, do not fail the sweep
            log.warning("Sweep summary (%s):\n%s", sweep_dir / SUMMARY_FILE, format_table(rows))
            log.warning("The sweep report failed (%s: %s); retry with: python -m app.search.report %s",
                        type(error).__name__, error, sweep_dir)
            return
        log.info("Sweep report (%s):\n%s", files[0], report.text())
