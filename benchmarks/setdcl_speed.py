#!/usr/bin/env python
"""Guided-SET-DCL speed: the episodic network (training step, one-slice inference, a scan's slice-to-slice inference,
peak memory) and the MRF initial label (seconds per volume).

    python benchmarks/setdcl_speed.py                                  # CPU: demo size, the paper's net at 128 px
    python benchmarks/setdcl_speed.py --device cuda --paper-size 256   # the paper's 256 x 256 slices

Training step: one batch of episodes (support + query + 3 negatives each): forward with the DCL terms, 0.9 CE +
0.1 DCL, backward, Adam (median after a warm-up step). Inference: one query slice with its support (no negatives),
and a whole scan of ``--depth`` slices propagated from its middle slice (the task's ``segment_volume`` with every
slice predicted non-empty). MRF: ``mrf_initial_label`` on a synthetic CT volume (stand-in size, and a larger one).
Peak memory: CUDA max allocated, or on CPU the process's peak RSS so far (rows run small first).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import autocast, median_time, peak_memory_mb  # noqa: E402
from datamodules.standins.synthetic_ct_colon import synthetic_ct_colon  # noqa: E402
from lightning_modules.setdcl import SETDCLNet  # noqa: E402
from lightning_modules.setdcl_mrf import mrf_initial_label  # noqa: E402
from lightning_modules.tasks.episodic_segmentation import EpisodicSegmentationTask  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402


def episode(batch: int, size: int, negatives: int, device) -> dict:
    mask = torch.zeros(batch, 1, size, size, device=device)
    mask[..., size // 4: size // 2, size // 4: size // 2] = 1
    return dict(support_image=torch.rand(batch, 1, size, size, device=device), support_mask=mask,
                query_image=torch.rand(batch, 1, size, size, device=device), query_prior=mask,
                negative_image=torch.rand(batch, negatives, 1, size, size, device=device),
                negative_mask=(torch.rand(batch, negatives, 1, size, size, device=device) > 0.7).float())


def network_row(name: str, features, size: int, batch: int, depth: int, device, steps: int, precision: str) -> str:
    network = SETDCLNet(features=features).to(device)
    task = EpisodicSegmentationTask(network, aux_term_weights={"cpcl": 0.08, "ppcl": 0.12, "ccl": 0.06}).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    inputs = episode(batch, size, 3, device)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def train_step():
        with autocast(device, precision):
            out = task.episode_losses(network(**inputs), inputs["support_mask"])
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        optimizer.step()

    t_train = median_time(train_step, device, steps)
    network.eval()
    one = {k: v[:1] for k, v in inputs.items() if not k.startswith("negative")}

    def infer():
        with torch.no_grad(), autocast(device, precision):
            network(**one)

    t_slice = median_time(infer, device, steps)
    scan = torch.ones(1, 1, size, size, depth, device=device)  # non-empty everywhere: every slice is predicted
    task.threshold = -1.0  # predictions never empty, so the propagation runs through the whole scan
    t_scan = median_time(lambda: task.segment_volume(scan, scan, depth // 2), device, max(1, steps // 3))
    return (f"| {name} | {size} | {count_parameters(network):,} | {batch} | {batch / t_train:.3g} "
            f"({t_train * 1e3:.4g} ms/step) | {t_slice * 1e3:.4g} | {t_scan:.3g} ({depth} slices) | "
            f"{peak_memory_mb(device):.0f} |")


def mrf_row(shape) -> str:
    hu, colon, _ = synthetic_ct_colon(np.random.default_rng(0), shape=shape, stool_probability=0.0)
    start = time.perf_counter()
    result = mrf_initial_label(hu, erosion_iterations=1, dilation_iterations=1)
    seconds = time.perf_counter() - start
    dice = 2 * (result.mask & (colon > 0)).sum() / (result.mask.sum() + colon.sum())
    return f"| {' x '.join(map(str, shape))} | {seconds:.3g} | {dice:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--paper-size", type=int, default=128, help="slice size of the paper-width row (paper: 256)")
    parser.add_argument("--depth", type=int, default=24, help="slices of the scan inferred slice by slice")
    parser.add_argument("--mrf-shapes", default="24x64x64,48x256x256")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| network | slice px | params | batch (episodes) | train episodes/s | one-slice inference ms "
          "| scan inference s | peak MB |\n|---|---|---|---|---|---|---|---|")
    print(network_row("demo (widths / 4)", (8, 16, 32, 64, 128), 64, 4, args.depth, args.device, args.steps,
                      args.precision))
    print(network_row("paper (released widths)", (32, 64, 128, 256, 512), args.paper_size, 1, args.depth, args.device,
                      args.steps, args.precision))
    print("\n| MRF volume (D x H x W) | seconds | Dice vs the synthetic colon |\n|---|---|---|")
    for shape in args.mrf_shapes.split(","):
        print(mrf_row(tuple(int(s) for s in shape.split("x"))))


if __name__ == "__main__":
    main()
