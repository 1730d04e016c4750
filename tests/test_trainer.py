"""Trainer semantics: averaging, validation mode, early stopping, divergence, schedulers."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from app.callbacks import Callback, EarlyStopping, improves
from app.train.tasks import TASKS
from app.train.trainer import Trainer

REGRESSION = TASKS["regression"]


class ListBatches:
    """A fixed list of (x, y) batches with the `num_samples` the trainer divides by."""

    def __init__(self, batches):
        self.batches = batches
        self.num_samples = sum(y.shape[0] for _, y in batches)

    def __iter__(self):
        return iter(self.batches)


def regression_batches(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ListBatches([(torch.randn(n, 3, generator=g), torch.randn(n, 1, generator=g)) for n in sizes])


def script_val_loss(trainer, values):
    """Make validation report `values[k]` as val_loss at the k-th validation (mae 0)."""
    remaining = list(values)

    def scripted(batches):
        return torch.tensor([remaining.pop(0) * batches.num_samples, 0.0])

    trainer._eval_sums = scripted
    return trainer


def make_trainer(epochs=3, callbacks=(), lr=0.0, mode="min", scheduler=None, monitor="val_loss", **kw):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if callable(scheduler):
        scheduler = scheduler(optimizer)
    return Trainer(model, optimizer, REGRESSION, device=torch.device("cpu"), epochs=epochs,
                   callbacks=list(callbacks), mode=mode, scheduler=scheduler, monitor=monitor, **kw)


def test_epoch_losses_are_averaged_over_samples_not_batches():
    batches = regression_batches([7, 2, 31])  # unequal batch sizes
    trainer = make_trainer(epochs=1, lr=0.0)  # lr 0: the model does not change within the epoch
    result = trainer.fit(batches, batches)
    x = torch.cat([b[0] for b in batches.batches])
    y = torch.cat([b[1] for b in batches.batches])
    with torch.no_grad():
        expected = nn.functional.mse_loss(trainer.model(x), y).item()
        per_batch_mean = sum(nn.functional.mse_loss(trainer.model(a), b).item() for a, b in batches.batches) / 3
    assert abs(per_batch_mean - expected) > 1e-3  # the two averages really differ here
    assert result.last_metrics["train_loss"] == pytest.approx(expected, rel=1e-5)
    assert result.last_metrics["val_loss"] == pytest.approx(expected, rel=1e-5)
    expected_mae = (trainer.model(x) - y).abs().mean().item()
    assert result.last_metrics["val_mae"] == pytest.approx(expected_mae, rel=1e-5)


def test_validation_runs_in_eval_mode_without_gradients():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1)

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.linear(x)

    model = Probe()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), REGRESSION,
                      device=torch.device("cpu"), epochs=1)
    train, val = regression_batches([4, 4]), regression_batches([5], seed=1)
    trainer.fit(train, val)
    assert seen[:2] == [(True, True), (True, True)]  # training batches
    assert seen[2:] == [(False, False)]  # the validation batch


def test_training_updates_parameters_and_reduces_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    batches = ListBatches([(x[i:i + 32], y[i:i + 32]) for i in range(0, 256, 32)])
    trainer = make_trainer(epochs=20, lr=0.05)
    trainer.fit(batches, batches)
    assert trainer.history[-1]["val_loss"] < 0.1 * trainer.history[0]["val_loss"]


@pytest.mark.parametrize(
    "mode, values, min_delta, stop_epoch",
    [
        ("min", [1.0, 0.9, 0.95, 0.93, 0.92, 0.5], 0.0, 5),  # best at 2, then 3 checks without
        ("min", [1.0, 0.9, 0.86, 0.87, 0.86, 0.5], 0.05, 5),  # 0.86 beats 0.9, but not by > 0.05
        ("max", [0.1, 0.2, 0.15, 0.3, 0.29, 0.28, 0.27], 0.0, 7),
        ("max", [0.1, 0.2, 0.21, 0.215, 0.22, 0.9], 0.05, 5),
    ],
)
def test_early_stopping_mode_patience_and_absolute_min_delta(mode, values, min_delta, stop_epoch):
    stopper = EarlyStopping(monitor="val_loss", mode=mode, patience=3, min_delta=min_delta)
    trainer = script_val_loss(make_trainer(epochs=len(values), mode=mode, callbacks=[stopper]), values)
    result = trainer.fit(regression_batches([4]), regression_batches([4]))
    assert result.stop_reason == "early_stopped"
    assert result.epochs_run == stop_epoch
    assert "early stopping" in result.message


def test_early_stopping_min_delta_is_absolute_not_relative():
    # 100 -> 99.5 improves by 0.5 absolute (0.5% relative). With min_delta=0.1 absolute this counts
    # as an improvement; a relative reading (10%) would not.
    values = [100.0, 99.5, 99.0, 98.5, 98.0]
    stopper = EarlyStopping(monitor="val_loss", mode="min", patience=1, min_delta=0.1)
    trainer = script_val_loss(make_trainer(epochs=len(values), callbacks=[stopper]), values)
    result = trainer.fit(regression_batches([4]), regression_batches([4]))
    assert result.stop_reason == "completed"
    assert stopper.best == 98.0


def test_improves_helper_boundaries():
    assert improves(0.5, None, "min")
    assert not improves(float("nan"), None, "min")
    assert not improves(0.9, 1.0, "min", min_delta=0.1)
    assert improves(0.89, 1.0, "min", min_delta=0.1)
    assert improves(1.2, 1.0, "max", min_delta=0.1)
    assert not improves(1.05, 1.0, "max", min_delta=0.1)


@pytest.mark.parametrize("mode, best, best_epoch", [("min", 0.2, 2), ("max", 0.6, 3)])
def test_best_and_last_follow_monitor_and_mode(mode, best, best_epoch):
    values = [0.5, 0.2, 0.6, 0.4]
    trainer = script_val_loss(make_trainer(epochs=4, mode=mode), values)
    result = trainer.fit(regression_batches([4]), regression_batches([4]))
    assert (result.best, result.best_epoch, result.last, result.epochs_run) == (
        pytest.approx(best), best_epoch, pytest.approx(0.4), 4)
    assert result.stop_reason == "completed"


def test_nan_loss_stops_and_says_so():
    class NaNAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            out = self.linear(x)
            return out * float("nan") if self.calls > 4 else out

    model = NaNAfter()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), REGRESSION,
                      device=torch.device("cpu"), epochs=10)
    result = trainer.fit(regression_batches([4, 4]), regression_batches([4]))
    assert result.stop_reason == "diverged"
    assert result.epochs_run == 2  # epoch 1: 3 forward calls; epoch 2 produces NaN
    assert "non-finite loss" in result.message
    assert not math.isfinite(trainer.history[-1]["train_loss"])


def test_inf_loss_also_stops():
    batches = regression_batches([4])
    huge_targets = ListBatches([(batches.batches[0][0], torch.full((4, 1), 1e30))])  # MSE overflows
    trainer = make_trainer(epochs=3)
    result = trainer.fit(huge_targets, huge_targets)
    assert result.stop_reason == "diverged"
    assert result.epochs_run == 1
    assert trainer.history[-1]["train_loss"] == math.inf


def test_plateau_scheduler_steps_with_monitored_metric():
    calls = []

    class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
        def step(self, metrics, *args, **kwargs):
            calls.append(metrics)
            return super().step(metrics, *args, **kwargs)

    trainer = make_trainer(
        epochs=4, lr=0.1, scheduler=lambda opt: RecordingPlateau(opt, patience=0, factor=0.5),
        val_every=2,
    )
    script_val_loss(trainer, [0.7, 0.9])  # the second check does not improve: lr halves
    trainer.fit(regression_batches([4]), regression_batches([4]))
    assert calls == pytest.approx([0.7, 0.9])  # once per validation, with the monitored value
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_epoch_scheduler_steps_once_per_epoch_and_step_scheduler_per_batch():
    trainer = make_trainer(epochs=3, lr=1.0, scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    trainer.fit(regression_batches([2, 2]), regression_batches([2]))
    assert [h["lr"] for h in trainer.history] == [1.0, 0.5, 0.25]

    trainer = make_trainer(epochs=2, lr=1.0, scheduler_interval="step",
                           scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, 0.5))
    trainer.fit(regression_batches([2, 2]), regression_batches([2]))
    assert [h["lr"] for h in trainer.history] == [0.25, 0.0625]  # lr read after each epoch's 2 steps


def test_validation_every_n_epochs_and_after_last():
    trainer = make_trainer(epochs=5, val_every=2)
    trainer.fit(regression_batches([4]), regression_batches([4]))
    assert [("val_loss" in h) for h in trainer.history] == [False, True, False, True, True]


def test_classification_accuracy_is_sample_weighted():
    task = TASKS["classification"]
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    # Batch 1: 3 samples, all right; batch 2: 1 sample, wrong -> 3/4, not mean(1, 0) = 0.5.
    b1 = (torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 1, 0]))
    b2 = (torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), task,
                      device=torch.device("cpu"), epochs=1)
    metrics = trainer.evaluate(ListBatches([b1, b2]), prefix="val")
    assert metrics["val_accuracy"] == pytest.approx(0.75)


def test_no_host_sync_per_step(monkeypatch):
    """The loop reads the device once per epoch (one .tolist()), never .item() per step."""
    calls = {"item": 0, "tolist": 0}
    original_tolist = torch.Tensor.tolist

    def no_item(self):
        calls["item"] += 1
        raise AssertionError("Tensor.item called in the training loop")

    def counting_tolist(self):
        calls["tolist"] += 1
        return original_tolist(self)

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    trainer = make_trainer(epochs=3, lr=0.01)
    trainer.fit(regression_batches([4] * 10), regression_batches([4] * 5))
    assert calls == {"item": 0, "tolist": 3}


def test_request_stop_from_callback_keeps_first_reason():
    class Stopper(Callback):
        def on_epoch_end(self, trainer, metrics):
            if metrics["epoch"] == 2:
                trainer.request_stop("pruned", "pruned at epoch 2")
                trainer.request_stop("early_stopped", "ignored")

    trainer = make_trainer(epochs=5, callbacks=[Stopper()])
    result = trainer.fit(regression_batches([4]), regression_batches([4]))
    assert (result.stop_reason, result.epochs_run, result.message) == ("pruned", 2, "pruned at epoch 2")
