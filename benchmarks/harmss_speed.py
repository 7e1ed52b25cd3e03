#!/usr/bin/env python
"""HarmonizedSS speed: the loss alone (BCE + Dice against BCE + Dice + 0.2 (1 - SCC)), the training step (SGD) of
UNet-R50 and TransUNet with and without the spectral term, inference throughput, single-image latency and peak
memory (CPU: process max RSS; CUDA: max allocated).

    python benchmarks/harmss_speed.py                                   # CPU: small sizes (64 px, batch 4)
    python benchmarks/harmss_speed.py --size 224 --batch-size 8 --device cuda --full   # the paper's networks

Without ``--full`` the networks are narrowed (UNet: ResNet-18 encoder; TransUNet: width 16, 2 layers, hidden 192)
so the CPU run takes seconds. Random inputs and masks; data loading is not timed. Prints markdown tables.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb  # noqa: E402
from lightning_modules.harmss import HarmonizedLoss, TransUNet, UNetR50  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def networks(full: bool, size: int):
    if full:
        return {"UNet-R50": lambda: UNetR50(3, 1), "TransUNet R50-ViT-B/16": lambda: TransUNet(3, 1, img_size=size)}
    return {"UNet-R18 (narrow)": lambda: UNetR50(3, 1, backbone="resnet18", decoder_channels=(64, 32, 16, 16, 8)),
            "TransUNet (tiny)": lambda: TransUNet(3, 1, img_size=size, width=16, units=(1, 1, 1), hidden=192, layers=2,
                                                  heads=8, mlp_dim=384, head_channels=64,
                                                  decoder_channels=(64, 32, 16, 16), gn_groups=8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--full", action="store_true", help="the paper's full-size networks")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    image = torch.rand(args.batch_size, 3, args.size, args.size, device=device)
    mask = (torch.rand(args.batch_size, 1, args.size, args.size, device=device) > 0.7).float()
    logits = torch.randn(args.batch_size, 1, args.size, args.size, device=device, requires_grad=True)
    losses = {"BCE + Dice (lambda 0)": HarmonizedLoss(0.0), "BCE + Dice + 0.2 (1 - SCC)": HarmonizedLoss(0.2)}
    loss_rows = []
    for name, loss in losses.items():
        seconds = median_time(lambda: loss(logits, mask).backward(), device, 20)
        loss_rows.append(f"| {name} | {args.size} x{args.batch_size} | {1000 * seconds:.2f} |")
    rows = []
    for net_name, build in networks(args.full, args.size).items():
        for loss_name, loss in losses.items():
            network = build().to(device)
            optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

            def train_step():
                network.train()
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, args.precision):
                    out = network(image)
                loss(out.float(), mask).backward()
                optimizer.step()

            def infer(batch):
                network.eval()
                with torch.no_grad(), autocast(device, args.precision):
                    network(batch)

            step = median_time(train_step, device, args.steps)
            batch_s = median_time(lambda: infer(image), device, args.steps)
            one_s = median_time(lambda: infer(image[:1]), device, args.steps)
            rows.append(f"| {net_name} | {loss_name} | {count_parameters(network):,} | {args.size} x{args.batch_size} | "
                        f"{args.batch_size / step:.2f} | {args.batch_size / batch_s:.2f} | {1000 * one_s:.0f} | "
                        f"{peak_memory_mb(device):.0f} |")
    print(f"HarmonizedSS speed ({device}, {args.precision})\n")
    print("| loss | input x batch | forward + backward (ms) |\n|---|---|---|")
    print("\n".join(loss_rows))
    print("\n| network | loss | params | input x batch | train images/s | infer images/s | latency 1 image (ms) "
          "| peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
