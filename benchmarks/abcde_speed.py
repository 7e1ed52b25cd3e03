#!/usr/bin/env python
"""ABCDE analysis speed: each debasing transform per image (at the paper's 768 px, once per image: cached), the
classifier's training step (cross-entropy + Adam, images/s), inference throughput (images/s at the batch size) and
latency (ms for one image), Grad-CAM per image, and peak memory.

    python benchmarks/abcde_speed.py                                           # EfficientNet-B3 300 px, CPU
    python benchmarks/abcde_speed.py --backbone resnet152 --size 256 --device cuda --precision 16-mixed --batch-size 32
    python benchmarks/abcde_speed.py --backbone resnet18 --width 0.5 --size 64 --batch-size 32   # the demo

Random images for the networks; the transforms run on a synthetic ABCD lesion resized to ``--pre-size``. Data
loading is not timed (the datamodule caches the debased images). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import add_speed_args, autocast, median_time, peak_memory_mb, training_step  # noqa: E402
from datamodules.debasing import DEBASINGS, debase, item_rng  # noqa: E402
from datamodules.standins.synthetic_lesions import abcd_lesion_image  # noqa: E402
from lightning_modules.abcde import ABCDETask  # noqa: E402
from lightning_modules.backbones import ImageClassifier  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_b3")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--pre-size", type=int, default=768)
    parser.add_argument("--num-classes", type=int, default=9)
    add_speed_args(parser, batch_size=4)
    args = parser.parse_args()
    device = torch.device(args.device)

    image, mask, _ = abcd_lesion_image(np.random.default_rng(0), 0, 96)
    image = cv2.resize(image, (args.pre_size, args.pre_size), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (args.pre_size, args.pre_size), interpolation=cv2.INTER_NEAREST)
    debase_ms = {name: 1e3 * median_time(lambda: debase(name, image, mask, item_rng(0, "x")), torch.device("cpu"), 5)
                 for name in DEBASINGS if name != "none"}
    print(f"debasing at {args.pre_size} px, ms per image: "
          + ", ".join(f"{name} {ms:.1f}" for name, ms in debase_ms.items()))

    network = ImageClassifier(args.backbone, args.num_classes, width=args.width).to(device)
    task = ABCDETask(network, num_classes=args.num_classes).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-5)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = peak_memory_mb("cpu")

    train_step = training_step(lambda: F.cross_entropy(network(x).float(), y), optimizer, device, args.precision,
                               module=network)
    train = median_time(train_step, device, args.steps)
    network.eval()
    with torch.no_grad(), autocast(device, args.precision):
        batch = median_time(lambda: network(x), device, args.steps)
        one = median_time(lambda: network(x[:1]), device, args.steps)
    cam = median_time(lambda: task.gradcam(x[:1]), device, args.steps)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_memory_mb("cpu") - rss0)
    print(f"| backbone | size | device | params | train img/s (batch {args.batch_size}) | inference img/s "
          f"(batch {args.batch_size}) | latency ms (1 img) | Grad-CAM ms (1 img) | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    name = args.backbone + (f" x{args.width:g}" if args.width != 1 else "")
    print(f"| {name} | {args.size} | {args.device} {args.precision} | {count_parameters(network):,} | "
          f"{args.batch_size / train:.3g} | {args.batch_size / batch:.3g} | {1e3 * one:.1f} | {1e3 * cam:.1f} | "
          f"{peak:.0f} |")


if __name__ == "__main__":
    main()
