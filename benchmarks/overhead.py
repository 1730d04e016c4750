"""Trainer overhead: the app's `Trainer` vs a minimal hand-written loop (benchmarks/baselines.py)
on the same model, initial weights, data, batch order and number of steps.

Both keep the data on the device, sum losses on the device and read them once per epoch, and
validate every epoch. Each timed sample is `--epochs` epochs of one of them; samples alternate
between them, and the ratio is the median of the paired ratios (trainer / hand-written). The
Trainer runs three times: as the app configures it (the target's row: the gradient norm measured
every `trainer.grad_norm_every`-th step, conf/trainer/default.yaml), with the norm at every step,
and with `track_grad_norm=False` (what the norm costs; the hand-written loop computes none).
Lightning's Trainer on the same work is a reference row when `lightning` is installed.

    python benchmarks/overhead.py               # cuda if available, else cpu
    python benchmarks/overhead.py --device cpu

`--checkpoints` measures instead what a per-epoch checkpoints/last.pt costs the default task's
epoch (app.callbacks.Checkpoint, every epoch): seconds per epoch of the Trainer without
checkpoints, with last.pt written on the training thread (`background=False`) and written on
the background writer (the default: pickled to memory on the training thread, written and
fsynced on the writer), and on the writer with the pickling there too, in one run, alternating; the last line's ratio is
background s/epoch over no-checkpoint s/epoch (target <= 1.25: writes no longer dominate), and a
line before it gives sync over background.

    python benchmarks/overhead.py --device cpu --threads 1 --checkpoints
"""
from __future__ import annotations

import math

from common import ROOT  # (importing common puts the repository on sys.path)
from common import (DEFAULT_TASK, Workload, alternate, finish, header, median, parser, pick_device,
                    spread, table, timed)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from app.train.tasks import TASKS  # noqa: E402
from app.train.trainer import Trainer  # noqa: E402
from baselines import HandWrittenLoop  # noqa: E402

TARGET = 1.03
CHECKPOINT_TARGET = 1.25
REGRESSION = TASKS["regression"]


def build(workload: Workload, device, total_epochs: int):
    data = workload.data()
    model = workload.model(seed=0).to(device)
    optimizer = workload.optimizer(model)
    scheduler = workload.scheduler(optimizer, total_epochs)
    train, val = workload.batches(data, device)
    return model, optimizer, scheduler, train, val


def measure(workload: Workload, device, epochs: int, repeats: int):
    """Alternating samples of the Trainer (defaults), the Trainer without its gradient norm
    (`track_grad_norm=False`) and the hand-written loop, all on the same work."""
    total = epochs * (repeats + 1)
    trainers = {}
    every = OmegaConf.load(ROOT / "conf" / "trainer" / "default.yaml").grad_norm_every
    variants = (("trainer", {"grad_norm_every": every}), ("trainer, grad norm every step", {"grad_norm_every": 1}),
                ("trainer, no grad norm", {"track_grad_norm": False}))
    for name, options in variants:
        model, optimizer, scheduler, train, val = build(workload, device, total)
        trainer = Trainer(model, optimizer, REGRESSION, device=device, epochs=0, scheduler=scheduler,
                          **options)
        trainers[name] = (trainer, train, val)

    model_b, optimizer_b, scheduler_b, train_b, val_b = build(workload, device, total)
    loop = HandWrittenLoop(model_b, optimizer_b, scheduler_b, REGRESSION.loss,
                           REGRESSION.metrics["mae"], train_b, val_b, device)

    def run_trainer(name: str):
        trainer, train, val = trainers[name]

        def run() -> float:
            trainer.epochs += epochs
            return timed(lambda: trainer.fit(train, val), device) / epochs

        return run

    def run_loop() -> float:
        return timed(lambda: loop.run(epochs), device) / epochs

    variants = {name: run_trainer(name) for name in trainers} | {"hand-written": run_loop}
    for run in variants.values():  # warm-up: allocator, kernels, first-call paths
        run()
    samples = alternate(variants, repeats)
    ratios = {name: [a / b for a, b in zip(samples[name], samples["hand-written"])] for name in trainers}

    # Same work: each must have produced the same losses as the loop, epoch by epoch.
    b = loop.history
    diff = 0.0
    for trainer, _, _ in trainers.values():
        a = [[h["train_loss"], h["val_loss"], h["val_mae"]] for h in trainer.history]
        assert len(a) == len(b), (len(a), len(b))
        diff = max(diff, *(abs(u - v) / max(abs(v), 1e-12) for ra, rb in zip(a, b) for u, v in zip(ra, rb)))
    # What the gradient norm costs, paired sample by sample (adjacent in time, so drifts cancel).
    ratios["grad norm cost"] = [a / b for a, b in zip(samples["trainer"], samples["trainer, no grad norm"])]
    return samples, ratios, diff, len(train_b)


def lightning_reference(workload: Workload, device, epochs: int, repeats: int) -> float | None:
    """Median seconds per epoch of the same work under lightning.Trainer, or None without it."""
    try:
        import lightning as L
    except ImportError:
        return None
    import time

    model, optimizer, scheduler, train, val = build(workload, device, epochs * (repeats + 1))
    loss_fn, metric_fn = REGRESSION.loss, REGRESSION.metrics["mae"]

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, _):
            x, y = batch
            return loss_fn(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            out = self.net(x)
            return torch.stack([loss_fn(out, y) * y.shape[0], metric_fn(out, y)])

        def configure_optimizers(self):
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    times: list[float] = []

    class EpochTimer(L.Callback):
        def on_train_epoch_start(self, *_):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.started = time.perf_counter()

        def on_validation_epoch_end(self, trainer, *_):
            if trainer.sanity_checking:
                return
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - self.started)

    trainer = L.Trainer(
        max_epochs=epochs * (repeats + 1), accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[EpochTimer()],
    )
    trainer.fit(Module(), train_dataloaders=train, val_dataloaders=val)
    return median(times[epochs:])  # the first `epochs` epochs are warm-up


def checkpoints(device, epochs: int, repeats: int, quick: bool) -> None:
    """s/epoch without checkpoints, with synchronous and with background last.pt writes."""
    import tempfile
    from pathlib import Path

    from app.callbacks import Checkpoint

    workload = Workload(DEFAULT_TASK.name, nodes=DEFAULT_TASK.nodes, n_samples=1000) if quick else DEFAULT_TASK
    total = epochs * (repeats + 1)
    root = Path(tempfile.mkdtemp(prefix="overhead-checkpoints-"))
    variants = {"no checkpoints": None, "last.pt each epoch, on the training thread": (False, False),
                "last.pt each epoch, background writer": (True, False),
                "last.pt each epoch, background writer pickling too": (True, True)}
    trainers = {}
    for i, (name, mode) in enumerate(variants.items()):
        model, optimizer, scheduler, train, val = build(workload, device, total)
        callbacks = [] if mode is None else [Checkpoint(root / str(i), every=1, keep_last_k=0, background=mode[0],
                                                        serialize_in_background=mode[1])]
        trainer = Trainer(model, optimizer, REGRESSION, device=device, epochs=0, scheduler=scheduler,
                          callbacks=callbacks, grad_norm_every=8, cuda_graph="auto")
        trainers[name] = (trainer, train, val)

    def run_trainer(name: str):
        trainer, train, val = trainers[name]

        def run() -> float:
            trainer.epochs += epochs
            return timed(lambda: trainer.fit(train, val), device) / epochs  # fit returns flushed

        return run

    runs = {name: run_trainer(name) for name in trainers}
    for run in runs.values():  # warm-up
        run()
    samples = alternate(runs, repeats)
    losses = {name: [h["val_loss"] for h in t.history] for name, (t, _, _) in trainers.items()}
    same = all(v == losses["no checkpoints"] for v in losses.values())
    base = median(samples["no checkpoints"])
    rows = [[name, device.type, epochs, median(samples[name]), f"{median(samples[name]) / base:.3f}",
             spread(samples[name])] for name in samples]
    table(["variant", "device", "epochs/sample", "s/epoch (median)", "vs no checkpoints", "IQR"], rows)
    sync, background, _ = (median(samples[n]) for n in list(variants)[1:])
    print(f"{repeats} alternating samples per variant; losses {'identical' if same else 'DIFFER'}")
    print(f"sync / background s/epoch = {sync / background:.3f}")
    finish(background / base, CHECKPOINT_TARGET)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs per timed sample (default 3 for "
                   "the default task, 1 for the wide MLP)")
    p.add_argument("--checkpoints", action="store_true",
                   help="measure per-epoch checkpoint writes (sync vs background) instead")
    args = p.parse_args()
    device = pick_device(args.device, args.threads)
    repeats = args.repeats or (3 if args.quick else 31)
    if args.checkpoints:
        header("Per-epoch checkpoints: on the training thread vs the background writer", device)
        checkpoints(device, args.epochs or 3, args.repeats or (3 if args.quick else 15), args.quick)
        return
    workloads = [(DEFAULT_TASK, args.epochs or (1 if args.quick else 3)),
                 (Workload("wide MLP (4x512)", nodes=512), args.epochs or 1)]
    if args.quick:
        workloads = [(Workload(w.name, nodes=w.nodes, n_samples=1000), e) for w, e in workloads]

    header("Trainer overhead vs a hand-written loop", device)
    rows, worst = [], 0.0
    for workload, epochs in workloads:
        samples, ratios, diff, steps = measure(workload, device, epochs, repeats)
        ratio = median(ratios["trainer"])
        worst = max(worst, ratio)
        print(f"{workload.name}: trainer / trainer with track_grad_norm=False = "
              f"{median(ratios.pop('grad norm cost')):.3f}")
        for name in ratios:
            label = workload.name if name == "trainer" else f"{workload.name}, {name}"
            rows.append([label, device.type, steps, median(samples["hand-written"]),
                         median(samples[name]), f"{median(ratios[name]):.3f}", spread(ratios[name]),
                         "identical" if diff == 0 else f"max rel. diff {diff:.1e}"])
        lightning = None
        if not args.quick:
            try:
                lightning = lightning_reference(workload, device, epochs, repeats)
            except Exception as error:  # a reference row only: report and go on
                print(f"lightning reference failed: {type(error).__name__}: {error}")
        if lightning is not None:
            rows.append([f"{workload.name}, lightning.Trainer (reference)", device.type, steps,
                         median(samples["hand-written"]), lightning,
                         f"{lightning / median(samples['hand-written']):.3f}", "-", "-"])
    table(["workload", "device", "steps/epoch", "hand-written s/epoch", "trainer s/epoch",
           "ratio", "IQR", "losses"], rows)
    print(f"{repeats} alternating samples per loop; ratio = median of paired trainer/hand-written ratios")
    finish(worst if math.isfinite(worst) else float("inf"), TARGET)


if __name__ == "__main__":
    main()
