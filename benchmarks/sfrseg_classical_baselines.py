#!/usr/bin/env python
"""SFRSeg-Net Table 3's classical rows: Otsu thresholding and K-means clustering, per-image DSC / JI.

    python benchmarks/sfrseg_classical_baselines.py                          # the synthetic stand-in
    python benchmarks/sfrseg_classical_baselines.py --data_dir /data/ra_usg   # the real layout

Synovial fluid is anechoic (dark), so both methods label the darkest class as fluid: Otsu's threshold
(skimage) on the grey image, or the cluster of lowest mean among ``k`` (sklearn KMeans on intensities).
Evaluated on the same augmented test copies as the networks, mean +- std over images (the paper's DSC/JI).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def otsu_dark(grey: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return grey < threshold_otsu(grey)


def kmeans_dark(grey: np.ndarray, k: int = 3, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans

    values = grey.reshape(-1, 1).astype(np.float64)
    model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(values)
    darkest = int(np.argmin(model.cluster_centers_[:, 0]))
    return (model.labels_ == darkest).reshape(grey.shape)


def dice_iou(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Per-image DSC and JI; both 1 when prediction and target are empty (the shared metrics' rule)."""
    tp = np.logical_and(prediction, target).sum()
    fp, fn = np.logical_and(prediction, ~target).sum(), np.logical_and(~prediction, target).sum()
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="RA-USG layout; default: the synthetic stand-in")
    parser.add_argument("--k", type=int, default=3, help="K-means clusters")
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
    print("| method | DSC | JI |")
    print("|---|---|---|")
    for name, method in (("Otsu", otsu_dark), (f"K-means (k={args.k})", lambda g: kmeans_dark(g, args.k))):
        scores = np.array([dice_iou(method(image.mean(-1)), mask) for image, mask in zip(images, masks)])
        print(f"| {name} | {scores[:, 0].mean():.4f} +- {scores[:, 0].std(ddof=1):.4f} | "
              f"{scores[:, 1].mean():.4f} +- {scores[:, 1].std(ddof=1):.4f} |")


if __name__ == "__main__":
    main()
