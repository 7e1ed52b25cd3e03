"""POCUS-OOD out-of-distribution sets: the MNIST test images (idx file), a CCA image folder and the
CorruptPOCUS corruption (dark regions, blur, noise + speckle), seeded and deterministic per image."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.base import DatasetError


def read_mnist_idx(path: str | Path) -> np.ndarray:
    """``MNIST/raw/t10k-images-idx3-ubyte`` (optionally .gz) -> uint8 (N, 28, 28)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"MNIST idx file not found: {path} (layout MNIST/raw/t10k-images-idx3-ubyte; "
                           "stand-in: sklearn digits, experiments/pocus_ood_demo.yaml)")
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    magic, n, h, w = (int.from_bytes(data[i:i + 4], "big") for i in range(0, 16, 4))
    if magic != 2051 or len(data) != 16 + n * h * w:
        raise DatasetError(f"corrupt MNIST idx file {path} (magic {magic}, {len(data)} bytes)")
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, h, w).copy()


def corrupt_pocus(image: np.ndarray, seed: int, dark_regions: tuple[int, int] = (1, 3),
                  dark_factor: tuple[float, float] = (0.0, 0.3), blur_sigma: tuple[float, float] = (1.0, 3.0),
                  noise_sigma: tuple[float, float] = (0.05, 0.15)) -> np.ndarray:
    """uint8 (H, W) -> uint8 (H, W): 1-3 dark regions (ellipses or vertical shadow bands from a random depth to
    the bottom) multiplied by U(0, 0.3), Gaussian blur sigma ~ U(1, 3), additive Gaussian noise
    sigma ~ U(0.05, 0.15) plus multiplicative speckle. Same (image, seed) -> same output."""
    rng = np.random.default_rng(seed)
    x = image.astype(np.float64) / 255.0
    h, w = x.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(rng.integers(dark_regions[0], dark_regions[1] + 1)):
        mask = np.zeros((h, w), bool)
        if rng.random() < 0.5:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.1, 0.3) * h, rng.uniform(0.1, 0.3) * w
            mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            x0, bw, top = rng.uniform(0, w), rng.uniform(0.05, 0.25) * w, rng.uniform(0, 0.7) * h
            mask = (xx >= x0) & (xx < x0 + bw) & (yy >= top)
        x = np.where(mask, x * rng.uniform(*dark_factor), x)
    x = gaussian_filter(x, rng.uniform(*blur_sigma))
    x = x * rng.gamma(4.0, 0.25, size=x.shape) + rng.normal(0, rng.uniform(*noise_sigma), size=x.shape)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)
