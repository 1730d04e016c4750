"""Packs of trials in Optuna sweeps (app/search/packs.py): the pack size and shape key rules in
process, and `python -m app --multirun ... pack=K` end to end in a subprocess (tiny budgets on the
CPU): every member a real trial and a real run, equal to the same trial unpacked, pruned alone,
failing alone, packs split by model shape, and a killed packed sweep resumed."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from app.errors import ConfigError
from app.search.packs import CPU_AUTO, cuda_pack_limit, per_member, sampler_options, shape_key, sweep_pack_size
from tests.conftest import CONF, FAST, kill_sweep_mid_trial

STUDY = "train-regression_optuna"
SEARCH = ["--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random",
          "model.nodes=16", "model.layers=2", "optimizer.weight_decay=0", *FAST]
LR = FloatDistribution(1e-4, 3e-2, log=True)


def sweep_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF)):
        return compose("config", overrides=["hparams_search=regression_optuna", *overrides],
                       return_hydra_config=True)


def load(tmp_path, name=STUDY):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'outputs' / 'studies' / f'{name}.db'}")


def sweep_dirs(tmp_path):
    return sorted((tmp_path / "outputs" / "sweeps").glob("*/*"))


def pack_files(sweep_dir):
    return [json.loads(p.read_text())["members"] for p in sorted((sweep_dir / "packs").glob("*.json"))]


# ----------------------------------------------------------------------------- rules, in process
def test_pack_size_follows_pack_and_the_search_space():
    cfg = sweep_cfg()
    assert sweep_pack_size(sweep_cfg("pack=false"), {"optimizer.lr": LR}, 64) == (1, None)
    assert sweep_pack_size(sweep_cfg("pack=4"), {"optimizer.lr": LR}, 64) == (4, None)
    assert sweep_pack_size(sweep_cfg("pack=4"), {"optimizer.lr": LR}, 3) == (3, None)
    # auto on the CPU: at most CPU_AUTO per pack, never more than the sweep's trials
    assert sweep_pack_size(cfg, {"optimizer.lr": LR}, 64) == (CPU_AUTO, None)
    assert sweep_pack_size(cfg, {"optimizer.lr": LR}, 5) == (5, None)
    # 12 shapes: packs form with >= 24 trials, not with 20 (the preset's n_trials)
    shapes = {"optimizer.lr": LR, "model.nodes": CategoricalDistribution([32, 64, 128]),
              "model.layers": IntDistribution(2, 5)}
    assert sweep_pack_size(cfg, shapes, 64) == (CPU_AUTO, None)
    size, reason = sweep_pack_size(cfg, shapes, 20)
    assert size == 1 and "20 trials over 12 combinations of model.layers, model.nodes" in reason
    size, reason = sweep_pack_size(cfg, {"model.nodes": IntDistribution(8, 256, log=True)}, 64)
    assert size == 1 and "64 trials over 249 combinations of model.nodes" in reason
    size, reason = sweep_pack_size(cfg, {"data.noise_std": FloatDistribution(0.01, 0.1)}, 64)
    assert size == 1 and "varies data.noise_std over an interval" in reason
    # settings packs never support, and seeds: one trial per job, with the reason
    size, reason = sweep_pack_size(sweep_cfg("pack=8", "trainer.accumulate_grad_batches=2"), {}, 64)
    assert size == 1 and "accumulate_grad_batches" in reason
    size, reason = sweep_pack_size(sweep_cfg("pack=8", "seeds=[1,2]"), {}, 64)
    assert size == 1 and "seeds" in reason
    for bad in ("pack=0", "pack=many"):
        with pytest.raises(ConfigError, match="pack"):
            sweep_pack_size(sweep_cfg(bad), {}, 8)



def test_a_packed_tpe_search_gets_the_constant_liar_unless_the_command_sets_it():
    assert sampler_options(sweep_cfg()) == {"constant_liar": True}
    assert sampler_options(sweep_cfg("hydra.sweeper.sampler.constant_liar=false")) == {}
    assert sampler_options(sweep_cfg("hydra/sweeper/sampler=random")) == {}

def test_shape_key_keeps_what_fixes_shapes_and_drops_per_member_settings():
    base = shape_key(sweep_cfg())
    for same in ("optimizer.lr=0.1", "optimizer.weight_decay=0.3", "seed=7", "trainer.epochs=9",
                 "scheduler=step", "callbacks.early_stopping.patience=2", "trainer.grad_clip=1.0"):
        assert shape_key(sweep_cfg(same)) == base, same
    for other in ("model.nodes=128", "model.layers=3", "trainer.batch_size=64", "data.n_samples=500",
                  "optimizer=sgd", "trainer.precision=bf16-mixed", "model=resmlp"):
        assert shape_key(sweep_cfg(other)) != base, other
    assert per_member("optimizer.lr") and per_member("scheduler.gamma") and per_member("seed")
    assert not per_member("optimizer._target_") and not per_member("model.nodes")
    assert not per_member("trainer.batch_size")


def test_a_bad_pack_stops_the_sweep_in_one_paragraph(run_app):
    proc = run_app("--multirun", "hparams_search=regression_optuna", "pack=0", *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pack" in proc.stderr and "an integer >= 1" in proc.stderr


# ----------------------------------------------------------------------------- end to end
def run_sweep(tmp_path, *args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true"}
    proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def best_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_packed_trials_are_real_runs_equal_to_the_same_trials_unpacked(tmp_path):
    args = [*SEARCH, "hydra.sweeper.n_trials=6", "optimizer.lr=tag(log,interval(1e-3,3e-2))"]
    log_alone = run_sweep(tmp_path, *args, "pack=false", "hydra.sweeper.study_name=alone")
    log_packed = run_sweep(tmp_path, *args, "pack=3", "hydra.sweeper.study_name=packed")
    assert "pack of" not in log_alone and "pack:" not in log_alone  # pack=false: one trial per job
    assert log_packed.count("pack of 3 runs") == 2
    alone_dir, packed_dir = sweep_dirs(tmp_path)
    assert not (alone_dir / "packs").exists() and len(pack_files(packed_dir)) == 2
    alone, packed = load(tmp_path, "alone").trials, load(tmp_path, "packed").trials
    assert len(packed) == 6 and all(t.state == TrialState.COMPLETE for t in alone + packed)
    assert len({t.user_attrs["run_dir"] for t in packed}) == 6
    for a, p in zip(alone, packed):
        assert a.number == p.number and a.params == p.params  # the seeded random sampler: the same trials
        run_dir = packed_dir / str(p.number)  # the dir the trial gets unpacked
        assert p.user_attrs["run_dir"] == str(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["trial"]["number"] == p.number
        assert summary["objective"] == pytest.approx(p.value, rel=1e-12)
        assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 3
        assert sorted(p.intermediate_values) == [1, 2, 3]
        assert json.loads((run_dir / "provenance.json").read_text())["overrides"][0] == \
            f"optimizer.lr={p.params['optimizer.lr']}"
        assert (run_dir / ".hydra" / "config.yaml").exists()
        # a plain single-model state, as the lone run's
        packed_state, alone_state = best_state(run_dir), best_state(alone_dir / str(a.number))
        assert {k: v.shape for k, v in packed_state.items()} == {k: v.shape for k, v in alone_state.items()}
        # the same trial alone: equal up to float32 rounding of the vectorized kernels (3 epochs)
        assert p.value == pytest.approx(a.value, rel=1e-4)
        for epoch, value in a.intermediate_values.items():
            assert p.intermediate_values[epoch] == pytest.approx(value, rel=1e-4)


def enqueued_study(tmp_path, lrs):
    """The study with its trials' parameters queued (the sweep asks them in this order)."""
    storage = f"sqlite:///{tmp_path / 'outputs' / 'studies' / f'{STUDY}.db'}"
    (tmp_path / "outputs" / "studies").mkdir(parents=True)
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="minimize")
    for lr in lrs:
        study.enqueue_trial({"optimizer.lr": lr})


@pytest.mark.slow
def test_a_pruned_member_stops_while_the_rest_of_its_pack_trains_on(tmp_path):
    # pack 1: trials 0, 1 (lr 0.05) complete; pack 2: trial 2 (lr 1e-7, barely learns) is pruned
    # by the median of 0 and 1 at epoch 2, trial 3 (lr 0.05) trains all 5 epochs
    enqueued_study(tmp_path, [0.05, 0.05, 1e-7, 0.05])
    log = run_sweep(tmp_path, *SEARCH, "pack=2", "hydra.sweeper.n_trials=4", "optimizer.lr=choice(0.05,1e-7)",
                    "optimizer=sgd", "scheduler=none", "hydra/sweeper/pruner=median",
                    "hydra.sweeper.pruner.n_startup_trials=1", "hydra.sweeper.pruner.n_warmup_steps=1",
                    "trainer.epochs=5")
    assert log.count("pack of 2 runs") == 2
    trials = load(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                         TrialState.COMPLETE]
    pruned, other = trials[2], trials[3]
    summary = json.loads((sweep_dirs(tmp_path)[0] / "2" / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_run"] < 5 and "MedianPruner" in summary["message"]
    assert sorted(pruned.intermediate_values) == list(range(1, summary["epochs_run"] + 1))
    assert len((sweep_dirs(tmp_path)[0] / "2" / "metrics.csv").read_text().splitlines()) == 1 + summary["epochs_run"]
    assert other.user_attrs["epochs_run"] == 5 and sorted(other.intermediate_values) == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_member_that_cannot_be_built_fails_alone(tmp_path):
    enqueued_study(tmp_path, [0.01, -1.0])  # a negative learning rate: the optimizer refuses it
    run_sweep(tmp_path, *SEARCH, "pack=2", "hydra.sweeper.n_trials=2", "optimizer.lr=choice(0.01,-1.0)",
              "hydra.sweeper.max_failure_rate=1")
    ok, bad = load(tmp_path).trials
    assert ok.state == TrialState.COMPLETE and math.isfinite(ok.value)
    assert bad.state == TrialState.FAIL and "lr" in bad.user_attrs["reason"].lower()
    assert json.loads((sweep_dirs(tmp_path)[0] / "1" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_trials_of_different_shapes_go_to_different_packs(tmp_path):
    # TPE (the preset's sampler, constant liar on for packs) over lr and model.nodes
    log = run_sweep(tmp_path, *[a for a in SEARCH if a not in ("hydra/sweeper/sampler=random", "model.nodes=16")],
                    "pack=4", "hydra.sweeper.n_trials=8", "model.nodes=choice(8,16)",
                    "optimizer.lr=tag(log,interval(1e-3,3e-2))", "trainer.epochs=2")
    assert "constant_liar=True" in log
    trials = load(tmp_path).trials
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    by_number = {t.number: t for t in trials}
    packs = pack_files(sweep_dirs(tmp_path)[0])
    assert packs and sum(len(members) for members in packs) <= 8
    for members in packs:
        nodes = {by_number[m["number"]].params["model.nodes"] for m in members}
        assert len(nodes) == 1, members  # one shape per pack
        for m in members:  # each member trained its own shape
            state = best_state(sweep_dirs(tmp_path)[0] / str(m["number"]))
            assert next(iter(state.values())).shape[0] == by_number[m["number"]].params["model.nodes"]


@pytest.mark.slow
def test_a_killed_packed_sweep_resumes_and_retries_its_members(tmp_path):
    args = [*SEARCH, "pack=3", "hydra.sweeper.n_trials=3", "optimizer.lr=tag(log,interval(1e-3,1e-2))",
            "trainer.epochs=60", "~callbacks.early_stopping"]
    env = {**os.environ, "WANDB_SILENT": "true"}
    kill_sweep_mid_trial(tmp_path, args, env)  # kill it while the pack is training (member 1 half-way)
    assert [t.state for t in load(tmp_path).trials] == [TrialState.RUNNING] * 3  # one pack, killed

    log = run_sweep(tmp_path, *args)
    assert "0 of 3 trials finished" in log and "pack of 3 runs" in log
    trials = load(tmp_path).trials
    killed, retries = trials[:3], trials[3:]
    assert all(t.state == TrialState.FAIL and t.user_attrs["interrupted"] for t in killed)
    assert len(retries) == 3 and all(t.state == TrialState.COMPLETE for t in retries)
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [0, 1, 2]
    for t in retries:
        assert t.params == trials[t.user_attrs["retry_of"]].params
        assert json.loads((sweep_dirs(tmp_path)[-1] / str(t.number) / "summary.json").read_text())[
            "status"] == "completed"



@pytest.mark.slow
def test_a_dead_worker_fails_and_retries_only_its_packs_members(tmp_path):
    # joblib: two worker processes, a pack in each; the worker of the pack led by trial 0 (storage
    # id 1) is SIGKILLed by app/run/faults.py after its 3rd training batch
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true",
           "APP_TEST_KILL_AT": "batch:3", "APP_TEST_KILL_TRIAL_ID": "1"}
    args = [*SEARCH, "pack=2", "hydra.sweeper.n_trials=4", "optimizer.lr=tag(log,interval(1e-3,1e-2))",
            "hydra/launcher=joblib", "hydra.sweeper.n_jobs=2"]
    proc = subprocess.run([sys.executable, "-m", "app", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = load(tmp_path).trials
    packs = {tuple(m["number"] for m in members) for members in pack_files(sweep_dirs(tmp_path)[0])}
    assert (0, 1) in packs and (2, 3) in packs
    for killed in trials[:2]:
        assert killed.state == TrialState.FAIL and "killed by signal 9" in killed.user_attrs["reason"]
        assert killed.user_attrs["worker_died"] is True and killed.user_attrs["interrupted"] is True
    assert [t.state for t in trials[2:4]] == [TrialState.COMPLETE] * 2  # the other pack went on
    retries = [t for t in trials if t.user_attrs.get("retry_of") is not None]
    assert sorted(t.user_attrs["retry_of"] for t in retries) == [0, 1]
    assert all(t.state == TrialState.COMPLETE and t.params == trials[t.user_attrs["retry_of"]].params
               for t in retries)
    assert len(trials) == 6 and sum(t.state == TrialState.COMPLETE for t in trials) == 4


@pytest.mark.slow
@pytest.mark.parametrize("pack", ["pack=false", "pack=auto"])
def test_a_comma_grid_runs_one_job_per_point_as_before(tmp_path, pack):
    # Hydra's basic sweeper: `pack` packs no grid points (only each job's seeds)
    log = run_sweep(tmp_path, "--multirun", "optimizer.lr=0.001,0.01", "model.nodes=8,16", pack, *FAST)
    [sweep_dir] = sweep_dirs(tmp_path)
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    assert "pack of" not in log and "pack:" not in log
    for job in range(4):
        assert json.loads((sweep_dir / str(job) / "summary.json").read_text())["status"] == "completed"

# ----------------------------------------------------------------------------- CUDA (skipped without)
def test_pack_auto_is_not_split_by_memory_off_cuda(compose_cfg):
    assert cuda_pack_limit(compose_cfg("device=cpu", "data.n_samples=400"), 16) == 16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pack_auto_on_cuda_fits_the_free_memory(compose_cfg):
    small = cuda_pack_limit(compose_cfg("device=cuda", "data.n_samples=400"), 10**9)
    large = cuda_pack_limit(compose_cfg("device=cuda", "data.n_samples=400", "model.nodes=2048",
                                        "model.layers=6"), 10**9)
    assert 1 <= large < small < 10**9  # a bigger model: fewer members fit


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_packed_sweep_on_cuda(tmp_path):
    args = [a if a != "device=cpu" else "device=cuda" for a in SEARCH]
    log = run_sweep(tmp_path, *args, "hydra.sweeper.n_trials=4", "optimizer.lr=tag(log,interval(1e-3,3e-2))")
    assert "pack of 4 runs" in log and torch.cuda.get_device_name(0) in log  # pack=auto: one pack of four
    trials = load(tmp_path).trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE and math.isfinite(t.value) for t in trials)
