#!/usr/bin/env python
"""GER-STGAT speed: training throughput, inference latency/throughput and peak memory of the graph networks.

    python benchmarks/ger_stgat_speed.py                                      # CPU, fp32, the paper's sizes
    python benchmarks/ger_stgat_speed.py --device cuda --precision bf16-mixed --batch-size 64
    python benchmarks/ger_stgat_speed.py --face-dim 128 --frame-dim 64 --hidden 64   # the stand-in's size

Networks (random cached features: faces (B, T, 8, Df) with ~70 % of the slots present, frames (B, T, Dh); T = 20 as
VGAF): the full model (parallel facial graph, 180 nodes, + causal frame graph, fused), the facial branch on each
graph (parallel, serial, parallel without pseudo nodes: Table 3) and the holistic branch alone.
- training: forward + the two cross-entropies' backward + Adam step on a batch (videos/s, after warm-up);
- inference: one video, eval mode, no grad (median ms), and a batch (videos/s);
- peak memory: CUDA max allocated, or the process's peak RSS on CPU (an upper bound).
The frozen feature extractors (VGG-16 per face, ResNet-50 per frame) run once offline and are not timed here.
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, peak_memory_mb, step_times, training_step  # noqa: E402
from lightning_modules.ger_stgat import GERSTGAT  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def networks(args):
    common = dict(face_dim=args.face_dim, frame_dim=args.frame_dim, hidden=args.hidden)
    return {"GER-STGAT (fused)": lambda: GERSTGAT(**common),
            "facial, parallel": lambda: GERSTGAT(**common, branches="facial"),
            "facial, serial": lambda: GERSTGAT(**common, branches="facial", graph_mode="serial"),
            "facial, parallel w/o p": lambda: GERSTGAT(**common, branches="facial", graph_mode="parallel_no_pseudo"),
            "holistic": lambda: GERSTGAT(**common, branches="holistic")}


def bench(name, make, args) -> list:
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = make().to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    b, t = args.batch_size, args.frames
    x = {"faces": torch.randn(b, t, 8, args.face_dim, device=device),
         "face_mask": torch.rand(b, t, 8, device=device) > 0.3,
         "frames": torch.randn(b, t, args.frame_dim, device=device)}
    one = {k: v[:1] for k, v in x.items()}
    y = torch.randint(0, 3, (b,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    train_step = training_step(lambda: sum(F.cross_entropy(v.float(), y) for v in net.branch_logits(x).values()),
                               optimizer, device, args.precision, module=net)
    train = step_times(train_step, device, args.steps, args.warmup)
    net.eval()
    with torch.no_grad(), autocast(device, args.precision):
        latency = statistics.median(step_times(lambda: net(one), device, args.steps, args.warmup))
        batch = step_times(lambda: net(x), device, args.steps, args.warmup)
    return [name, f"{count_parameters(net):,}", f"{b * len(train) / sum(train):.1f}", f"{latency * 1e3:.1f}",
            f"{b * len(batch) / sum(batch):.1f}", f"{peak_memory_mb(device):.0f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--face-dim", type=int, default=4096)
    parser.add_argument("--frame-dim", type=int, default=2048)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None, help="network names to run (default: all)")
    args = parser.parse_args()
    print(f"device {args.device}, {args.precision}, batch {args.batch_size}, T {args.frames}, 8 faces, face/frame "
          f"features {args.face_dim}/{args.frame_dim}, GAT width {args.hidden}, torch threads {torch.get_num_threads()}\n")
    print("| network | params | train videos/s | 1-video latency ms | batch inference videos/s | peak MB |")
    print("|---|---|---|---|---|---|")
    for name, make in networks(args).items():
        if args.only and name not in args.only:
            continue
        print("| " + " | ".join(bench(name, make, args)) + " |", flush=True)


if __name__ == "__main__":
    main()
