#!/usr/bin/env python
"""Speed of the separation family with Chandna et al.'s CNN (paper setting: 44.1 kHz, STFT 1024/256, T = 30).

    python benchmarks/separation_speed.py                  # CPU (or the GPU when there is one)
    python benchmarks/separation_speed.py --device cuda --precision bf16-mixed

Prints a markdown table:
- training throughput in chunks/s (a chunk = one T-frame excerpt, the paper's training "clip"): STFT of
  the batch, forward, Chandna's loss, backward and an Adadelta step, batch 32;
- separation speed in seconds of audio per second: a 30 s mono track through STFT, overlapping chunks
  (stride 5), the network, overlap-add and the iSTFT with the mixture phase;
- the DSD100 loader's excerpts/s in one process (WAV seeks; what each loader worker delivers), read from
  a synthetic DSD100 tree written to a temporary folder.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.chandna_cnn import ChandnaCNN  # noqa: E402
from lightning_modules.tasks.separation import SeparationTask  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def training_throughput(task: SeparationTask, device, precision, batch_size=32, steps=20, warmup=3) -> float:
    samples = task.stft.excerpt_samples(task.time_context)
    batch = {"mixture": torch.randn(batch_size, samples, device=device) * 0.1,
             "sources": torch.randn(batch_size, 4, samples, device=device) * 0.05}
    optimizer = torch.optim.Adadelta(task.parameters(), lr=1.0)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        with _autocast(device, precision):
            loss = task.chunk_losses(batch)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


@torch.no_grad()
def separation_speed(task: SeparationTask, device, precision, seconds=30.0, sample_rate=44100, repeats=3) -> float:
    mixture = torch.randn(int(seconds * sample_rate), device=device) * 0.1
    task.eval()
    with _autocast(device, precision):
        task.separate(mixture)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            task.separate(mixture)
        _sync(device)
    return repeats * seconds / (time.perf_counter() - start)


def loader_throughput(items=300) -> float:
    from datamodules.dsd100 import DSD100DataModule
    from datamodules.standins.synthetic_music import write_dsd100_tree

    with tempfile.TemporaryDirectory() as tmp:
        write_dsd100_tree(tmp, ["001 - Actions - One Minute Smile", "002 - A - B"], ["051 - C - D"], seconds=20.0,
                          sample_rate=44100)
        dm = DSD100DataModule(tmp, num_workers=0)
        dm.setup()
        order = torch.randperm(len(dm.train_set))[:items].tolist()
        start = time.perf_counter()
        for index in order:
            dm.train_set[index]
        return len(order) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed", "16-mixed"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as SeparationTask.setup does under the Trainer
    device = torch.device(args.device)
    print(f"device {device}, precision {args.precision}, torch threads {torch.get_num_threads()}")
    print("| model | parameters | train chunks/s (batch 32) | separation, s of audio / s | loader excerpts/s (1 process) |")
    print("|---|---|---|---|---|")
    settings = {"report (N2 30, t2 12; Hann 1024/256)": ({}, 256, "hann"),
                "code (N2 50, t2 15; Blackman-Harris 1024/512)": ({"horizontal_filters": 50, "horizontal_kernel": (15, 1)},
                                                                  512, "blackmanharris")}
    loader = loader_throughput()
    for name, (kwargs, hop, window) in settings.items():
        network = ChandnaCNN(**kwargs)
        task = SeparationTask(network=network, n_fft=1024, hop_length=hop, window=window, eval_chunk_batch=1024).to(device)
        train = training_throughput(task, device, args.precision)
        separate = separation_speed(task, device, args.precision)
        parameters = sum(p.numel() for p in network.parameters())
        print(f"| {name} | {parameters:,} | {train:,.0f} | {separate:,.1f} | {loader:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
