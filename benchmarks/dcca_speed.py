#!/usr/bin/env python
"""DCCANet speed: training and inference throughput in 3 s clips (segments) per second, and the AVEC
loader's segment rate from 8 kHz WAV files (windowed reads), on the current machine.

    python benchmarks/dcca_speed.py                      # paper-size DCCANet (3 s, 129 x 188) and the demo net
    python benchmarks/dcca_speed.py --batch 16 --steps 5 --threads 2

Prints a markdown table. Timings exclude the first (warm-up) step.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.dcca import DCCANet  # noqa: E402
from lightning_modules.losses.regression import regression_loss  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

CONFIGS = {
    "DCCANet (paper size, 3 s)": dict(segment_samples=24000),
    "C2+DB (no attention, 3 s)": dict(segment_samples=24000, attention="none"),
    "demo net (1 s, stride 2)": dict(segment_samples=8000, stem_channels=16, stem_stride=2, growth_rate=8,
                                     dense_layers=3, ca_hidden_channels=8, channel_kernel_size=3),
}


def _time(fn, steps: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def model_throughput(kwargs: dict, batch: int, steps: int) -> tuple[int, float, float]:
    torch.manual_seed(0)
    model = DCCANet(**kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    wave = torch.randn(batch, kwargs["segment_samples"]) * 0.1
    target = torch.rand(batch) * 63

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        regression_loss(model(wave), target, "rmse").backward()
        optimizer.step()

    model.train()
    train = _time(train_step, steps)
    model.eval()
    with torch.inference_mode():
        infer = _time(lambda: model(wave), steps)
    return count_parameters(model), batch / train, batch / infer


def loader_throughput(batch: int) -> float:
    """Segments/s through AVECDataModule's train loader (balanced sampler, 8 kHz WAV windows, 0 workers)."""
    from datamodules.avec import AVECDataModule
    from datamodules.standins.synthetic_speech_depression import standin_recordings, write_partitions_tree

    with tempfile.TemporaryDirectory() as tmp:
        write_partitions_tree(tmp, standin_recordings(8, 2, 2, recording_seconds=30.0))
        dm = AVECDataModule(tmp, batch_size=batch, num_workers=0, rounds_per_epoch=4)
        dm.setup("fit")
        loader = dm.train_dataloader()
        start, count = time.perf_counter(), 0
        for batch_ in loader:
            count += len(batch_["audio"])
        return count / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, CPU")
    print("| model | parameters | train clips/s | inference clips/s |")
    print("|---|---|---|---|")
    for name, kwargs in CONFIGS.items():
        n, train, infer = model_throughput(kwargs, args.batch, args.steps)
        print(f"| {name} | {n:,} | {train:.1f} | {infer:.1f} |", flush=True)
    print(f"\nAVEC loader (8 kHz WAV windows, 0 workers): {loader_throughput(64):.0f} segments/s")


if __name__ == "__main__":
    main()
