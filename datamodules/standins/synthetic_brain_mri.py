"""Offline stand-in for EdgeHier-BT: synthetic T1-CE-like axial slices (default 128x128, 100 per class).

Each slice: an elliptical bright skull ring, grey brain with smooth texture, two dark ventricles and Rician
noise (magnitude of a complex Gaussian-corrupted signal), plus one lesion:

- pituitary: a small bright round blob (r 5-8 px) at the midline, lower-central (the sella);
- meningioma: a round homogeneous very bright mass (r 8-16 px) touching the inner skull (extra-axial);
- glioma: an irregular intra-parenchymal mass (r 8-18 px): ring-enhancing rim, dark necrotic core,
  hypointense oedema halo.

Slices are grouped into fake patients (``slices_per_patient``) so the ``patient`` split runs; the edge pipeline
and every other argument are those of ``FigshareBrainTumorDataModule``. Deterministic given ``seed``.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from datamodules.figshare_brain_tumor import CLASSES, FigshareBrainTumorDataModule
from datamodules.image_classification import ClassificationItem


def _smooth(rng, size, sigma):
    field = gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-8)


def _disc(yy, xx, cy, cx, r, soft=1.0):
    return np.clip((r - np.hypot(yy - cy, xx - cx)) / soft + 0.5, 0.0, 1.0)


def synthetic_brain_slice(label: int, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One size x size uint8 slice of class ``CLASSES[label]`` (glioma, meningioma, pituitary)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size / 2
    cy, cx = c + rng.uniform(-2, 2), c + rng.uniform(-2, 2)
    ry, rx = size * rng.uniform(0.40, 0.45), size * rng.uniform(0.33, 0.38)
    rho = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    thickness = rng.uniform(0.06, 0.09)
    brain = np.clip((1 - thickness - rho) * size / 4 + 0.5, 0, 1)
    skull = np.clip((1 - rho) * size / 4 + 0.5, 0, 1) - brain
    signal = 0.05 + 0.85 * skull + brain * (0.42 + 0.04 * _smooth(rng, size, size / 16))
    for side in (-1, 1):  # lateral ventricles: dark ellipses either side of the midline
        vy, vx = cy - size * 0.04, cx + side * size * rng.uniform(0.06, 0.08)
        vent = np.clip(1.2 - np.hypot((yy - vy) / (size * 0.10), (xx - vx) / (size * 0.035)), 0, 1) ** 0.5
        signal = signal * (1 - 0.75 * np.clip(vent * 2, 0, 1))
    name = CLASSES[label]
    if name == "pituitary":
        r = rng.uniform(5, 8) * size / 128
        signal = np.maximum(signal, 0.95 * _disc(yy, xx, cy + ry * rng.uniform(0.35, 0.5), cx + rng.uniform(-2, 2), r))
    elif name == "meningioma":
        r = rng.uniform(8, 16) * size / 128
        angle = rng.uniform(0, 2 * np.pi)
        inner = 1 - thickness  # centre so the mass touches the inner table of the skull
        my = cy + (ry * inner - r * 0.8) * np.sin(angle)
        mx = cx + (rx * inner - r * 0.8) * np.cos(angle)
        signal = np.maximum(signal, 0.97 * _disc(yy, xx, my, mx, r) * brain)
    else:  # glioma: irregular ring-enhancing intra-axial mass with necrotic core and oedema
        r = rng.uniform(8, 18) * size / 128
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.45)
        gy, gx = cy + ry * dist * np.sin(angle), cx + rx * dist * np.cos(angle)
        theta = np.arctan2(yy - gy, xx - gx)
        wobble = 1 + 0.18 * np.sin(3 * theta + rng.uniform(0, 6)) + 0.1 * np.sin(5 * theta + rng.uniform(0, 6))
        dd = np.hypot(yy - gy, xx - gx) / wobble
        oedema = np.clip((r * 1.6 - dd) / 2 + 0.5, 0, 1) * brain
        signal = signal * (1 - 0.35 * oedema)
        rim = np.clip(1 - np.abs(dd - r * 0.8) / (r * 0.22), 0, 1)
        core = np.clip((r * 0.6 - dd) / 1.5 + 0.5, 0, 1)
        signal = np.where(rim > 0, np.maximum(signal, 0.9 * rim), signal) * (1 - 0.8 * core)
    sigma = 0.03
    noisy = np.hypot(signal + rng.normal(0, sigma, signal.shape), rng.normal(0, sigma, signal.shape))  # Rician
    return np.clip(noisy / 1.05 * 255, 0, 255).astype(np.uint8)


class SyntheticBrainMRIDataModule(FigshareBrainTumorDataModule):
    """``per_class`` synthetic slices per class at ``source_size``; every other argument as the real reader's
    (edge pipeline, ``image_size``, splits, ``epoch_multiplier``, augmentation)."""

    def __init__(self, per_class: int = 100, source_size: int = 128, seed: int = 0, slices_per_patient: int = 10,
                 **kwargs):
        kwargs.setdefault("data_dir", "")
        super().__init__(**kwargs)
        self.per_class, self.source_size, self.seed = per_class, source_size, seed
        self.slices_per_patient = slices_per_patient

    def prepare_data(self) -> None:
        pass

    def list_items(self) -> list[ClassificationItem]:
        rng = np.random.default_rng(self.seed)
        items = []
        for label in range(len(CLASSES)):
            for i in range(self.per_class):
                items.append(ClassificationItem(synthetic_brain_slice(label, rng, self.source_size), label,
                                                group=f"{CLASSES[label]}_p{i // self.slices_per_patient:03d}",
                                                name=f"{CLASSES[label]}_{i:03d}"))
        return items
