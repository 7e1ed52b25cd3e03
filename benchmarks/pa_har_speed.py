#!/usr/bin/env python
"""PA-HAR speed: training throughput, inference latency/throughput, peak memory, and the window loader's rate.

    python benchmarks/pa_har_speed.py                              # CPU, fp32, all variants
    python benchmarks/pa_har_speed.py --device cuda --precision bf16-mixed --batch-size 64

Per network variant (ResNet baseline, PA gate/vector, SE, CBAM, NAM, the zhang_resnet backbone) and input shape
(UCI-HAR 128 x 9, MHEALTH 100 x 23, UniMiB-SHAR 151 x 3), on random data:

- training: forward + cross-entropy backward + Adam step on a batch (windows/s, after warm-up);
- inference: one window, eval mode, no grad (median ms), and a batch of 256 (windows/s);
- peak memory: CUDA max allocated during the training steps, or the peak RSS of the process on CPU (an upper bound).

Also the time-series base's loader (synthetic IMU stand-in, num_workers 0): windows/s out of the DataLoader.
Prints markdown tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb, sync  # noqa: E402
from lightning_modules.pa_har import PAHAR  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

VARIANTS = {
    "baseline": dict(attention="none"),
    "pa (gate)": dict(),
    "pa (vector)": dict(sse_mode="vector"),
    "se": dict(attention="se"),
    "cbam": dict(attention="cbam"),
    "nam": dict(attention="nam"),
    "pa, zhang_resnet": dict(backbone="zhang_resnet"),
}
SHAPES = {"UCI-HAR 128x9 (6)": (128, 9, 6), "MHEALTH 100x23 (13)": (100, 23, 13), "UniMiB 151x3 (17)": (151, 3, 17)}


def bench(kwargs, shape, args) -> list:
    device = torch.device(args.device)
    length, channels, classes = shape
    torch.manual_seed(0)
    net = PAHAR(num_classes=classes, **kwargs).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, length, channels, device=device)
    y = torch.randint(0, classes, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, args.precision):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
    memory = peak_memory_mb(device)
    net.eval()
    one, big = x[:1], torch.randn(256, length, channels, device=device)
    with torch.no_grad(), autocast(device, args.precision):
        latency = median_time(lambda: net(one), device, args.steps, args.warmup)
        net(big)
        sync(device)
        t = time.perf_counter()
        for _ in range(3):
            net(big)
        sync(device)
        infer_rate = 3 * 256 / (time.perf_counter() - t)
    return [f"{count_parameters(net):,}", f"{train_rate:.0f}", f"{latency * 1e3:.2f}",
            f"{infer_rate:.0f}", f"{memory:.0f}"]


def loader_rate(args) -> float:
    from datamodules.standins.synthetic_imu import SyntheticIMUDataModule

    dm = SyntheticIMUDataModule(subjects=10, batch_size=args.batch_size, num_workers=0)
    dm.setup("fit")
    start, count = time.perf_counter(), 0
    for _ in range(3):
        for batch in dm.train_dataloader():
            count += len(batch["label"])
    return count / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    args = parser.parse_args(argv)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, precision {args.precision}, batch {args.batch_size}\n")
    memory = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"| variant | input | params | train windows/s | latency 1 window (ms) | inference windows/s | {memory} |")
    print("|---|---|---|---|---|---|---|")
    for variant in args.variants:
        for shape in args.shapes:
            print(f"| {variant} | {shape} | " + " | ".join(bench(VARIANTS[variant], SHAPES[shape], args)) + " |",
                  flush=True)
    print(f"\nloader (synthetic IMU, 3000 windows of 128 x 9, num_workers 0): {loader_rate(args):.0f} windows/s")


if __name__ == "__main__":
    main()
