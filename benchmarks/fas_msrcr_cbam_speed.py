#!/usr/bin/env python
"""FAS-MSRCR-GAN speed: the MSRCR preprocessing (ms per frame, OpenCV, once per frame in prepare_data), the GAN
training step (G + C update on lambda_GAN BCE + lambda_L1 L1 + BCE, then the D update; Adam; frames/s), inference
throughput (frames/s at the batch size: depth map + live probability), single-frame latency, parameters and peak
memory (CPU: process max RSS; CUDA: max allocated).

    python benchmarks/fas_msrcr_cbam_speed.py           # the demo (tiny CNN, 64 px) and the paper's network at 128 px
    python benchmarks/fas_msrcr_cbam_speed.py --paper-size 256 --batch-size 16 --device cuda --precision bf16-mixed

Random inputs (data loading is not timed: the datamodules read cached crops). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb  # noqa: E402
from lightning_modules.blocks.retinex import MSRCRParams, msrcr  # noqa: E402
from lightning_modules.fas_msrcr_cbam import (DepthGenerator, DepthPatchDiscriminator,  # noqa: E402
                                             FaceAntiSpoofingGANTask, LatentClassifier)
from lightning_modules.losses.reconstruction import discriminator_loss  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def build(variant: str) -> FaceAntiSpoofingGANTask:
    if variant == "paper":
        g = DepthGenerator(encoder="efficientnet_b4", decoder_channels=(256, 128))
        d = DepthPatchDiscriminator()
        c = LatentClassifier(448)
    else:
        g = DepthGenerator(encoder="tiny_cnn", decoder_channels=(32, 16))
        d = DepthPatchDiscriminator(channels=(16, 32, 64), kernel_size=3)
        c = LatentClassifier(64)
    return FaceAntiSpoofingGANTask(g, d, c, optimizer=partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paper-size", type=int, default=128,
                        help="input side of the paper's network (256 in the paper)")
    parser.add_argument("--demo-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for variant, size in (("demo", args.demo_size), ("paper", args.paper_size)):
        frame = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
        sigmas = MSRCRParams(sigmas=tuple(s * size / 256 for s in (15.0, 80.0, 250.0)))
        msrcr_ms = 1000 * median_time(lambda: msrcr(frame, sigmas), "cpu", args.steps)
        task = build(variant).to(device)
        opt_g = torch.optim.Adam(task.generator_parameters(), lr=1e-3, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(task.discriminator_parameters(), lr=1e-3, betas=(0.5, 0.999))
        depth = size // 8
        batch = {"image": torch.rand(args.batch_size, 6, size, size, device=device),
                 "target": torch.rand(args.batch_size, 1, depth, depth, device=device),
                 "label": torch.randint(0, 3, (args.batch_size,), device=device)}

        def train_step():
            task.train()
            with autocast(device, args.precision):
                out = task.generator_losses(batch, 0)
            opt_g.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt_g.step()
            with autocast(device, args.precision):
                x = batch["image"]
                d_loss = discriminator_loss(task.discriminator(task._pair(x, batch["target"])),
                                            task.discriminator(task._pair(x, out["fake"].detach())))
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()

        def infer(x):
            task.eval()
            with torch.no_grad(), autocast(device, args.precision):
                task(x)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train_s = median_time(train_step, device, args.steps)
        infer_s = median_time(lambda: infer(batch["image"]), device, args.steps)
        latency_s = median_time(lambda: infer(batch["image"][:1]), device, args.steps)
        params = count_parameters(task.generator) + count_parameters(task.classifier)
        rows.append((variant, size, f"{params:,}", f"{count_parameters(task.discriminator):,}", f"{msrcr_ms:.1f}",
                     f"{args.batch_size / train_s:.1f}", f"{args.batch_size / infer_s:.1f}", f"{1000 * latency_s:.1f}",
                     f"{peak_memory_mb(device):.0f}"))
    print(f"device {device}, precision {args.precision}, batch {args.batch_size}, median of {args.steps} steps\n")
    print("| network | input px | G + C params | D params | MSRCR ms/frame | train frames/s | inference frames/s "
          "| latency ms (1 frame) | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
