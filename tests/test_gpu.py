"""Trainer speed options on a CUDA GPU: no host sync per step (counted by CUDA's sync debug
mode), CUDA-graph replay matching eager training, torch.compile through inductor, float16 with
a GradScaler, pinned host data, DDP through NCCL (a group of one; two GPUs where there are two).
Skipped where there is no CUDA device."""
from __future__ import annotations

import json
import logging
import math
import warnings

import pytest
import torch
from torch import nn

from app.callbacks import Callback, Checkpoint
from app.data import Split, TensorBatches
from app.train.tasks import TASKS
from app.train.trainer import Trainer
from tests.conftest import run_dirs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

REGRESSION = TASKS["regression"]


def data(n=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    return Split(x, torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=g))


def batches(on_device=True, batch_size=64):  # 1000 = 15 x 64 + 40: a partial last batch
    cuda = torch.device("cuda")
    train = TensorBatches(data(), batch_size, device=cuda, shuffle=True, seed=1, on_device=on_device,
                          pin_memory=True)
    val = TensorBatches(data(300, seed=1), 128, device=cuda, shuffle=False, on_device=on_device,
                        pin_memory=True)
    return train, val


def make(epochs=4, fused=False, scheduler="cosine", sgd=False, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 1)).cuda()
    if sgd:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=fused or None)
    interval = "epoch"
    if scheduler == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    elif scheduler == "per-step":
        scheduler, interval = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.99), "step"
    return Trainer(model, optimizer, REGRESSION, device=torch.device("cuda"), epochs=epochs,
                   scheduler=scheduler, scheduler_interval=interval, **options)


def losses(trainer):
    return [[h["train_loss"], h["val_loss"], h["val_mae"]] for h in trainer.history]


@pytest.mark.parametrize("options", [
    {},
    {"precision": "bf16-mixed"},
    {"grad_clip": 1.0, "accumulate_grad_batches": 3},
    {"precision": "16-mixed", "fused": True},  # a fused optimizer takes the scale: no found_inf read
    {"cuda_graph": True},
    {"cuda_graph": True, "fused": True, "precision": "bf16-mixed", "grad_clip": 1.0},
    {"on_device": False},
])
def test_one_host_sync_per_epoch(options):
    options = dict(options)
    train, val = batches(on_device=options.pop("on_device", True))
    trainer = make(epochs=3, **options)
    trainer.fit(train, val)  # first fit: warm-up, captures
    trainer.epochs += 3
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(train, val)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "called a synchronizing CUDA operation" in str(w.message)]
    assert trainer.graphed is None or trainer.graphed.enabled  # no capture fell back to eager
    assert len(syncs) == 3, [f"{w.filename}:{w.lineno} {w.message}" for w in syncs]
    assert all(math.isfinite(v) for row in losses(trainer) for v in row)


def grad_norms(trainer):
    return [[h["grad_norm"], h["grad_norm_max"]] for h in trainer.history]


def assert_same_training(graphed, eager, tolerance=1e-4):
    for a, b in zip(losses(graphed), losses(eager), strict=True):
        assert a == pytest.approx(b, rel=tolerance)
    # The norm is summed inside the captured step: replays must add it up as eager steps do.
    for a, b in zip(grad_norms(graphed), grad_norms(eager), strict=True):
        assert a == pytest.approx(b, rel=tolerance)
    for p, q in zip(graphed.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(p, q, rtol=tolerance, atol=tolerance)


def train_both(**options):
    train, val = batches()
    eager = make(**options)
    eager.fit(train, val)
    train, val = batches()
    graphed = make(cuda_graph=True, **options)
    graphed.fit(train, val)
    assert graphed.graphed.enabled
    return graphed, eager


def test_no_garbage_collection_during_a_capture():
    """A collection during a capture that frees another trainer's CUDA graph (an earlier job of
    a sweep, say) invalidates the capture; GraphedStep keeps the collector off meanwhile."""
    import gc

    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1)

        def forward(self, x):
            seen.append((torch.cuda.is_current_stream_capturing(), gc.isenabled()))
            return self.linear(x)

    train, val = batches()
    model = Probe().cuda()
    trainer = Trainer(model, torch.optim.AdamW(model.parameters()), REGRESSION, device=torch.device("cuda"),
                      epochs=2, cuda_graph=True)
    trainer.fit(train, val)
    assert trainer.graphed.captures == 2 and trainer.graphed.enabled
    assert (True, False) in seen and (True, True) not in seen
    assert gc.isenabled()


def test_a_step_that_cannot_be_captured_trains_eagerly_under_auto_and_is_refused_when_required(caplog):
    from app.errors import ConfigError

    class ReadsBack(nn.Linear):
        def forward(self, x):
            if x.sum().item() > 1e30:  # a host read: not capturable
                x = x * 0
            return super().forward(x)

    def run(cuda_graph):
        torch.manual_seed(0)
        model = ReadsBack(3, 1).cuda()
        trainer = Trainer(model, torch.optim.AdamW(model.parameters()), REGRESSION,
                          device=torch.device("cuda"), epochs=2, cuda_graph=cuda_graph)
        trainer.fit(*batches())
        return trainer

    with caplog.at_level(logging.INFO, logger="app"):
        graphed = run("auto")
    said = [r.getMessage() for r in caplog.records if "cuda_graph" in r.getMessage()]
    assert len(said) == 1 and "capturing the training step failed" in said[0]  # one line, why
    assert not graphed.graphed.enabled
    eager = run(False)
    for a, b in zip(losses(graphed), losses(eager), strict=True):
        assert a == pytest.approx(b, rel=1e-4)
    with pytest.raises(ConfigError, match="`trainer.cuda_graph`: True.*auto"):
        run(True)


def test_cuda_graph_auto_turns_graphs_on_for_a_run_and_off_with_float16(caplog):
    train, val = batches()
    auto = make(epochs=2, cuda_graph="auto")
    auto.fit(train, val)
    assert auto.graphed is not None and auto.graphed.enabled and auto.graphed.captures == 2
    with caplog.at_level(logging.INFO, logger="app"):
        half = make(epochs=1, cuda_graph="auto", precision="16-mixed", fused=True)
    assert half.graphed is None
    [line] = [r.getMessage() for r in caplog.records if "cuda_graph" in r.getMessage()]
    assert "16-mixed" in line


def test_cuda_graph_auto_turns_graphs_off_for_batches_that_keep_changing_shape(caplog):
    from app.train.acceleration import AUTO_MAX_GRAPHS

    class Ragged:  # every epoch another batch size: a graph per shape would never be reused
        num_samples = 300

        def __init__(self):
            self.epoch = 0

        def __iter__(self):
            self.epoch += 1
            split = data(300)
            x, y = split.x, split.y
            size = 10 + self.epoch
            for start in range(0, 300, size):
                yield x[start:start + size].cuda(), y[start:start + size].cuda()

    trainer = make(epochs=2 * AUTO_MAX_GRAPHS, cuda_graph="auto", scheduler=None)
    with caplog.at_level(logging.INFO, logger="app"):
        trainer.fit(Ragged(), None)
    assert not trainer.graphed.enabled
    [line] = [r.getMessage() for r in caplog.records if "cuda_graph" in r.getMessage()]
    assert "changing shape" in line
    assert all(math.isfinite(h["train_loss"]) for h in trainer.history)


@pytest.mark.parametrize("options, captures", [
    ({}, 2),  # the full batch and the epoch's partial last batch, captured once for all epochs
    ({"fused": True}, 2),
    ({"scheduler": "per-step"}, 2),  # the lr is read from device memory: new lrs need no capture
    ({"grad_clip": 0.5, "accumulate_grad_batches": 2}, 3),  # + a graph without the update
    ({"precision": "bf16-mixed"}, 2),
])
def test_cuda_graph_training_matches_eager(options, captures):
    graphed, eager = train_both(**options)
    assert graphed.graphed.captures == captures
    assert_same_training(graphed, eager, 2e-2 if options.get("precision") else 1e-4)


@pytest.mark.parametrize("scheduler, captures", [("cosine", 4), ("per-step", 0)])
def test_cuda_graph_with_an_optimizer_that_bakes_in_its_lr(scheduler, captures):
    # SGD takes no device lr: each new lr costs an eager step and, if it repeats, a capture.
    graphed, eager = train_both(sgd=True, scheduler=scheduler)
    assert graphed.graphed.captures == captures
    assert_same_training(graphed, eager)


def test_compile_with_inductor_matches_eager_and_checkpoints_plain_keys(tmp_path):
    train, val = batches()
    eager = make(epochs=2)
    eager.fit(train, val)
    train, val = batches()
    checkpoint = Checkpoint(tmp_path, every=1, keep_last_k=0)
    compiled = make(epochs=2, compile=True, callbacks=[checkpoint])
    compiled.fit(train, val)
    assert compiled.forward.compiled is not None  # inductor worked: no fallback
    for a, b in zip(losses(compiled), losses(eager), strict=True):
        assert a == pytest.approx(b, rel=1e-3)
    state = torch.load(checkpoint.last_path, weights_only=True)["model"]
    assert set(state) == set(eager.model.state_dict())


def test_compile_and_cuda_graph_together():
    train, val = batches()
    eager = make(epochs=2, precision="bf16-mixed")
    eager.fit(train, val)
    train, val = batches()
    both = make(epochs=2, precision="bf16-mixed", compile=True, cuda_graph=True, fused=True)
    both.fit(train, val)
    assert both.forward.compiled is not None and both.graphed.enabled and both.graphed.captures == 2
    for a, b in zip(losses(both), losses(eager), strict=True):
        assert a == pytest.approx(b, rel=5e-2)


def test_health_metrics_on_cuda():
    train, val = batches()
    trainer = make(epochs=2, cuda_graph=True)
    trainer.fit(train, val)
    for metrics in trainer.history:
        assert 0 < metrics["grad_norm"] <= metrics["grad_norm_max"] < math.inf
        assert 0 < metrics["samples_per_s"] < math.inf
        # Device-timed training alone is shorter than the host-timed epoch.
        assert metrics["samples_per_s"] > train.num_samples / metrics["epoch_time"]
        assert metrics["peak_memory_mib"] > 0
    assert "peak_memory_mib" in trainer.metric_columns()


def test_float16_uses_a_grad_scaler_and_learns():
    train, val = batches()
    trainer = make(epochs=5, precision="16-mixed")
    trainer.fit(train, val)
    assert trainer.scaler.is_enabled()
    assert trainer.history[-1]["val_loss"] < 0.5 * trainer.history[0]["val_loss"]


def test_matmul_precision_high_turns_on_tf32_during_fit():
    seen = []

    class Record(Callback):
        def on_epoch_end(self, trainer, metrics):
            seen.append(torch.backends.cuda.matmul.allow_tf32)

    train, val = batches()
    make(epochs=1, matmul_precision="high", callbacks=[Record()]).fit(train, val)
    assert seen == [True]
    assert torch.get_float32_matmul_precision() == "highest"


def test_pinned_host_data_trains_like_device_data():
    train, val = batches(on_device=False)
    assert train._pin
    host = make(epochs=2)
    host.fit(train, val)
    train, val = batches()
    device = make(epochs=2)
    device.fit(train, val)
    for a, b in zip(losses(host), losses(device), strict=True):
        assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.slow
def test_app_runs_with_gpu_options(run_app, tmp_path):
    run_app("device=cuda", "logger=none", "trainer.epochs=3", "data.n_samples=2000",
            "trainer.precision=bf16-mixed", "trainer.cuda_graph=true", "optimizer.fused=true",
            "trainer.grad_clip=1.0", "trainer.matmul_precision=high", "trainer.progress_bar=false",
            check=True)
    [run_dir] = run_dirs(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and math.isfinite(summary["best"])


def test_a_pack_on_cuda_trains_each_member_as_its_lone_run(compose_cfg, tmp_path):
    """Packs on the GPU: the vmap probe, the stacked step and the per-member records, checked
    against each member's lone run on the same GPU (TF32 off; CUDA's reductions in another order
    than the pack's batched ones: relative 1e-3 over 3 epochs)."""
    from app.run.build import build_run
    from app.run.seeds import with_seed
    from app.train.packed import PackedTrainer, unpackable

    overrides = ["device=cuda", "trainer.epochs=3", "model.nodes=16", "model.layers=2", "data.n_samples=512",
                 "logger=none", "trainer.progress_bar=false", "trainer.matmul_precision=highest"]
    lr = {1: "optimizer.lr=0.01", 2: "optimizer.lr=0.003"}

    def runs(name):
        return [build_run(with_seed(compose_cfg(*overrides, lr[seed]), seed), tmp_path / name / f"seed_{seed}")
                for seed in (1, 2)]

    alone, pack = runs("alone"), runs("pack")
    assert unpackable(pack) is None
    results = PackedTrainer(pack).fit()
    for seed, run, member, result in zip((1, 2), alone, pack, results):
        lone = run.trainer.fit(run.train, run.val)
        assert result.epochs_run == lone.epochs_run == 3
        assert next(member.model.parameters()).device.type == "cuda"
        for ours, theirs in zip(member.trainer.history, run.trainer.history):
            assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3)
        state = torch.load(tmp_path / "pack" / f"seed_{seed}" / "checkpoints" / "last.pt", weights_only=True)
        assert set(state["model"]) == set(run.model.state_dict())  # a plain single-model state
        assert all(state["model"][k].shape == v.shape for k, v in run.model.state_dict().items())


def test_a_graphed_pack_trains_as_the_eager_pack_and_masks_a_stopped_member_without_a_new_capture(
        compose_cfg, tmp_path):
    """trainer.cuda_graph=auto on a pack: the whole step (forward, loss, backward, clipping, the
    stacked AdamW step) replayed as CUDA graphs equals the eager pack (relative 1e-4 over 4
    epochs: the same kernels; only the masked arithmetic of the graphed step rounds differently),
    and member 5's stop after epoch 2 (1/5 of the rows: masked, not compacted) costs no capture."""
    from app.run.build import build_run
    from app.run.seeds import with_seed
    from app.train.packed import COMPACT_FRACTION, PackedTrainer

    overrides = ["device=cuda", "model.nodes=32", "model.layers=3", "data.n_samples=600", "trainer.batch_size=64",
                 "logger=none", "trainer.progress_bar=false", "trainer.matmul_precision=highest",
                 "~callbacks.early_stopping", "trainer.grad_clip=1.0"]
    per_member = {0: ["optimizer.lr=0.01"], 1: ["optimizer.lr=0.003", "optimizer.weight_decay=0.05"],
                  2: ["optimizer.lr=0.001"], 3: ["optimizer.lr=0.02"], 4: ["optimizer.lr=0.005"]}
    seeds = [1, 2, 3, 4, 5]

    def pack(name, graphs):
        runs = []
        for i, seed in enumerate(seeds):
            epochs = "trainer.epochs=2" if i == 4 else "trainer.epochs=4"
            cfg = with_seed(compose_cfg(*overrides, epochs, f"trainer.cuda_graph={graphs}", *per_member[i]), seed)
            runs.append(build_run(cfg, tmp_path / name / f"seed_{seed}"))
        return runs

    eager_runs, graphed_runs = pack("eager", "false"), pack("graphed", "auto")
    eager = PackedTrainer(eager_runs)
    graphed = PackedTrainer(graphed_runs)
    assert not eager.use_graphs and graphed.use_graphs
    eager_results, graphed_results = eager.fit(), graphed.fit()
    assert 1 / 5 < COMPACT_FRACTION and graphed.flat.shape[0] == 5  # masked, never compacted
    assert graphed.graphed.enabled
    assert graphed.graphed.captures == 2  # the full batch and the partial last one, for all 4 epochs
    assert [r.epochs_run for r in graphed_results] == [r.epochs_run for r in eager_results] == [4, 4, 4, 4, 2]
    for ours, theirs in zip(graphed_runs, eager_runs):
        for a, b in zip(ours.trainer.history, theirs.trainer.history, strict=True):
            for key in ("train_loss", "val_loss", "val_mae", "lr"):
                assert a[key] == pytest.approx(b[key], rel=1e-4), key
        for p, q in zip(ours.model.parameters(), theirs.model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_graphed_pack_recaptures_only_at_compaction(compose_cfg, tmp_path):
    from app.run.build import build_run
    from app.run.seeds import with_seed
    from app.train.packed import PackedTrainer

    overrides = ["device=cuda", "model.nodes=16", "model.layers=2", "data.n_samples=512",
                 "logger=none", "trainer.progress_bar=false", "~callbacks.early_stopping"]
    runs = [build_run(with_seed(compose_cfg(*overrides, f"trainer.epochs={1 if i == 1 else 3}"), seed),
                      tmp_path / f"seed_{seed}") for i, seed in enumerate([1, 2, 3, 4])]
    trainer = PackedTrainer(runs)
    captures = []

    class Probe:
        def __getattr__(self, hook):
            return lambda *args: None

        def on_epoch_end(self, *_):
            captures.append((trainer.flat.shape[0], trainer.graphed.captures if trainer.graphed else 0))

    runs[0].trainer.callbacks.append(Probe())
    results = trainer.fit()
    assert [r.epochs_run for r in results] == [3, 1, 3, 3]
    # epoch 1: 4 rows, captures of the new layout start after compaction (3 rows) again
    assert captures[0][0] == 4 and captures[-1][0] == 3
    assert trainer.graphed.enabled and trainer.graphed.captures >= 1
    assert all(math.isfinite(h["val_loss"]) for run in runs for h in run.trainer.history)


# ----------------------------------------------------------------------------- NCCL (app/run/distributed.py)
def _metrics(run_dir):
    import csv

    from app.train.trainer import TIMING_METRICS

    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if k not in TIMING_METRICS and k != "peak_memory_mib" and v}
                for row in csv.DictReader(f)]


def _group_matches_one_process(tmp_path, run_app, group_args, torchrun_nproc=None):
    import os
    import subprocess
    import sys

    args = ["device=cuda", "logger=none", "trainer.epochs=3", "data.n_samples=2000", "trainer.batch_size=96",
            "trainer.progress_bar=false", "trainer.precision=bf16-mixed", "trainer.grad_clip=1.0",
            "trainer.accumulate_grad_batches=2"]
    run_app(*args, check=True)
    [one] = run_dirs(tmp_path)
    group = tmp_path / "group"
    group.mkdir()
    launcher = (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_nproc}"]
                if torchrun_nproc else [])
    proc = subprocess.run([sys.executable, *launcher, "-m", "app", *args, *group_args], cwd=group,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = run_dirs(group)
    for a, b in zip(_metrics(one), _metrics(run), strict=True):
        for key in a:  # bf16 autocast: the ranks' parts round differently from the whole batch
            assert b[key] == pytest.approx(a[key], rel=2e-2, abs=1e-4), key
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    return state


@pytest.mark.slow
def test_nccl_group_of_one_under_torchrun_trains_like_one_process(tmp_path, run_app):
    state = _group_matches_one_process(tmp_path, run_app, [], torchrun_nproc=1)
    assert state["world_size"] == 1 and "cuda" in state["rng_ranks"][0]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_with_nccl_train_like_one_gpu(tmp_path, run_app):
    state = _group_matches_one_process(tmp_path, run_app, ["trainer.devices=2"])
    assert state["world_size"] == 2
