#!/usr/bin/env python
"""Engagement ST-GCN speed: training throughput, inference latency/throughput and peak memory.

    python benchmarks/engagement_stgcn_speed.py                         # CPU, fp32, EngageNet clip shape
    python benchmarks/engagement_stgcn_speed.py --device cuda --precision bf16-mixed
    python benchmarks/engagement_stgcn_speed.py --frames 64 --channels 16 32 64   # the stand-in's size

Networks (random data, (B, 3, T, 78) landmark clips; T = 300 = 10 s at 30 fps by default): the paper's ST-GCN
(4 classes, with the edge-importance masks M), the ordinal network (frozen trunk + 3 heads: training updates only
the heads), and Table 3's LSTM and TCN baselines.

- training: forward + loss backward + Adam step on a batch (clips/s, after warm-up);
- inference: one clip, eval mode, no grad (median ms over the timed runs: the paper's "0.8 ms per sample" on its
  GPU), and a batch (clips/s);
- peak memory: CUDA max allocated over training and inference, or the process's peak RSS on CPU (an upper bound).
Also the synthetic stand-in's clip generation rate (clips/s). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import autocast, sync  # noqa: E402
from lightning_modules.engagement_stgcn import (EngagementSTGCN, LandmarkLSTM, LandmarkTCN,  # noqa: E402
                                                OrdinalSTGCN, ordinal_targets)
from lightning_modules.utils import count_parameters  # noqa: E402


def networks(args):
    channels = tuple(args.channels)
    residual = (False,) + (True,) * (len(channels) - 1)
    stgcn = lambda: EngagementSTGCN(4, channels=channels, residual=residual)
    return {"ST-GCN": stgcn, "ordinal ST-GCN": lambda: OrdinalSTGCN(4, trunk=stgcn()),
            "LSTM (Table 3)": lambda: LandmarkLSTM(4), "TCN (Table 3)": lambda: LandmarkTCN(4)}


def bench(name, make, args) -> list:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = make().to(device)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    x = torch.randn(args.batch_size, 3, args.frames, 78, device=device)
    y = torch.randint(0, 4, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    net.train()
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with autocast(device, args.precision):
            if isinstance(net, OrdinalSTGCN):
                loss = F.binary_cross_entropy_with_logits(net.binary_logits(x).float(), ordinal_targets(y, 4))
            else:
                loss = F.cross_entropy(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    train_rate = args.steps * args.batch_size / (time.perf_counter() - start)
    net.eval()
    times = []
    with torch.no_grad(), autocast(device, args.precision):
        for step in range(args.warmup + args.steps):
            sync(device)
            t0 = time.perf_counter()
            net(x[:1])
            sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - t0)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            net(x)
        sync(device)
        infer_rate = args.steps * args.batch_size / (time.perf_counter() - t0)
    memory = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    total = sum(p.numel() for p in net.parameters())
    return [name, f"{total:,}", f"{count_parameters(net):,}", f"{train_rate:.1f}", f"{statistics.median(times) * 1e3:.1f}",
            f"{infer_rate:.1f}", f"{memory:.0f}"]


def standin_rate(frames: int, count: int = 64) -> float:
    from datamodules.standins.synthetic_faces import engagement_landmark_clips

    start = time.perf_counter()
    engagement_landmark_clips([i % 4 for i in range(count)], frames)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--channels", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="network names to run (default: all)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(torch.get_num_threads())
    print(f"device {args.device}, {args.precision}, batch {args.batch_size}, clips (3, {args.frames}, 78), "
          f"ST-GCN widths {args.channels}, torch threads {torch.get_num_threads()}\n")
    print("| network | params | trainable | train clips/s | 1-clip latency ms | batch inference clips/s | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name, make in networks(args).items():
        if args.only and name not in args.only:
            continue
        print("| " + " | ".join(bench(name, make, args)) + " |", flush=True)
    print(f"\nsynthetic stand-in clips ({args.frames} frames): {standin_rate(args.frames):.0f} clips/s")


if __name__ == "__main__":
    main()
