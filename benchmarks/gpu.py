"""GPU throughput: a wide MLP trained by the app's Trainer, as achieved TFLOP/s and as a share
of the bf16 matrix-multiply rate of the same GPU, measured in the same run.

The model is `app.models.MLP` with 4 hidden layers of 4096 (in 4096, out 4096, GELU, about
84M parameters), batch 4096, MSE, fused AdamW, data resident on the GPU. Rows: fp32 eager
(the baseline), TF32 (`trainer.matmul_precision=high`), `trainer.precision=bf16-mixed`, plus
`trainer.compile=true`, plus `trainer.cuda_graph=true`, and bf16 + compile with
`trainer.accumulate_grad_batches=4` (an optimizer step every 4 batches). FLOPs are the matrix
multiplies one training step executes, counted by `torch.utils.flop_counter` (forward, and the
weight and input gradients the backward computes). The peak is a bf16 8192^3 matmul on random
data. Samples of every row (and of the peak) alternate; figures are medians.

    python benchmarks/gpu.py
"""
from __future__ import annotations

from common import ROOT  # noqa: F401  (puts the repository on sys.path)
from common import alternate, finish, header, median, parser, pick_device, spread, table, timed

import torch  # noqa: E402

from app.data import Split, TensorBatches  # noqa: E402
from app.models import MLP  # noqa: E402
from app.train.tasks import TASKS  # noqa: E402
from app.train.trainer import Trainer  # noqa: E402

TARGET = 0.65
HAND_WRITTEN = "hand-written step, bf16 autocast + torch.compile (reference)"


def step_flops(width: int, layers: int, batch: int) -> int:
    """Matmul FLOPs of one training step (forward + backward), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    model = MLP(width, width, nodes=width, layers=layers, activation="gelu", dropout=0.0).to("meta")
    x = torch.empty(batch, width, device="meta")
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.mse_loss(model(x), torch.empty(batch, width, device="meta")).backward()
    return counter.get_total_flops()


def matmul_peak(device, n: int = 8192, reps: int = 10):
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=out)

    def run() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            torch.mm(a, b, out=out)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / reps

    return run, 2 * n**3


def variant(width, layers, batch, steps_per_epoch, epochs, device, **options):
    torch.manual_seed(0)
    model = MLP(width, width, nodes=width, layers=layers, activation="gelu", dropout=0.0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator(device=device).manual_seed(0)
    n = batch * steps_per_epoch
    x = torch.randn(n, width, device=device, generator=g)
    y = torch.randn(n, width, device=device, generator=g)
    # shuffle=False: batches are views of device memory, so the step alone is measured.
    train = TensorBatches(Split(x, y), batch, device=device, shuffle=False)
    trainer = Trainer(model, optimizer, TASKS["regression"], device=device, epochs=0, **options)

    def run() -> float:
        trainer.epochs += epochs
        return timed(lambda: trainer.fit(train, None), device)

    return run, trainer


def hand_written(width, layers, batch, steps_per_epoch, epochs, device):
    """The bf16 + compile step written by hand (a reference for the Trainer's rows)."""
    torch.manual_seed(0)
    model = MLP(width, width, nodes=width, layers=layers, activation="gelu", dropout=0.0).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    compiled = torch.compile(model, backend=COMPILE_BACKEND())
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch * steps_per_epoch, width, device=device, generator=g)
    y = torch.randn(batch * steps_per_epoch, width, device=device, generator=g)

    def steps():
        for _ in range(epochs):
            for i in range(0, x.shape[0], batch):
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = torch.nn.functional.mse_loss(compiled(x[i:i + batch]), y[i:i + batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    return lambda: timed(steps, device)


def COMPILE_BACKEND() -> str:
    import app.train.acceleration

    return app.train.acceleration.COMPILE_BACKEND


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--no-compile", action="store_true", help="leave out the torch.compile rows")
    args = p.parse_args()
    device = pick_device(args.device, args.threads)
    if device.type != "cuda":
        print("gpu.py measures a CUDA GPU; none here")
        if args.quick:  # the script's own code paths, on the CPU, for the test suite
            import app.train.acceleration

            app.train.acceleration.COMPILE_BACKEND = "aot_eager"  # inductor takes ~20 s per graph on a CPU
            args.width, args.batch = 64, 32
        else:
            raise SystemExit(1)
    repeats = args.repeats or (2 if args.quick else 7)
    width, layers, batch = args.width, args.layers, args.batch
    steps_per_epoch, epochs = (2, 1) if args.quick else (8, 3)

    header(f"GPU throughput: MLP {layers}x{width}, batch {batch}", device)
    flops = step_flops(width, layers, batch)
    configs = {
        "fp32 eager (baseline)": dict(),
        "fp32, matmul_precision=high (TF32)": dict(matmul_precision="high"),
        "bf16-mixed": dict(precision="bf16-mixed"),
    }
    if not args.no_compile:
        configs.update({
            "bf16-mixed + compile": dict(precision="bf16-mixed", compile=True),
            "bf16-mixed + compile, accumulate_grad_batches=4":
                dict(precision="bf16-mixed", compile=True, accumulate_grad_batches=4),
        })
        if device.type == "cuda":  # cuda_graph=true is a config error anywhere else
            configs["bf16-mixed + compile + cuda_graph"] = dict(precision="bf16-mixed", compile=True,
                                                                cuda_graph=True)
    variants, trainers = {}, {}
    for name, options in configs.items():
        variants[name], trainers[name] = variant(width, layers, batch, steps_per_epoch, epochs, device, **options)
    if not args.no_compile:
        variants[HAND_WRITTEN] = hand_written(width, layers, batch, steps_per_epoch, epochs, device)
    for run in variants.values():
        run()  # warm-up: compiling and capturing happen here
        run()
    peak_flops = None
    if device.type == "cuda":
        variants["bf16 matmul 8192^3 (peak)"], peak_flops = matmul_peak(device)
    samples = alternate(variants, repeats)

    steps = steps_per_epoch * epochs
    peak = median([peak_flops / s for s in samples.pop("bf16 matmul 8192^3 (peak)")]) if peak_flops else None
    rows, rates = [], {}
    base = median(samples["fp32 eager (baseline)"])
    for name, values in samples.items():
        rate = median([flops * steps / s for s in values])
        rates[name] = rate
        last = trainers[name].history[-1]["train_loss"] if name in trainers else float("nan")
        rows.append([name, f"{median(values) / steps * 1e3:.3f}", f"{rate / 1e12:.1f}",
                     f"{100 * rate / peak:.1f}%" if peak else "-", f"{base / median(values):.2f}x",
                     spread(values), f"{last:.4f}"])
    if peak:
        rows.append(["bf16 matmul 8192^3 (peak)", "-", f"{peak / 1e12:.1f}", "100%", "-", "-", "-"])
    table(["configuration", "ms/step", "TFLOP/s", "of bf16 peak", "speed-up vs fp32", "IQR",
           "train loss (last epoch)"], rows)
    params = sum(p.numel() for p in MLP(width, width, nodes=width, layers=layers, activation="gelu", dropout=0.0).parameters())
    print(f"{flops / 1e9:.1f} GFLOP per step (matmuls, forward + backward); {steps} steps per sample; "
          f"{repeats} alternating samples per row")
    print(f"(6 x parameters x batch, the usual MFU count, is {6 * params * batch / 1e9:.1f} GFLOP: it "
          f"includes the first layer's input gradient, which is never computed; shares by it are "
          f"{6 * params * batch / flops:.3f}x those above)")
    for name in ("bf16-mixed + compile + cuda_graph",):
        if name in trainers and trainers[name].graphed is not None:
            g = trainers[name].graphed
            print(f"{name}: {g.captures} graph captures, enabled={g.enabled}")
    candidates = [n for n in rates if n.startswith("bf16-mixed + compile") and "accumulate" not in n]
    best = max(candidates or rates, key=rates.get)
    print(f"target row: the best of the bf16-mixed + compile rows without accumulation: {best}")
    finish(rates[best] / peak if peak else 0.0, TARGET, better="higher")


if __name__ == "__main__":
    main()
