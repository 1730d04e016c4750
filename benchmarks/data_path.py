"""Data path: the default task's epoch (train + validation) through the app's Trainer with
device-resident `TensorBatches`, vs the original template's loop (`DataLoader(TensorDataset)`,
batches copied to the device one at a time, `loss.item()` after every batch).

Rows: the Trainer as the app configures it by default (device-resident data, fused AdamW);
the same with the template's optimizer (`optimizer.fused=false`: the data path alone); with
host-resident pinned data (`trainer.data_on_device=false`); and on CUDA with
`trainer.cuda_graph=true` (the step replayed as CUDA graphs, which is what removes the launch
overhead of 32 tiny steps).
Samples alternate between all rows; each is `--epochs` epochs; the ratio of a row is the
median of its paired ratios against the template loop. The target applies to the app's
defaults on the CPU and to the cuda_graph row on a GPU.

    python benchmarks/data_path.py               # cuda if available, else cpu
    python benchmarks/data_path.py --device cpu
"""
from __future__ import annotations

from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from common import DEFAULT_TASK, Workload, alternate, finish, header, median, parser, pick_device, spread, table, timed

import torch  # noqa: E402

from app.train.tasks import TASKS  # noqa: E402
from app.train.trainer import Trainer  # noqa: E402
from baselines import TemplateLoop  # noqa: E402

TARGETS = {"cpu": 0.5, "cuda": 0.2}
REGRESSION = TASKS["regression"]


def trainer_variant(workload: Workload, data, device, total_epochs: int, epochs: int, *,
                    on_device: bool = True, fused: bool = False, **options):
    model = workload.model(seed=0).to(device)
    optimizer = workload.optimizer(model, **({"fused": True} if fused else {}))
    scheduler = workload.scheduler(optimizer, total_epochs)
    train, val = workload.batches(data, device, on_device=on_device)
    trainer = Trainer(model, optimizer, REGRESSION, device=device, epochs=0, scheduler=scheduler, **options)

    def run() -> float:
        trainer.epochs += epochs
        return timed(lambda: trainer.fit(train, val), device) / epochs

    return run, trainer


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs per timed sample")
    args = p.parse_args()
    device = pick_device(args.device, args.threads)
    repeats = args.repeats or (3 if args.quick else 15)
    epochs = args.epochs or (1 if args.quick else 3)
    workload = Workload(DEFAULT_TASK.name, n_samples=1000) if args.quick else DEFAULT_TASK
    total = epochs * (repeats + 1)
    data = workload.data()

    header("Data path: device-resident batches vs DataLoader(TensorDataset)", device)
    model = workload.model(seed=0)
    optimizer = workload.optimizer(model)
    template = TemplateLoop(model, optimizer, workload.scheduler(optimizer, total), REGRESSION.loss,
                            (data.train.x, data.train.y), (data.val.x, data.val.y),
                            workload.batch_size, device)

    def run_template() -> float:
        return timed(lambda: template.run(epochs), device) / epochs

    variants = {"template loop: DataLoader(TensorDataset), .item() per batch": run_template}
    target_row = "trainer, app defaults (data on device, fused AdamW)"
    variants[target_row], _ = trainer_variant(workload, data, device, total, epochs, fused=True)
    variants["trainer, optimizer.fused=false (the template's optimizer)"], _ = trainer_variant(
        workload, data, device, total, epochs)
    variants["trainer, data_on_device=false (pinned host data)"], _ = trainer_variant(
        workload, data, device, total, epochs, fused=True, on_device=False)
    graphed = None
    if device.type == "cuda":
        target_row = "trainer, cuda_graph=true"
        variants[target_row], graphed = trainer_variant(workload, data, device, total, epochs,
                                                        fused=True, cuda_graph=True)

    for run in variants.values():  # warm-up (and, with cuda_graph, the captures)
        run()
    samples = alternate(variants, repeats)
    base = samples[next(iter(variants))]
    rows = []
    for name, values in samples.items():
        ratios = [v / b for v, b in zip(values, base)]
        rows.append([name, device.type, median(values), f"{median(ratios):.3f}", spread(values)])
    table(["loop", "device", "s/epoch", "ratio vs template", "IQR"], rows)
    steps = len(workload.batches(data, device)[0])
    print(f"{workload.name}: {steps} steps of batch {workload.batch_size} + validation per epoch; "
          f"{repeats} alternating samples of {epochs} epoch(s) per row")
    if graphed is not None:
        g = graphed.graphed
        print(f"cuda_graph: {g.captures} captures, enabled={g.enabled}")
    ratio = median([v / b for v, b in zip(samples[target_row], base)])
    print(f"target row: {target_row}")
    finish(ratio, TARGETS[device.type])


if __name__ == "__main__":
    main()
