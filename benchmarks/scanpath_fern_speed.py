#!/usr/bin/env python
"""Scanpath angle-fern speed: training throughput, inference latency / throughput and peak memory per network.

    python benchmarks/scanpath_fern_speed.py                                   # CPU, fp32, all variants
    python benchmarks/scanpath_fern_speed.py --device cuda --batch-size 32 --samples 750

Variants on random-walk gaze recordings of ``--samples`` samples (GazeCom 2 s at 250 Hz = 500):

- ``ferns 4096x5``: the angle-fern layer alone at the paper's size (forward; backward = Algorithm 2's update);
- ``paper``: 4,096 x 5 ferns + ResNet-12 64-160-320-640 (the Table 2 network);
- ``demo``: 256 x 4 ferns + ResNet-12 8-16-32-64 (the stand-in config);
- ``lstm``: the "*LSTM" baseline (2 x 128).

Training: forward + cross-entropy backward + SGD step (recordings/s, after warm-up); inference: one recording, eval,
no grad (median ms) and a batch of ``--infer-batch`` (recordings/s); peak memory: CUDA max allocated during training,
or the peak RSS of the process on CPU (an upper bound, cumulative over the variants run so far).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_time, peak_memory_mb, sync  # noqa: E402
from lightning_modules.blocks.angle_ferns import AngleFernHistogram  # noqa: E402
from lightning_modules.scanpath_fern import ScanpathFernNet, ScanpathRNN  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

CLASSES = 10


class FernsOnly(torch.nn.Module):
    """The layer with a linear read-out, so the training step back-propagates into the ranges."""

    def __init__(self):
        super().__init__()
        self.ferns = AngleFernHistogram(4096, 5)
        self.fc = torch.nn.Linear(4096 * 32, CLASSES)

    def forward(self, xy):
        return self.fc(self.ferns(xy).flatten(1))


VARIANTS = {
    "ferns 4096x5 (+ linear)": FernsOnly,
    "paper: ferns 4096x5 + ResNet-12 64-640": lambda: ScanpathFernNet(CLASSES),
    "demo: ferns 256x4 + ResNet-12 8-64": lambda: ScanpathFernNet(CLASSES, n_sets=256, set_size=4,
                                                                  widths=(8, 16, 32, 64)),
    "lstm 2x128": lambda: ScanpathRNN(CLASSES, cell="lstm"),
}


def gaze(batch: int, samples: int, device) -> torch.Tensor:
    return torch.randn(batch, samples, 2, device=device).cumsum(dim=1)


def bench(make, args) -> list:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = make().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = gaze(args.batch_size, args.samples, device), torch.randint(0, CLASSES, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
    memory = peak_memory_mb(device)
    net.eval()
    one, big = x[:1], gaze(args.infer_batch, args.samples, device)
    with torch.no_grad():
        latency = median_time(lambda: net(one), device, args.steps, args.warmup)
        sync(device)
        t = time.perf_counter()
        net(big)
        sync(device)
        infer_rate = args.infer_batch / (time.perf_counter() - t)
    return [f"{count_parameters(net):,}", f"{train_rate:.3g}", f"{latency * 1e3:.4g}",
            f"{infer_rate:.3g}", f"{memory:.0f}"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = parser.parse_args(argv)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}, fp32, train batch {args.batch_size}, {args.samples} samples per recording\n")
    memory = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    print(f"| variant | params | train rec/s | latency 1 rec (ms) | inference rec/s (batch {args.infer_batch}) | {memory} |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        print(f"| {variant} | " + " | ".join(bench(VARIANTS[variant], args)) + " |", flush=True)


if __name__ == "__main__":
    main()
