"""Offline stand-in for 2D lesion segmentation: synthetic images with a textured background and a lesion; and, on
the same skin, the ABCD lesions of the ABCDE-rule analysis (``SyntheticDermoscopyDataModule``, below).

Two kinds of segmentation images, both with the batch keys of the real datasets (``image``, ``mask``, ``name``,
``label``):

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


def skin_field(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The skin: its base colour (3,) and the (H, W, 3) float field in [0, 1] (low-frequency colour variation and
    fine texture)."""
    h, w = size
    base = np.array([0.85, 0.66, 0.56]) * rng.uniform(0.85, 1.1) + rng.uniform(-0.04, 0.04, 3)
    low = _smooth_noise(rng, size, max(h, w) / 6)[..., None] * rng.uniform(0.02, 0.06, 3)
    fine = _smooth_noise(rng, size, 1.0)[..., None] * 0.025
    return base, base + low + fine


def skin_image(rng: np.random.Generator, size: tuple[int, int], noise_std: float = 0.05):
    """(H, W, 3) uint8 dermoscopy-like image and its (H, W) uint8 0/1 lesion mask."""
    base, image = skin_field(rng, size)
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


# ---------------------------------------------------------------------------------------------------------------
# ABCD lesions: the ABCDE-rule analysis' stand-in (classification with exact masks)
# ---------------------------------------------------------------------------------------------------------------
#: the stand-in's classes, named as ISIC 2019's (melanoma, nevus, benign keratosis)
ABCD_CLASSES = ("MEL", "NV", "BKL")
#: the four cues, each typical (benign-like) or atypical (melanoma-like) per lesion
ABCD_CUES = ("asymmetry", "border", "colour", "diameter")
#: melanoma colours (RGB in [0, 1]): dark brown, black, blue-grey, red
_ATYPICAL_COLOURS = np.array([[0.30, 0.17, 0.10], [0.08, 0.06, 0.06], [0.38, 0.45, 0.55], [0.62, 0.22, 0.20]])


def abcd_cues(rng: np.random.Generator, label: int, p_malignant_cue: float = 0.7,
              p_benign_cue: float = 0.1) -> dict[str, bool]:
    """Which cues are atypical: each independently with ``p_malignant_cue`` for a melanoma (label 0), with
    ``p_benign_cue`` for a benign lesion, so no single cue decides the class and removing one costs some signal."""
    p = p_malignant_cue if label == 0 else p_benign_cue
    return {cue: bool(rng.random() < p) for cue in ABCD_CUES}


def abcd_lesion_image(rng: np.random.Generator, label: int, size: int = 96, p_malignant_cue: float = 0.7,
                      p_benign_cue: float = 0.1, noise_std: float = 0.03):
    """One dermoscopy-like image (size x size x 3 uint8), its lesion mask (uint8 0/1) and its cues.

    The lesion outline is polar, r(theta) = r0 (1 + sum_k a_k cos(k theta + phi_k)), centred near the image centre:

    - diameter: r0 in [0.12, 0.24] of the side (typical) or [0.26, 0.42] (atypical: some lesions leave the image);
    - asymmetry: harmonic 2 (an ellipse, symmetric) always; atypical lesions add odd harmonics 1 and 3
      (amplitudes 0.12-0.25, 0.08-0.18), typical ones at most 0.04;
    - border: typical outlines are smooth with a soft edge (blur 1.2-2 px at 96 px); atypical ones add three
      harmonics of order 7-13 (0.04-0.08 each) and a sharp edge (0.5 px);
    - colour: one brown (NV) or a light tan with fine waxy texture (BKL); atypical lesions add 2-4 patches of dark
      brown, black, blue-grey or red (thresholded smooth noise inside the lesion).

    MEL is label 0, NV 1, BKL 2 (``ABCD_CLASSES``).
    """
    cues = abcd_cues(rng, label, p_malignant_cue, p_benign_cue)
    shape = (size, size)
    base, image = skin_field(rng, shape)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.4, 0.6, 2) * size
    r0 = rng.uniform(*((0.26, 0.42) if cues["diameter"] else (0.12, 0.24))) * size
    theta = np.arctan2(yy - cy, xx - cx)
    radius = 1.0 + rng.uniform(0.0, 0.15) * np.cos(2 * theta + rng.uniform(0, 2 * np.pi))
    odd = ((0.12, 0.25), (0.08, 0.18)) if cues["asymmetry"] else ((0.0, 0.04), (0.0, 0.04))
    for k, (low, high) in zip((1, 3), odd):
        radius = radius + rng.uniform(low, high) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    if cues["border"]:
        for k in rng.choice(np.arange(7, 14), 3, replace=False):
            radius = radius + rng.uniform(0.04, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    distance = np.hypot(yy - cy, xx - cx)
    mask = distance <= r0 * radius
    softness = (0.5 if cues["border"] else rng.uniform(1.2, 2.0)) * size / 96
    alpha = ndimage.gaussian_filter(mask.astype(np.float32), softness)[..., None]
    if label == 2:  # BKL: light tan, waxy fine texture
        colour = base * np.array([0.72, 0.60, 0.52]) * rng.uniform(0.9, 1.1)
        texture = _smooth_noise(rng, shape, 0.8)[..., None] * 0.06
    else:  # MEL / NV: brown
        colour = base * np.array([0.50, 0.36, 0.30]) * rng.uniform(0.8, 1.15)
        texture = _smooth_noise(rng, shape, rng.uniform(1.5, 3.0))[..., None] * 0.04
    lesion = colour + texture
    if cues["colour"]:
        inside = ndimage.gaussian_filter(mask.astype(np.float32), size / 48)[..., None]
        for c in rng.choice(len(_ATYPICAL_COLOURS), int(rng.integers(2, 5)), replace=True):
            blob = np.clip((_smooth_noise(rng, shape, size / 16) - rng.uniform(0.3, 0.9)) * 3.0, 0, 1)[..., None]
            lesion = lesion * (1 - 0.85 * blob * inside) + _ATYPICAL_COLOURS[c] * 0.85 * blob * inside
    image = image * (1 - alpha) + lesion * alpha
    image = image + rng.normal(0, noise_std, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), mask.astype(np.uint8), cues


from datamodules.debasing import DebasedDataModule, DermoscopyItem  # noqa: E402 (debasing imports this package's base)


class SyntheticDermoscopyDataModule(DebasedDataModule):
    """The ABCDE-rule analysis' stand-in: ``num_images`` ABCD lesions (``abcd_lesion_image``) with exact masks, of
    class MEL / NV / BKL drawn with ``class_probs``, split stratified by the base (``test_size``, ``val_fraction``;
    the card's 240 / 60 / 120), debased like the real data (``DebasedDataModule``). Deterministic given ``seed``.

    Args:
        num_images: images in all (420 = 240 train + 60 val + 120 test with the defaults).
        source_size: side of the generated images (the ``pre_size`` of the real data's pipeline).
        class_probs: P(MEL), P(NV), P(BKL).
        p_malignant_cue, p_benign_cue: probability that a cue is atypical in a melanoma / a benign lesion.
        **kwargs: ``DebasedDataModule`` 's (debase, with_mask, image_size, augmentation, ...).
    """

    standin_config = "experiments/abcde_demo.yaml"
    classes = ABCD_CLASSES

    def __init__(self, num_images: int = 420, source_size: int = 96, class_probs: Sequence[float] = (0.3, 0.5, 0.2),
                 p_malignant_cue: float = 0.7, p_benign_cue: float = 0.1, seed: int = 0,
                 image_size: Union[int, Sequence[int]] = 96, test_size: float = 120 / 420,
                 val_fraction: float = 0.2, **kwargs):
        kwargs.setdefault("pre_size", None)
        super().__init__("", image_size=image_size, test_size=test_size, val_fraction=val_fraction, **kwargs)
        if len(class_probs) != 3 or abs(sum(class_probs) - 1) > 1e-6:
            raise ValueError(f"class_probs needs 3 probabilities summing to 1, got {list(class_probs)}")
        self.num_images, self.source_size, self.seed = num_images, source_size, seed
        self.class_probs = tuple(float(p) for p in class_probs)
        self.p_malignant_cue, self.p_benign_cue = p_malignant_cue, p_benign_cue
        self.cues: dict[str, dict[str, bool]] = {}

    def list_items(self) -> list[DermoscopyItem]:
        labels = np.random.default_rng([self.seed, 0]).choice(3, self.num_images, p=self.class_probs)
        items = []
        for index, label in enumerate(labels):
            rng = np.random.default_rng([self.seed, 1, index])
            image, mask, cues = abcd_lesion_image(rng, int(label), self.source_size, self.p_malignant_cue,
                                                  self.p_benign_cue)
            name = f"{ABCD_CLASSES[label]}_{index:04d}"
            self.cues[name] = cues
            items.append(DermoscopyItem(image, int(label), name=name, mask=mask))
        return items
