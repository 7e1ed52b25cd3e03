#!/usr/bin/env python
"""Training throughput, inference latency and peak memory of ThyroidFAE's Fusion AutoEncoder (stage 1) and of
the latent -> classifier step of stage 2, on random data.

    python benchmarks/thyroid_fae_speed.py                         # 512 x 512, batch 1 (the paper's), CPU
    python benchmarks/thyroid_fae_speed.py --size 128 --width-mult 0.25 --backbone resnet18 --input-size 64
    python benchmarks/thyroid_fae_speed.py --device cuda

Stage 1: forward + weighted MSE (1, 0.5, 0.05) backward + Adam step (RoIs/s); inference: the latent of one RoI
(ms, median). Stage 2: latent -> min-max -> resize -> classifier forward + BCE backward + Adam step (RoIs/s).
Peak memory: CUDA max allocated, or the growth of the peak RSS on CPU. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import peak_memory_mb, sync  # noqa: E402
from lightning_modules.thyroid_fae import FusionAutoencoder, _build_classifier, ClassifierInput, minmax_per_image  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--backbone", default="efficientnet_b4")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--cm-batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = args.device
    base = peak_memory_mb(device)

    fae = FusionAutoencoder(width_mult=args.width_mult).to(device)
    optimizer = torch.optim.Adam(fae.parameters(), lr=1e-4)
    x = torch.rand(args.batch_size, 3, args.size, args.size, device=device)
    times = []
    for step in range(args.steps + 1):
        sync(device)
        start = time.perf_counter()
        outputs = fae(x)
        loss = sum(w * F.mse_loss(o, x[:, i:i + 1]) for i, (w, o) in enumerate(zip((1.0, 0.5, 0.05), outputs)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        if step:
            times.append(time.perf_counter() - start)
    fae_train = args.batch_size / statistics.median(times)
    fae_peak = peak_memory_mb(device) - (0 if device.startswith("cuda") else base)
    fae.eval()
    latency = []
    with torch.no_grad():
        for _ in range(args.steps + 1):
            sync(device)
            start = time.perf_counter()
            latent = fae.encode(x[:1])
            sync(device)
            latency.append(time.perf_counter() - start)
    latent_ms = 1000 * statistics.median(latency[1:])

    classifier = _build_classifier(args.backbone, 2, None, 0.0, (1e-4, 1e-3)).to(device)
    prepare = ClassifierInput(args.input_size, "train").to(device).train()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-4)
    maps = latent.expand(args.cm_batch_size, -1, -1, -1).contiguous()
    target = F.one_hot(torch.randint(0, 2, (args.cm_batch_size,), device=device), 2).float()
    times = []
    for step in range(args.steps + 1):
        sync(device)
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(classifier(prepare(minmax_per_image(maps))), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync(device)
        if step:
            times.append(time.perf_counter() - start)
    cm_train = args.cm_batch_size / statistics.median(times)
    params = sum(p.numel() for p in fae.parameters())
    print(f"| device | input | FAE params | FAE train RoIs/s (batch {args.batch_size}) | latent ms/RoI | "
          f"FAE peak MB | {args.backbone} train RoIs/s (batch {args.cm_batch_size}, {args.input_size}) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {device} | {args.size} | {params:,} | {fae_train:.2f} | {latent_ms:.1f} | {fae_peak:.0f} | {cm_train:.1f} |")


if __name__ == "__main__":
    main()
