#!/usr/bin/env python
"""Training throughput, inference throughput, single-window latency and peak memory of Coglier's three backbones
(CCNN, TSception, DGCNN) at the sizes of SEED (62 channels, 400-sample windows at 200 Hz) and GAMEEMO (14 channels,
256 samples at 128 Hz), plus the cost of the per-window DE / PSD features, on random data.

    python benchmarks/coglier_speed.py                              # batch 64 (the paper's), CPU
    python benchmarks/coglier_speed.py --device cuda --precision bf16 --models ccnn

Train step: forward + cross-entropy backward + Adam step (windows/s, median of ``--steps``). Inference: forward of
``--eval-batch`` windows under no_grad (windows/s); latency: one window (ms, median). Peak memory: CUDA max allocated,
or the growth of the peak RSS on CPU. Features: 2-s windows per second of compute (Butterworth order 5 + lfilter
per window and band for DE; Hann FFT for PSD). Prints markdown tables.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.eeg_features import window_band_de, window_band_psd  # noqa: E402
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_time, peak_memory_mb  # noqa: E402
from lightning_modules.coglier import CCNN, DGCNN, TSception  # noqa: E402

DATASETS = {"seed": (62, 400, 200.0, 3), "gameemo": (14, 256, 128.0, 9)}


def build(model: str, dataset: str):
    electrodes, samples, fs, classes = DATASETS[dataset]
    if model == "ccnn":
        return CCNN(classes), (4, 9, 9)
    if model == "tsception":
        return TSception(classes, num_electrodes=electrodes, sampling_rate=fs), (electrodes, samples)
    return DGCNN(classes, num_electrodes=electrodes), (electrodes, 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--models", nargs="+", default=["ccnn", "tsception", "dgcnn"])
    parser.add_argument("--datasets", nargs="+", default=["seed", "gameemo"], choices=list(DATASETS))
    parser.add_argument("--feature-windows", type=int, default=512)
    args = parser.parse_args()
    device = args.device
    autocast = (torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    print(f"| device | precision | model | data | params | train windows/s (batch {args.batch_size}) | "
          f"inference windows/s (batch {args.eval_batch}) | latency ms (1 window) | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for dataset in args.datasets:
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            base = 0.0 if device.startswith("cuda") else peak_memory_mb(device)
            net, shape = build(model, dataset)
            net = net.to(device)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=1e-4)
            x = torch.randn(args.batch_size, *shape, device=device)
            y = torch.randint(0, DATASETS[dataset][3], (args.batch_size,), device=device)

            def train_step():
                with autocast:
                    loss = F.cross_entropy(net(x).float(), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            net.train()
            train = args.batch_size / median_time(train_step, device, args.steps)
            net.eval()
            xe, x1 = torch.randn(args.eval_batch, *shape, device=device), torch.randn(1, *shape, device=device)

            def infer(inputs):
                with torch.no_grad(), autocast:
                    net(inputs)

            inference = args.eval_batch / median_time(lambda: infer(xe), device, args.steps)
            latency = 1000 * median_time(lambda: infer(x1), device, 3 * args.steps)
            peak = peak_memory_mb(device) - base
            params = sum(p.numel() for p in net.parameters())
            print(f"| {device} | {args.precision} | {model} | {dataset} | {params:,} | {train:,.0f} | "
                  f"{inference:,.0f} | {latency:.2f} | {peak:.0f} |")
    print("\n| features | data | windows/s |\n|---|---|---|")
    rng = np.random.default_rng(0)
    for dataset in args.datasets:
        electrodes, samples, fs, _ = DATASETS[dataset]
        windows = rng.standard_normal((args.feature_windows, electrodes, samples))
        for name, fn in (("DE", window_band_de), ("PSD", window_band_psd)):
            start = time.perf_counter()
            fn(windows, fs)
            print(f"| {name} | {dataset} | {args.feature_windows / (time.perf_counter() - start):,.0f} |")


if __name__ == "__main__":
    main()
