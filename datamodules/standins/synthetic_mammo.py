"""Offline stand-in for calcification-cluster detection: synthetic mammograms (the SwinCalc card's recipe).

Each image (default 256 x 160, H x W) has a half-elliptic breast at the left edge whose tissue is Gaussian-filtered
noise (sigma 4-8 px) over a radial fall-off towards the skin line, plus faint pixel noise. Half the images are
positive: 1-2 clusters of 6-15 bright dots (radius 1-2 px, +0.3-0.6 over the tissue) inside a disk of 16-32 px
diameter; a cluster's box is its dots' bounding box + 2 px. Every image also carries 0-3 isolated dots of the same
brightness away from the clusters (on normal images too), so a detector must learn "cluster", not "bright dot".
Images follow from ``(seed, split, index)`` alone; each is its own "patient".
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from datamodules.detection import DetectionDataModule, DetectionItem

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _disk(image: np.ndarray, cy: float, cx: float, radius: float, value: float) -> None:
    h, w = image.shape
    r = int(np.ceil(radius)) + 1
    r0, r1, c0, c1 = max(0, int(cy) - r), min(h, int(cy) + r + 1), max(0, int(cx) - r), min(w, int(cx) + r + 1)
    if r1 <= r0 or c1 <= c0:
        return
    rows, cols = np.mgrid[r0:r1, c0:c1]
    dist = np.sqrt((rows - cy) ** 2 + (cols - cx) ** 2)
    image[r0:r1, c0:c1] += value * np.clip(radius + 0.5 - dist, 0.0, 1.0)


def synthetic_mammogram(rng: np.random.Generator, size: Sequence[int] = (256, 160), positive: bool = True,
                        max_distractors: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """One image (H, W) float32 in about [0, 1.5] and its cluster boxes (N, 4) pixel (x1, y1, x2, y2)."""
    h, w = int(size[0]), int(size[1])
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    ay, ax = h * rng.uniform(0.42, 0.48), w * rng.uniform(0.8, 0.95)
    cy = h / 2 + rng.uniform(-0.04, 0.04) * h
    radial = np.sqrt(((rows - cy) / ay) ** 2 + (cols / ax) ** 2)
    breast = radial <= 1.0
    tissue = ndimage.gaussian_filter(rng.standard_normal((h, w)), rng.uniform(4, 8))
    tissue = tissue / max(tissue.std(), 1e-8)
    falloff = np.clip(1.0 - radial ** 4, 0.0, 1.0)
    image = np.where(breast, 0.35 * falloff + 0.08 * tissue * falloff + 0.1, 0.0).astype(np.float32)

    inside = np.argwhere(breast & (radial < 0.8))
    boxes = []
    centres = []
    if positive:
        for _ in range(rng.integers(1, 3)):
            for _attempt in range(20):
                y, x = inside[rng.integers(len(inside))]
                if all((y - cy_) ** 2 + (x - cx_) ** 2 > 40 ** 2 for cy_, cx_ in centres):
                    break
            centres.append((y, x))
            disk_radius = rng.uniform(8, 16)
            dots = []
            for _ in range(rng.integers(6, 16)):
                angle, dist = rng.uniform(0, 2 * np.pi), disk_radius * np.sqrt(rng.uniform())
                dy, dx = y + dist * np.sin(angle), x + dist * np.cos(angle)
                radius = rng.uniform(1.0, 2.0)
                _disk(image, dy, dx, radius, rng.uniform(0.3, 0.6))
                dots.append((dx - radius, dy - radius, dx + radius, dy + radius))
            dots = np.asarray(dots)
            box = [dots[:, 0].min() - 2, dots[:, 1].min() - 2, dots[:, 2].max() + 2, dots[:, 3].max() + 2]
            boxes.append(np.clip(box, 0, [w, h, w, h]))
    for _ in range(rng.integers(0, max_distractors + 1)):
        for _attempt in range(20):
            y, x = inside[rng.integers(len(inside))]
            if all((y - cy_) ** 2 + (x - cx_) ** 2 > 30 ** 2 for cy_, cx_ in centres):
                break
        _disk(image, y, x, rng.uniform(1.0, 2.0), rng.uniform(0.3, 0.6))
    image += 0.01 * rng.standard_normal((h, w)).astype(np.float32)
    return image.astype(np.float32), np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


class SyntheticMammoDataModule(DetectionDataModule):
    """Synthetic mammograms with calcification clusters (see the module docstring).

    Args:
        num_train, num_val, num_test: images per split (the card: 48 / 16 / 16).
        image_size: (H, W).
        positive_fraction: share of images with clusters.
        max_distractors: isolated dots per image, drawn from 0..max.
        seed: generator seed.
        input_hw, aug_p, augment, batch_size, ...: DetectionDataModule's (input_hw None keeps image_size; no
            breast crop: the generator's frame is the crop).
    """

    def __init__(self, num_train: int = 48, num_val: int = 16, num_test: int = 16,
                 image_size: Sequence[int] = (256, 160), positive_fraction: float = 0.5, max_distractors: int = 3,
                 seed: int = 0, input_hw: Optional[Sequence[int]] = None, aug_p: float = 0.5, augment: bool = True,
                 batch_size: int = 4, num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(input_hw=input_hw, crop_breast=False, aug_p=aug_p, augment=augment,
                         batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.image_size = [int(v) for v in image_size]
        self.positive_fraction, self.max_distractors, self.seed = positive_fraction, max_distractors, seed

    def items(self, split: str) -> list[DetectionItem]:
        out = []
        for index in range(self.counts[split]):
            rng = np.random.default_rng([self.seed, SPLIT_IDS[split], index])
            positive = index < round(self.positive_fraction * self.counts[split])
            image, boxes = synthetic_mammogram(rng, self.image_size, positive, self.max_distractors)
            name = f"{split}_{index:04d}"
            out.append(DetectionItem(image, boxes, patient=name, name=name))
        return out

    def list_items(self) -> list[DetectionItem]:
        return [item for split in ("train", "val", "test") for item in self.items(split)]

    def split_items(self, items):
        n_train, n_val = self.counts["train"], self.counts["val"]
        indices = list(range(len(items)))
        return indices[:n_train], indices[n_train:n_train + n_val], indices[n_train + n_val:]
