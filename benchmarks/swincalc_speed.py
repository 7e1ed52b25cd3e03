#!/usr/bin/env python
"""SwinCalc speed: RetinaNet (or ``--head reppoints`` / ``deformable_detr``) on a Swin (or ResNet) backbone,
training step (the head's losses, AdamW; images/s),
inference throughput (images/s with box decoding and NMS) and latency (ms for one image), peak memory (CPU: max RSS;
CUDA: max allocated).

    python benchmarks/swincalc_speed.py                                          # Swin-B at the paper's 1280 x 800
    python benchmarks/swincalc_speed.py --backbone swin_t --height 640 --width 400 --batch-size 1 --steps 2
    python benchmarks/swincalc_speed.py --tiny --height 256 --width 160          # the demo's network and size
    python benchmarks/swincalc_speed.py --device cuda --precision bf16-mixed
    python benchmarks/swincalc_speed.py --head deformable_detr --backbone swin_t --height 320 --width 200 --batch-size 1

Random images with one random box each; data loading is not timed. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import autocast, median_time, peak_memory_mb  # noqa: E402
from lightning_modules.swincalc import RetinaNetCalcDetector, SwinCalcDetector  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

TINY = dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], stochastic_depth_prob=0.0)


def build(args) -> torch.nn.Module:
    if args.head != "retinanet":
        if args.tiny:
            raise SystemExit("--tiny is the RetinaNet demo's network")
        return SwinCalcDetector(args.head, args.backbone)
    if args.tiny:
        return RetinaNetCalcDetector("swin_t", backbone_args=TINY, fpn_channels=64, out_indices=[0, 1, 2],
                                     extra_levels="none", anchor_sizes=[[12, 16, 20], [24, 32, 40], [48, 64, 80]],
                                     score_thresh=0.01, detections_per_img=20)
    return RetinaNetCalcDetector(args.backbone, score_thresh=0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="swin_b")
    parser.add_argument("--head", default="retinanet", help="a key of swincalc.DETECTION_HEADS")
    parser.add_argument("--tiny", action="store_true", help="the demo's tiny Swin, FPN 64 on strides 4-16")
    parser.add_argument("--height", type=int, default=1280)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    detector = build(args).to(device)
    optimizer = torch.optim.AdamW(detector.parameters(), lr=1.25e-5, weight_decay=0.05)
    images = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    targets = []
    for _ in range(args.batch_size):
        xy = torch.rand(2) * torch.tensor([args.width * 0.8, args.height * 0.8])
        size = 16 + torch.rand(2) * 48
        targets.append({"boxes": torch.cat([xy, xy + size])[None].to(device),
                        "labels": torch.zeros(1, dtype=torch.long, device=device)})

    def train_step():
        detector.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, args.precision):
            loss = sum(detector(images, targets).values())
        loss.backward()
        optimizer.step()

    def infer(batch):
        detector.eval()
        with torch.no_grad(), autocast(device, args.precision):
            detector(batch)

    train_s = median_time(train_step, device, args.steps)
    infer_s = median_time(lambda: infer(images), device, args.steps)
    latency_s = median_time(lambda: infer(images[:1]), device, args.steps)
    name = "tiny Swin (demo)" if args.tiny else args.backbone
    print(f"| model | params | input | batch | device | precision | train img/s | infer img/s | latency ms | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    names = {"retinanet": "RetinaNet", "reppoints": "RepPoints", "deformable_detr": "Deformable DETR"}
    head = names.get(args.head, args.head)
    print(f"| {head} / {name} | {count_parameters(detector) / 1e6:.2f}M | {args.height}x{args.width} | "
          f"{args.batch_size} | {args.device} | {args.precision} | {args.batch_size / train_s:.2f} | "
          f"{args.batch_size / infer_s:.2f} | {1e3 * latency_s:.0f} | {peak_memory_mb(device):.0f} |")


if __name__ == "__main__":
    main()
