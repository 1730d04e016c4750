"""Scaling with several processes (DistributedDataParallel): training samples/s of the wide MLP
of benchmarks/gpu.py on N processes against 1 process, the same global batch, measured in the
same run, for each N asked (`--nproc 2,4,8`).

Each row is a process group started for the measurement (torch.multiprocessing, one process per
GPU with NCCL; on the CPU, gloo), training with the app's own Trainer and per-rank batches
(`TensorBatches(..., rank, world_size)`): `app.models.MLP` with 4 hidden layers of 4096 (in and
out 4096), batch 4096 (global), MSE, AdamW (fused on CUDA), data resident on each device; on
CUDA with the app's speed options `precision=bf16-mixed` and `compile=true` (`--precision`,
`--compile`). A sample of a row is one group: a warm-up epoch, then `--epochs` epochs timed on
rank 0 between two barriers. The rows' samples alternate (1, 2, 4, then 4, 2, 1, ...); figures
are medians. Each row's efficiency is its speed-up over N (ideal: 100%); the targets are 90% at
N=2 and 85% at N>=4. The last line's ratio is the efficiency of the largest N, against its target.
`--nproc 1` measures the one-process row alone (a machine with one GPU): its last line is
ratio=1.

    python benchmarks/ddp.py --nproc 2,4          # N GPUs (needs the largest N), or --device cpu: gloo
"""
from __future__ import annotations

from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from common import finish, header, median, parser, pick_device, spread, table

import os  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

def target_efficiency(world: int) -> float:
    """At least 90% of linear scaling at N=2, 85% at N=4 and more."""
    return 1.0 if world == 1 else 0.9 if world == 2 else 0.85


def worker(rank: int, world: int, device_type: str, init_file: str, threads: int | None, width: int,
           layers: int, batch: int, steps_per_epoch: int, epochs: int, precision: str, compile: bool,
           results) -> None:
    from app.data import Split, TensorBatches
    from app.models import MLP
    from app.train.tasks import TASKS
    from app.train.trainer import Trainer

    if threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{init_file}",
                                rank=rank, world_size=world, timeout=timedelta(minutes=10))
    try:
        torch.manual_seed(0)
        model = MLP(width, width, nodes=width, layers=layers, activation="gelu", dropout=0.0).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        g = torch.Generator(device=device).manual_seed(0)
        n = batch * steps_per_epoch
        x = torch.randn(n, width, device=device, generator=g)
        y = torch.randn(n, width, device=device, generator=g)
        # shuffle=False: each rank's part of a batch is a view of device memory: the step alone is measured.
        train = TensorBatches(Split(x, y), batch, device=device, shuffle=False, rank=rank, world_size=world)
        trainer = Trainer(model, optimizer, TASKS["regression"], device=device, epochs=1,
                          precision=precision, compile=compile, track_grad_norm=False)
        trainer.fit(train, None)  # warm-up: allocations, NCCL/gloo connections, DDP buckets
        trainer.epochs += epochs
        if world > 1:
            dist.barrier()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        trainer.fit(train, None)  # its one host read per epoch waits for the device
        if world > 1:
            dist.barrier()
        seconds = time.perf_counter() - started
        if rank == 0:
            results.put(n * epochs / seconds)
    finally:
        if world > 1:
            dist.destroy_process_group()


def measure(world: int, device: torch.device, args, steps_per_epoch: int, epochs: int) -> float:
    """Samples/s of one group of `world` processes."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    with tempfile.TemporaryDirectory() as scratch:
        init_file = os.path.join(scratch, "init")
        mp.start_processes(worker, nprocs=world, start_method="spawn", join=True, args=(
            world, device.type, init_file, args.threads, args.width, args.layers, args.batch, steps_per_epoch,
            epochs, args.precision, args.compile, results))
    return results.get()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nproc", default=None, help="process counts of the scaled rows, comma-separated "
                   "(default: every GPU, or 2 on the CPU)")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4096, help="the global batch")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per sample")
    p.add_argument("--precision", default=None, help="trainer precision (default: bf16-mixed on CUDA, 32 on CPU)")
    p.add_argument("--compile", default=None, choices=["true", "false"],
                   help="torch.compile the model (default: true on CUDA, false on CPU)")
    args = p.parse_args()
    device = pick_device(args.device, args.threads)
    cuda = device.type == "cuda"
    gpus = torch.cuda.device_count() if cuda else 0
    args.precision = args.precision or ("bf16-mixed" if cuda else "32")
    args.compile = (args.compile or ("true" if cuda else "false")) == "true"
    try:
        sizes = sorted({int(n) for n in args.nproc.split(",")}) if args.nproc else [gpus if cuda else 2]
    except ValueError:
        raise SystemExit(f"--nproc takes process counts separated by commas (e.g. 2,4), not {args.nproc!r}")
    if not sizes or sizes[0] < 1 or (cuda and sizes[-1] > gpus):
        raise SystemExit(f"ddp.py: --nproc {args.nproc or sizes[-1]} needs that many GPUs for --device cuda; "
                         f"this machine has {gpus}")
    if args.quick:  # the script's own code paths, tiny: checks it runs, its figures mean nothing
        args.width, args.batch = 64, 32
    repeats = args.repeats or (1 if args.quick else 5)
    steps_per_epoch = 2 if args.quick else 8
    epochs = args.epochs or (1 if args.quick else 3)
    worlds = [1] + [n for n in sizes if n > 1]

    header(f"DDP scaling: MLP {args.layers}x{args.width}, global batch {args.batch}, precision {args.precision}, "
           f"compile {args.compile}, processes {', '.join(map(str, worlds))} ({'NCCL' if cuda else 'gloo'})", device)
    samples: dict[int, list[float]] = {world: [] for world in worlds}
    for r in range(repeats):  # alternate, reversing the order every second round
        for world in (worlds if r % 2 == 0 else worlds[::-1]):
            samples[world].append(measure(world, device, args, steps_per_epoch, epochs))
    base = median(samples[1])
    rows = [[f"{world} process{'es' if world > 1 else ''}", f"{median(v):.1f}", f"{median(v) / base:.2f}x",
             f"{median(v) / base / world:.0%}", f"{target_efficiency(world):.0%}", spread(v)]
            for world, v in samples.items()]
    table(["processes", "samples/s", "speed-up", "of linear", "target", "IQR"], rows)
    print(f"{repeats} alternating samples per row; {steps_per_epoch} steps per epoch, {epochs} timed epochs per sample")
    largest = worlds[-1]
    finish(median(samples[largest]) / base / largest, target_efficiency(largest), better="higher")


if __name__ == "__main__":
    main()
