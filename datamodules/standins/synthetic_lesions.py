"""Offline stand-in for 2D lesion segmentation: synthetic images with a textured background and a lesion.

Two kinds, both with the batch keys of the real datasets (``image``, ``mask``, ``name``, ``label``):

- ``skin`` (dermoscopy-like, RGB): a skin-coloured field with low-frequency colour variation and
  fine texture; the lesion is darker and shifted towards brown, with its own mottled texture, a soft
  edge and a dark rim of random strength; Gaussian noise.
- ``ultrasound`` (B-mode-like, grayscale): horizontal tissue layers with smooth echo texture, a
  hypoechoic lesion (intensity x ``lesion_contrast``) with a blurred rim and posterior enhancement or
  shadowing, multiplicative Rayleigh speckle and a log-compression-like gamma; a fraction of
  "normal" images without lesion (empty masks) exercises specificity and stratified batches.

Lesions are random ellipses or blobs of ``skimage.data.binary_blobs`` of varied size and shape. Every
image follows from ``(seed, split, index)`` alone, so a split is the same whatever else is generated.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage import measure

from datamodules.base import BaseDataModule
from datamodules.segmentation import TransformedSegmentationDataset, build_transform, resolve_augmentation

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
CLASSES = ("lesion", "normal")


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise, rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / max(field.std(), 1e-8)


def lesion_mask(rng: np.random.Generator, size: tuple[int, int], min_radius: float = 0.08,
                max_radius: float = 0.3) -> np.ndarray:
    """A boolean lesion: an ellipse (random axes and angle) or a binary_blobs component, fully inside."""
    h, w = size
    scale = min(h, w)
    radius = rng.uniform(min_radius, max_radius) * scale
    cy = rng.uniform(radius + 2, h - radius - 2) if h > 2 * radius + 4 else h / 2
    cx = rng.uniform(radius + 2, w - radius - 2) if w > 2 * radius + 4 else w / 2
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:
        ratio = rng.uniform(0.5, 1.0)
        angle = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        # an irregular outline: the radius varies smoothly with the polar angle
        theta = np.arctan2(v, u)
        wobble = 1 + 0.12 * rng.standard_normal() * np.sin(3 * theta + rng.uniform(0, 2 * np.pi))
        return (u / radius) ** 2 + (v / (radius * ratio)) ** 2 <= wobble ** 2
    # a blob: the largest connected component of binary_blobs, its bounding box resized (bilinear,
    # then thresholded: smooth outlines) to about 2 * radius and placed at the centre
    from skimage.transform import resize

    blobs = skdata.binary_blobs(length=64, blob_size_fraction=rng.uniform(0.15, 0.35), n_dim=2,
                                volume_fraction=0.3, rng=int(rng.integers(0, 2**31 - 1)))
    labels = measure.label(blobs)
    if labels.max() == 0:
        return (rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    ys, xs = np.nonzero(largest)
    crop = largest[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    zoom = 2 * radius / max(crop.shape)
    shape = (max(2, round(crop.shape[0] * zoom)), max(2, round(crop.shape[1] * zoom)))
    shape = (min(shape[0], h - 2), min(shape[1], w - 2))
    blob = resize(crop, shape, order=1, anti_aliasing=True) > 0.5
    top = int(np.clip(round(cy - shape[0] / 2), 1, h - shape[0] - 1))
    left = int(np.clip(round(cx - shape[1] / 2), 1, w - shape[1] - 1))
    mask = np.zeros(size, dtype=bool)
    mask[top:top + shape[0], left:left + shape[1]] = blob
    return ndimage.binary_fill_holes(mask)


def skin_image(rng: np.random.Generator, size: tuple[int, int], noise_std: float = 0.05):
    """(H, W, 3) uint8 dermoscopy-like image and its (H, W) uint8 0/1 lesion mask."""
    h, w = size
    base = np.array([0.85, 0.66, 0.56]) * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04, 3)
    low = _smooth_noise(rng, size, max(h, w) / 6)[..., None] * rng.uniform(0.02, 0.06, 3)
    fine = _smooth_noise(rng, size, 1.0)[..., None] * 0.025
    image = base + low + fine
    mask = lesion_mask(rng, size)
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), rng.uniform(0.8, 2.0))[..., None]
    lesion_colour = base * np.array([0.45, 0.33, 0.30]) * rng.uniform(0.7, 1.3)
    mottling = _smooth_noise(rng, size, rng.uniform(1.5, 3.0))[..., None] * rng.uniform(0.03, 0.08)
    rim = np.clip(alpha * (1 - alpha) * 4, 0, 1) * rng.uniform(0.0, 0.15)  # a darker border in some lesions
    image = image * (1 - alpha) + (lesion_colour + mottling) * alpha - rim
    image = image + rng.normal(0, noise_std, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask.astype(np.uint8)


def ultrasound_image(rng: np.random.Generator, size: tuple[int, int], normal: bool = False,
                     speckle_std: float = 0.25, lesion_contrast: float = 0.35, gamma: float = 0.5):
    """(H, W, 1) uint8 B-mode-like image and its (H, W) uint8 0/1 mask (empty when ``normal``)."""
    h, w = size
    rows = np.arange(h, dtype=np.float32)[:, None] / h
    # tissue layers: a few horizontal bands with wavy boundaries and their own echogenicity
    depth = np.broadcast_to(rows, size) + 0.03 * _smooth_noise(rng, size, w / 6)
    boundaries = np.sort(rng.uniform(0.1, 0.9, rng.integers(2, 5)))
    echo = rng.uniform(0.35, 0.8, len(boundaries) + 1)
    tissue = echo[np.searchsorted(boundaries, depth)]
    tissue = ndimage.gaussian_filter(tissue, 1.0) * (1 + 0.25 * _smooth_noise(rng, size, 2.0))
    tissue = tissue * (1.0 - 0.35 * rows)  # depth attenuation
    mask = np.zeros(size, dtype=bool) if normal else lesion_mask(rng, size, 0.08, 0.25)
    if mask.any():
        soft = ndimage.gaussian_filter(mask.astype(np.float32), 1.2)
        tissue = tissue * (1 - soft * (1 - lesion_contrast))
        # posterior enhancement (cyst-like) or shadowing (solid) below the lesion
        columns = mask.any(axis=0)
        below = np.cumsum(mask, axis=0) > 0
        posterior = ndimage.gaussian_filter((below & ~mask & columns[None]).astype(np.float32), 2.0)
        tissue = tissue * (1 + rng.choice([-0.3, 0.3]) * posterior)
    rayleigh = rng.rayleigh(1.0, size)
    mean, std = np.sqrt(np.pi / 2), np.sqrt((4 - np.pi) / 2)
    speckle = np.clip(1 + speckle_std * (rayleigh - mean) / std, 0.05, None)
    image = np.clip(tissue * speckle, 0, 1) ** gamma
    return (image * 255).astype(np.uint8)[..., None], mask.astype(np.uint8)


def generate(kind: str, seed: int, split: str, index: int, size: tuple[int, int], normal_fraction: float):
    """One stand-in sample: (image HxWxC uint8, mask HxW uint8, class name)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    normal = rng.random() < normal_fraction
    if kind == "skin":
        if normal:
            image, mask = skin_image(rng, size)
            return image, np.zeros_like(mask), "normal"  # (skin with the lesion removed is not drawn)
        image, mask = skin_image(rng, size)
        return image, mask, "lesion"
    if kind == "ultrasound":
        image, mask = ultrasound_image(rng, size, normal=normal)
        return image, mask, "normal" if normal else "lesion"
    raise ValueError(f"kind must be 'skin' or 'ultrasound', got {kind!r}")


class ArraySegmentationDataset(TransformedSegmentationDataset):
    """In-memory (image, mask, name, label) samples through the same albumentations path as real data."""

    def __init__(self, samples: Sequence[tuple[np.ndarray, np.ndarray, str, int]], transform, channels: int):
        super().__init__(transform, binary=True)
        self.samples = list(samples)
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        image, mask, name, label = self.samples[index]
        if image.shape[-1] != self.channels:
            image = np.repeat(image, 3, axis=-1) if self.channels == 3 else image.mean(-1, keepdims=True).astype(np.uint8)
        return image, mask, name, label

    @property
    def items(self):  # what the stratified sampler reads: one object with a ``label`` per sample
        return [_Labelled(CLASSES[label]) for *_, label in self.samples]


class _Labelled:
    def __init__(self, label: str):
        self.label = label


class SyntheticLesionDataModule(BaseDataModule):
    """Synthetic lesion segmentation (see the module docstring); generated once in ``setup``.

    Args:
        kind: ``skin`` (RGB dermoscopy-like) or ``ultrasound`` (grayscale B-mode-like).
        image_size: an int or [height, width].
        num_train, num_val, num_test: samples per split.
        normal_fraction: share of images without lesion; ``None``: 0 for skin, 0.3 for ultrasound.
        channels: 3 or 1; ``None``: 3 for skin, 1 for ultrasound (grayscale is replicated to 3).
        normalization, augmentation: as ``datamodules.segmentation.SegmentationDataModule``.
        stratified_batches: equal lesion/normal counts per training batch.
        seed: every image follows from (seed, split, index).
    """

    standin_config = "experiments/saca_unet_demo.yaml"
    classes = CLASSES

    def __init__(self, kind: Literal["skin", "ultrasound"] = "skin", image_size: Union[int, Sequence[int]] = 64,
                 num_train: int = 256, num_val: int = 64, num_test: int = 64,
                 normal_fraction: Optional[float] = None, channels: Optional[int] = None,
                 normalization: Literal["imagenet", "unit"] = "imagenet", augmentation: str = "unext",
                 stratified_batches: bool = False, seed: int = 0, batch_size: int = 8, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None) -> None:
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if kind not in ("skin", "ultrasound"):
            raise ValueError(f"kind must be 'skin' or 'ultrasound', got {kind!r}")
        self.kind = kind
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.split_sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.normal_fraction = (0.0 if kind == "skin" else 0.3) if normal_fraction is None else normal_fraction
        self.channels = (3 if kind == "skin" else 1) if channels is None else channels
        self.normalization = normalization
        self.augmentation = augmentation
        self.stratified_batches = stratified_batches
        self.seed = seed
        resolve_augmentation(augmentation)

    def samples(self, split: str) -> list[tuple[np.ndarray, np.ndarray, str, int]]:
        out = []
        for index in range(self.split_sizes[split]):
            image, mask, label = generate(self.kind, self.seed, split, index, self.image_size, self.normal_fraction)
            out.append((image, mask, f"{self.kind}_{split}_{index:04d}", CLASSES.index(label)))
        return out

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        augmentation = resolve_augmentation(self.augmentation)
        train_transform = build_transform(self.image_size, self.channels, self.normalization, augmentation)
        eval_transform = build_transform(self.image_size, self.channels, self.normalization)
        self.train_set = ArraySegmentationDataset(self.samples("train"), train_transform, self.channels)
        self.val_set = ArraySegmentationDataset(self.samples("val"), eval_transform, self.channels)
        self.test_set = ArraySegmentationDataset(self.samples("test"), eval_transform, self.channels)
        self.predict_set = self.test_set

    def train_sampler(self, dataset):
        if not self.stratified_batches:
            return None
        from datamodules.segmentation import StratifiedBatchSampler

        return StratifiedBatchSampler([item.label for item in dataset.items], self.batch_size, seed=self.seed)
