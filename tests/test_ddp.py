"""One run on several processes (DistributedDataParallel), on the CPU with gloo and 2 processes:
the batches' per-rank parts, the refusals, and end to end through `python -m app
trainer.devices=2` and `torchrun`: the same numbers as one process, one run dir, a killed rank,
resume, a sweep whose jobs are 2-process groups with a pruned trial."""
from __future__ import annotations

import json
import logging
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from app.data import Split, TensorBatches
from app.errors import ConfigError
from app.run import faults
from app.run.distributed import check_devices
from app.train.distributed import shard
from tests.conftest import app_in, metrics_rows, ok, run_digest, run_dirs

# 320 training samples in global batches of 96: 3 full batches and one of 32; validation 80.
ARGS = ["trainer.epochs=4", "data.n_samples=400", "trainer.batch_size=96", "trainer.accumulate_grad_batches=2",
        "trainer.grad_clip=1.0", "logger=none", "device=cpu", "trainer.progress_bar=false"]
# What one process and two give: the same sums, added in another order (float32 rounding).
RTOL, ATOL = 1e-5, 1e-7


# ----------------------------------------------------------------------------- fast: the parts
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("shuffle", [True, False])
def test_rank_parts_make_up_the_one_process_batches(world, shuffle):
    n, batch = 2 * 8 + 1, 8  # the last batch holds 1 sample: the other ranks get empty parts
    split = Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)[:, None])
    one = TensorBatches(split, batch, device="cpu", shuffle=shuffle, seed=3)
    parts = [TensorBatches(split, batch, device="cpu", shuffle=shuffle, seed=3, rank=r, world_size=world)
             for r in range(world)]
    for epoch in range(2):  # every rank draws the same permutation, epoch after epoch
        expected = [y for _, y in one]
        got = list(zip(*[list(p) for p in parts]))
        assert len(got) == len(expected) == len(parts[0]) == 3
        for whole, by_rank in zip(expected, got):
            assert torch.equal(torch.cat([y for _, y in by_rank]), whole)
            sizes = [y.shape[0] for _, y in by_rank]
            assert max(sizes) - min(sizes) <= 1
    assert {(p.num_samples, p.batch_size) for p in parts} == {(n, batch)}
    assert [y.shape[0] for _, y in list(parts[-1])[-1:]] == [1]  # the last rank holds the last sample


def test_shard_splits_a_range_into_near_equal_contiguous_parts():
    assert [shard(10, 17, r, 3) for r in range(3)] == [(10, 12), (12, 14), (14, 17)]
    assert [shard(0, 1, r, 2) for r in range(2)] == [(0, 0), (0, 1)]


def test_bad_process_settings_are_refused(compose_cfg):
    from app.config import validate

    for override, key in [("trainer.devices=0", "trainer.devices"), ("trainer.ddp_timeout=0", "trainer.ddp_timeout"),
                          ("trainer.cuda_graph=true", "trainer.cuda_graph")]:
        cfg = compose_cfg("trainer.devices=2", override)
        with pytest.raises(ConfigError, match=f"`{key}`"):
            validate(cfg)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="`trainer.devices`: 2. CUDA is not available.*device=cpu"):
            check_devices(compose_cfg("device=cuda", "trainer.devices=2"), 2)
    with pytest.raises(ConfigError, match="`device.type`: 'mps'"):
        check_devices(compose_cfg("device=mps"), 2)
    check_devices(compose_cfg("device=cpu"), 2)  # any number of processes on the CPU


def test_seeds_of_a_several_process_run_train_one_at_a_time_not_packed(compose_cfg, tmp_path, monkeypatch, caplog):
    # A pack trains on one process: with trainer.devices > 1 (or torchrun's group) every rank
    # trains each seed in turn, pack=auto or pack=K alike.
    from app.run import pack, seeds
    from app.run.record import Status, Summary
    from app.train.packed import unpackable_config

    assert "trainer.devices > 1" in unpackable_config(compose_cfg("device=cpu", "trainer.devices=2"))
    assert unpackable_config(compose_cfg("device=cpu")) is None
    monkeypatch.setattr(pack, "execute_pack", lambda *a, **k: pytest.fail("a pack with several processes"))
    trained = []

    def train(cfg, seed_dir, trial=None):
        trained.append((cfg.seed, seed_dir.name))
        return Summary(Status.COMPLETED, monitor="val_loss", mode="min", best=1.0, objective=1.0, epochs_run=1)

    for packing in ("auto", "2"):
        trained.clear()
        caplog.clear()
        cfg = compose_cfg("device=cpu", "trainer.devices=2", "seeds=[1,2]", f"pack={packing}")
        with caplog.at_level(logging.INFO, logger="app"):
            summary = seeds.train_seeds(cfg, tmp_path / packing, train)
        assert trained == [(1, "seed_1"), (2, "seed_2")] and summary.status == Status.COMPLETED
        assert "pack: training one run at a time: several processes" in caplog.text


def test_torchrun_ranks_refuse_a_multirun_and_another_number_of_devices(compose_cfg, monkeypatch):
    from app.run import distributed

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.under_torchrun() and distributed.launch_rank() == 1
    with pytest.raises(ConfigError, match="`--multirun`.*trainer.devices=N"):
        distributed.check_torchrun_args(["--multirun", "optimizer.lr=0.1,0.2"])
    with pytest.raises(ConfigError, match="`trainer.devices`: 3. torchrun started 2 processes"):
        distributed.join(compose_cfg("device=cpu", "trainer.devices=3"))
    assert not distributed.starts_group(compose_cfg("trainer.devices=2"))  # torchrun started them
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert distributed.launch_rank() == 0 and distributed.starts_group(compose_cfg("trainer.devices=2"))


def test_a_kill_point_can_name_one_rank(monkeypatch):
    monkeypatch.setattr(faults, "KILL_AT", faults._parse("batch:2@1"))
    monkeypatch.setattr(faults, "_seen", {point: 0 for point in faults.POINTS})
    assert faults.KILL_AT == ("batch", 2, 1)
    monkeypatch.setenv("RANK", "0")
    assert not faults._reached("batch") and not faults._reached("batch")
    monkeypatch.setenv("RANK", "1")
    assert not faults._reached("batch") and faults._reached("batch")
    with pytest.raises(ValueError, match="@R"):
        faults._parse("batch:2@x")


# ----------------------------------------------------------------------------- the Trainer, 2 ranks
def _train(rank, world, init_file, out):
    """Rank `rank` of `world` (0 of 1: no group) trains a fixed model; rank 0 saves what it got."""
    import torch.distributed as dist

    from app.run import distributed
    from app.train.tasks import TASKS
    from app.train.trainer import Trainer

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2 * 16 + 1, 3, generator=g)  # the last batch holds 1 sample: rank 0's part is empty
    split = Split(x, x.sum(dim=1, keepdim=True).sin())
    train = TensorBatches(split, 16, device="cpu", shuffle=True, seed=1, rank=rank, world_size=world)
    val = TensorBatches(split, 7, device="cpu", shuffle=False, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), TASKS["regression"],
                      device=torch.device("cpu"), epochs=3, accumulate_grad_batches=2, grad_clip=0.5)
    trainer.fit(train, val)
    test = trainer.evaluate(val)
    if rank == 0:
        torch.save({"model": model.state_dict(), "history": trainer.history, "test": test}, out)
    if world > 1:
        distributed.leave(together=True)


@pytest.mark.slow
def test_trainer_on_two_ranks_takes_the_one_process_steps(tmp_path):
    import torch.multiprocessing as mp

    _train(0, 1, None, tmp_path / "one.pt")
    mp.start_processes(_train, args=(2, str(tmp_path / "init"), tmp_path / "two.pt"), nprocs=2,
                       start_method="spawn")
    one, two = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    for key, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][key], tensor, rtol=RTOL, atol=ATOL)
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_mae", "grad_norm"):
            assert math.isclose(a[key], b[key], rel_tol=RTOL, abs_tol=ATOL), key
    assert two["test"] == pytest.approx(one["test"], rel=RTOL, abs=ATOL)


# ----------------------------------------------------------------------------- end to end
def app(cwd, *args, kill=None, torchrun=False):
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2") if torchrun else ()
    return app_in(cwd, *args, kill=kill, env={"OMP_NUM_THREADS": "1"}, launcher=launcher)


def metrics(run):
    return [{k: float(v) for k, v in row.items() if v} for row in metrics_rows(run)]


digest = run_digest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    ok(app(root / "one", *ARGS))
    ok(app(root / "two", *ARGS, "trainer.devices=2"))
    return root, run_dirs(root / "one"), run_dirs(root / "two")


@pytest.mark.slow
def test_two_processes_report_what_one_process_does(runs):
    _, [one], [two] = runs
    a, b = metrics(one), metrics(two)
    assert [row["epoch"] for row in b] == [1, 2, 3, 4] and a[0].keys() == b[0].keys()
    for row_a, row_b in zip(a, b):
        for key in row_a:
            assert math.isclose(row_a[key], row_b[key], rel_tol=RTOL, abs_tol=ATOL), (row_a["epoch"], key)
    for key, tensor in torch.load(one / "checkpoints" / "last.pt", weights_only=True)["model"].items():
        other = torch.load(two / "checkpoints" / "last.pt", weights_only=True)["model"][key]
        torch.testing.assert_close(other, tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_rank_zero_owns_the_one_run_dir(runs):
    root, _, [two] = runs
    assert run_dirs(root / "two") == [two]  # exactly one .hydra/ under outputs/
    assert sorted(p.name for p in two.iterdir()) == [".hydra", ".lock", "checkpoints", "metrics.csv",
                                                       "provenance.json", "summary.json", "train.log"]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state = torch.load(two / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])  # a stream per rank
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 4
    log = (two / "train.log").read_text()
    assert log.count("completed: best val_loss") == 1 and "[rank 1]" not in log


@pytest.mark.slow
def test_torchrun_gives_the_same_run_in_one_dir(runs, tmp_path):
    _, _, [two] = runs
    proc = ok(app(tmp_path, *ARGS, torchrun=True))
    [run] = run_dirs(tmp_path)
    assert metrics(run) == metrics(two)  # the same group, started by torchrun
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in two.iterdir())
    assert len(list((tmp_path / "outputs").rglob("*.log"))) == 1
    assert proc.stdout.count("completed: best val_loss") == 1  # rank 1 logs warnings only


@pytest.mark.slow
def test_a_killed_rank_stops_the_group_with_one_error_and_the_run_resumes(runs, tmp_path):
    _, _, [two] = runs
    # 4 batches per epoch: rank 1 dies after its 2nd batch of epoch 3 (last.pt holds epoch 2)
    proc = app(tmp_path, *ARGS, "trainer.devices=2", kill="batch:10@1")
    assert proc.returncode == 1, proc.stderr[-3000:]
    [run] = run_dirs(tmp_path)
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert error == [f"Error: rank 1 of 2 failed: killed by SIGKILL. The other ranks were stopped; the run's "
                     f"checkpoints are kept: continue it from its last one with: python -m app resume={run.relative_to(tmp_path)}"]
    assert "Traceback" not in proc.stderr
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"

    # another number of processes is refused, and leaves the run as it was
    before = digest(run)
    refused = app(tmp_path, f"resume={run}", "trainer.devices=1", "resume_force=true")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "Invalid value for `trainer.devices`: 1. " in refused.stderr and "Accepted: 2, the number" in refused.stderr
    assert digest(run) == before

    ok(app(tmp_path, f"resume={run}"))
    assert run_dirs(tmp_path) == [run]
    assert metrics(run) == metrics(two)  # exactly the uninterrupted 2-process run
    for key, tensor in torch.load(two / "checkpoints" / "last.pt", weights_only=True)["model"].items():
        assert torch.equal(torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"][key], tensor)


@pytest.mark.slow
def test_a_sweep_runs_each_trial_as_a_two_process_group_and_prunes_under_ddp(tmp_path):
    # lr=0.05 completes first; lr=1e-7 barely learns and the median pruner stops it after epoch 1
    proc = ok(app(tmp_path, "--multirun", "hparams_search=regression_optuna", "hydra/sweeper/sampler=random",
                  "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
                  "hydra.sweeper.pruner.n_warmup_steps=0", "hydra.sweeper.n_trials=2",
                  "optimizer.lr=choice(0.05,1e-7)", "hydra.sweeper.sampler.seed=10", "optimizer=sgd",
                  "scheduler=none", "model.nodes=32", "model.layers=2", "optimizer.weight_decay=0",
                  *ARGS, "trainer.epochs=3", "trainer.devices=2"))
    study = optuna.load_study(study_name="train-regression_optuna",
                              storage=f"sqlite:///{tmp_path / 'outputs' / 'studies' / 'train-regression_optuna.db'}")
    states = [(t.params["optimizer.lr"], t.state) for t in study.trials]
    assert states == [(0.05, TrialState.COMPLETE), (1e-7, TrialState.PRUNED)], proc.stderr[-3000:]
    runs = run_dirs(tmp_path)
    assert len(runs) == 2  # one run dir per trial, none per rank
    pruned = json.loads((tmp_path / study.trials[1].user_attrs["run_dir"] / "summary.json").read_text())
    assert pruned["status"] == "pruned" and pruned["epochs_run"] == 1 and pruned["trial"]["state"] == "PRUNED"
    assert sorted(study.trials[1].intermediate_values) == [1]
    completed = tmp_path / study.trials[0].user_attrs["run_dir"]
    assert study.trials[0].value == json.loads((completed / "summary.json").read_text())["objective"]
    assert torch.load(completed / "checkpoints" / "last.pt", weights_only=True)["world_size"] == 2


@pytest.mark.slow
def test_a_full_disk_in_a_two_process_group_gives_the_one_paragraph_and_resumes(runs, tmp_path):
    _, _, [two] = runs
    # Rank 0 writes the records: provenance.json 1, metrics.csv header 2, epoch 1: last.pt 3,
    # best.pt is a link, row 4; epoch 2: last.pt 5 fails as on a full disk
    proc = app(tmp_path, *ARGS, "trainer.devices=2", kill="disk_full:5@0")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    [paragraph] = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert "disk holding the run directory is full" in paragraph and "rank 0" not in paragraph
    assert "summary.json says failed" in paragraph
    [run] = run_dirs(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert summary["epochs_run"] in (1, 2)  # rank 0's own summary, not replaced by the launching process
    assert not list(run.rglob("*.tmp"))
    ok(app(tmp_path, f"resume={run}"))
    assert metrics(run) == metrics(two)  # exactly the uninterrupted 2-process run
