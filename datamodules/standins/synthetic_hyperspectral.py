"""Offline stand-in for MDC: synthetic microscopic hyperspectral scenes whose lesion is carried by its spectrum.

Each scene (C = 60 bands, default 64 x 96 pixels: the U-Net needs multiples of 32):

- tissue: a smooth random texture T(x) in [0.5, 1.5] (Gaussian-filtered noise) times a background spectrum
  s_bg(lambda) = sum of two Gaussian bumps (random centres / widths per scene) + an offset;
- lesion: 1-3 random elliptic blobs whose spectrum is s_bg(lambda) * (1 - depth * dip(lambda)) * (1 + slope *
  (lambda - 0.5)), dip a Gaussian absorption band centred on bands 30-42 (``depth`` 5 % by default, the
  spectral cue) -- so one band shows the lesion only as a few-percent change buried in the texture's
  +-50 %, while the band ratios inside/outside the dip reveal it;
- multiplicative speckle noise (3 %).

``write_mdc_tree(root, ...)`` writes scenes in MDC's on-disk layout (ENVI ``MHSI/<scene>.hdr`` + ``.img`` via
``spectral.envi.save_image``, ``Mask/<scene>.png`` 0/255, ``train_val_test.json``), so the real reader can be
exercised on them; ``SyntheticHyperspectralDataModule`` serves the scenes from memory (same item format and
preprocessing as ``datamodules.mdc``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.base import BaseDataModule
from datamodules.mdc import CUBE_DIR, MASK_DIR, SPLIT_FILE, HyperspectralDataset, hsi_augmentation


def synthetic_scene(rng: np.random.Generator, bands: int = 60, size: Sequence[int] = (64, 96),
                    depth: float = 0.05, slope: float = 0.03, noise: float = 0.03, dip_width: float = 0.06,
                    lesion: Optional[bool] = None, lesion_size: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) float32 cube and (H, W) uint8 mask (0/255); ``lesion_size`` scales the ellipses' axes."""
    h, w = size
    lam = np.linspace(0.0, 1.0, bands)
    centres, widths = rng.uniform([0.15, 0.55], [0.45, 0.9]), rng.uniform(0.08, 0.2, 2)
    s_bg = 0.3 + sum(a * np.exp(-0.5 * ((lam - c) / s) ** 2)
                     for a, c, s in zip(rng.uniform(0.5, 1.0, 2), centres, widths))
    dip_centre = rng.uniform(30, 42) / 59  # bands 30-42 of 60, the same wavelengths for any band count
    dip = np.exp(-0.5 * ((lam - dip_centre) / dip_width) ** 2)
    s_lesion = s_bg * (1 - depth * dip) * (1 + slope * (lam - 0.5))
    texture = gaussian_filter(rng.standard_normal((h, w)), sigma=rng.uniform(2.0, 4.0))
    texture = 1.0 + 0.5 * np.clip(texture / (texture.std() + 1e-8), -2, 2) / 2
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(1, 4) if lesion is not False else 0):
        centre = (int(rng.integers(w // 6, w - w // 6)), int(rng.integers(h // 6, h - h // 6)))
        axes = tuple(int(lesion_size * rng.integers(side // 12, side // 5)) for side in (w, h))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    m = (mask > 0)[..., None]
    cube = texture[..., None] * np.where(m, s_lesion, s_bg)
    cube = cube * (1 + noise * rng.standard_normal(cube.shape))
    return cube.astype(np.float32), mask


def synthetic_scenes(count: int, seed: int = 0, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [synthetic_scene(rng, **kwargs) for _ in range(count)]


def write_mdc_tree(root, counts: Sequence[int] = (3, 1, 1), seed: int = 0, prefix: str = "P", **kwargs) -> Path:
    """Write train/val/test scenes in MDC's layout (ENVI + PNG + split JSON); returns ``root``."""
    import spectral.io.envi as envi

    root = Path(root)
    (root / CUBE_DIR).mkdir(parents=True, exist_ok=True)
    (root / MASK_DIR).mkdir(parents=True, exist_ok=True)
    split, index = {}, 0
    for part, count in zip(("train", "val", "test"), counts):
        split[part] = []
        for cube, mask in synthetic_scenes(count, seed + index, **kwargs):
            name = f"{prefix}{index:03d}-20x-roi1"
            envi.save_image(str(root / CUBE_DIR / f"{name}.hdr"), cube, dtype=np.float32, ext=".img", force=True,
                            interleave="bsq")
            cv2.imwrite(str(root / MASK_DIR / f"{name}.png"), mask)
            split[part].append(f"{name}.hdr")
            index += 1
    (root / SPLIT_FILE).write_text(json.dumps(split, indent=1))
    return root


class SyntheticHyperspectralDataModule(BaseDataModule):
    """Synthetic MDC-like scenes served from memory (train / val / test = ``num_images``, seeded)."""

    def __init__(self, num_images: Sequence[int] = (48, 12, 12), bands: int = 60,
                 image_size: Sequence[int] = (64, 96), depth: float = 0.05, slope: float = 0.03,
                 noise: float = 0.03, dip_width: float = 0.06, lesion_size: float = 1.0, augment: bool = True,
                 augment_p: float = 0.2, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_images, self.seed = tuple(num_images), seed
        self.scene_kwargs = dict(bands=bands, size=tuple(image_size), depth=depth, slope=slope, noise=noise,
                                 dip_width=dip_width, lesion_size=lesion_size)
        self.augment, self.augment_p = augment, augment_p

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        sets = []
        for offset, count in enumerate(self.num_images):
            scenes = synthetic_scenes(count, self.seed + 1000 * offset, **self.scene_kwargs)
            names = [f"syn{offset}_{i:03d}" for i in range(count)]
            sets.append((scenes, names))

        def loader(scenes, names):
            return lambda i: (scenes[i][0], scenes[i][1], names[i])

        aug = hsi_augmentation(self.augment_p) if self.augment else None
        self.train_set = HyperspectralDataset(loader(*sets[0]), len(sets[0][0]), None, aug)
        self.val_set = HyperspectralDataset(loader(*sets[1]), len(sets[1][0]), None)
        self.test_set = HyperspectralDataset(loader(*sets[2]), len(sets[2][0]), None)
