#!/usr/bin/env python
"""Training throughput and inference latency of the UNet-GCN and SFRSeg-Net networks (and ablations).

    python benchmarks/unet_gcn_sfrseg_speed.py                 # default set, CPU threads = all cores
    python benchmarks/unet_gcn_sfrseg_speed.py --device cuda --repeats 20

Training: images/s of a full step (forward, BCE + Dice loss, backward, Adam) at the paper's batch
size (16) and input size (UNet-GCN 1x256x256, SFRSeg-Net 3x128x128). Inference: ms per image at batch 1
(eval mode, no grad). Prints a markdown table. Median over ``--repeats`` timed steps after warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.losses.segmentation import SegmentationLoss  # noqa: E402
from lightning_modules.sfrseg_net import SFRSegNet  # noqa: E402
from lightning_modules.unet_gcn import UNetGCN  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

MODELS = {
    "UNet-GCN (A, k=7)": (lambda: UNetGCN(gcn_position="skip"), (1, 256, 256)),
    "UNet (no GCN)": (lambda: UNetGCN(gcn_position=None), (1, 256, 256)),
    "UNet-GCN (C, k=7)": (lambda: UNetGCN(gcn_position="conv"), (1, 256, 256)),
    "SFRSeg-Net (IEWA-DWT)": (lambda: SFRSegNet(pool="iewa_dwt"), (3, 128, 128)),
    "SFRSeg-Net (max pool)": (lambda: SFRSegNet(pool="max"), (3, 128, 128)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    device = torch.device(args.device)
    loss_fn = SegmentationLoss(1.0, 1.0)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, batch {args.batch_size}")
    print("| model | input | parameters | train images/s (batch %d) | inference ms/image (batch 1) |" % args.batch_size)
    print("|---|---|---|---|---|")
    for name in args.models:
        build, shape = MODELS[name]
        torch.manual_seed(0)
        net = build().to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
        images = torch.rand(args.batch_size, *shape, device=device)
        masks = (torch.rand(args.batch_size, 1, *shape[1:], device=device) > 0.8).float()

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            loss_fn(net(images), masks).backward()
            optimizer.step()

        net.train()
        step = time_it(train_step, device, args.warmup, args.repeats)
        net.eval()
        single = images[:1]
        with torch.no_grad():
            latency = time_it(lambda: net(single), device, args.warmup, max(args.repeats, 5))
        print(f"| {name} | {'x'.join(map(str, shape))} | {count_parameters(net):,} | "
              f"{args.batch_size / step:.1f} | {1000 * latency:.1f} |", flush=True)


if __name__ == "__main__":
    main()
