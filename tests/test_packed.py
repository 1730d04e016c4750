"""Packs: K runs of one model shape trained as one vectorized model (app/train/packed.py).

Tolerances. A member of a pack computes what the same run computes alone up to float32 rounding:
the vectorized matmuls and the stacked optimizer step (bias corrections on the device) round
differently from the lone run's kernels. Initial weights are equal bit for bit (same seed, same
initialisation); after one optimizer step parameters agree to `STEP` (relative 2e-6, absolute
1e-7: a few float32 ulps); over the first epochs, losses agree to `EPOCHS` (relative 1e-4), the
drift of rounding differences through a few hundred steps, far below run-to-run noise (seeds
differ by percents).
"""
from __future__ import annotations

import csv
import json
import logging
import signal

import pytest
import torch
from torch import nn

from app.config import validate
from app.errors import ConfigError
from app.run.build import build_optimizer, build_run
from app.run.pack import execute_pack, pack_size
from app.run.seeds import with_seed
from app.train.packed import COMPACT_FRACTION, PackedTrainer, unpackable, unpackable_config
from app.train.stacked_optim import StackedOptimizer, unsupported
from tests.conftest import FAST, app_in, metrics_rows, run_dirs

STEP = dict(rtol=2e-6, atol=1e-7)
EPOCHS = dict(rtol=1e-4, atol=1e-6)
SMALL = ["data.n_samples=400", "logger=none", "device=cpu", "trainer.progress_bar=false",
         "trainer.batch_size=64", "trainer.log_every=0"]


# ----------------------------------------------------------------------------- the stacked step
def _members(optimizer_cls, settings, seed=0):
    """One small model per member (different weights) and its torch optimizer."""
    models, optimizers = [], []
    for k, options in enumerate(settings):
        torch.manual_seed(seed + k)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
        models.append(model)
        optimizers.append(optimizer_cls(model.parameters(), **options))
    return models, optimizers


def _flat(models):
    return torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])


OPTIMIZERS = {
    "adamw": (torch.optim.AdamW, [dict(lr=1e-2, weight_decay=0.01), dict(lr=3e-3, weight_decay=0.1, betas=(0.8, 0.99)),
                                  dict(lr=5e-2, weight_decay=0.0, eps=1e-6)]),
    "adam": (torch.optim.Adam, [dict(lr=1e-2, weight_decay=0.01), dict(lr=3e-3, betas=(0.5, 0.9)),
                                dict(lr=5e-2, weight_decay=0.001, eps=1e-4)]),
    "sgd": (torch.optim.SGD, [dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01),
                              dict(lr=0.2, momentum=0.0)]),
}


@pytest.mark.parametrize("kind", list(OPTIMIZERS))
@pytest.mark.parametrize("fused", [False, True])
def test_stacked_steps_equal_each_members_torch_optim_steps(kind, fused):
    cls, settings = OPTIMIZERS[kind]
    settings = [dict(s, fused=fused) if fused else s for s in settings]
    models, optimizers = _members(cls, settings)  # the reference: each member's own torch.optim
    copies, copy_optimizers = _members(cls, settings)
    flat = _flat(copies)
    stacked = StackedOptimizer(copy_optimizers, [list(m.parameters()) for m in copies], flat)
    active = torch.ones(3, 1, dtype=torch.bool)
    gen = torch.Generator().manual_seed(1)
    for step in range(4):
        grads = torch.randn(flat.shape, generator=gen)
        for k, (model, optimizer) in enumerate(zip(models, optimizers)):
            offset = 0
            for p in model.parameters():
                p.grad = grads[k, offset:offset + p.numel()].view(p.shape).clone()
                offset += p.numel()
            optimizer.step()
        stacked.step(flat, grads.clone(), active if step % 2 else None)  # masked, and in place
        stacked.count(range(3))
        torch.testing.assert_close(flat, _flat(models), **STEP)

    # Each member's optimizer, given its slice of the state, holds what torch's own steps left.
    for k in range(3):
        stacked.write_to(k)
        ours, theirs = copy_optimizers[k].state_dict(), optimizers[k].state_dict()
        assert ours["state"].keys() == theirs["state"].keys()
        for i in theirs["state"]:
            assert ours["state"][i].keys() == theirs["state"][i].keys()
            for name, value in theirs["state"][i].items():
                assert ours["state"][i][name].device == value.device
                torch.testing.assert_close(ours["state"][i][name].float(), value.float(), **STEP)


def test_a_stopped_member_keeps_its_parameters_and_state_exactly():
    cls, settings = OPTIMIZERS["adamw"]
    models, optimizers = _members(cls, settings)
    flat = _flat(models)
    stacked = StackedOptimizer(optimizers, [list(m.parameters()) for m in models], flat)
    stacked.step(flat, torch.randn(flat.shape), torch.ones(3, 1, dtype=torch.bool))
    before = flat.clone(), {n: t.clone() for n, t in stacked.state.items()}, stacked.step_count.clone()
    stacked.step(flat, torch.randn(flat.shape), torch.tensor([[True], [False], [True]]))
    assert torch.equal(flat[1], before[0][1])
    assert not torch.equal(flat[0], before[0][0]) and not torch.equal(flat[2], before[0][2])
    for name, t in stacked.state.items():
        assert torch.equal(t[1], before[1][name][1])
    assert stacked.step_count[:, 0].tolist() == [2.0, 1.0, 2.0]


def test_state_read_back_from_members_continues_the_same_steps():
    cls, settings = OPTIMIZERS["adam"]
    models, optimizers = _members(cls, settings)
    flat = _flat(models)
    stacked = StackedOptimizer(optimizers, [list(m.parameters()) for m in models], flat)
    grads = [torch.randn(flat.shape) for _ in range(2)]
    stacked.step(flat, grads[0], torch.ones(3, 1, dtype=torch.bool))
    stacked.count(range(3))
    for k in range(3):
        stacked.write_to(k)
    again = StackedOptimizer(optimizers, [list(m.parameters()) for m in models], flat.clone())
    assert again.steps == [1, 1, 1]
    resumed = flat.clone()
    stacked.step(flat, grads[1], torch.ones(3, 1, dtype=torch.bool))
    again.step(resumed, grads[1], torch.ones(3, 1, dtype=torch.bool))
    assert torch.equal(flat, resumed)


def test_optimizers_without_a_stacked_step_are_named():
    model = nn.Linear(2, 2)
    assert "RMSprop" in unsupported([torch.optim.RMSprop(model.parameters())])
    assert "amsgrad" in unsupported([torch.optim.Adam(model.parameters(), amsgrad=True)])
    assert "different optimizers" in unsupported([torch.optim.Adam(model.parameters()),
                                                  torch.optim.SGD(model.parameters(), lr=0.1)])
    assert unsupported([torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)]) is None


# ----------------------------------------------------------------------------- members vs lone runs
def _runs(compose_cfg, tmp_path, seeds, *overrides, name="pack", per_member=None):
    runs = []
    for i, seed in enumerate(seeds):
        cfg = with_seed(compose_cfg(*SMALL, *overrides, *((per_member or {}).get(i, []))), seed)
        runs.append(build_run(cfg, tmp_path / name / f"seed_{seed}"))
    return runs


def _history(trainer, keys=("train_loss", "val_loss", "val_mae", "lr", "grad_norm")):
    return [[m[k] for k in keys if k in m] for m in trainer.history]


def test_members_compute_what_the_same_runs_compute_alone(compose_cfg, tmp_path):
    seeds = [1, 2, 3]
    overrides = ["trainer.epochs=3", "model.nodes=16", "model.layers=2"]
    # Per member hyperparameters: learning rate, weight decay, clipping.
    per_member = {0: ["optimizer.lr=0.01"], 1: ["optimizer.weight_decay=0.1"], 2: ["trainer.grad_clip=0.5"]}
    alone = _runs(compose_cfg, tmp_path, seeds, *overrides, name="alone", per_member=per_member)
    pack = _runs(compose_cfg, tmp_path, seeds, *overrides, per_member=per_member)
    for a, p in zip(alone, pack):  # each member is initialised as its lone run, bit for bit
        for x, y in zip(a.model.parameters(), p.model.parameters()):
            assert torch.equal(x, y)
    assert unpackable(pack) is None
    results = PackedTrainer(pack).fit()
    for run, packed, result in zip(alone, pack, results):
        lone = run.trainer.fit(run.train, run.val)
        assert result.epochs_run == lone.epochs_run == 3
        torch.testing.assert_close(torch.tensor(_history(packed.trainer)), torch.tensor(_history(run.trainer)), **EPOCHS)
        for x, y in zip(run.model.parameters(), packed.model.parameters()):
            torch.testing.assert_close(y, x, **EPOCHS)
        # each member's data order is its own (the lone run's): the losses of the seeds differ
    assert len({h.trainer.history[0]["train_loss"] for h in pack}) == 3


def test_members_checkpoints_hold_plain_single_model_state(compose_cfg, tmp_path):
    pack = _runs(compose_cfg, tmp_path, [1, 2], "trainer.epochs=2")
    PackedTrainer(pack).fit()
    for run in pack:
        state = torch.load(run.checkpoint.last_path, weights_only=True)
        fresh = build_run(run.cfg, tmp_path / "fresh" / run.checkpoint.last_path.parent.parent.name)
        fresh.model.load_state_dict(state["model"])  # the lone run's own model class and keys
        fresh.optimizer.load_state_dict(state["optimizer"])
        assert state["epoch"] == 2 and state["trainer"]["epoch"] == 2
        for x, y in zip(fresh.model.parameters(), run.model.parameters()):
            assert torch.equal(x, y)
        rows = list(csv.DictReader(open(run.checkpoint.directory.parent / "metrics.csv")))
        assert [int(r["epoch"]) for r in rows] == [1, 2]


def _record_writes(run):
    """The epochs at which `run`'s checkpoint writes last.pt (a list that fills as it trains)."""
    epochs, write = [], run.checkpoint._write

    def recording(state, improved, due, epoch, *args):
        epochs.append(epoch)
        return write(state, improved, due, epoch, *args)

    run.checkpoint._write = recording
    return epochs


# mode=max on val_loss: the best epoch is an early one (the loss falls), so best.pt is not last.pt
HELD = ["trainer.epochs=5", "~callbacks.early_stopping", "trainer.mode=max",
        "callbacks.checkpoint.pack_interval_s=3600"]


def test_a_held_pack_writes_at_the_end_and_keeps_each_members_best_weights(compose_cfg, tmp_path):
    pack = _runs(compose_cfg, tmp_path, [1, 2], *HELD)
    alone = _runs(compose_cfg, tmp_path, [1, 2], *HELD, name="alone")
    writes = [_record_writes(run) for run in pack]
    PackedTrainer(pack).fit()
    assert writes == [[5], [5]]  # within the interval: only each member's end
    for lone, member in zip(alone, pack):
        lone.trainer.fit(lone.train, lone.val)
        epoch = member.trainer.best_epoch
        assert epoch == lone.trainer.best_epoch and epoch < 5
        best = torch.load(member.checkpoint.best_path, weights_only=True)
        theirs = torch.load(lone.checkpoint.best_path, weights_only=True)
        last = torch.load(member.checkpoint.last_path, weights_only=True)
        assert best["epoch"] == epoch and last["epoch"] == 5 and best["metrics"]["epoch"] == epoch
        assert best["inference"] == theirs["inference"]
        for tensor in best["model"].values():  # a member's own weights, not a view of the pack's
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        for name, value in theirs["model"].items():  # the best epoch's weights, not the last's
            torch.testing.assert_close(best["model"][name], value, **EPOCHS)
            assert torch.equal(last["best_model"][name], best["model"][name])
            assert not torch.equal(last["model"][name], best["model"][name]) or value.numel() == 0


def test_a_resume_rewrites_the_best_pt_a_kill_left_behind(compose_cfg, tmp_path):
    # killed between a held member's last.pt and its best.pt of an earlier epoch: best.pt is
    # an older one; last.pt holds the best weights, and the resume writes best.pt from them
    [member] = _runs(compose_cfg, tmp_path, [1], *HELD)
    PackedTrainer([member]).fit()
    directory = member.checkpoint.directory
    best = torch.load(directory / "best.pt", weights_only=True)
    stale = torch.load(directory / "last.pt", weights_only=True)
    stale["epoch"] = 0
    torch.save(stale, directory / "best.pt")
    [fresh] = _runs(compose_cfg, tmp_path, [1], *HELD, name="fresh")
    fresh.checkpoint.directory.mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (fresh.checkpoint.directory / name).write_bytes((directory / name).read_bytes())
    fresh.checkpoint.restore(fresh.trainer, fresh.train)
    rewritten = torch.load(fresh.checkpoint.best_path, weights_only=True)
    assert rewritten["epoch"] == best["epoch"] == fresh.trainer.best_epoch < 5
    for name, value in best["model"].items():
        assert torch.equal(rewritten["model"][name], value)


def test_a_pack_asks_its_members_to_write_together_once_the_interval_is_over(compose_cfg, tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("app.train.packed.time.monotonic", lambda: clock[0])
    # member 1 writes every 2nd epoch: asked at epoch 2, it writes at its next due epoch
    pack = _runs(compose_cfg, tmp_path, [1, 2], *HELD[:-1], "callbacks.checkpoint.pack_interval_s=10",
                 per_member={1: ["trainer.checkpoint_every=2"]})
    writes = [_record_writes(run) for run in pack]

    class Clock:  # member 0's epoch 1 ends 12 s after the start, later epochs 1 s each
        reads_model = False

        def __getattr__(self, hook):
            return lambda *args: None

        def on_epoch_end(self, trainer, metrics):
            clock[0] += 12.0 if trainer.epoch == 1 else 1.0

    pack[0].trainer.callbacks.insert(0, Clock())
    PackedTrainer(pack).fit()
    # the pack looks once per epoch, before the callbacks: at epoch 2 (12 s gone) it asks both
    assert writes == [[2, 5], [2, 5]]


def test_a_bad_pack_interval_is_refused(compose_cfg, tmp_path):
    for value in (-1, "soon"):
        with pytest.raises(ConfigError, match="pack_interval_s"):
            _runs(compose_cfg, tmp_path, [1], f"callbacks.checkpoint.pack_interval_s={value}")


def test_a_shared_split_is_batched_in_one_indexing_as_each_member_would_batch_it(compose_cfg, tmp_path):
    # trials of one search share their data: the pack indexes it once per step; the batches are
    # the members' own (their orders, their generators), a stopped row gets the first active one's
    overrides = ["data.n_samples=300"]
    shared = _runs(compose_cfg, tmp_path, [1, 2, 3], *overrides)
    apart = _runs(compose_cfg, tmp_path, [1, 2, 3], *overrides, name="apart")
    one, other = PackedTrainer(shared), PackedTrainer(apart)
    other.shared = None  # each member's own iterator, stacked
    assert one.shared is not None
    for epoch in range(2):
        ours, theirs = list(one._batches([0, 2])), list(other._batches([0, 2]))
        assert len(ours) == len(theirs) == len(shared[0].train)
        for (x, y), (x2, y2) in zip(ours, theirs):
            assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(x[1], x[0])
        assert not torch.equal(ours[0][0][0], ours[0][0][2])  # the members' orders differ
    for a, b in zip(shared, apart):  # the generators advanced alike (checkpoints hold them)
        assert torch.equal(a.train.state_dict()["generator"], b.train.state_dict()["generator"])


def test_a_member_that_stops_is_frozen_and_the_pack_compacts(compose_cfg, tmp_path):
    seeds = [1, 2, 3, 4]
    overrides = ["trainer.epochs=4", "~callbacks.early_stopping"]
    per_member = {1: ["trainer.epochs=1"]}  # member 1 stops after its first epoch
    pack = _runs(compose_cfg, tmp_path, seeds, *overrides, per_member=per_member)
    alone = _runs(compose_cfg, tmp_path, seeds, *overrides, name="alone", per_member=per_member)
    trainer = PackedTrainer(pack)
    sizes = []

    class PackSize:  # records the pack's rows at each of member 0's epochs
        def __getattr__(self, hook):
            return lambda *args: None

        def on_epoch_end(self, *_):
            sizes.append(trainer.flat.shape[0])

    pack[0].trainer.callbacks.append(PackSize())
    results = trainer.fit()
    assert [r.epochs_run for r in results] == [4, 1, 4, 4]
    assert 1 / 4 >= COMPACT_FRACTION and sizes == [4, 3, 3, 3]  # compacted after member 1 stopped
    for run, packed in zip(alone, pack):
        run.trainer.fit(run.train, run.val)
        torch.testing.assert_close(torch.tensor(_history(packed.trainer)), torch.tensor(_history(run.trainer)), **EPOCHS)
        for x, y in zip(run.model.parameters(), packed.model.parameters()):
            torch.testing.assert_close(y, x, **EPOCHS)


def test_early_stopping_and_divergence_stop_only_their_member(compose_cfg, tmp_path):
    # member 0 diverges at once; member 1 stops when val_loss does not improve by 1.0 in one check
    per_member = {0: ["optimizer.lr=1e6"],
                  1: ["callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1.0"]}
    pack = _runs(compose_cfg, tmp_path, [1, 2, 3], "trainer.epochs=4", "optimizer=sgd", per_member=per_member)
    results = PackedTrainer(pack).fit()
    assert [r.stop_reason for r in results] == ["diverged", "early_stopped", "completed"]
    assert results[0].epochs_run == 1 and results[1].epochs_run == 2 and results[2].epochs_run == 4
    assert all(torch.isfinite(p).all() for p in pack[2].model.parameters())


class BatchNormMLP(nn.Module):
    # No bias before the norm: the norm removes it, so its gradient is rounding noise that Adam
    # would scale up to full steps (differently in a pack and alone).
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def _with_model(run, model):
    """`run` with another model (and an optimizer for it), its Trainer pointing at both."""
    run.model = model
    run.optimizer = run.trainer.optimizer = build_optimizer(run.cfg, model)
    run.trainer.model = run.trainer.forward = model
    run.scheduler = run.trainer.scheduler = None
    return run


def test_batchnorm_statistics_are_kept_per_member(compose_cfg, tmp_path):
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(BatchNormMLP())
    alone = [_with_model(r, _copy(m))
             for r, m in zip(_runs(compose_cfg, tmp_path, [1, 2], "trainer.epochs=2", name="alone"), models)]
    pack = [_with_model(r, m) for r, m in zip(_runs(compose_cfg, tmp_path, [1, 2], "trainer.epochs=2"), models)]
    assert unpackable(pack) is None
    PackedTrainer(pack).fit()
    for run, packed in zip(alone, pack):
        run.trainer.fit(run.train, run.val)
        for name, buffer in run.model.named_buffers():
            torch.testing.assert_close(dict(packed.model.named_buffers())[name].float(), buffer.float(), **EPOCHS)
    assert not torch.equal(pack[0].model.net[1].running_mean, pack[1].model.net[1].running_mean)


def _copy(model):
    twin = BatchNormMLP()
    twin.load_state_dict(model.state_dict())
    return twin


class DataDependent(nn.Module):
    """Branches on a value: torch.func.vmap cannot vectorize it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def test_models_that_cannot_be_vectorized_are_named(compose_cfg, tmp_path):
    pack = [_with_model(r, DataDependent()) for r in _runs(compose_cfg, tmp_path, [1, 2], "trainer.epochs=1")]
    reason = unpackable(pack)
    assert reason.startswith("DataDependent cannot be vectorized with torch.func.vmap (")


def test_settings_packs_do_not_support_fall_back_with_a_notice(compose_cfg, tmp_path, caplog):
    cfg = compose_cfg(*SMALL, "trainer.epochs=1", "trainer.accumulate_grad_batches=2")
    assert "accumulate_grad_batches" in unpackable_config(cfg)
    assert unpackable_config(compose_cfg(*SMALL)) is None
    with caplog.at_level(logging.INFO, logger="app"):
        assert execute_pack([cfg, cfg], [tmp_path / "a", tmp_path / "b"], names=["a", "b"]) is None
    [notice] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pack:")]
    assert notice == "pack: training one run at a time: trainer.accumulate_grad_batches > 1: packs step every batch"
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("value", [0, -2, "yes", 1.5])
def test_bad_pack_values_are_refused(compose_cfg, value):
    with pytest.raises(ConfigError, match=r"Invalid value for `pack`"):
        pack_size(compose_cfg(f"pack={value}"), 4)
    with pytest.raises(ConfigError, match=r"Accepted: auto \(every run in one pack\), false"):
        validate(compose_cfg(f"pack={value}"))  # checked with the config, seeds or not


def test_pack_sizes(compose_cfg):
    assert pack_size(compose_cfg(), 4) == 4  # auto: every seed in one pack
    assert pack_size(compose_cfg("pack=false"), 4) == 1
    assert pack_size(compose_cfg("pack=3"), 4) == 3 and pack_size(compose_cfg("pack=8"), 4) == 4


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_seeds_train_as_one_pack_with_the_records_of_one_at_a_time(tmp_path):
    packed = app_in(tmp_path / "packed", *FAST, "seeds=[1,2,3]")
    assert packed.returncode == 0, packed.stderr
    assert "pack of 3 runs" in packed.stdout + packed.stderr
    alone = app_in(tmp_path / "alone", *FAST, "seeds=[1,2,3]", "pack=false")
    assert alone.returncode == 0, alone.stderr
    assert "pack of" not in alone.stdout + alone.stderr
    [p_dir], [a_dir] = run_dirs(tmp_path / "packed"), run_dirs(tmp_path / "alone")
    p, a = (json.loads((d / "summary.json").read_text()) for d in (p_dir, a_dir))
    assert p["status"] == a["status"] == "completed" and p["seeds"] == [1, 2, 3]
    assert p["objective"] == pytest.approx(a["objective"], rel=1e-4)
    assert p["objective_std"] == pytest.approx(a["objective_std"], rel=1e-2)
    for seed in (1, 2, 3):
        seed_dir = p_dir / f"seed_{seed}"
        assert sorted(x.name for x in seed_dir.iterdir()) == sorted(x.name for x in (a_dir / f"seed_{seed}").iterdir())
        assert (seed_dir / "checkpoints" / "best.pt").exists() and (seed_dir / "checkpoints" / "last.pt").exists()
        assert json.loads((seed_dir / "summary.json").read_text())["status"] == "completed"
        rows_p, rows_a = metrics_rows(seed_dir), metrics_rows(a_dir / f"seed_{seed}")
        assert [float(r["val_loss"]) for r in rows_p] == pytest.approx([float(r["val_loss"]) for r in rows_a], rel=1e-4)


@pytest.mark.slow
# pack_interval_s: 0, each member writes at its due epochs as a lone run; a tiny interval, the
# pack holds its members and asks for their writes at every epoch.
@pytest.mark.parametrize("interval", ["0", "1e-9"])
def test_a_killed_pack_resumes_bit_for_bit(tmp_path, interval):
    # 5 batches per epoch, 3 seeds: each seed's batches count, so batch:23 is mid-epoch 2.
    args = [*SMALL, "trainer.epochs=4", "seeds=[1,2,3]", f"callbacks.checkpoint.pack_interval_s={interval}"]
    whole = app_in(tmp_path / "whole", *args)
    assert whole.returncode == 0, whole.stderr
    killed = app_in(tmp_path / "killed", *args, kill="batch:23")
    assert killed.returncode == -signal.SIGKILL
    [run] = run_dirs(tmp_path / "killed")
    assert not (run / "summary.json").exists()
    resumed = app_in(tmp_path / "killed", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr
    [reference] = run_dirs(tmp_path / "whole")
    for seed in (1, 2, 3):
        assert metrics_rows(run / f"seed_{seed}") == metrics_rows(reference / f"seed_{seed}")
        ours = torch.load(run / f"seed_{seed}" / "checkpoints" / "last.pt", weights_only=True)
        theirs = torch.load(reference / f"seed_{seed}" / "checkpoints" / "last.pt", weights_only=True)
        for name, value in theirs["model"].items():
            assert torch.equal(ours["model"][name], value)
        resumes = json.loads((run / f"seed_{seed}" / "provenance.json").read_text())["resumes"]
        assert resumes[0]["from_epoch"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["objective"] == json.loads((reference / "summary.json").read_text())["objective"]


def test_final_results_agree_within_run_to_run_noise(compose_cfg, tmp_path):
    # 30 epochs that learn: rounding differences have had time to grow; they stay far below
    # what another seed changes.
    seeds, args = [1, 2], ["trainer.epochs=30", "~callbacks.early_stopping", "data.n_samples=2000"]
    pack = _runs(compose_cfg, tmp_path, seeds, *args)
    alone = _runs(compose_cfg, tmp_path, seeds, *args, name="alone")
    packed = [r.last for r in PackedTrainer(pack).fit()]
    lone = [r.trainer.fit(r.train, r.val).last for r in alone]
    assert max(lone) < 0.5 * alone[0].trainer.history[0]["val_loss"]  # they learned
    noise = abs(lone[0] - lone[1])
    for p, a in zip(packed, lone):
        assert abs(p - a) < 0.1 * noise
