"""Offline stand-in for CutiViral: synthetic "clinical skin" photographs of the paper's four classes.

Each image (default 64x64 RGB) is a random skin tone with low-frequency shading and pixel noise, with:

- ``herpes_zoster``: 15-30 small vesicles (bright round blobs, radius 1.5-3 px, red halo) along a curved band
  (a dermatome stripe across the image);
- ``herpes_simplex``: one tight cluster of 5-12 vesicles on an erythematous patch;
- ``molluscum_contagiosum``: 3-10 scattered flesh-coloured dome papules (radius 3-5 px) with a dark central dimple;
- ``non_viral``: an irregular red-brown scaly plaque (thresholded smooth noise with scale flecks), no vesicles.

50 images per class as in the paper, split 35/15 per class by ``split_seed`` like the real data
(``CutiViralDataModule``), deterministic given ``seed``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.cutiviral import CLASSES, CutiViralDataModule, CutiViralItem

#: RGB skin tones from light to dark brown
SKIN_TONES = np.array([[236, 200, 170], [224, 180, 145], [200, 150, 115], [170, 120, 85], [135, 90, 62],
                       [105, 70, 48]], dtype=np.float32)


def _smooth(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-8)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:size, 0:size].astype(np.float32)


def _paint(image: np.ndarray, alpha: np.ndarray, color) -> None:
    image[:] = image * (1 - alpha[..., None]) + np.asarray(color, np.float32) * alpha[..., None]


def _disc(yy, xx, cy, cx, radius: float, softness: float = 0.7) -> np.ndarray:
    """Anti-aliased disc: 1 inside, 0 outside, a soft edge ~``softness`` px wide."""
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((radius - distance) / softness + 0.5, 0.0, 1.0)


def skin_background(rng: np.random.Generator, size: int) -> np.ndarray:
    tone = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08, 3)
    shading = 1.0 + 0.08 * _smooth(rng, size, size / 4)
    image = tone[None, None, :] * shading[..., None]
    return image + rng.normal(0, 3.0, image.shape)


def _vesicle(image, yy, xx, cy, cx, radius, rng) -> None:
    halo = _disc(yy, xx, cy, cx, radius * 2.0, softness=1.5) * 0.55
    _paint(image, halo, (200, 60, 55))
    _paint(image, _disc(yy, xx, cy, cx, radius), (250, 240, 215) * rng.uniform(0.95, 1.0, 3))
    _paint(image, _disc(yy, xx, cy - radius * 0.35, cx - radius * 0.35, radius * 0.35) * 0.8, (255, 255, 250))


def herpes_zoster(rng, image, yy, xx, size) -> None:
    angle = rng.uniform(0, np.pi)
    direction, normal = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    bend, offset = rng.uniform(-0.25, 0.25) * size, rng.uniform(-0.15, 0.15) * size
    for _ in range(int(rng.integers(15, 31))):
        t = rng.uniform(-0.45, 0.45) * size
        along = offset + bend * (2 * t / size) ** 2 + rng.normal(0, 0.04 * size)
        cy, cx = size / 2 + t * direction + along * normal
        _vesicle(image, yy, xx, cy, cx, rng.uniform(1.5, 3.0), rng)


def herpes_simplex(rng, image, yy, xx, size) -> None:
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    patch_radius = rng.uniform(0.14, 0.2) * size
    patch = _disc(yy + 0.25 * patch_radius * _smooth(rng, size, 4), xx, cy, cx, patch_radius, softness=3.0)
    _paint(image, patch * 0.6, (205, 75, 70))
    for _ in range(int(rng.integers(5, 13))):
        r, theta = patch_radius * 0.6 * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
        _vesicle(image, yy, xx, cy + r * np.sin(theta), cx + r * np.cos(theta), rng.uniform(1.5, 3.0), rng)


def molluscum(rng, image, yy, xx, size) -> None:
    base = image.mean(axis=(0, 1))
    for _ in range(int(rng.integers(3, 11))):
        cy, cx = rng.uniform(0.12, 0.88, 2) * size
        radius = rng.uniform(3.0, 5.0)
        dome = _disc(yy, xx, cy, cx, radius)
        height = np.sqrt(np.clip(1 - ((yy - cy) ** 2 + (xx - cx) ** 2) / radius ** 2, 0, 1))
        flesh = np.clip(base * 1.05 + np.array([18, 8, 10]), 0, 255)
        _paint(image, dome, flesh)
        image += (dome * height * 22.0)[..., None]  # the dome's highlight
        _paint(image, _disc(yy, xx, cy, cx, rng.uniform(0.8, 1.3), softness=0.6) * 0.85, base * 0.45)


def non_viral(rng, image, yy, xx, size) -> None:
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    radius = rng.uniform(0.2, 0.32) * size
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
    plaque = np.clip((blob + 0.35 * _smooth(rng, size, 3.0) - 0.55) * 6.0, 0, 1)
    color = np.array([150, 80, 60]) * rng.uniform(0.85, 1.1)
    _paint(image, plaque * 0.85, color)
    scale = (rng.uniform(size=(size, size)) > 0.8) * plaque
    _paint(image, gaussian_filter(scale.astype(np.float32), 0.5) * 0.6, (225, 205, 190))


PAINTERS = {"herpes_simplex": herpes_simplex, "herpes_zoster": herpes_zoster,
            "molluscum_contagiosum": molluscum, "non_viral": non_viral}


def synthetic_skin_image(label: int, seed: int, index: int, size: int = 64) -> np.ndarray:
    """One stand-in image (size x size x 3 uint8) of class ``CLASSES[label]``, deterministic in (seed, label, index)."""
    rng = np.random.default_rng([seed, label, index])
    image = skin_background(rng, size)
    yy, xx = _grid(size)
    PAINTERS[CLASSES[label]](rng, image, yy, xx, size)
    return np.clip(image, 0, 255).astype(np.uint8)


class SyntheticSkinDataModule(CutiViralDataModule):
    """``CutiViralDataModule`` on the synthetic images (``per_class`` per class, ``source_size`` px); every
    other argument (regime, splits, generated images, class filter, generation) as the real reader."""

    def __init__(self, per_class: int = 50, source_size: int = 64, seed: int = 0, image_size: int = 64,
                 standin_config: Optional[str] = None, **kwargs):
        super().__init__("", image_size=image_size, standin_config=standin_config, **kwargs)
        self.per_class, self.source_size, self.seed = per_class, source_size, seed

    def list_items(self):
        return [CutiViralItem(synthetic_skin_image(label, self.seed, i, self.source_size), label,
                              name=f"{name}_{i:03d}")
                for label, name in enumerate(CLASSES) for i in range(self.per_class)]
