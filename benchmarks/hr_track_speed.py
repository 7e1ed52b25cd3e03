#!/usr/bin/env python
"""HR-TRACK speed: rPPG-TCN and MR-TCN training / inference throughput (in 4 s clips per second), the joint (stage 3)
step on whole videos, peak memory, and the clip pipeline's rate (ROI mask + filters + top-20 selection per clip,
from a cached record), on the current machine.

    python benchmarks/hr_track_speed.py                              # CPU, UBFC-sized clips (30 fps, 120 frames)
    python benchmarks/hr_track_speed.py --device cuda --videos 32 --clips 59

Prints a markdown table. Timings are medians after one warm-up step (benchmarks/timing.py).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_time, peak_memory_mb  # noqa: E402
from datamodules.rppg import ROI_LANDMARKS, ClipSettings, VideoRecord, video_clips  # noqa: E402
from lightning_modules.hr_track import MRTCN, RPPGTCN, HRTrackTask  # noqa: E402
from lightning_modules.losses.rppg import neg_pearson_loss  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def _batch(videos: int, clips: int, frames: int, fps: float, device) -> dict:
    t = torch.arange(frames, device=device) / fps
    bpm = torch.empty(videos, clips, device=device).uniform_(55, 120)
    pulse = torch.sin(2 * torch.pi * bpm[..., None] / 60 * t)
    signal = torch.randn(videos, clips, 38, frames, device=device)
    signal[:, :, :20] += pulse[:, :, None]
    return {"signal": signal, "pulse": pulse, "target": bpm,
            "valid": torch.ones(videos, clips, dtype=torch.bool, device=device),
            "num_clips": torch.full((videos,), clips, device=device), "sample_rate": torch.full((videos,), fps,
                                                                                              device=device)}


def pipeline_rate(fps: float, seconds: float = 60.0, grid: int = 30) -> float:
    """Clips per second through the per-clip pipeline on a synthetic cached record (grid x grid blocks)."""
    import time

    rng = np.random.default_rng(0)
    frames = int(seconds * fps)
    landmarks = np.zeros((frames, 68, 2), np.float32)
    landmarks[:, list(ROI_LANDMARKS)] = np.array([[20, 20], [280, 20], [280, 280], [20, 280]] * 4)
    record = VideoRecord(grid=(100 + rng.normal(0, 1, (frames, grid, grid))).astype(np.float32), origin=(0, 0),
                         block=10, landmarks=landmarks, aus=np.zeros((frames, 18), np.float32),
                         pulse=rng.normal(size=frames).astype(np.float32), fps=fps)
    start = time.perf_counter()
    clips = video_clips(record, ClipSettings())
    return len(clips["target"]) / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--videos", type=int, default=8, help="videos per batch (the card's 8)")
    parser.add_argument("--clips", type=int, default=29, help="clips per video (COHFACE 29, UBFC ~59)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step outside a Trainer
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    frames = int(4 * args.fps)
    torch.manual_seed(0)
    batch = _batch(args.videos, args.clips, frames, args.fps, device)
    n = args.videos * args.clips
    task = HRTrackTask(RPPGTCN(), MRTCN(), stage_epochs=(0, 0, 1)).to(device)
    optimizer = torch.optim.Adam(task.parameters(), lr=1e-3, weight_decay=1e-4)
    x, ref = batch["signal"].flatten(0, 1), batch["pulse"].flatten(0, 1)

    def stage1():
        optimizer.zero_grad(set_to_none=True)
        neg_pearson_loss(task.pulse_net(x), ref).backward()
        optimizer.step()

    def stage3():  # the joint step: rPPG-TCN, soft HR, MR-TCN per video, both losses
        optimizer.zero_grad(set_to_none=True)
        task.training_step(batch, 0).backward()
        optimizer.step()

    task.train()
    t1 = median_time(stage1, device, args.steps)
    t3 = median_time(stage3, device, args.steps)
    task.eval()
    with torch.inference_mode():
        t_pulse = median_time(lambda: task.pulse_net(x), device, args.steps)
        t_full = median_time(lambda: task(batch), device, args.steps)
        t_one = median_time(lambda: task.pulse_net(x[:1]), device, args.steps * 4)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads; batch {args.videos} videos x "
          f"{args.clips} clips of {frames} frames ({n} clips)\n")
    print("| step | clips/s | ms/batch |")
    print("|---|---|---|")
    print(f"| rPPG-TCN train (stage 1, {count_parameters(task.pulse_net):,} params) | {n / t1:,.0f} | {1e3 * t1:.1f} |")
    print(f"| joint train (stage 3: soft HR + MR-TCN, {count_parameters(task):,} params) | {n / t3:,.0f} | "
          f"{1e3 * t3:.1f} |")
    print(f"| rPPG-TCN inference | {n / t_pulse:,.0f} | {1e3 * t_pulse:.1f} |")
    print(f"| HR-TRACK inference (pulse, HR/SNR, MR-TCN) | {n / t_full:,.0f} | {1e3 * t_full:.1f} |")
    print(f"| one clip, rPPG-TCN (latency) | {1 / t_one:,.0f} | {1e3 * t_one:.2f} |")
    print(f"\npeak memory: {peak_memory_mb(device):.0f} MB "
          f"({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    print(f"clip pipeline (30 x 30 block grid, ROI, filters, top-20; one process): {pipeline_rate(args.fps):.0f} "
          "clips/s")


if __name__ == "__main__":
    main()
