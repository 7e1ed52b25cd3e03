#!/usr/bin/env python
"""SFRSeg-Net Table 3's classical rows (ACM, FCM, K-means, level set, Otsu, watershed): per-image DSC / JI.

    python benchmarks/sfrseg_classical_baselines.py                          # the synthetic stand-in
    python benchmarks/sfrseg_classical_baselines.py --data_dir /data/ra_usg   # the real layout
    python benchmarks/sfrseg_classical_baselines.py --methods Otsu FCM        # a subset

The methods live in ``lightning_modules/classical_segmentation.py`` (choices in its docstrings): synovial
fluid is anechoic, so each labels the dark part of the grey image (RGB mean) as fluid. Evaluated on the
same augmented test copies as the networks, mean +- std (ddof 1) over images, as the paper's DSC / JI.
"""
from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.classical_segmentation import METHODS, dice_iou  # noqa: E402

PAPER = {"ACM": (0.2044, 0.2567), "FCM": (0.3906, 0.3855), "K-means": (0.3736, 0.3525), "Level set": (0.2392, 0.2330),
         "Otsu": (0.3554, 0.3644), "Watershed": (0.3673, 0.3842)}  # Table 3, real data (DSC, JI means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="RA-USG layout; default: the synthetic stand-in")
    parser.add_argument("--k", type=int, default=3, help="K-means and FCM clusters")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    if args.data_dir:
        from datamodules.ra_usg import RAUltrasoundDataModule

        dm = RAUltrasoundDataModule(data_dir=args.data_dir, num_workers=0)
    else:
        from datamodules.standins.synthetic_msk_ultrasound import SyntheticJointUltrasoundDataModule

        dm = SyntheticJointUltrasoundDataModule(num_workers=0)
    dm.setup()
    images, masks = dm.test_set.images, dm.test_set.masks > 0.5
    print(f"{len(images)} test images ({'real' if args.data_dir else 'stand-in'})")
    print("| method | DSC | JI | paper DSC / JI (real data) | s / image |")
    print("|---|---|---|---|---|")
    cluster_options = {"K-means": {"k": args.k}, "FCM": {"c": args.k}}
    for name in args.methods:
        method = partial(METHODS[name], **cluster_options.get(name, {}))
        start = time.perf_counter()
        scores = np.array([dice_iou(method(image.mean(-1)), mask) for image, mask in zip(images, masks)])
        seconds = (time.perf_counter() - start) / len(images)
        label = f"{name} (k={args.k})" if name in cluster_options else name
        print(f"| {label} | {scores[:, 0].mean():.4f} +- {scores[:, 0].std(ddof=1):.4f} | "
              f"{scores[:, 1].mean():.4f} +- {scores[:, 1].std(ddof=1):.4f} | "
              f"{PAPER[name][0]:.4f} / {PAPER[name][1]:.4f} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
