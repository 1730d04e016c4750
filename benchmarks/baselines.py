"""The loops the app is measured against, written as a person would write them by hand.

`HandWrittenLoop`: the minimal device-resident loop (what the Trainer must not be slower than):
forward, loss, zero_grad, backward, step; losses summed on the device and read once per epoch;
validation under no_grad; the scheduler stepped per epoch.

`TemplateLoop`: the original template's loop: `DataLoader(TensorDataset)` batches copied to the
device one by one, and `loss.item()` after every step and validation batch.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset


class HandWrittenLoop:
    def __init__(self, model: nn.Module, optimizer, scheduler, loss_fn: Callable, metric_fn: Callable,
                 train: Iterable, val: Iterable, device: torch.device) -> None:
        self.model, self.optimizer, self.scheduler = model.to(device), optimizer, scheduler
        self.loss_fn, self.metric_fn = loss_fn, metric_fn
        self.train, self.val, self.device = train, val, device
        self.history: list[list[float]] = []

    def run(self, epochs: int) -> None:
        model, optimizer = self.model, self.optimizer
        for _ in range(epochs):
            model.train()
            loss_sum = torch.zeros(1, device=self.device)
            for x, y in self.train:
                loss = self.loss_fn(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * y.shape[0]
            model.eval()
            val_sums = torch.zeros(2, device=self.device)
            with torch.no_grad():
                for x, y in self.val:
                    out = model(x)
                    val_sums += torch.stack([self.loss_fn(out, y) * y.shape[0], self.metric_fn(out, y)])
            train_loss, val_loss, val_metric = torch.cat([loss_sum, val_sums]).tolist()
            self.history.append([train_loss / self.train.num_samples, val_loss / self.val.num_samples,
                                 val_metric / self.val.num_samples])
            self.scheduler.step()


class TemplateLoop:
    """The original template's `Trainer.train_epoch` / `val_epoch` (see the reference chapter)."""

    def __init__(self, model: nn.Module, optimizer, scheduler, criterion: Callable,
                 train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], batch_size: int,
                 device: torch.device, seed: int = 42) -> None:
        self.model, self.optimizer, self.scheduler = model.to(device), optimizer, scheduler
        self.criterion, self.device = criterion, device
        generator = torch.Generator().manual_seed(seed)
        self.dl_train = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True,
                                   generator=generator)
        self.dl_val = DataLoader(TensorDataset(*val), batch_size=batch_size, shuffle=False)
        self.history: list[list[float]] = []

    def run(self, epochs: int) -> None:
        for _ in range(epochs):
            train_loss = self.train_epoch()
            val_loss = self.val_epoch()
            self.history.append([train_loss, val_loss])
            self.scheduler.step()

    def train_epoch(self) -> float:
        self.model.train()
        train_loss = 0.0
        for x, y in self.dl_train:
            x = x.to(self.device)
            y = y.to(self.device)
            y_pred = self.model(x)
            loss = self.criterion(y_pred, y)
            train_loss += loss.item()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        return train_loss / len(self.dl_train)

    def val_epoch(self) -> float:
        self.model.eval()
        val_loss = 0.0
        with torch.no_grad():
            for x, y in self.dl_val:
                x = x.to(self.device)
                y = y.to(self.device)
                val_loss += self.criterion(self.model(x), y).item()
        return val_loss / len(self.dl_val)
