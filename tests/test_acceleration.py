"""Trainer speed options: precision, compile, grad_clip, accumulation, matmul precision,
cuda_graph; their validation; no per-step host sync. GPU-only cases are in test_gpu.py."""
from __future__ import annotations

import logging
import math
import warnings

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from app.train import acceleration
from app.train.acceleration import CompiledModule, check_device_options
from app.callbacks import Callback, Checkpoint
from app.config import validate
from app.errors import ConfigError
from app.train.tasks import TASKS
from app.train.trainer import Trainer
from tests.test_trainer import ListBatches, regression_batches

REGRESSION = TASKS["regression"]
CPU = torch.device("cpu")


class SizedBatches(ListBatches):
    def __len__(self):
        return len(self.batches)


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 1))


def fit(model, batches, epochs=2, optimizer=None, **options):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = Trainer(model, optimizer, REGRESSION, device=CPU, epochs=epochs, **options)
    return trainer, trainer.fit(batches, batches)


@pytest.fixture
def cheap_compile(monkeypatch):
    """torch.compile through dynamo and AOTAutograd, without inductor's ~20 s C++ build per graph."""
    monkeypatch.setattr(acceleration, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- precision
def test_bf16_mixed_autocasts_train_and_eval_forward_and_reports_float32_metrics():
    dtypes = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1)

        def forward(self, x):
            out = self.linear(x)
            dtypes.append((self.training, out.dtype))
            return out

    batches = SizedBatches(regression_batches([8, 8]).batches)
    torch.manual_seed(0)
    trainer, result = fit(Probe(), batches, epochs=1, precision="bf16-mixed")
    assert dtypes == [(True, torch.bfloat16)] * 2 + [(False, torch.bfloat16)] * 2
    assert math.isfinite(result.last_metrics["val_loss"]) and math.isfinite(result.last_metrics["train_loss"])
    # Same data, float32: losses agree to bf16's precision (8 bits of mantissa).
    torch.manual_seed(0)
    _, reference = fit(Probe(), batches, epochs=1)
    assert result.last_metrics["train_loss"] == pytest.approx(reference.last_metrics["train_loss"], rel=0.05)


def test_precision_32_does_not_autocast():
    seen = []

    class Probe(nn.Linear):
        def forward(self, x):
            seen.append(super().forward(x).dtype)
            return super().forward(x)

    fit(Probe(3, 1), SizedBatches(regression_batches([4]).batches), epochs=1)
    assert set(seen) == {torch.float32}


def test_sixteen_mixed_is_refused_on_cpu_and_unknown_precisions_everywhere():
    with pytest.raises(ConfigError, match=r"trainer\.precision.*'16-mixed'.*GPU"):
        check_device_options("16-mixed", CPU)
    with pytest.raises(ConfigError, match=r"Accepted: 32, bf16-mixed, 16-mixed"):
        check_device_options("fp8", CPU)
    check_device_options("bf16-mixed", CPU)
    check_device_options(32, CPU)  # YAML's 32 is an int until the schema makes it a string


@pytest.mark.parametrize("override, key", [
    ("trainer.precision=16", "trainer.precision"),
    ("trainer.precision=bf16", "trainer.precision"),
    ("trainer.grad_clip=-1", "trainer.grad_clip"),
    ("trainer.grad_clip=nan", "trainer.grad_clip"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
    ("trainer.matmul_precision=low", "trainer.matmul_precision"),
])
def test_validation_names_bad_speed_options(compose_cfg, override, key):
    cfg = compose_cfg(override)
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    assert f"`{key}`" in str(error.value) and "Accepted:" in str(error.value)


def test_cuda_graph_with_float16_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match="bf16-mixed with trainer.cuda_graph"):
        validate(compose_cfg("trainer.cuda_graph=true", "trainer.precision=16-mixed"))


def test_defaults_keep_plain_float32_training(compose_cfg):
    cfg = compose_cfg()
    validate(cfg)
    t = cfg.trainer
    assert (t.precision, t.compile, t.cuda_graph, t.grad_clip, t.accumulate_grad_batches,
            t.matmul_precision, t.pin_memory) == ("32", False, "auto", 0.0, 1, "highest", True)
    assert OmegaConf.select(compose_cfg("trainer.precision=32"), "trainer.precision") == "32"


# ----------------------------------------------------------------------------- grad clipping
def test_grad_clip_bounds_each_step_to_the_clip_norm():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(16, 3), torch.full((16, 1), 100.0)  # a large gradient
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # the step is exactly -grad
    Trainer(model, optimizer, REGRESSION, device=CPU, epochs=1, grad_clip=0.5).fit(
        SizedBatches([(x, y)]), None)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert torch.linalg.vector_norm(after - before).item() == pytest.approx(0.5, rel=1e-5)


def test_grad_clip_leaves_small_gradients_alone():
    batches = SizedBatches(regression_batches([8, 8]).batches)
    clipped, _ = fit(mlp(), batches, grad_clip=1e6)
    plain, _ = fit(mlp(), batches)
    for a, b in zip(clipped.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------- accumulation
class CountingSGD(torch.optim.SGD):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


@pytest.mark.parametrize("sized", [True, False])
def test_accumulation_steps_once_per_window_with_the_window_mean_gradient(sized):
    sizes = [4, 4, 4, 4, 3]  # windows of 2: [0, 1], [2, 3], [4] (the partial last one still steps)
    raw = regression_batches(sizes).batches
    batches = SizedBatches(raw) if sized else ListBatches(raw)
    model = mlp()
    optimizer = CountingSGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    trainer = Trainer(model, optimizer, REGRESSION, device=CPU, epochs=1, accumulate_grad_batches=2,
                      scheduler=scheduler, scheduler_interval="step")
    trainer.fit(batches, None)
    assert optimizer.steps == 3
    assert trainer.history[0]["lr"] == pytest.approx(0.1 * 0.5**3)  # a step scheduler follows steps

    # By hand: each window's step uses the mean of its batches' gradients. Batches of unknown
    # number cannot tell the last window is short: its loss is divided by 2 all the same.
    reference = mlp()
    lr = 0.1
    for window in [raw[0:2], raw[2:4], raw[4:5]]:
        reference.zero_grad()
        divisor = len(window) if sized else 2
        for x, y in window:
            (REGRESSION.loss(reference(x), y) / divisor).backward()
        with torch.no_grad():
            for p in reference.parameters():
                p -= lr * p.grad
        lr *= 0.5
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_accumulated_epoch_loss_is_still_sample_weighted():
    batches = SizedBatches(regression_batches([7, 2, 31]).batches)
    model = mlp()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), REGRESSION, device=CPU,
                      epochs=1, accumulate_grad_batches=2)
    result = trainer.fit(batches, batches)
    x = torch.cat([b[0] for b in batches.batches])
    y = torch.cat([b[1] for b in batches.batches])
    with torch.no_grad():
        expected = REGRESSION.loss(model(x), y).item()
    assert result.last_metrics["train_loss"] == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- matmul precision
def test_matmul_precision_applies_during_fit_and_is_restored():
    seen = []

    class Record(Callback):
        def on_epoch_end(self, trainer, metrics):
            seen.append(torch.get_float32_matmul_precision())

    before = torch.get_float32_matmul_precision()
    fit(mlp(), SizedBatches(regression_batches([4]).batches), epochs=1, matmul_precision="medium",
        callbacks=[Record()])
    assert seen == ["medium"]
    assert torch.get_float32_matmul_precision() == before


# ----------------------------------------------------------------------------- compile
def test_compiled_training_matches_eager_and_checkpoints_keep_plain_keys(cheap_compile, tmp_path):
    batches = SizedBatches(regression_batches([8, 8, 5]).batches)
    checkpoint = Checkpoint(tmp_path, every=1, keep_last_k=0)
    compiled, result = fit(mlp(), batches, compile=True, callbacks=[checkpoint])
    eager, reference = fit(mlp(), batches)
    assert compiled.forward.compiled is not None  # it did not fall back
    assert result.last_metrics["val_loss"] == pytest.approx(reference.last_metrics["val_loss"], rel=1e-5)
    state = torch.load(checkpoint.last_path, weights_only=True)["model"]
    assert set(state) == set(mlp().state_dict())  # no `_orig_mod.` prefixes
    mlp().load_state_dict(state)


def test_compile_failure_warns_and_trains_eagerly(monkeypatch):
    def broken_compile(module, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    batches = SizedBatches(regression_batches([8, 8]).batches)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        trainer, result = fit(mlp(), batches, compile=True)
    _, reference = fit(mlp(), batches)
    assert trainer.forward.compiled is None
    assert result.last_metrics["val_loss"] == reference.last_metrics["val_loss"]


def test_compile_fallback_does_not_hide_model_errors(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **kw: module)
    wrapped = CompiledModule(nn.Linear(3, 1))
    with pytest.raises(RuntimeError, match="mat1 and mat2"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped(torch.randn(2, 5))


# ----------------------------------------------------------------------------- cuda_graph, syncs
def test_cuda_graph_auto_on_cpu_trains_eagerly_and_true_is_refused(caplog):
    batches = SizedBatches(regression_batches([8, 8]).batches)
    with caplog.at_level(logging.INFO, logger="app"):
        trainer, result = fit(mlp(), batches, cuda_graph="auto")
    assert not [r for r in caplog.records if "cuda_graph" in r.getMessage()]  # nothing to say off CUDA
    _, reference = fit(mlp(), batches)
    assert trainer.graphed is None
    assert result.last_metrics["val_loss"] == reference.last_metrics["val_loss"]
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device, not cpu"):
        fit(mlp(), batches, cuda_graph=True)
    with pytest.raises(ConfigError, match="`trainer.cuda_graph`: True.*auto or false on cpu"):
        check_device_options("32", CPU, True)
    check_device_options("32", CPU, "auto")


def test_cuda_graph_decision_says_why_auto_turns_graphs_off():
    from app.train.acceleration import cuda_graph_decision

    cuda = torch.device("cuda")
    assert cuda_graph_decision("auto", cuda) == (True, None)
    assert cuda_graph_decision(False, cuda) == (False, None)
    assert cuda_graph_decision("auto", CPU) == (False, None)
    use, why = cuda_graph_decision("auto", cuda, "16-mixed")
    assert not use and "16-mixed" in why
    use, why = cuda_graph_decision("auto", cuda, "32", distributed=True)
    assert not use and "several processes" in why
    with pytest.raises(ValueError, match="16-mixed"):
        cuda_graph_decision(True, cuda, "16-mixed")


@pytest.mark.parametrize("options", [
    {},
    {"precision": "bf16-mixed"},
    {"grad_clip": 1.0, "accumulate_grad_batches": 3},
])
def test_no_host_sync_per_step_with_speed_options(monkeypatch, options):
    """One `.tolist()` per epoch, whatever the options; never `.item()`, `bool()` or `float()`."""
    calls = {"tolist": 0}
    original = torch.Tensor.tolist

    def forbidden(self, *args, **kwargs):
        raise AssertionError("host read of a tensor in the training loop")

    def counting_tolist(self):
        calls["tolist"] += 1
        return original(self)

    batches = SizedBatches(regression_batches([4] * 10).batches)
    model = mlp()
    # SGD: CPU Adam reads its (host) step counter with .item(), which is no device sync.
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), REGRESSION,
                      device=CPU, epochs=3, **options)
    for name in ("item", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    trainer.fit(batches, batches)
    monkeypatch.undo()
    assert calls["tolist"] == 3


def test_adam_and_adamw_are_fused_by_default_and_bad_combinations_are_config_errors(compose_cfg):
    from app.run import build

    model = mlp()
    for name in ("adamw", "adam"):
        optimizer = build.build_optimizer(compose_cfg(f"optimizer={name}"), model)
        assert optimizer.defaults["fused"] is True
    plain = build.build_optimizer(compose_cfg("optimizer.fused=false", "optimizer.foreach=true"), model)
    assert (plain.defaults["fused"], plain.defaults["foreach"]) == (False, True)
    with pytest.raises(ConfigError, match=r"`optimizer.foreach`.*optimizer.fused=false"):
        validate(compose_cfg("optimizer.foreach=true"))  # fused (the default) and foreach


def test_grad_scaler_state_travels_with_the_trainer_state():
    """A resumed 16-mixed run continues with the loss scale it had, not the initial one."""
    from app.train.tasks import TASKS
    from app.train.trainer import Trainer

    def trainer():
        model = torch.nn.Linear(2, 1)
        t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), TASKS["regression"],
                    device=torch.device("cpu"), epochs=1)
        t.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, enabled=True)
        return t

    first = trainer()
    first.scaler.scale(torch.tensor(1.0))  # the scale tensor is created lazily
    first.scaler.update(new_scale=8.0)
    second = trainer()
    second.load_state_dict(first.state_dict())
    assert second.scaler.get_scale() == 8.0


def test_a_packs_graph_step_run_eagerly_on_the_cpu_equals_the_eager_pack(compose_cfg, tmp_path, monkeypatch):
    """The step a pack captures as a CUDA graph (app/train/packed.py `_graph_step`: always
    masked, hyperparameters and mask in device tensors updated in place, sums inside the step),
    called directly instead of captured, trains bit for bit as the eager pack on the CPU, with
    clipping and a member that stops early (masked, not compacted). On CUDA the captured
    version is checked against the eager pack in tests/test_gpu.py."""
    from app.run.build import build_run
    from app.run.seeds import with_seed
    from app.train import packed

    class Direct:  # GraphedStep's interface, calling the step
        def __init__(self, step, optimizer, device, required=True):
            self.step_fn, self.enabled, self.captures = step, True, 0

        def step(self, x, y, window, first, update):
            return self.step_fn(x, y, window, first, update)

    overrides = ["device=cpu", "model.nodes=16", "model.layers=2", "data.n_samples=600", "trainer.batch_size=64",
                 "logger=none", "trainer.progress_bar=false", "~callbacks.early_stopping", "trainer.grad_clip=1.0"]
    lrs = ["0.01", "0.003", "0.001", "0.02", "0.005"]

    def pack(name):
        return [build_run(with_seed(compose_cfg(*overrides, f"optimizer.lr={lr}",
                                                f"trainer.epochs={2 if i == 4 else 3}"), seed), tmp_path / name / str(seed))
                for i, (seed, lr) in enumerate(zip([1, 2, 3, 4, 5], lrs))]

    eager_runs, graph_runs = pack("eager"), pack("graph")
    packed.PackedTrainer(eager_runs).fit()
    monkeypatch.setattr(acceleration, "GraphedStep", Direct)
    trainer = packed.PackedTrainer(graph_runs)
    trainer.use_graphs = True  # what cuda_graph=auto decides on CUDA
    results = trainer.fit()
    assert [r.epochs_run for r in results] == [3, 3, 3, 3, 2] and trainer.flat.shape[0] == 5
    for ours, theirs in zip(graph_runs, eager_runs):
        for a, b in zip(ours.trainer.history, theirs.trainer.history, strict=True):
            assert [a[k] for k in ("train_loss", "val_loss", "grad_norm", "lr")] == \
                   [b[k] for k in ("train_loss", "val_loss", "grad_norm", "lr")]
        for p, q in zip(ours.model.parameters(), theirs.model.parameters()):
            assert torch.equal(p, q)
