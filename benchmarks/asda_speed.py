#!/usr/bin/env python
"""ASDA speed: training throughput (clips/s) of pre-training and fine-tuning steps, and the fbank front end.

    python benchmarks/asda_speed.py                      # tiny (demo) and base (paper) models, CPU
    python benchmarks/asda_speed.py --sizes base --device cuda --precision bf16 --batch 12

A step is forward + backward + AdamW update (+ the EMA teacher update in pre-training), on random
waveforms of the setting's length (AudioSet 10 s -> 1024 frames; demo 1 s -> 96 frames). Prints markdown rows.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.asda import ASDAClassifier, ASDAEncoder, ASDAPretrainingModel, SpectrogramFrontEnd  # noqa: E402
from lightning_modules.blocks.kaldi_fbank import KaldiFbank  # noqa: E402

SIZES = {
    "tiny": dict(encoder=dict(embed_dim=64, depth=2, num_heads=4, target_length=96), seconds=1.0,
                 decoder=dict(decoder_layers=2, decoder_groups=4, clone_batch=4, mask_length=3), classes=10),
    "base": dict(encoder=dict(target_length=1024), seconds=10.0, decoder=dict(), classes=527),
}


def _time(step, steps: int, warmup: int, device: str) -> float:
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench(size: str, mode: str, batch: int, steps: int, device: str, precision: str) -> float:
    cfg = SIZES[size]
    frontend = SpectrogramFrontEnd(target_length=cfg["encoder"]["target_length"])
    if mode == "pretrain":
        model = ASDAPretrainingModel(ASDAEncoder(**cfg["encoder"]), frontend, **cfg["decoder"]).to(device).train()
    else:
        model = ASDAClassifier(ASDAEncoder(drop_path=0.1, **cfg["encoder"]), cfg["classes"], frontend).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    wave = torch.randn(batch, int(cfg["seconds"] * 16000), device=device)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step():
        with torch.autocast(device_type=device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(wave)
            loss = out["loss"] if mode == "pretrain" else out.float().logsumexp(-1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if mode == "pretrain":
            model.update_teacher(0.999)

    seconds = _time(step, steps, 1, device)
    return batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default: tiny 32, base 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: tiny 10, base 2)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, precision {args.precision}")
    print("| model | stage | batch | clips/s |")
    print("|---|---|---|---|")
    for size in args.sizes:
        batch = args.batch or (32 if size == "tiny" else 2)
        steps = args.steps or (10 if size == "tiny" else 2)
        for mode in ("pretrain", "finetune"):
            rate = bench(size, mode, batch, steps, args.device, args.precision)
            print(f"| {size} | {mode} | {batch} | {rate:.2f} |", flush=True)
    fbank = KaldiFbank().to(args.device)
    wave = torch.randn(16, 160000, device=args.device)
    seconds = _time(lambda: fbank(wave), 3, 1, args.device)
    print(f"| Kaldi fbank (10 s clips) | front end | 16 | {16 / seconds:.1f} |")


if __name__ == "__main__":
    main()
