#!/usr/bin/env python
"""Training throughput, inference latency/throughput and peak memory of the classification backbones.

    python benchmarks/backbones_speed.py resnet18 densenet121 efficientnet_b0 --size 224 --batch-size 32
    python benchmarks/backbones_speed.py --all --device cuda --precision bf16-mixed --channels-last

Per backbone (``lightning_modules.backbones.ImageClassifier``, random weights, random data) it times:

- training: forward + cross-entropy backward + AdamW step on a batch (images/s, after warm-up);
- inference: eval mode, no grad: one image (ms, median) and a full batch (images/s);
- peak memory: CUDA max allocated during training, or the growth of the peak RSS on CPU (an upper bound;
  with several backbones on CPU each runs in its own process).

Prints a markdown table. Data loading is not timed.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.backbones import BACKBONES, ImageClassifier  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402
from benchmarks.timing import autocast, peak_memory_mb, step_times, training_step  # noqa: E402


def benchmark(name: str, args) -> str:
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = ImageClassifier(name, num_classes=args.num_classes, in_channels=args.in_channels)
    model = model.to(device, memory_format=memory_format)
    images = torch.randn(args.batch_size, args.in_channels, args.size, args.size, device=device)
    images = images.contiguous(memory_format=memory_format)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    train_step = training_step(lambda: F.cross_entropy(model(images).float(), labels), optimizer, device,
                               args.precision, module=model)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_memory_mb("cpu")
    train = step_times(train_step, device, args.steps, args.warmup)
    if device.type == "cuda":
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB (CUDA)"
    else:
        memory = f"+{peak_memory_mb('cpu') - rss_before:,.0f} MiB (RSS)"

    model.eval()
    with torch.no_grad(), autocast(device, args.precision):
        single = step_times(lambda: model(images[:1]), device, args.steps, args.warmup)
        batch = step_times(lambda: model(images), device, args.steps, args.warmup)
    return (f"| {name} | {count_parameters(model):,} | {args.size}x{args.size} | {args.batch_size} | "
            f"{args.batch_size * len(train) / sum(train):.1f} | {1000 * statistics.median(single):.1f} | "
            f"{args.batch_size * len(batch) / sum(batch):.1f} | {memory} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbones", nargs="*", default=["resnet18"], help=f"any of {', '.join(BACKBONES)}")
    parser.add_argument("--all", action="store_true", help="every backbone")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--in-channels", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--header", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = list(BACKBONES) if args.all else args.backbones
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.header:
        print(f"device {args.device}, precision {args.precision}, channels_last {args.channels_last}, "
              f"{torch.get_num_threads()} CPU threads")
        print("| backbone | parameters | input | batch | train images/s | inference ms/image | "
              "inference images/s | peak memory |")
        print("|---|---|---|---|---|---|---|---|")
    for name in names:
        if args.device == "cpu" and len(names) > 1:  # a fresh process per backbone: peak RSS is per process
            rest = [a for a in argv if a not in names and a != "--all"]
            out = subprocess.run([sys.executable, __file__, name, *rest, "--no-header"], capture_output=True,
                                 text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
        else:
            print(benchmark(name, args), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
