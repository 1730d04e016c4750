"""Training health in every run: the Trainer's grad_norm / grad_norm_max, per-group learning
rates, samples_per_s and (CUDA) peak memory; the HealthMonitor's one-time warnings and its state."""
from __future__ import annotations

import copy
import csv
import io
import logging
import math

import pytest
import torch
from torch import nn

from app.callbacks import CSVLogger
from app.callbacks import HealthMonitor as _HealthMonitor
from app.train.tasks import TASKS
from app.train.trainer import Trainer
from tests.conftest import options_of
from tests.test_acceleration import SizedBatches, mlp
from tests.test_trainer import regression_batches


def HealthMonitor(**options):  # noqa: N802 -- the callback with conf/callbacks/health.yaml's options
    return _HealthMonitor(**options_of("callbacks", "health", **options))

REGRESSION = TASKS["regression"]
CPU = torch.device("cpu")
HEALTH_LOG = "app.callbacks.health"


def trainer_for(model, lr=0.1, epochs=1, optimizer=None, **options):
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    return Trainer(model, optimizer, REGRESSION, device=CPU, epochs=epochs, **options)


def step_norms_by_hand(model, batches, lr, grad_clip=0.0, accumulate=1):
    """The global gradient norm of each optimizer step (before clipping), by a plain loop."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    norms = []
    for start in range(0, len(batches), accumulate):
        window = batches[start:start + accumulate]
        optimizer.zero_grad()
        for x, y in window:
            (REGRESSION.loss(model(x), y) / len(window)).backward()
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item())
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    return norms


# ----------------------------------------------------------------------------- grad norm
def test_grad_norm_of_a_one_step_epoch_is_the_norm_of_that_steps_gradients():
    batches = SizedBatches(regression_batches([16]).batches)
    trainer = trainer_for(mlp())
    trainer.fit(batches, None)
    # The step's gradients are still in .grad (they are freed before the next step's backward).
    expected = torch.nn.utils.get_total_norm([p.grad for p in trainer.model.parameters()]).item()
    metrics = trainer.history[0]
    assert expected > 0
    assert metrics["grad_norm"] == pytest.approx(expected, rel=1e-6)
    assert metrics["grad_norm_max"] == pytest.approx(expected, rel=1e-6)


def test_grad_norm_every_measures_every_nth_step_of_each_epoch(monkeypatch):
    raw = regression_batches([8, 8, 8, 8, 8]).batches
    expected = step_norms_by_hand(mlp(), raw, lr=0.5)  # steps 0..4 of the first epoch
    from app.train import trainer as trainer_module

    real, calls = trainer_module.grad_norm, []

    def counting(params):
        calls.append(1)
        return real(params)

    monkeypatch.setattr(trainer_module, "grad_norm", counting)
    trainer = trainer_for(mlp(), lr=0.5, epochs=2, grad_norm_every=2)
    trainer.fit(SizedBatches(raw), None)
    assert len(calls) == 6  # steps 0, 2, 4 of each of the two epochs: the others skip the norm
    first = trainer.history[0]
    measured = [expected[0], expected[2], expected[4]]
    assert first["grad_norm"] == pytest.approx(sum(measured) / 3, rel=1e-5)
    assert first["grad_norm_max"] == pytest.approx(max(measured), rel=1e-5)


@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_grad_norm_is_the_mean_and_max_over_steps_of_the_pre_clip_norm(grad_clip):
    raw = regression_batches([8, 8, 8, 5]).batches
    expected = step_norms_by_hand(mlp(), raw, lr=0.5, grad_clip=grad_clip)
    assert min(expected) > grad_clip  # clipping really changed every step
    assert max(expected) > 1.01 * sum(expected) / len(expected)  # the mean and the max differ
    trainer = trainer_for(mlp(), lr=0.5, grad_clip=grad_clip)
    trainer.fit(SizedBatches(raw), None)
    metrics = trainer.history[0]
    assert metrics["grad_norm"] == pytest.approx(sum(expected) / len(expected), rel=1e-5)
    assert metrics["grad_norm_max"] == pytest.approx(max(expected), rel=1e-5)


def test_grad_norm_with_accumulation_is_measured_once_per_window():
    raw = regression_batches([8, 8, 8, 8, 5]).batches  # windows of 2: [0, 1], [2, 3], [4]
    expected = step_norms_by_hand(mlp(), raw, lr=0.5, accumulate=2)
    assert len(expected) == 3
    trainer = trainer_for(mlp(), lr=0.5, accumulate_grad_batches=2)
    trainer.fit(SizedBatches(raw), None)
    assert trainer.history[0]["grad_norm"] == pytest.approx(sum(expected) / 3, rel=1e-5)
    assert trainer.history[0]["grad_norm_max"] == pytest.approx(max(expected), rel=1e-5)


def test_grad_norm_needs_no_host_read_of_its_own(monkeypatch):
    """One `.tolist()` per epoch with the norm on (the default): it travels with the losses."""
    reads = {"tolist": 0}
    original = torch.Tensor.tolist

    def forbidden(self, *args, **kwargs):
        raise AssertionError("host read of a tensor in the training loop")

    def counting_tolist(self):
        reads["tolist"] += 1
        return original(self)

    batches = SizedBatches(regression_batches([4] * 6).batches)
    trainer = trainer_for(mlp(), lr=1e-3, epochs=3)
    assert trainer.track_grad_norm  # the default
    for name in ("item", "__bool__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    trainer.fit(batches, batches)
    monkeypatch.undo()
    assert reads["tolist"] == 3
    assert all(math.isfinite(h["grad_norm"]) and h["grad_norm"] > 0 for h in trainer.history)


def test_track_grad_norm_false_reports_no_grad_norm():
    batches = SizedBatches(regression_batches([4, 4]).batches)
    trainer = trainer_for(mlp(), epochs=2, track_grad_norm=False)
    trainer.fit(batches, batches)
    assert not {"grad_norm", "grad_norm_max"} & set(trainer.history[-1])
    assert not {"grad_norm", "grad_norm_max"} & set(trainer.metric_columns())
    assert "samples_per_s" in trainer.history[-1]  # the rest of the health metrics stay


# ----------------------------------------------------------------------------- lr, samples/s, memory
def test_lr_per_param_group_keeps_lr_for_group_zero(tmp_path):
    model = mlp()
    first, second = model[0], model[2]
    optimizer = torch.optim.SGD([{"params": first.parameters(), "lr": 0.1},
                                 {"params": second.parameters(), "lr": 0.01}])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5)
    logger = CSVLogger(tmp_path / "metrics.csv")
    trainer = trainer_for(model, epochs=2, optimizer=optimizer, scheduler=scheduler, callbacks=[logger])
    batches = SizedBatches(regression_batches([4]).batches)
    trainer.fit(batches, batches)
    # The lr each epoch trained with (the epoch scheduler steps after the metrics are taken).
    assert [h["lr"] for h in trainer.history] == pytest.approx([0.1, 0.05])
    assert [h["lr_1"] for h in trainer.history] == pytest.approx([0.01, 0.005])
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["lr_1"]) for r in rows] == pytest.approx([0.01, 0.005])

    single = trainer_for(mlp(), epochs=1)
    single.fit(batches, batches)
    assert "lr" in single.history[0] and not any(k.startswith("lr_") for k in single.history[0])


def test_samples_per_s_times_the_training_part_and_memory_is_absent_on_cpu(tmp_path):
    train = SizedBatches(regression_batches([32] * 8).batches)
    val = SizedBatches(regression_batches([32] * 8, seed=1).batches)
    logger = CSVLogger(tmp_path / "metrics.csv")
    trainer = trainer_for(mlp(), epochs=2, callbacks=[logger])
    trainer.fit(train, val)
    for metrics in trainer.history:
        rate = metrics["samples_per_s"]
        assert math.isfinite(rate) and rate > 0
        # Training alone took less than the whole epoch (which also validated).
        assert rate > train.num_samples / metrics["epoch_time"]
        assert "peak_memory_mib" not in metrics
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm", "grad_norm_max", "samples_per_s"} <= set(header)
    assert "peak_memory_mib" not in header


# ----------------------------------------------------------------------------- HealthMonitor
def health_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == HEALTH_LOG and r.levelno == logging.WARNING]


def linear_data(n=64, sign=1.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = sign * scale * (x @ torch.tensor([[1.0], [-2.0], [0.5]]))
    return SizedBatches([(x, y)])


def zero_linear():
    model = nn.Linear(3, 1, bias=False)
    nn.init.zeros_(model.weight)
    return model


def test_exploding_gradients_warn_once_and_training_goes_on(caplog):
    data = linear_data(scale=1e4)  # huge targets: gradient norms of about 1e4 every epoch
    monitor = HealthMonitor(max_grad_norm=1e3)
    trainer = trainer_for(zero_linear(), lr=1e-6, epochs=4, callbacks=[monitor])
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        result = trainer.fit(data, data)
    assert all(h["grad_norm_max"] > 1e3 for h in trainer.history)  # every epoch qualifies
    messages = health_warnings(caplog)
    assert len(messages) == 1
    assert messages[0].startswith("epoch 1: exploding gradients: grad_norm_max=")
    assert "trainer.grad_clip" in messages[0]
    assert (result.stop_reason, result.epochs_run) == ("completed", 4)


def test_moderate_gradients_raise_no_warning(caplog):
    data = linear_data()
    trainer = trainer_for(zero_linear(), lr=0.1, epochs=4, callbacks=[HealthMonitor()])
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        trainer.fit(data, data)
    assert health_warnings(caplog) == []


@pytest.mark.parametrize("norm", [math.inf, math.nan])
def test_non_finite_gradient_norm_counts_as_exploding(caplog, norm):
    monitor = HealthMonitor()
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        for epoch in (1, 2):
            monitor.on_epoch_end(None, {"epoch": epoch, "train_loss": 1.0, "grad_norm": norm,
                                        "grad_norm_max": norm})
    messages = health_warnings(caplog)
    assert len(messages) == 1 and messages[0].startswith("epoch 1: exploding gradients")
    assert "non-finite" in messages[0]


def dead_relu_model():
    """Every hidden unit is dead (pre-activations far below 0): all gradients are exactly 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1, bias=False))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    return model


@pytest.mark.parametrize("epochs, warned", [(6, True), (2, False)])
def test_vanishing_gradients_warn_once_after_vanishing_epochs(caplog, epochs, warned):
    data = linear_data()
    monitor = HealthMonitor(vanishing_epochs=3)
    trainer = trainer_for(dead_relu_model(), epochs=epochs, callbacks=[monitor])
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        result = trainer.fit(data, data)
    assert all(h["grad_norm"] == 0.0 for h in trainer.history)
    messages = health_warnings(caplog)
    if warned:  # the third epoch in a row below min_grad_norm, and only once
        assert len(messages) == 1 and messages[0].startswith("epoch 3: vanishing gradients")
    else:  # two epochs are not "a while"
        assert messages == []
    assert (result.stop_reason, result.epochs_run) == ("completed", epochs)


def overfitting_run(epochs=8, monitor=None):
    """Validation targets are the negated training targets on the same inputs: as the model
    learns the training set, validation loss rises every epoch."""
    train, val = linear_data(), linear_data(sign=-1.0)
    monitor = monitor or HealthMonitor(overfit_patience=3)
    trainer = trainer_for(zero_linear(), lr=0.1, epochs=epochs, callbacks=[monitor])
    result = trainer.fit(train, val)
    return trainer, result, monitor


def test_overfitting_warns_once_after_patience_validations_and_never_stops(caplog):
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        trainer, result, _ = overfitting_run()
    history = trainer.history
    assert all(b["val_loss"] > a["val_loss"] and b["train_loss"] < a["train_loss"]
               for a, b in zip(history, history[1:]))
    messages = health_warnings(caplog)
    # Epochs 2, 3 and 4 each rose against the previous validation: the third in a row is epoch 4.
    assert len(messages) == 1 and messages[0].startswith("epoch 4: overfitting: over the last 3 validations")
    assert f"{history[0]['val_loss']:.4g} -> {history[3]['val_loss']:.4g}" in messages[0]
    assert (result.stop_reason, result.epochs_run) == ("completed", 8)


def test_the_val_train_ratio_rule_is_opt_in(caplog):
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        overfitting_run(epochs=2, monitor=HealthMonitor(max_val_train_ratio=2.0))
    messages = health_warnings(caplog)
    # Epoch 1 measures train_loss before its only step and val_loss after it: no warning yet.
    assert len(messages) == 1 and messages[0].startswith("epoch 2: overfitting: val_loss=")
    assert "max_val_train_ratio=2" in messages[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        overfitting_run(epochs=2)  # the default: the trend rule only, whose patience is 3
    assert health_warnings(caplog) == []


def test_state_round_trip_continues_streaks_and_remembers_warnings(caplog):
    full = HealthMonitor(overfit_patience=3)
    with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
        trainer, _, _ = overfitting_run(monitor=full)
    history = trainer.history
    caplog.clear()

    def replay(monitor, rows):
        with caplog.at_level(logging.WARNING, logger=HEALTH_LOG):
            for metrics in rows:
                monitor.on_epoch_end(None, metrics)
        messages = health_warnings(caplog)
        caplog.clear()
        return messages

    def saved(monitor):  # through a checkpoint file, loaded as plain data only
        buffer = io.BytesIO()
        torch.save(monitor.state_dict(), buffer)
        buffer.seek(0)
        restored = HealthMonitor(overfit_patience=3)
        restored.load_state_dict(torch.load(buffer, weights_only=True))
        return restored

    first = HealthMonitor(overfit_patience=3)
    assert replay(first, history[:3]) == []  # a streak of 2 so far
    resumed = saved(first)
    messages = replay(resumed, history[3:])
    assert len(messages) == 1 and messages[0].startswith("epoch 4: overfitting")
    assert resumed.state_dict() == full.state_dict()
    # Without the state, the streak restarts: no warning at epoch 4 (the round trip mattered).
    assert not any(m.startswith("epoch 4") for m in replay(HealthMonitor(overfit_patience=3), history[3:]))
    # After the warning, a resumed monitor does not repeat it.
    assert replay(saved(copy.deepcopy(resumed)), history[4:]) == []
