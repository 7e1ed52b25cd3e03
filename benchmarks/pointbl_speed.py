#!/usr/bin/env python
"""PointBL speed: E-Net and the DynUNet stand-in for the 2D nnU-Net (training step with partial CE + boundary loss,
inference, peak memory), and the per-slice cost of the distance maps (euc/geo/int/mbd) that are precomputed.

    python benchmarks/pointbl_speed.py                           # CPU, 128 px, batch 4, few steps
    python benchmarks/pointbl_speed.py --device cuda --size 256 --batch-size 8 --steps 20 --map-size 256

Network rows: forward + (partial CE + boundary loss) backward + Adam step on random slices with random points and
maps (slices/s after a warm-up), eval-mode inference of one slice (ms, median) and of a batch (slices/s); peak
memory: CUDA max allocated, or on CPU the process's peak RSS (cumulative). Map rows: seconds per slice for the 3
foreground classes of a synthetic cardiac slice (``signed_distance_maps``), single process. Volume rows (Table 3):
seconds per synthetic fat/water abdominal volume (6 organs, maps on the fat channel from the slice-wise points),
per 2D slice (``distance_dim 2d``) or on the whole volume with 26-connectivity (``3d``); ``--volume-size 0`` skips
them, ``--exact-3d-mbd`` adds the exact 3D MBD (minutes per volume on a CPU).
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

from benchmarks.timing import median_time, peak_memory_mb, step_times  # noqa: E402
from datamodules.point_labels import sample_points, signed_distance_maps  # noqa: E402
from datamodules.standins.synthetic_cardiac import cardiac_volume  # noqa: E402
from lightning_modules.losses.point_supervision import PointBoundaryLoss  # noqa: E402
from lightning_modules.pointbl import ENet  # noqa: E402


def networks() -> dict[str, torch.nn.Module]:
    from monai.networks.nets import DynUNet

    return {"E-Net (K=16)": ENet(1, 4),
            "DynUNet 2D (nnU-Net stand-in)": DynUNet(2, 1, 4, [3] * 7, [1, 2, 2, 2, 2, 2, 2], [2] * 6,
                                                     filters=[32, 64, 128, 256, 512, 512, 512], norm_name="instance",
                                                     act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}))}


def network_rows(device: str, size: int, batch: int, steps: int) -> list[str]:
    rows = []
    for name, network in networks().items():
        network = network.to(device)
        params = sum(p.numel() for p in network.parameters())
        optimizer = torch.optim.Adam(network.parameters(), lr=5e-4)
        loss = PointBoundaryLoss(alpha=1.0)
        image = torch.randn(batch, 1, size, size, device=device)
        points = torch.randint(-1, 4, (batch, 1, size, size), device=device)
        maps = torch.randn(batch, 4, size, size, device=device) * 50

        def train_step():
            optimizer.zero_grad(set_to_none=True)
            loss(network(image), points, maps).backward()
            optimizer.step()

        network.train()
        train = batch / float(np.median(step_times(train_step, device, steps)))
        network.eval()
        with torch.no_grad():
            latency = median_time(lambda: network(image[:1]), device, steps) * 1000
            infer = batch / median_time(lambda: network(image), device, steps)
        rows.append(f"| {name} | {params / 1e6:.2f}M | {size}x{size} | {batch} | {device} | {train:.1f} | "
                    f"{latency:.1f} | {infer:.1f} | {peak_memory_mb(device):.0f} |")
    return rows


def map_rows(size: int, kinds: list[str]) -> list[str]:
    image, labels = cardiac_volume(np.random.default_rng(0), size=size, slices=1)
    points = sample_points(labels[..., 0], 4, width=4, rng=np.random.default_rng(0))
    rows = []
    for kind in kinds:
        for step in ((1, 8) if kind == "mbd" else (1,)):
            start = time.perf_counter()
            signed_distance_maps(image[..., 0], points, 4, kind, mbd_step=step)
            label = kind if step == 1 else f"mbd (mbd_step {step})"
            rows.append(f"| {label} | {size}x{size} | {time.perf_counter() - start:.3f} |")
    return rows


def volume_rows(size: int, depth: int, exact_mbd: bool) -> list[str]:
    from datamodules.point_slices import volume_distance_maps, volume_points
    from datamodules.standins.synthetic_abdomen import CLASS_NAMES, abdomen_volume

    image, labels = abdomen_volume(np.random.default_rng(0), size, depth)
    volume = {"name": "bench", "image": image, "mask": labels, "spacing": (1.0, 1.0, 1.0)}
    points = volume_points(volume, len(CLASS_NAMES), 4, 0, False)
    rows = []
    for kind, step in (("euc", 1), ("geo", 1), ("int", 1), ("mbd", 8), *((("mbd", 1),) if exact_mbd else ())):
        for dim in ("2d", "3d"):
            start = time.perf_counter()
            volume_distance_maps(volume, points, len(CLASS_NAMES), kind, 1.0, step, dim, channel=1)
            label = kind if kind != "mbd" else ("mbd (exact)" if step == 1 else f"mbd (mbd_step {step})")
            rows.append(f"| {label} | {dim} | {size}x{size}x{depth} | {time.perf_counter() - start:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=128)  # DynUNet downsamples 64x
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--map-size", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--volume-size", type=int, nargs=2, default=[64, 32], metavar=("SIZE", "DEPTH"))
    parser.add_argument("--exact-3d-mbd", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| network | params | input | batch | device | train slices/s | latency ms | infer slices/s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(network_rows(args.device, args.size, args.batch_size, args.steps)))
    print()
    print("| distance map (3 classes, one slice) | size | seconds |")
    print("|---|---|---|")
    for size in args.map_size:
        print("\n".join(map_rows(size, ["euc", "geo", "int", "mbd"])))
    if args.volume_size[0]:
        print()
        print("| distance map (6 organs, one volume) | computed | volume | seconds |")
        print("|---|---|---|---|")
        print("\n".join(volume_rows(*args.volume_size, args.exact_3d_mbd)))


if __name__ == "__main__":
    main()
