#!/usr/bin/env python
"""SAPM speed: the SAPM augmentation alone (images/s), the two-stream training step of the full method (SAPM +
both streams through the U-Net + BCE/Dice + consistency + guidance, SGD with nesterov momentum) against the plain
U-Net's one-stream step, inference throughput and single-image latency, and peak memory (CPU: process max RSS;
CUDA: max allocated).

    python benchmarks/sapm_speed.py                                        # CPU: the demo network at 96 px
    python benchmarks/sapm_speed.py --backbone resnet34 --width 1 --decoder 256 --size 512 --batch-size 8 --device cuda

Random inputs and multi-hot OD/OC masks; data loading is not timed. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb  # noqa: E402
from lightning_modules.sapm import (SAPMSegmentationTask, SensitivityGuidedUNet,  # noqa: E402
                                    spatial_amplitude_perturbation)
from lightning_modules.utils import count_parameters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34"])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--decoder", type=int, default=64)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(args.batch_size, 3, args.size, args.size, device=device)
    mask = (torch.rand(args.batch_size, 2, args.size, args.size, device=device) > 0.9).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    sapm_s = median_time(lambda: spatial_amplitude_perturbation(image), device, args.steps)
    for name, augmentation, sensitivity in (("SAPM + sensitivity (two streams)", "sapm", True),
                                            ("plain U-Net (one stream)", "none", False)):
        network = SensitivityGuidedUNet(args.backbone, sensitivity=sensitivity, decoder_channels=args.decoder,
                                        width=args.width)
        task = SAPMSegmentationTask(network, augmentation=augmentation, sensitivity=sensitivity).to(device)
        optimizer = torch.optim.SGD(task.parameters(), lr=0.01, momentum=0.99, nesterov=True)

        def train_step():
            task.train()
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, args.precision):
                loss = task.two_stream_losses(image, mask)["loss"]
            loss.backward()
            optimizer.step()

        def infer(batch):
            task.eval()
            with torch.no_grad(), autocast(device, args.precision):
                task(batch)

        step = median_time(train_step, device, args.steps)
        batch_s = median_time(lambda: infer(image), device, args.steps)
        one_s = median_time(lambda: infer(image[:1]), device, args.steps)
        rows.append(f"| {name} | {args.backbone} x{args.width:g}, dec {args.decoder} | {count_parameters(network):,} | "
                    f"{args.size} x{args.batch_size} | {args.batch_size / step:.2f} | "
                    f"{args.batch_size / batch_s:.2f} | {1000 * one_s:.0f} | {peak_memory_mb(device):.0f} |")
    print(f"SAPM augmentation alone: {args.batch_size / sapm_s:.0f} images/s ({args.size} px, {device}, "
          f"{args.precision})\n")
    print("| training | network | params | input x batch | train images/s | infer images/s | latency 1 image (ms) "
          "| peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
