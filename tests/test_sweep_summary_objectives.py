"""`sweep_summary.csv` of a sweep with several objectives: one column per objective."""
from __future__ import annotations

import csv
from pathlib import Path

from omegaconf import OmegaConf

from app.run.record import Status, Summary
from app.search.summary import COLUMNS, write_summary


def _job(sweep_dir: Path, number: int, summary: Summary | None) -> None:
    job = sweep_dir / str(number)
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create([f"model.nodes={8 * (number + 1)}"]), job / ".hydra" / "overrides.yaml")
    if summary is not None:
        summary.write(job)


def _read(sweep_dir: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(sweep_dir / "sweep_summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_each_objective_of_a_multi_objective_sweep_has_its_column(tmp_path):
    _job(tmp_path, 0, Summary(Status.COMPLETED, objective=0.25, objectives={"val_loss": 0.25, "val_accuracy": 0.9},
                              epochs_run=3))
    _job(tmp_path, 1, Summary(Status.PRUNED, objective=0.5, objectives={"val_loss": 0.5, "val_accuracy": 0.75},
                              epochs_run=1))
    _job(tmp_path, 2, None)  # still running
    rows = write_summary(tmp_path)
    header, written = _read(tmp_path)
    assert header == ["job", "overrides", "status", "objective", "objective:val_loss", "objective:val_accuracy",
                      "best_epoch", "epochs_run", "wall_time_s", "run_dir"]
    assert [(r["job"], r["status"], r["objective"], r["objective:val_loss"], r["objective:val_accuracy"])
            for r in written] == [("0", "completed", "0.25", "0.25", "0.9"), ("1", "pruned", "0.5", "0.5", "0.75"),
                                  ("2", "running", "", "", "")]
    assert rows[0]["objective:val_accuracy"] == 0.9


def test_a_single_objective_sweep_keeps_the_columns_it_had(tmp_path):
    _job(tmp_path, 0, Summary(Status.COMPLETED, objective=0.25, epochs_run=3))
    write_summary(tmp_path)
    header, written = _read(tmp_path)
    assert header == COLUMNS and written[0]["objective"] == "0.25"


def test_each_rewrite_reads_only_the_jobs_whose_files_changed(tmp_path, monkeypatch):
    import app.search.summary as summary_module

    _job(tmp_path, 0, Summary(Status.COMPLETED, objective=0.25, epochs_run=3))
    _job(tmp_path, 1, None)  # running
    write_summary(tmp_path)
    read = []
    row_of = summary_module._row
    monkeypatch.setattr(summary_module, "_row", lambda job: read.append(job.name) or row_of(job))
    Summary(Status.PRUNED, objective=0.5, epochs_run=1).write(tmp_path / "1")  # job 1 ends
    _job(tmp_path, 2, None)  # and job 2 starts
    rows = write_summary(tmp_path)
    assert sorted(read) == ["1", "2"]  # job 0's files did not change: its row is not read again
    assert [(r["job"], r["status"], r["objective"]) for r in rows] == [
        ("0", "completed", 0.25), ("1", "pruned", 0.5), ("2", "running", None)]
    assert [r["status"] for r in _read(tmp_path)[1]] == ["completed", "pruned", "running"]
