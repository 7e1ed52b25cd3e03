"""Offline stand-in for POEM in PointBL (Table 3): synthetic whole-body-like fat/water MRI volumes with six organs,
served as coronal slices (2D network, the paper's setting) or 3D patches (3D network), with point labels and 2D- or
3D-computed distance maps like ``datamodules.poem_points``.

Each pseudo-subject is a (LR, FH, AP) volume (``size`` x ``size`` coronal slices, ``depth`` of them along AP), two
channels (water, fat): an elliptic body with a bright subcutaneous fat layer, fatty visceral blobs, and six organs
as jittered ellipsoids with the POEM labels of Table 3's column order (1 bladder, 2 right kidney, 3 liver,
4 pancreas, 5 spleen, 6 left kidney), each with its own water/fat contrast; Gaussian noise (``noise``) and a smooth
bias field per channel, min-max to 0-255 per channel. Every organ is in every volume (as in POEM), but a coronal
slice holds only some of them, so 2D maps see absent classes and 3D maps do not (the paper's reason for 3D maps).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from scipy import ndimage

from datamodules.point_slices import PointSliceDataModule

#: label, name, centre (LR, FH, AP as fractions of the box), radii (fractions), water, fat
ORGANS = (
    (1, "bld", (0.50, 0.14, 0.62), (0.10, 0.08, 0.16), 0.95, 0.05),
    (2, "kdr", (0.32, 0.52, 0.30), (0.07, 0.12, 0.16), 0.75, 0.12),
    (3, "lvr", (0.30, 0.80, 0.55), (0.20, 0.13, 0.34), 0.55, 0.22),
    (4, "pnc", (0.55, 0.62, 0.55), (0.15, 0.04, 0.10), 0.62, 0.40),
    (5, "spl", (0.74, 0.78, 0.40), (0.09, 0.10, 0.20), 0.85, 0.15),
    (6, "kdl", (0.68, 0.52, 0.30), (0.07, 0.12, 0.16), 0.75, 0.12),
)
CLASS_NAMES = ("background", *(name for _, name, *_ in ORGANS))


def abdomen_volume(rng: np.random.Generator, size: int = 64, depth: int = 24, noise: float = 0.05
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic subject: image (2, size, size, depth) float 0-255 (water, fat) and labels (size, size, depth)."""
    grid = np.stack(np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), np.linspace(0, 1, depth),
                                indexing="ij"))
    lr, fh, ap = grid
    body = ((lr - 0.5) / 0.46) ** 2 + ((ap - 0.5) / 0.46) ** 2 <= 1.0
    inner = ((lr - 0.5) / 0.40) ** 2 + ((ap - 0.5) / 0.40) ** 2 <= 1.0  # inside the subcutaneous fat layer
    water = np.where(body, 0.25, 0.0)
    fat = np.where(body & ~inner, 0.9, np.where(inner, 0.15, 0.0))
    for _ in range(6):  # visceral fat blobs
        centre = rng.uniform([0.25, 0.1, 0.25], [0.75, 0.9, 0.75])
        radius = rng.uniform(0.04, 0.08)
        blob = (((grid - centre[:, None, None, None]) / radius) ** 2).sum(0) <= 1
        fat = np.where(blob & inner, 0.6, fat)
    labels = np.zeros((size, size, depth), dtype=np.uint8)
    for label, _, centre, radii, water_value, fat_value in ORGANS:
        centre = np.asarray(centre) + rng.uniform(-0.03, 0.03, 3)
        radii = np.asarray(radii) * rng.uniform(0.85, 1.15, 3)
        organ = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
        organ &= inner & (labels == 0)
        labels[organ] = label
        water = np.where(organ, water_value, water)
        fat = np.where(organ, fat_value, fat)
    channels = []
    for channel in (water, fat):
        bias = ndimage.zoom(rng.normal(0, 1, (4, 4, 3)), np.array(channel.shape) / (4, 4, 3), order=1)
        channel = ndimage.gaussian_filter(channel, 0.6) * (1 + 0.1 * bias / (np.abs(bias).max() + 1e-8))
        channel = channel + rng.normal(0, noise, channel.shape)
        channels.append(np.round((channel - channel.min()) / (channel.max() - channel.min()) * 255.0))
    return np.stack(channels).astype(np.float32), labels


class SyntheticAbdomenDataModule(PointSliceDataModule):
    """``num_train``/``num_val``/``num_test`` pseudo-subjects (6/2/2), seeded by ``seed``; coronal slices of
    ``size`` x ``size``, ``depth`` along AP. The rest as ``PointSliceDataModule``: the defaults are the paper's
    POEM rules (maps on the fat channel, ones for a class absent from a 2D slice), ``distance_dim: 3d`` for the
    "in 3D" rows, ``network_dims: 3`` with ``patch_size`` for a 3D network."""

    def __init__(self, num_train: int = 6, num_val: int = 2, num_test: int = 2, size: int = 64, depth: int = 24,
                 noise: float = 0.05, seed: int = 0, distance: Literal["euc", "geo", "int", "mbd", "none"] = "geo",
                 distance_dim: Literal["2d", "3d"] = "3d",
                 distance_channel: int = 1, point_width: int = 4, point_seed: int = 0, per_component: bool = False,
                 absent_value: float = 1.0, mbd_step: int = 1, cache_dir: Optional[str] = None,
                 prepare_workers: int = 1, network_dims: Literal[2, 3] = 2, patch_size: Optional[Sequence[int]] = None,
                 samples_per_volume: int = 1, foreground_probability: float = 0.5, batch_size: int = 8,
                 num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None) -> None:
        super().__init__(len(CLASS_NAMES), distance, point_width, point_seed, per_component, absent_value, mbd_step,
                         cache_dir, prepare_workers, batch_size, num_workers, pin_memory, eval_batch_size,
                         distance_dim=distance_dim, distance_channel=distance_channel, network_dims=network_dims,
                         patch_size=patch_size, samples_per_volume=samples_per_volume,
                         foreground_probability=foreground_probability)
        if network_dims == 2 and size % 8:
            raise ValueError(f"size must be a multiple of 8 (E-Net), got {size}")
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.size, self.depth, self.noise, self.seed = size, depth, noise, seed

    def load_volumes(self, split: str) -> list[dict]:
        offset = {"train": 0, "val": self.counts["train"], "test": self.counts["train"] + self.counts["val"]}[split]
        volumes = []
        for i in range(offset, offset + self.counts[split]):
            image, labels = abdomen_volume(np.random.default_rng([self.seed, i]), self.size, self.depth, self.noise)
            # a ~400 mm wide, ~400 mm high and ~250 mm deep box (POEM's voxels: 2.07 x 2.07 x 8 mm)
            volumes.append({"name": f"abdomen{i:03d}", "image": image, "mask": labels,
                            "spacing": (400.0 / self.size, 400.0 / self.size, 250.0 / self.depth)})
        return volumes
