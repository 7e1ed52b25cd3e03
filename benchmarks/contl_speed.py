#!/usr/bin/env python
"""Training throughput, inference throughput and peak memory of ConTL (and its ablations / token mode), plus the
cost of the DE feature pipeline, on random data.

    python benchmarks/contl_speed.py                          # batch 128 (the paper's), CPU
    python benchmarks/contl_speed.py --device cuda --precision bf16
    python benchmarks/contl_speed.py --variants full no_lstm tokens

Train step: forward + cross-entropy backward + Adam step on a (B, 62, 5) batch (windows/s, median of ``--steps``).
Inference: forward of ``--eval-batch`` windows under no_grad (windows/s). Peak memory: CUDA max allocated, or the
growth of the peak RSS on CPU. DE: seconds of 62-channel 200 Hz EEG turned into DE windows per second of compute
(256-point STFT, 1 s Hann windows, five bands). Prints a markdown table.
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

from datamodules.eeg_features import differential_entropy  # noqa: E402
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_time, peak_memory_mb  # noqa: E402
from lightning_modules.contl import ConTL  # noqa: E402

VARIANTS = {"full": {}, "no_cnn": {"use_cnn": False}, "no_transformer": {"use_transformer": False},
            "no_lstm": {"use_lstm": False}, "tokens": {"seq_mode": "tokens"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--variants", nargs="+", default=["full", "no_lstm", "tokens"], choices=list(VARIANTS))
    parser.add_argument("--de-seconds", type=int, default=240)
    args = parser.parse_args()
    device = args.device
    autocast = (torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    print(f"| device | precision | variant | params | train windows/s (batch {args.batch_size}) | "
          f"inference windows/s (batch {args.eval_batch}) | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name in args.variants:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        base = 0.0 if device.startswith("cuda") else peak_memory_mb(device)
        net = ConTL(num_classes=4, **VARIANTS[name]).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
        x = torch.randn(args.batch_size, 62, 5, device=device)
        y = torch.randint(0, 4, (args.batch_size,), device=device)

        def train_step():
            with autocast:
                loss = F.cross_entropy(net(x).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        net.train()
        train = args.batch_size / median_time(train_step, device, args.steps)
        xe = torch.randn(args.eval_batch, 62, 5, device=device)
        net.eval()

        def infer():
            with torch.no_grad(), autocast:
                net(xe)

        inference = args.eval_batch / median_time(infer, device, args.steps)
        peak = peak_memory_mb(device) - base
        params = sum(p.numel() for p in net.parameters())
        print(f"| {device} | {args.precision} | {name} | {params:,} | {train:,.0f} | {inference:,.0f} | {peak:.0f} |")
    eeg = np.random.default_rng(0).standard_normal((62, 200 * args.de_seconds))
    start = time.perf_counter()
    differential_entropy(eeg, 200.0)
    seconds = time.perf_counter() - start
    print(f"\nDE pipeline (CPU, numpy/scipy): {args.de_seconds / seconds:,.0f} s of 62-channel 200 Hz EEG per second")


if __name__ == "__main__":
    main()
