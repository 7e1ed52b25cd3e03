#!/usr/bin/env python
"""Training throughput, inference latency and peak memory of segmentation networks, from their configs.

    python benchmarks/segmentation_speed.py experiments/saca_unet/busi.yaml experiments/saca_unet/busi/unext.yaml
    python benchmarks/segmentation_speed.py experiments/saca_unet/isic2018.yaml experiments/saca_unet/isic2018/*.yaml --device cuda --precision bf16-mixed
    python benchmarks/segmentation_speed.py experiments/unet_gcn/busi.yaml --size 256 --batch-size 16

Any config whose model has a ``network`` (SegmentationTask and subclasses) works. The image size is the
config's ``data.init_args.image_size`` unless ``--size`` is given; input channels are the network's
first convolution's. Per config it times, on random data:

- training: forward + BCE-with-logits backward + Adam step on a batch (images/s, after warm-up);
- inference: one image, eval mode, no grad (ms per image, median);
- peak memory: CUDA max allocated during the training steps, or the growth of the peak RSS on CPU
  (an upper bound that includes allocator caching; each config then runs in its own process).

Prints a markdown table. Data loading is not timed (see the DataModules' ``preload`` option).
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
from jsonargparse import ArgumentParser
from lightning.pytorch import LightningModule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def build_network(config: dict) -> torch.nn.Module:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", fail_untyped=False)
    model = parser.instantiate(parser.parse_object({"model": config["model"]})).model
    return model.network


def image_size(config: dict, override: int | None) -> tuple[int, int]:
    if override:
        return override, override
    size = ((config.get("data") or {}).get("init_args") or {}).get("image_size", 256)
    return (size, size) if isinstance(size, int) else tuple(size)


def in_channels(network: torch.nn.Module) -> int:
    first = next(m for m in network.modules() if isinstance(m, torch.nn.Conv2d))
    return first.in_channels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "32-true":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def benchmark(path: Path, args) -> str:
    config = run.resolved_config(path)  # a setting is read with its base
    device = torch.device(args.device)
    network = build_network(config).to(device)
    h, w = image_size(config, args.size)
    channels = in_channels(network)
    images = torch.randn(args.batch_size, channels, h, w, device=device)
    masks = (torch.rand(args.batch_size, 1, h, w, device=device) > 0.5).float()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

    def train_step():
        with _autocast(device, args.precision):
            logits = network(images)
            logits = logits[0] if isinstance(logits, (list, tuple)) else logits
            loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    network.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = peak_rss_mb()
    for _ in range(args.warmup):
        train_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step()
    _sync(device)
    throughput = args.steps * args.batch_size / (time.perf_counter() - start)
    if device.type == "cuda":
        memory = f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f} MiB (CUDA)"
    else:
        memory = f"+{peak_rss_mb() - rss_before:,.0f} MiB (RSS)"

    network.eval()
    single = images[:1]
    latencies = []
    with torch.no_grad(), _autocast(device, args.precision):
        for i in range(args.warmup + args.steps):
            _sync(device)
            start = time.perf_counter()
            network(single)
            _sync(device)
            if i >= args.warmup:
                latencies.append(1000 * (time.perf_counter() - start))
    return (f"| {run.experiment_name(run.composition(path))} | {count_parameters(network):,} | {h}x{w} | {args.batch_size} | {throughput:.2f} | "
            f"{statistics.median(latencies):.1f} | {memory} |")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=None, help="square input size (default: the config's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device {args.device}, precision {args.precision}, {torch.get_num_threads()} CPU threads")
    print("| config | parameters | input | batch | train images/s | inference ms/image | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for path in args.configs:
        if args.device == "cpu" and len(args.configs) > 1:  # a fresh process per config: peak RSS is per process
            import subprocess

            rest = [a for a in argv if Path(a) not in args.configs]
            out = subprocess.run([sys.executable, __file__, str(path), *rest], capture_output=True, text=True, check=True)
            print(out.stdout.strip().splitlines()[-1], flush=True)
        else:
            print(benchmark(path, args), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
