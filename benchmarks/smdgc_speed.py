#!/usr/bin/env python
"""SMDGC speed: the 3D U-Net (training throughput, sliding-window inference latency, peak memory) and the graph-cut
stage (seconds, graph nodes and free nodes per volume for every variant).

    python benchmarks/smdgc_speed.py                      # CPU, demo and paper sizes
    python benchmarks/smdgc_speed.py --device cuda --skip-graph-cut

U-Net rows: forward + soft Dice backward + Adam on random batches (volumes/s after a warm-up step); inference
of one volume by sliding windows (the task's ``_outputs``), median of ``--repeats``; peak memory: CUDA max allocated,
or on CPU the process's peak RSS so far (cumulative: rows run in order, small first). Graph-cut rows: a synthetic
U-Net output (blurred one-hot of a hippocampus phantom + smooth logit noise, softmax) at the stand-in's 32^3 and at a
KY-like 96x96x100 crop (the phantom scaled x3), each variant timed as the task times it.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.standins.synthetic_hippocampus import hippocampus_phantom  # noqa: E402
from lightning_modules.losses.segmentation import SegmentationLoss  # noqa: E402
from lightning_modules.smdgc import VARIANTS, GaussianIntensityModel, GraphCutPostprocessor  # noqa: E402
from lightning_modules.tasks.segmentation import SegmentationTask  # noqa: E402
from lightning_modules.unet3d import UNet3D  # noqa: E402
from lightning_modules.utils import count_parameters  # noqa: E402

UNETS = (  # name, widths, training patch, batch, inferred volume
    ("demo", (8, 16, 32), (24, 24, 24), 2, (32, 32, 32)),
    ("paper", (32, 64, 128, 256), (64, 64, 64), 2, (96, 96, 100)),
)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_rows(device: torch.device, steps: int, repeats: int, paper_patch: tuple) -> list[str]:
    rows = []
    for name, features, patch, batch, volume in UNETS:
        patch = paper_patch if name == "paper" else patch
        network = UNet3D(2, 4, features).to(device)
        loss_fn = SegmentationLoss(0.0, 1.0, num_classes=4)
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        image = torch.randn(batch, 2, *patch, device=device)
        mask = torch.randint(0, 4, (batch, 1, *patch), device=device)
        times = []
        for step in range(steps + 1):
            sync(device)
            start = time.perf_counter()
            loss = loss_fn(network(image), mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync(device)
            if step:  # the first step warms up
                times.append(time.perf_counter() - start)
        task = SegmentationTask(network, num_classes=4, roi_size=patch, sw_overlap=0.25, sw_batch_size=2).to(device)
        task.eval()
        latencies = []
        with torch.no_grad():
            crop = torch.randn(1, 2, *volume, device=device)
            for _ in range(repeats):
                sync(device)
                start = time.perf_counter()
                task._outputs(crop)
                sync(device)
                latencies.append(time.perf_counter() - start)
        rows.append(f"| U-Net {name} {'-'.join(map(str, features))} | {count_parameters(network):,} | "
                    f"{'x'.join(map(str, patch))} x{batch} | {batch / statistics.median(times):.2f} | "
                    f"{'x'.join(map(str, volume))} | {1000 * statistics.median(latencies):.0f} | "
                    f"{peak_memory_mb(device):.0f} |")
    return rows


def synthetic_output(scale: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities (4, *S), image (2, *S), labels (*S)) of a phantom, scaled ``scale`` times (KY-like crop)."""
    rng = np.random.default_rng(seed)
    image, labels = hippocampus_phantom(rng)
    if scale > 1:
        labels = ndimage.zoom(labels, scale, order=0)
        labels = np.pad(labels, [(0, 0), (0, 0), (0, 4)])[:, :, : 32 * scale + 4]  # 96 x 96 x 100
        image = np.stack([ndimage.zoom(channel, scale, order=1) for channel in image])
        image = np.pad(image, [(0, 0), (0, 0), (0, 0), (0, 4)])
    # a U-Net-like output: soft one-hot logits (blurred over ~1 voxel) plus spatially smooth noise, so that errors
    # sit near the boundaries rather than as isolated voxels all over the crop
    one_hot = np.stack([ndimage.gaussian_filter((labels == k).astype(np.float64), 1.0) for k in range(4)])
    noise = np.stack([ndimage.gaussian_filter(rng.normal(size=labels.shape), 2.0) for _ in range(4)])
    logits = 6.0 * one_hot + 1.5 * noise / noise.std()
    probabilities = np.exp(logits - logits.max(0))
    probabilities /= probabilities.sum(0)
    return probabilities.astype(np.float32), image.astype(np.float32), labels


def mean_dice(prediction: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([2 * ((prediction == k) & (labels == k)).sum()
                          / max(1, (prediction == k).sum() + (labels == k).sum()) for k in (1, 2, 3)]))


def graph_cut_rows(scales: list[int], whole_volume_max_scale: int):
    """One markdown row per (volume, variant), yielded as each finishes. The intensity variants build their graph
    over the whole volume (about 1M nodes and 12M edges at the KY-like size): only up to ``whole_volume_max_scale``."""
    for scale in scales:
        probabilities, image, labels = synthetic_output(scale)
        model = GaussianIntensityModel(4).fit([{"image": image[None], "mask": labels[None, None]}])
        argmax = probabilities.argmax(0)
        yield (f"| {'x'.join(map(str, labels.shape))} | none (the U-Net-like argmax) | - | - | - | - | "
               f"{mean_dice(argmax, labels):.3f} |")
        for variant in VARIANTS:
            if VARIANTS[variant][0] == "intensity" and scale > whole_volume_max_scale:
                continue
            post = GraphCutPostprocessor(variant)
            post.intensity_model = model
            start = time.perf_counter()
            out, stats = post(probabilities, image)
            seconds = time.perf_counter() - start
            dice = mean_dice(out, labels)
            yield (f"| {'x'.join(map(str, labels.shape))} | {variant} | {seconds:.2f} | {int(stats['nodes']):,} | "
                   f"{int(stats['free_nodes']):,} | {int(stats['moves'])} | {dice:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paper-patch", type=int, nargs=3, default=(64, 64, 64),
                        help="training patch of the paper-width U-Net (96 96 96 in ky.yaml; smaller on a CPU)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 3], help="graph-cut volumes: 1 = 32^3, 3 = KY-like")
    parser.add_argument("--whole-volume-max-scale", type=int, default=1,
                        help="largest scale at which the whole-volume intensity variants run")
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--skip-graph-cut", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}")
    if not args.skip_unet:
        print("\n| network | parameters | training batch | train volumes/s | inferred volume | inference ms | peak MB |")
        print("|---|---|---|---|---|---|---|")
        for row in unet_rows(device, args.steps, args.repeats, tuple(args.paper_patch)):
            print(row, flush=True)
    if not args.skip_graph_cut:
        print("\n| volume | variant | seconds | graph nodes | free nodes (all moves) | moves | mean Dice vs phantom |")
        print("|---|---|---|---|---|---|---|")
        for row in graph_cut_rows(args.scales, args.whole_volume_max_scale):
            print(row, flush=True)


if __name__ == "__main__":
    main()
