#!/usr/bin/env python
"""SpecSlice-ConvLSTM speed: training step (forward + 0.5 BCE + 0.5 Dice backward + Adam) and inference
throughput (images/s, fixed batch, no I/O), peak memory, parameters and MACs (``count_macs``: torch's flop counter
on the meta device, at the benchmarked size) for the U-Net (60 bands), U-Net + SS, SS-SISOM and SS-DIDOM, and the
Table 4 baselines FPN and DeepLabV3+ (60 bands).

    python benchmarks/ss_convlstm_speed.py                                  # CPU, small sizes
    python benchmarks/ss_convlstm_speed.py --device cuda --size 256 320 --batch 4 --backbone resnet34 --width 1
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import autocast, peak_memory_mb, step_times  # noqa: E402
from lightning_modules.losses.segmentation import SegmentationLoss  # noqa: E402
from lightning_modules.ss_convlstm import SSConvLSTM, count_macs  # noqa: E402
from lightning_modules.ss_convlstm_baselines import DeepLabV3PlusSeg, FPNSeg  # noqa: E402

MODELS = {
    "U-Net (60 bands)": dict(slicing=False, lstm_positions=()),
    "U-Net + SS": dict(lstm_positions=()),
    "SS-SISOM": dict(merge="sisom"),
    "SS-DIDOM": dict(merge="didom"),
}
BASELINES = {"FPN (60 bands)": FPNSeg, "DeepLabV3+ (60 bands)": DeepLabV3PlusSeg}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=2, default=(64, 96))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="32-true")
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = (args.batch, 60, *args.size)
    decoder = (256, 128, 64, 32, 16) if args.width == 1 else (64, 32, 16, 16, 8)
    print(f"device {device}, input {'x'.join(map(str, shape))}, {args.backbone} width {args.width}, "
          f"{args.precision}, median of {args.steps} steps after 1 warm-up\n")
    print("| model | params | GMACs / image | train img/s | infer img/s | peak MB |")
    print("|---|---|---|---|---|---|")
    loss_fn = SegmentationLoss(0.5, 0.5, num_classes=1)
    networks = {name: lambda kw=kwargs: SSConvLSTM(backbone=args.backbone, width=args.width, decoder_channels=decoder,
                                                   **kw) for name, kwargs in MODELS.items()}
    networks.update({name: lambda cls=cls: cls(backbone=args.backbone, width=args.width)
                     for name, cls in BASELINES.items()})
    for name, build in networks.items():
        net = build().to(device)
        macs = count_macs(net, (1, *shape[1:])) / 1e9
        opt = torch.optim.Adam(net.parameters(), lr=3e-4)
        x = torch.randn(*shape, device=device)
        y = (torch.rand(args.batch, 1, *args.size, device=device) > 0.8).float()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def train():
            with autocast(device, args.precision):
                loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def infer():
            with torch.no_grad(), autocast(device, args.precision):
                net(x)

        net.train()
        t_train = statistics.median(step_times(train, device, args.steps))
        net.eval()
        t_infer = statistics.median(step_times(infer, device, args.steps))
        params = sum(p.numel() for p in net.parameters())
        print(f"| {name} | {params / 1e6:.2f} M | {macs:.2f} | {args.batch / t_train:.2f} | "
              f"{args.batch / t_infer:.2f} | {peak_memory_mb(device):.0f} |", flush=True)


if __name__ == "__main__":
    main()
