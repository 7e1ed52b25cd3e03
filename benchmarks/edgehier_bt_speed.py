#!/usr/bin/env python
"""EdgeHier-BT speed: the edge pipeline per image (and Canny alone: the paper's 0.00079 s), the hierarchy's
training step (both stages' CE + Adam, images/s) and inference (ms per image, both stages), peak memory.

    python benchmarks/edgehier_bt_speed.py                              # resnet50, 256 px, CPU
    python benchmarks/edgehier_bt_speed.py --device cuda --precision 16-mixed --batch-size 32
    python benchmarks/edgehier_bt_speed.py --backbone resnet18 --size 64 --steps 3   # the demo's size

Random data (a stand-in slice for the pipeline); data loading is not timed (the datamodule caches edge maps).
Prints a markdown table. The paper's figures (Colab V100, Keras): classification 0.225 s per image over 920.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.edge_pipeline import EdgePipeline  # noqa: E402
from datamodules.standins.synthetic_brain_mri import synthetic_brain_slice  # noqa: E402
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import autocast, sync  # noqa: E402
from lightning_modules.edgehier_bt import HierarchicalClassificationTask, HierarchicalClassifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    device = torch.device(args.device)

    slice_ = synthetic_brain_slice(2, np.random.default_rng(0), 512).astype(np.int16) * 4  # a 512x512 int16 slice
    pipeline = EdgePipeline(size=args.size)
    times, canny = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        stages = pipeline.stages(slice_)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cv2.Canny(stages["morphology"], 100, 200)
        canny.append(time.perf_counter() - t0)

    task = HierarchicalClassificationTask(HierarchicalClassifier(args.backbone)).to(device)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    y = torch.randint(0, 3, (args.batch_size,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    task.train()
    step_times = []
    for step in range(args.steps + 1):
        sync(device)
        t0 = time.perf_counter()
        with autocast(device, args.precision):
            loss = sum(task.stage_losses(x, y))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sync(device)
        if step:  # the first is warm-up
            step_times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)
    task.eval()
    infer = []
    with torch.no_grad(), autocast(device, args.precision):
        one = x[:1]
        for i in range(6):
            sync(device)
            t0 = time.perf_counter()
            task(one)
            sync(device)
            if i:
                infer.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in task.network.stage1.parameters())
    print(f"| backbone | size | device | params / stage | edge pipeline ms/img | Canny ms/img | train img/s "
          f"(batch {args.batch_size}) | inference ms/img | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.backbone} | {args.size} | {args.device} {args.precision} | {params:,} | "
          f"{1e3 * statistics.median(times):.2f} | {1e3 * statistics.median(canny):.3f} | "
          f"{args.batch_size / statistics.median(step_times):.1f} | {1e3 * statistics.median(infer):.1f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
