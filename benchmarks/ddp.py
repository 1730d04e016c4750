"""Scaling with several processes (DistributedDataParallel): training samples/s of the wide MLP
of benchmarks/gpu.py on N processes against 1 process, the same global batch, measured in the
same run.

Each row is a process group started for the measurement (torch.multiprocessing, one process per
GPU with NCCL; on the CPU, gloo), training with the app's own Trainer and per-rank batches
(`TensorBatches(..., rank, world_size)`): `app.models.MLP` with 4 hidden layers of 4096 (in and
out 4096), batch 4096 (global), MSE, AdamW (fused on CUDA), data resident on each device. A
sample of a row is one group: a warm-up epoch, then `--epochs` epochs timed on rank 0 between
two barriers. The rows' samples alternate (1, N, 1, N, ...); figures are medians.
The last line's ratio is samples/s at N over samples/s at 1 (ideal: N).

    python benchmarks/ddp.py --nproc 2            # N GPUs (needs N), or --device cpu: gloo
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

TARGET_EFFICIENCY = 0.9  # the target: at least 90% of linear scaling


def worker(rank: int, world: int, device_type: str, init_file: str, threads: int | None, width: int,
           layers: int, batch: int, steps_per_epoch: int, epochs: int, results) -> None:
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
                          track_grad_norm=False)
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
            epochs, results))
    return results.get()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=None, help="processes of the scaled row (default: every GPU, "
                   "or 2 on the CPU)")
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4096, help="the global batch")
    p.add_argument("--epochs", type=int, default=None, help="timed epochs per sample")
    args = p.parse_args()
    device = pick_device(args.device, args.threads)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    nproc = args.nproc or (gpus if device.type == "cuda" else 2)
    if device.type == "cuda" and (gpus < nproc or nproc < 2):
        print(f"ddp.py needs {max(nproc, 2)} GPUs for --device cuda; this machine has {gpus}")
        raise SystemExit(1)
    if args.quick:  # the script's own code paths, tiny: checks it runs, its figures mean nothing
        args.width, args.batch = 64, 32
    repeats = args.repeats or (1 if args.quick else 5)
    steps_per_epoch = 2 if args.quick else 8
    epochs = args.epochs or (1 if args.quick else 3)

    header(f"DDP scaling: MLP {args.layers}x{args.width}, global batch {args.batch}, 1 vs {nproc} processes "
           f"({'NCCL' if device.type == 'cuda' else 'gloo'})", device)
    samples: dict[int, list[float]] = {1: [], nproc: []}
    for r in range(repeats):  # alternate, starting with the other row every second round
        for world in ((1, nproc) if r % 2 == 0 else (nproc, 1)):
            samples[world].append(measure(world, device, args, steps_per_epoch, epochs))
    base = median(samples[1])
    rows = [[f"{world} process{'es' if world > 1 else ''}", f"{median(v):.1f}", f"{median(v) / base:.2f}x",
             f"{median(v) / base / world:.0%}", spread(v)] for world, v in samples.items()]
    table(["processes", "samples/s", "speed-up", "of linear", "IQR"], rows)
    print(f"{repeats} alternating samples per row; {steps_per_epoch} steps per epoch, {epochs} timed epochs per sample")
    finish(median(samples[nproc]) / base, TARGET_EFFICIENCY * nproc, better="higher")


if __name__ == "__main__":
    main()
