"""Offline stand-in for affine histology registration (ANHIR): real tissue from the scikit-image wheel.

``skimage.data.immunohistochemistry()`` (512 x 512 RGB IHC section) is separated into its haematoxylin, eosin and
DAB channels (``rgb2hed``). Each pair takes a random crop of the section (``crop_size`` px, resampled to
``image_size``): the source sees it as it is, the target through a known random affine (rotation, scale, shear,
translation) plus a mild smooth elastic displacement; each image gets its own "stain" (the H, E, D channels scaled
independently, ``hed2rgb``), then both are turned grey, inverted and normalised to [0, 1] as UnFeMa preprocesses
ANHIR. Landmarks are random tissue points of the target and their exact positions in the source, so rTRE before
and after registration is measurable. Batch keys as the ANHIR reader's: ``moving`` (source), ``fixed`` (target),
``moving_landmarks``, ``fixed_landmarks`` (K, 2) as (x, y) pixels, ``diagonal``.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule
from lightning_modules.batch import DIAGONAL, FIXED, FIXED_LANDMARKS, MOVING, MOVING_LANDMARKS


@functools.lru_cache(maxsize=1)
def ihc_hed() -> np.ndarray:
    """The IHC section as (H, W, 3) float32 haematoxylin / eosin / DAB optical densities."""
    from skimage import data
    from skimage.color import rgb2hed

    return rgb2hed(data.immunohistochemistry()).astype(np.float32)


def stain_to_grey(hed: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """HED densities x per-channel ``factors`` -> RGB -> grey, inverted and min-max normalised to [0, 1]."""
    from skimage.color import hed2rgb, rgb2gray

    grey = 1.0 - rgb2gray(np.clip(hed2rgb(hed * np.asarray(factors, np.float32)), 0.0, 1.0))
    low, high = float(grey.min()), float(grey.max())
    return ((grey - low) / max(high - low, 1e-6)).astype(np.float32)


def random_affine(rng: np.random.Generator, size: int, max_rotation: float, scale_range: Sequence[float],
                  max_shear: float, max_translation: float) -> np.ndarray:
    """(3, 3) pixel affine (target (x, y) -> source (x, y)) about the image centre."""
    centre = (size - 1) / 2.0
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    scale = rng.uniform(*scale_range, size=2)
    shear = math.radians(rng.uniform(-max_shear, max_shear))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    linear = rotation @ np.array([[1.0, math.tan(shear)], [0.0, 1.0]]) @ np.diag(scale)
    shift = rng.uniform(-max_translation, max_translation, size=2) * size
    matrix = np.eye(3)
    matrix[:2, :2] = linear
    matrix[:2, 2] = centre + shift - linear @ np.array([centre, centre])
    return matrix


class SyntheticIHCPairs(Dataset):
    """``num_pairs`` source/target pairs, pair i drawn from a generator seeded with (seed, i)."""

    def __init__(self, num_pairs: int, seed: int, image_size: int = 128, crop_size: int = 256,
                 num_landmarks: int = 20, max_rotation: float = 20.0, scale_range: Sequence[float] = (0.9, 1.1),
                 max_shear: float = 5.0, max_translation: float = 0.08, stain_range: Sequence[float] = (0.7, 1.3),
                 elastic_pixels: float = 1.0):
        self.num_pairs, self.seed = num_pairs, seed
        self.image_size, self.crop_size, self.num_landmarks = image_size, crop_size, num_landmarks
        self.max_rotation, self.scale_range, self.max_shear = max_rotation, tuple(scale_range), max_shear
        self.max_translation, self.stain_range, self.elastic_pixels = max_translation, tuple(stain_range), elastic_pixels

    def __len__(self) -> int:
        return self.num_pairs

    def _elastic(self, rng: np.random.Generator) -> np.ndarray:
        """A smooth (2, n, n) displacement in pixels (x, y), RMS about ``elastic_pixels``."""
        n = self.image_size
        coarse = rng.normal(size=(2, 6, 6))
        field = np.stack([ndimage.zoom(c, n / 6.0, order=3)[:n, :n] for c in coarse])
        rms = float(np.sqrt((field ** 2).mean())) or 1.0
        return (field * self.elastic_pixels / rms).astype(np.float32)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        hed = ihc_hed()
        n, step = self.image_size, self.crop_size / self.image_size
        margin = self.crop_size / 2.0 * math.sqrt(2.0) * 1.15
        centre_full = rng.uniform(margin, hed.shape[0] - 1 - margin, size=2)  # (x, y) in the full section
        affine = random_affine(rng, n, self.max_rotation, self.scale_range, self.max_shear, self.max_translation)
        elastic = self._elastic(rng)
        grid = np.stack(np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64)), -1)  # (y, x, [x, y])
        to_full = lambda p: centre_full + step * (p - (n - 1) / 2.0)  # noqa: E731  (source px -> section px)
        source_px = grid
        target_px = grid @ affine[:2, :2].T + affine[:2, 2] + elastic.transpose(1, 2, 0)  # where target pixels come from
        images = []
        for coords in (source_px, target_px):
            full = to_full(coords).astype(np.float32)
            sampled = cv2.remap(hed, full[..., 0], full[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            images.append(stain_to_grey(sampled, rng.uniform(*self.stain_range, size=3)))
        source, target = images
        # landmarks: tissue points of the target whose source positions lie inside the source image
        candidates = rng.uniform(0.1 * n, 0.9 * n - 1, size=(400, 2))
        rows, cols = np.clip(np.round(candidates[:, 1]).astype(int), 0, n - 1), np.clip(np.round(candidates[:, 0]).astype(int), 0, n - 1)
        displacement = elastic[:, rows, cols].T
        in_source = candidates @ affine[:2, :2].T + affine[:2, 2] + displacement
        tissue = target[rows, cols] > np.median(target)
        inside = np.all((in_source >= 0) & (in_source <= n - 1), axis=1)
        chosen = np.flatnonzero(tissue & inside)[: self.num_landmarks]
        fixed_points = np.full((self.num_landmarks, 2), np.nan, np.float32)
        moving_points = np.full((self.num_landmarks, 2), np.nan, np.float32)
        fixed_points[: len(chosen)] = candidates[chosen]
        moving_points[: len(chosen)] = in_source[chosen]
        return {
            MOVING: torch.from_numpy(source)[None],
            FIXED: torch.from_numpy(target)[None],
            MOVING_LANDMARKS: torch.from_numpy(moving_points),
            FIXED_LANDMARKS: torch.from_numpy(fixed_points),
            DIAGONAL: torch.tensor(math.hypot(n, n), dtype=torch.float32),
        }


class SyntheticIHCDataModule(BaseDataModule):
    """Synthetic multi-stain pairs from the scikit-image IHC section (the UnFeMa card's stand-in).

    Args:
        image_size: side of the square images (128: a 16 x 16 coarse grid). crop_size: side of the section crop.
        num_train, num_val, num_test: pairs per split (200 / 20 / 20), drawn with seeds seed, seed+1, seed+2.
        num_landmarks: landmarks per pair (20). The rest: the random transform and stain (see SyntheticIHCPairs).
    """

    def __init__(self, image_size: int = 128, crop_size: int = 256, num_train: int = 200, num_val: int = 20,
                 num_test: int = 20, num_landmarks: int = 20, max_rotation: float = 20.0,
                 scale_range: Sequence[float] = (0.9, 1.1), max_shear: float = 5.0, max_translation: float = 0.08,
                 stain_range: Sequence[float] = (0.7, 1.3), elastic_pixels: float = 1.0, seed: int = 0,
                 batch_size: int = 8, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.seed = seed
        self.pair_args = dict(image_size=image_size, crop_size=crop_size, num_landmarks=num_landmarks,
                              max_rotation=max_rotation, scale_range=scale_range, max_shear=max_shear,
                              max_translation=max_translation, stain_range=stain_range, elastic_pixels=elastic_pixels)

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_set, self.val_set, self.test_set = (
            SyntheticIHCPairs(self.sizes[split], self.seed + k, **self.pair_args)
            for k, split in enumerate(("train", "val", "test")))
