"""Several objectives: `trainer.monitor` as a list, the values a run returns and records, the
sweeper's checks, telling and results, pruning turned off, the Pareto report; one small sweep
end to end through `python -m app --multirun`."""
from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.trial import TrialState

from app.config import objective_names, resolve_mode, sweep_direction, validate
from app.errors import ConfigError
from app.run.record import Status, Summary, objective_values, returned, write_json
from app.search.report import dominates, optuna_report, pareto_front, write_report
from app.search.study import open_storage
from app.search.sweeper import outcome_from_summary
from app.search.trial import OptunaTrial
from app.train.tasks import TASKS
from tests.conftest import FAST, run_dirs
from tests.test_search import make_sweeper, stored_study

TWO = "trainer.monitor=[val_loss,val_accuracy]"


# ----------------------------------------------------------------------------- the run's side
def test_a_list_monitor_keeps_its_first_metric_for_the_run_and_all_as_objectives(compose_cfg):
    cfg = compose_cfg("data=blobs", TWO)
    assert objective_names(cfg) == ["val_loss", "val_accuracy"]
    resolve_mode(cfg)
    assert cfg.trainer.monitor == "val_loss" and cfg.trainer.mode == "min"
    assert list(cfg.trainer.objectives) == ["val_loss", "val_accuracy"]
    assert cfg.callbacks.early_stopping.monitor == "val_loss"  # ${trainer.monitor}
    assert cfg.callbacks.early_stopping.mode == "min"
    resolve_mode(cfg)  # again (the builder does): nothing changes
    assert objective_names(cfg) == ["val_loss", "val_accuracy"] and cfg.trainer.monitor == "val_loss"
    validate(cfg, TASKS["classification"].metric_names())
    single = resolve_mode(compose_cfg())
    assert objective_names(single) == ["val_loss"] and single.trainer.objectives is None


def test_a_list_monitor_starting_with_accuracy_maximises_it(compose_cfg):
    cfg = resolve_mode(compose_cfg("data=blobs", "trainer.monitor=[val_accuracy,val_loss]"))
    assert cfg.trainer.monitor == "val_accuracy" and cfg.trainer.mode == "max"


@pytest.mark.parametrize("monitor, key, value", [
    ("[]", "trainer.monitor", []),
    ("[val_loss,val_loss]", "trainer.monitor", ["val_loss", "val_loss"]),
    ("[val_loss,val_wobble]", "trainer.monitor", "val_wobble"),
])
def test_bad_list_monitors_are_refused(compose_cfg, monitor, key, value):
    cfg = compose_cfg("data=blobs", f"trainer.monitor={monitor}")
    with pytest.raises(ConfigError) as error:
        resolve_mode(cfg)
        validate(cfg, TASKS["classification"].metric_names())
    assert error.value.key == key and error.value.value == value


def test_objectives_are_derived_not_set(compose_cfg):
    cfg = compose_cfg("data=blobs", "trainer.objectives=[val_accuracy]")
    with pytest.raises(ConfigError) as error:
        resolve_mode(cfg)
    assert error.value.key == "trainer.objectives" and "trainer.monitor=[" in str(error.value)


def test_sweep_direction_of_a_list_monitor_follows_each_metric():
    assert sweep_direction("auto", ["val_loss", "val_accuracy"]) == ["minimize", "maximize"]
    assert sweep_direction("max", ["val_accuracy", "val_mae"]) == ["maximize", "minimize"]
    assert sweep_direction("auto", "val_accuracy") == "maximize"
    with pytest.raises(ConfigError) as error:
        sweep_direction("auto", ["val_loss", "val_wobble"])
    assert error.value.key == "hydra.sweeper.direction" and "val_wobble" in str(error.value)


def test_objective_values_at_the_best_epoch_or_worst_when_the_run_did_not_end_normally():
    at_best = {"epoch": 4, "val_loss": 0.3, "val_accuracy": 0.9, "val_wobble": 1.0}
    names = ["val_loss", "val_accuracy", "val_wobble"]
    assert objective_values(Status.EARLY_STOPPED, at_best, names, "min") == {
        "val_loss": 0.3, "val_accuracy": 0.9, "val_wobble": 1.0}
    worst = objective_values(Status.DIVERGED, at_best, names, "min")
    assert worst["val_loss"] == math.inf and worst["val_accuracy"] == -math.inf and math.isnan(worst["val_wobble"])
    assert objective_values(Status.FAILED, None, ["val_accuracy", "val_loss"], "max") == {
        "val_accuracy": -math.inf, "val_loss": math.inf}
    assert returned(Summary(Status.COMPLETED, objective=0.3, objectives={"val_loss": 0.3, "val_accuracy": 0.9})) \
        == [0.3, 0.9]
    assert returned(Summary(Status.COMPLETED, objective=0.3)) == 0.3


def test_several_seeds_average_each_objective_or_give_the_worst():
    from app.run.seeds import aggregate

    names = ["val_loss", "val_accuracy"]
    done = [{"status": "completed", "objective": 0.2 * i, "objectives": {"val_loss": 0.2 * i, "val_accuracy": 0.5 + 0.1 * i}}
            for i in (1, 2)]
    summary = aggregate(done, [1, 2], "val_loss", "min", names)
    assert summary.objectives == pytest.approx({"val_loss": 0.3, "val_accuracy": 0.65})
    assert returned(summary) == pytest.approx([0.3, 0.65])
    stopped = aggregate([done[0], {"status": "diverged", "objective": math.inf}], [1, 2], "val_loss", "min", names)
    assert stopped.objectives == {"val_loss": math.inf, "val_accuracy": -math.inf}
    assert aggregate(done, [1, 2], "val_loss", "min", ["val_loss"]).objectives is None


def test_outcomes_carry_every_objective_and_fail_on_the_wrong_number():
    summary = Summary(Status.COMPLETED, objective=0.3, objectives={"val_loss": 0.3, "val_accuracy": 0.9})
    assert outcome_from_summary(summary, None, 2).values == [0.3, 0.9]  # from the run dir alone
    assert outcome_from_summary(summary, [0.3, 0.9], 2).state == TrialState.COMPLETE
    wrong = outcome_from_summary(summary, [0.3, 0.9], 3)
    assert wrong.state == TrialState.FAIL and wrong.values is None and "3 objectives" in wrong.reason
    single = outcome_from_summary(Summary(Status.COMPLETED, objective=0.3), 0.3)
    assert single.values == [0.3] and single.value == 0.3
    plain = outcome_from_summary(None, (1.0, 2.0), 2)  # a task function of another app
    assert plain.state == TrialState.COMPLETE and plain.values == [1.0, 2.0]
    assert outcome_from_summary(None, [1.0], 2).state == TrialState.FAIL
    assert outcome_from_summary(None, math.nan, 1).state == TrialState.FAIL


def test_a_trial_of_a_multi_objective_study_reports_nothing_and_is_never_pruned(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path}/s.db"), directions=["minimize"] * 2,
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=0))
    asked = study.ask()
    trial = OptunaTrial(study, asked._trial_id)
    trial.start_seed(3)
    assert [trial.report(epoch, 10.0 * epoch) for epoch in (1, 2, 3)] == [False] * 3
    assert study.trials[0].intermediate_values == {}


# ----------------------------------------------------------------------------- the sweeper
class TwoObjectiveLauncher:
    """Runs each job in-process as this app's runs would: summary.json with both objectives
    (val_loss = x, val_mae = (x - 1)^2: every x in [0, 1] is on the Pareto front of minimising
    both), and the list as the return value (`objectives=1`: x alone)."""

    def __init__(self, sweep_dir: Path, objectives: int = 2) -> None:
        self.sweep_dir, self.launched, self.objectives = sweep_dir, [], objectives
        type(self).__name__ = "BasicLauncher"

    def launch(self, job_overrides, initial_job_idx):
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            self.launched.append(idx)
            x = float(dict(o.lstrip("+").split("=", 1) for o in overrides)["x"])
            run_dir = self.sweep_dir / str(idx)
            run_dir.mkdir(parents=True)
            values = dict(list({"val_loss": x, "val_mae": (x - 1) ** 2}.items())[:self.objectives])
            write_json(run_dir / "summary.json", {"status": "completed", "objective": x, "epochs_run": 2,
                                                  **({"objectives": values} if self.objectives > 1 else {})})
            ret = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED,
                            hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run_dir)}}}))
            ret.return_value = list(values.values()) if self.objectives > 1 else x
            returns.append(ret)
        return returns


def two_objective_sweeper(tmp_path, monitor=("val_loss", "val_mae"), direction=("minimize", "minimize"),
                          **settings):
    sweeper = make_sweeper(tmp_path, **settings)
    sweeper.direction = list(direction) if len(direction) > 1 else direction[0]
    sweeper.config.trainer = {"monitor": list(monitor) if len(monitor) > 1 else monitor[0]}
    sweeper.launcher = TwoObjectiveLauncher(Path(sweeper.sweep_dir), len(monitor))
    return sweeper


def test_a_two_objective_sweep_tells_both_values_and_writes_the_pareto_front(tmp_path, caplog):
    sweeper = two_objective_sweeper(tmp_path, n_trials=5, params="choice(0.0, 0.5, 1.0, 2.0)")
    sweeper.pruner = {"_target_": "optuna.pruners.MedianPruner"}
    with caplog.at_level(logging.INFO):
        sweeper.sweep([])
    study = stored_study(tmp_path)
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    trials = study.trials
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.values == [t.params["x"], (t.params["x"] - 1) ** 2]
    assert isinstance(sweeper.pruner, optuna.pruners.NopPruner)
    notes = [r.getMessage() for r in caplog.records if "Pruning is off for multi-objective" in r.getMessage()]
    assert len(notes) == 1 and "MedianPruner is not used" in notes[0]
    results = OmegaConf.to_container(OmegaConf.load(Path(sweeper.sweep_dir) / "optimization_results.yaml"))
    assert results["name"] == "optuna" and "best_value" not in results
    front = sorted(tuple(s["values"]) for s in results["solutions"])
    expected = sorted({(t.params["x"], (t.params["x"] - 1) ** 2) for t in trials if t.params["x"] <= 1.0})
    assert sorted(set(front)) == expected  # x = 2 is beaten by x = 1 in both
    for solution in results["solutions"]:
        assert solution["values"] == [solution["params"]["x"], (solution["params"]["x"] - 1) ** 2]


@pytest.mark.parametrize("monitor, direction, accepted", [
    (("val_loss", "val_mae"), ("minimize",), "2 directions, one per metric of trainer.monitor (val_loss, val_mae)"),
    (("val_loss",), ("minimize", "maximize"), "one objective: trainer.monitor names one metric"),
    (("val_loss", "val_mae"), ("minimize", "sideways"), "minimize or maximize, or a list of them"),
])
def test_directions_that_do_not_match_the_monitored_metrics_are_refused(tmp_path, capsys, monitor, direction,
                                                                        accepted):
    sweeper = two_objective_sweeper(tmp_path, monitor=monitor, direction=direction)
    with pytest.raises(SystemExit) as exit_info:
        sweeper.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("Error: Invalid value for `hydra.sweeper.direction`") and accepted in message
    assert "\n" not in message and sweeper.launcher.launched == []
    assert not (tmp_path / "outputs").exists()  # no study was made


def test_a_direction_against_its_metric_is_kept_with_one_warning(tmp_path, caplog):
    sweeper = two_objective_sweeper(tmp_path, monitor=("val_loss", "val_accuracy"),
                                    direction=("minimize", "minimize"), n_trials=1)
    with caplog.at_level(logging.WARNING):
        sweeper.sweep([])
    warnings = [r.getMessage() for r in caplog.records if "val_accuracy" in r.getMessage()]
    assert warnings == ["hydra.sweeper.direction[1]=minimize keeps the lowest val_accuracy as best, though a "
                        "higher val_accuracy is better (leave the direction out to follow the metric)"]
    assert [d.name for d in stored_study(tmp_path).directions] == ["MINIMIZE", "MINIMIZE"]


@pytest.mark.parametrize("mode, direction, warned", [
    ("max", "maximize", False),  # trainer.mode=max warns in each run; the study agrees with it
    ("min", "maximize", True),  # the study and the run's best disagree
    ("auto", "maximize", True),  # against val_loss's own direction
    ("auto", "minimize", False),
])
def test_the_first_direction_is_compared_with_an_explicit_trainer_mode(tmp_path, caplog, mode, direction, warned):
    sweeper = two_objective_sweeper(tmp_path, monitor=("val_loss",), direction=(direction,), n_trials=1)
    sweeper.config.trainer.mode = mode
    with caplog.at_level(logging.WARNING):
        sweeper.sweep([])
    warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hydra.sweeper.direction=")]
    assert len(warnings) == warned
    if warned and mode == "min":
        assert "trainer.mode=min keeps the lowest as best" in warnings[0]


@pytest.mark.parametrize("first, second, differs", [
    ({"monitor": ("val_loss", "val_mae")}, {"monitor": ("val_loss", "val_accuracy"),
                                            "direction": ("minimize", "maximize")}, "direction"),
    ({"monitor": ("val_loss", "val_mae")}, {"monitor": ("val_mae", "val_loss")}, "monitor"),
    ({"monitor": ("val_loss",), "direction": ("minimize",)}, {"monitor": ("val_mae",), "direction": ("minimize",)},
     "monitor ['val_loss'] (now ['val_mae'])"),
    ({"monitor": ("val_loss",), "direction": ("minimize",)}, {"monitor": ("val_loss", "val_mae")},
     "direction minimize (now minimize, minimize)"),
])
def test_resuming_with_another_metric_or_direction_is_refused_with_the_ways_out(tmp_path, capsys, first, second,
                                                                                differs):
    # the monitor comes from the composed config (a config file), not from the command's overrides
    sweeper = two_objective_sweeper(tmp_path, n_trials=1, **first)
    sweeper.sweep([])
    again = two_objective_sweeper(tmp_path, n_trials=2, **second)
    with pytest.raises(SystemExit) as exit_info:
        again.sweep([])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "Traceback" not in message and differs in message
    assert "hydra.sweeper.study_name=<name>" in message and "hydra.sweeper.storage=<url>" in message
    assert len(stored_study(tmp_path).trials) == 1 and again.launcher.launched == []


# ----------------------------------------------------------------------------- the report
def test_dominance_and_the_pareto_front_follow_each_direction():
    assert dominates([1, 5], [2, 5], ["minimize", "maximize"])
    assert not dominates([1, 5], [1, 5], ["minimize", "maximize"])
    assert not dominates([1, 4], [2, 5], ["minimize", "maximize"])
    rows = [{"trial": i, "state": "COMPLETE", "a": a, "b": b}
            for i, (a, b) in enumerate([(1, 0.5), (2, 0.9), (3, 0.8), (0.5, 0.1), (2, 0.9)])]
    rows.append({"trial": 5, "state": "PRUNED", "a": 0.1, "b": 1.0})
    assert [r["trial"] for r in pareto_front(rows, ["a", "b"], ["minimize", "maximize"])] == [3, 0, 1, 4]


def test_report_of_a_two_objective_study_shows_the_pareto_front_as_table_and_png(tmp_path):
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="mo", storage=open_storage(url), directions=["minimize", "maximize"],
                                sampler=optuna.samplers.RandomSampler(seed=3))
    for i in range(8):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        values = {"val_loss": x, "val_accuracy": x ** 0.5 if i % 2 else x ** 2}
        run_dir = tmp_path / str(i)
        run_dir.mkdir()
        write_json(run_dir / "summary.json", {"status": "completed", "monitor": "val_loss", "mode": "min",
                                              "objective": x, "objectives": values, "epochs_run": 3})
        trial.set_user_attr("run_dir", str(run_dir))
        study.tell(trial, list(values.values()))
    report = optuna_report(url, "mo")
    assert report.objectives == ["val_loss", "val_accuracy"] and report.directions == ["minimize", "maximize"]
    front = {t.number for t in study.best_trials}
    assert {r["trial"] for r in report.pareto} == front and 1 <= len(front) < 8
    assert [r["val_loss"] for r in report.pareto] == sorted(r["val_loss"] for r in report.pareto)
    text = report.text()
    assert "Best:" not in text and f"Pareto front: {len(front)} trial" in text
    assert "minimize val_loss, maximize val_accuracy" in report.title
    files = write_report(report, tmp_path / "out")
    assert "report_pareto.png" in {f.name for f in files}
    assert (tmp_path / "out" / "report_pareto.png").stat().st_size > 1000
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| trial | state | val_loss | val_accuracy | epochs |" in markdown and "## Pareto front" in markdown
    assert "![report_pareto.png](report_pareto.png)" in markdown
    for number in front:
        assert f"| {number} | " in markdown.split("## Pareto front")[1].split("##")[0]


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_two_objective_sweep_end_to_end(run_app, tmp_path):
    proc = run_app("--multirun", "data=blobs", "hparams_search=regression_optuna", TWO, "hydra.sweeper.n_trials=3",
                   "hydra/sweeper/sampler=random", "hydra/sweeper/pruner=median", "model.layers=2", "model.nodes=16",
                   *FAST, check=True)
    log = proc.stdout + proc.stderr
    assert log.count("Pruning is off for multi-objective studies") == 1
    name = "train-regression_optuna"
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/outputs/studies/{name}.db")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MAXIMIZE"]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for t in study.trials:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert summary["monitor"] == "val_loss" and summary["mode"] == "min"
        assert t.values == [summary["objectives"]["val_loss"], summary["objectives"]["val_accuracy"]]
        assert t.intermediate_values == {}  # a multi-objective trial reports nothing
    sweep_dir = run_dirs(tmp_path)[0].parent
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert sorted(s["values"] for s in results.solutions) == sorted(t.values for t in study.best_trials)
    assert (sweep_dir / "report_pareto.png").stat().st_size > 1000
    report = subprocess.run([sys.executable, "-m", "app.search.report", str(sweep_dir)], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert report.returncode == 0, report.stderr
    assert f"Pareto front: {len(study.best_trials)} trial" in report.stdout
