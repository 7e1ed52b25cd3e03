"""Offline stand-in for CT colon segmentation (Guided-SET-DCL): synthetic abdominal CT volumes in Hounsfield units.

Each volume (default 24 x 64 x 64, axial slices along axis 0 from inferior to superior) holds:

- air (-1000 HU) around a body ellipse of fat (-100 +- 20 HU) with a muscle rim (40 +- 15 HU, 3 px), a spine disk
  (+700 HU) at the back, and a liver-like blob (60 HU) in the upper right slices (the organ label, used for the
  negatives' masks);
- the colon: an air tube (-1000 HU lumen, 30 HU wall of 1 px, radius 3-5 px, varying along it) along a smooth 3D
  curve: the rectum as a disk in the lowest slices at the back of the pelvis, the sigmoid/descending colon up the
  left side, the transverse colon across the front, the ascending colon down the right side to the caecum; the
  lowest-lying part of the ascending colon holds opacified fluid (+400 HU) in its posterior half;
- small-bowel gas pockets (air with a wall, radius 2-3 px) away from the colon and above the rectum's slices:
  the distractors that intensity alone cannot tell from colon;
- with probability ``stool_probability`` a plug of residual stool (20 HU) filling the lumen over a short stretch of
  the transverse colon: colon in the label, not air, so the MRF's region growing from the rectum stops there;
- Gaussian noise (15 HU) after a slight blur (partial volume).

The label is the colon lumen (air and fluid). The top slices (above the transverse colon) hold no colon: they are the
episodes' negatives. The spec card's recipe; everything follows from ``seed``.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from scipy import ndimage

from datamodules.episodic import EpisodicVolumeDataModule, RawVolume


def _polyline(points: np.ndarray, samples: int = 400) -> np.ndarray:
    """A smooth curve through control points (z, y, x): cubic B-spline by scipy, ``samples`` points."""
    from scipy.interpolate import splev, splprep

    tck, _ = splprep(points.T, s=0, k=min(3, len(points) - 1))
    return np.stack(splev(np.linspace(0, 1, samples), tck), 1)


def synthetic_ct_colon(rng: np.random.Generator, shape: Sequence[int] = (24, 64, 64), noise_hu: float = 15.0,
                       distractors: int = 4, stool_probability: float = 0.5
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One volume: HU (D, H, W) float32, colon label (D, H, W) uint8, organ label (D, H, W) uint8."""
    depth, height, width = (int(s) for s in shape)
    zz, yy, xx = np.meshgrid(np.arange(depth), np.arange(height), np.arange(width), indexing="ij")
    cy, cx = height / 2 + rng.uniform(-1.5, 1.5), width / 2 + rng.uniform(-1.5, 1.5)
    ry, rx = 0.43 * height + rng.uniform(-1, 1), 0.46 * width + rng.uniform(-1, 1)
    ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    body, inner = ellipse <= 1, ((yy - cy) / (ry - 4)) ** 2 + ((xx - cx) / (rx - 4)) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    hu[body] = rng.normal(40, 15, int(body.sum()))
    hu[inner] = rng.normal(-100, 20, int(inner.sum()))
    spine = (yy - (cy + 0.7 * ry)) ** 2 + (xx - cx) ** 2 <= (0.1 * width) ** 2
    muscle = ((((yy - (cy + 0.55 * ry)) / (0.12 * ry)) ** 2 + ((np.abs(xx - cx) - 0.3 * rx) / (0.15 * rx)) ** 2 <= 1)
              | (((yy - (cy - 0.85 * ry)) / (0.1 * ry)) ** 2 + ((np.abs(xx - cx) - 0.15 * rx) / (0.2 * rx)) ** 2 <= 1))
    hu[muscle & inner] = rng.normal(40, 15, int((muscle & inner).sum()))  # psoas and rectus muscles
    pelvis = (((yy - (cy + 0.3 * ry)) / (0.2 * ry)) ** 2 + ((np.abs(xx - cx) - 0.62 * rx) / (0.12 * rx)) ** 2 <= 1) \
        & (zz < 0.35 * depth)
    hu[(spine | pelvis) & inner] = rng.normal(600, 60, int(((spine | pelvis) & inner).sum()))
    # the liver-like organ: upper slices, right side (image left = patient right, radiological view)
    top = 0.55 * depth
    organ = (((zz - depth) / (0.5 * depth)) ** 2 + ((yy - (cy - 0.1 * ry)) / (0.35 * ry)) ** 2
             + ((xx - (cx - 0.55 * rx)) / (0.3 * rx)) ** 2 <= 1) & inner & (zz >= top)
    hu[organ] = rng.normal(60, 10, int(organ.sum()))
    # the colon's centreline: rectum (low, back), descending (left), transverse (front, high), ascending (right)
    j = lambda s=1.0: rng.uniform(-s, s)  # noqa: E731
    left, right = cx + 0.55 * rx + j(), cx - 0.55 * rx + j()
    back, front = cy + 0.35 * ry + j(), cy - 0.45 * ry + j()
    high = 0.58 * depth + j(0.5)
    control = np.array([
        [0.0, back, cx + j()], [0.12 * depth, back - 1, cx + 0.2 * rx], [0.3 * depth, cy + j(2), left],
        [0.5 * depth, cy - 0.2 * ry, left + j()], [high, front + 2, left - 2], [high + j(0.5), front, cx + j(2)],
        [high, front + 2, right + 2], [0.45 * depth, cy - 0.1 * ry, right + j()], [0.25 * depth, cy + 0.1 * ry, right],
    ])
    curve = _polyline(control)
    centre = np.zeros(shape, bool)
    index = np.clip(np.rint(curve).astype(int), 0, np.array(shape) - 1)
    centre[tuple(index.T)] = True
    distance, nearest = ndimage.distance_transform_edt(~centre, return_indices=True)
    # radius varies smoothly along the curve (haustra-like): look up the radius of the nearest centreline point
    t = np.linspace(0, 1, len(curve))
    radii = 3.8 + 0.6 * np.sin(2 * np.pi * (4 * t + rng.uniform())) + rng.uniform(-0.3, 0.3)
    radii[: len(curve) // 10] += 1.0  # the rectum is wider
    radius_map = np.zeros(shape)
    radius_map[tuple(index.T)] = radii
    radius = radius_map[tuple(nearest)]
    lumen = (distance < radius) & inner
    wall = (distance < radius + 1.2) & ~lumen & inner
    hu[wall] = 30.0
    hu[lumen] = -1000.0
    # opacified fluid: the posterior half of the lumen in the ascending colon's lower part
    ascending_start = int(0.8 * len(curve))
    fluid_seg = np.zeros(shape, bool)
    fluid_seg[tuple(index[ascending_start:].T)] = True
    near_ascending = ndimage.distance_transform_edt(~fluid_seg) < radius + 1
    fluid = lumen & near_ascending & (yy > ndimage.map_coordinates(yy.astype(float), nearest, order=0) + 0.5)
    hu[fluid] = 400.0
    # residual (untagged) stool: a plug of soft-tissue density filling the lumen over a short stretch of the
    # transverse colon, which splits the air column (the GT still counts it as colon)
    if rng.random() < stool_probability:
        owner = np.full(shape, -1)
        owner[tuple(index.T)] = np.arange(len(curve))
        along = owner[tuple(nearest)]
        start = int(rng.uniform(0.5, 0.6) * len(curve))
        plug = lumen & (along >= start) & (along < start + int(0.04 * len(curve)))
        hu[plug] = rng.normal(20, 10, int(plug.sum()))
    # small-bowel gas pockets: away from the colon, above the rectum's slices
    colon_distance = ndimage.distance_transform_edt(~(lumen | wall))
    placed = 0
    for _ in range(200):
        if placed >= distractors:
            break
        z, y, x = rng.uniform(0.3 * depth, 0.75 * depth), rng.uniform(cy - 0.5 * ry, cy + 0.5 * ry), \
            rng.uniform(cx - 0.5 * rx, cx + 0.5 * rx)
        r = rng.uniform(2.0, 3.0)
        ball = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2
        region = ball < (r + 1.2) ** 2
        if not (region <= inner).all() or colon_distance[region].min() < 3 or (region & organ).any():
            continue
        hu[region] = 30.0
        hu[ball < r ** 2] = -1000.0
        placed += 1
    hu = ndimage.gaussian_filter(hu, 0.5) + rng.normal(0, noise_hu, shape)
    return hu.astype(np.float32), lumen.astype(np.uint8), organ.astype(np.uint8)


class SyntheticCTColonDataModule(EpisodicVolumeDataModule):
    """``num_train`` / ``num_val`` / ``num_test`` synthetic CT colon volumes (see the module docstring) as episodes
    (training) and whole scans (validation, test).

    Args:
        shape: (D, H, W) of each volume.
        distractors, stool_probability: small-bowel gas pockets per volume; the chance of a stool plug.
        seed: the volumes (train, val and test volumes are disjoint draws).
        mrf_erosion, mrf_dilation: 1 each (the code's 4 and 3 are for 512-pixel slices; a 64-pixel tube would vanish)
        (others: ``datamodules.episodic.EpisodicVolumeDataModule``; ``image_size`` defaults to the volume's width)
    """

    def __init__(self, num_train: int = 8, num_val: int = 2, num_test: int = 2, shape: Sequence[int] = (24, 64, 64),
                 distractors: int = 4, stool_probability: float = 0.5, seed: int = 0, image_size: Optional[int] = None,
                 hu_window: Sequence[float] = (-1000.0, 1000.0), mode: Literal["episodes", "slices"] = "episodes",
                 episodes_per_epoch: int = 200, neighbour: int = 1, n_unrelated: int = 3,
                 support_mode: Literal["neighbour", "random"] = "neighbour",
                 gamma_range: Optional[Sequence[float]] = None,
                 unrelated_source: Literal["auto", "organs", "superpixel"] = "auto", superpixel_rank: int = 2,
                 mrf_erosion: int = 1, mrf_dilation: int = 1, batch_size: int = 1, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, geometric: bool = False,
                 train_supervision: Literal["labels", "superpixel"] = "labels", superpixel_min_size: int = 400,
                 superpixel_sigma: float = 1.0, superpixel_neighbour: int = 0,
                 slice_context: int = 1) -> None:
        super().__init__(int(image_size or shape[-1]), hu_window, mode, episodes_per_epoch, neighbour, n_unrelated,
                         support_mode, gamma_range, unrelated_source, superpixel_rank, mrf_erosion, mrf_dilation,
                         batch_size, num_workers, pin_memory, geometric,
                         train_supervision, superpixel_min_size, superpixel_sigma, superpixel_neighbour,
                         slice_context)
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.shape, self.distractors, self.seed = tuple(int(s) for s in shape), distractors, seed
        self.stool_probability = stool_probability

    def raw_volumes(self, split: str) -> list[RawVolume]:
        offset = {"train": 0, "val": 10_000, "test": 20_000}[split]
        volumes = []
        for i in range(self.counts[split]):
            rng = np.random.default_rng(self.seed * 100_003 + offset + i)
            hu, labels, organs = synthetic_ct_colon(rng, self.shape, distractors=self.distractors,
                                                     stool_probability=self.stool_probability)
            volumes.append(RawVolume(f"{split}{i:03d}", hu, labels, organs))
        return volumes
