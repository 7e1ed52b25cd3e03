"""Offline stand-in for ACDC in PointBL: synthetic short-axis "cardiac" volumes with the ACDC labels
(0 background, 1 RV, 2 Myo, 3 LV), sliced in 2D with point labels and distance maps like ``datamodules.acdc``.

Each pseudo-patient is a stack of ``slices`` 2D slices (``size`` x ``size``): noisy background tissue with a few
bright and dark distractor blobs, LV = bright disk (radius 6-10 px at the base, shrinking towards the apex), Myo =
dark ring (3-5 px) around it, RV = medium-bright crescent on its left; Gaussian noise (sigma 0.08) and a smooth
multiplicative bias field; min-max to 0-255 per volume as the ACDC preprocessing. The learnable signal is the
intensity and shape layout; the points show only a 4-px disk per class and slice.
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from scipy import ndimage

from datamodules.point_slices import PointSliceDataModule


def cardiac_volume(rng: np.random.Generator, size: int = 64, slices: int = 8, noise: float = 0.08
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic volume: image (H, W, D) float in 0-255 and labels (H, W, D) uint8."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    scale = size / 64.0
    centre = np.array([size / 2, size / 2 + 4 * scale]) + rng.uniform(-4, 4, 2) * scale
    radius0 = rng.uniform(6, 10) * scale
    thickness = rng.uniform(3, 5) * scale
    rv_radius = radius0 * rng.uniform(1.1, 1.4)
    blobs = [(rng.uniform(0, size, 2), rng.uniform(3, 7) * scale, rng.choice([0.15, 0.8])) for _ in range(3)]
    bias = ndimage.gaussian_filter(rng.normal(0, 1, (size // 8 + 2, size // 8 + 2)), 1.0)
    bias = 1.0 + 0.15 * ndimage.zoom(bias / (np.abs(bias).max() + 1e-8), size / bias.shape[0], order=1)[:size, :size]
    image = np.zeros((size, size, slices))
    labels = np.zeros((size, size, slices), dtype=np.uint8)
    for z in range(slices):
        shrink = 1.0 - 0.45 * z / max(slices - 1, 1)
        radius = radius0 * shrink
        d_lv = np.hypot(yy - centre[0], xx - centre[1])
        lv = d_lv <= radius
        myo = (d_lv <= radius + thickness) & ~lv
        rv_centre = centre + np.array([0.0, -(radius + thickness + rv_radius * shrink * 0.45)])
        rv = (np.hypot(yy - rv_centre[0], xx - rv_centre[1]) <= rv_radius * shrink) & ~(d_lv <= radius + thickness + 1)
        slice_image = 0.4 + 0.05 * np.sin(xx / (3 + z)) * np.cos(yy / 5)
        for blob_centre, blob_radius, value in blobs:
            blob = np.hypot(yy - blob_centre[0], xx - blob_centre[1]) <= blob_radius
            blob &= np.hypot(yy - centre[0], xx - centre[1]) > radius0 + thickness + 2 * rv_radius
            slice_image[blob] = value
        slice_image[rv] = 0.65
        slice_image[myo] = 0.18
        slice_image[lv] = 0.9
        image[..., z] = ndimage.gaussian_filter(slice_image, 0.7) * bias + rng.normal(0, noise, (size, size))
        labels[..., z] = np.select([lv, myo, rv], [3, 2, 1], 0)
    image = (image - image.min()) / (image.max() - image.min()) * 255.0
    return np.round(image).astype(np.float32), labels


class SyntheticCardiacDataModule(PointSliceDataModule):
    """``num_train``/``num_val``/``num_test`` pseudo-patients (8/2/2) of ``slices`` slices, seeded by ``seed``;
    the rest of the arguments as ``PointSliceDataModule`` (distance maps computed in memory, not cached)."""

    def __init__(self, num_train: int = 8, num_val: int = 2, num_test: int = 2, size: int = 64, slices: int = 8,
                 noise: float = 0.08, seed: int = 0,
                 distance: Literal["euc", "geo", "int", "mbd", "none"] = "mbd", point_width: int = 4,
                 point_seed: int = 0, per_component: bool = False, mbd_step: int = 1, cache_dir: Optional[str] = None,
                 prepare_workers: int = 1, batch_size: int = 8, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None) -> None:
        super().__init__(4, distance, point_width, point_seed, per_component, 0.0, mbd_step, cache_dir, prepare_workers,
                         batch_size, num_workers, pin_memory, eval_batch_size)
        if size % 8:
            raise ValueError(f"size must be a multiple of 8 (E-Net), got {size}")
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.size, self.slices, self.noise, self.seed = size, slices, noise, seed

    def load_volumes(self, split: str) -> list[dict]:
        offset = {"train": 0, "val": self.counts["train"], "test": self.counts["train"] + self.counts["val"]}[split]
        volumes = []
        for i in range(offset, offset + self.counts[split]):
            image, labels = cardiac_volume(np.random.default_rng([self.seed, i]), self.size, self.slices, self.noise)
            volumes.append({"name": f"synthetic{i:03d}", "image": image, "mask": labels,
                            "spacing": (1.5 * 64 / self.size, 1.5 * 64 / self.size, 10.0)})
        return volumes
