#!/usr/bin/env python
"""DST (micro-expression) speed: the preprocessing of one clip (17 frames: magnification + long-term Farneback flow,
done once per clip and cached), the network's training step (cross-entropy + SGD, clips/s), inference throughput
(clips/s at the batch size) and latency (ms for one clip), and peak memory.

    python benchmarks/dst_mer_speed.py                                      # the paper's DST (N = 3 + TT), 112 px
    python benchmarks/dst_mer_speed.py --width 0.25 --n-spatial 1 --tt-depth 1 --heads 4 --size 64   # the demo
    python benchmarks/dst_mer_speed.py --device cuda --precision bf16-mixed --batch-size 16

Random clips (B, 17, 6, S, S) for the network; the preprocessing runs on a random 17-frame clip at ``--size``.
Data loading is not timed (the datamodules hold the preprocessed clips in memory). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import add_speed_args, autocast, median_time, peak_memory_mb, training_step  # noqa: E402
from datamodules.micro_expression import prepare_clip  # noqa: E402
from lightning_modules.dst_mer import DST  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--n-spatial", type=int, default=3)
    parser.add_argument("--tt-depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--num-classes", type=int, default=5)
    add_speed_args(parser, batch_size=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    frames = np.random.default_rng(0).integers(0, 255, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    prep = median_time(lambda: prepare_clip(frames, args.frames // 2, args.frames, args.size), torch.device("cpu"), 3)

    network = DST(num_classes=args.num_classes, num_frames=args.frames, img_size=args.size, width=args.width,
                  n_spatial_encoders=args.n_spatial, spatial_heads=args.heads, tt_depth=args.tt_depth,
                  tt_heads=args.heads).to(device)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(args.batch_size, args.frames, 6, args.size, args.size, device=device)
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
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else peak_memory_mb("cpu") - rss0)
    print(f"| network | clip | device | params | preprocess ms (1 clip, CPU) | train clips/s (batch {args.batch_size}) "
          f"| inference clips/s (batch {args.batch_size}) | latency ms (1 clip) | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    name = f"DST N={args.n_spatial} TT={args.tt_depth}" + (f" x{args.width:g}" if args.width != 1 else "")
    print(f"| {name} | {args.frames}x{args.size}px | {args.device} {args.precision} | {count_parameters(network):,} | "
          f"{1e3 * prep:.0f} | {args.batch_size / train:.3g} | {args.batch_size / batch:.3g} | {1e3 * one:.0f} | "
          f"{peak:.0f} |")


if __name__ == "__main__":
    main()
