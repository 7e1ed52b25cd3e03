"""Episodic sampling for slice-wise segmentation of volumes (the segmentation family's episodes), and the CT
preprocessing they share: Guided-SET-DCL's sequential episodic training, usable by any support/query model.

An **episode** (one training item, keys of ``lightning_modules/batch.py``) is:

- ``support_image`` (C, H, W) and ``support_mask`` (1, H, W): a labelled slice with foreground;
- ``image`` (C, H, W) and ``mask`` (1, H, W): the query slice, ``neighbour`` slices or fewer away from the support in
  the same scan and also with foreground (``support_mode: neighbour``, SET); or any other foreground slice of the scan
  (``support_mode: random``, classic few-shot episodes as in AAS-DCL);
- ``prior`` (1, H, W): the query's initial label (e.g. the MRF colon mask) that guides a model;
- ``negative_image`` (N, C, H, W) and ``negative_mask`` (N, 1, H, W): ``n_unrelated`` foreground-free slices of the same
  scan with a mask of an unrelated structure each (an organ label when the scan has one, else a superpixel);
- ``name``.

Evaluation items are whole volumes (``EpisodeVolumeDataset``): ``image``/``mask``/``prior`` (1, H, W, D) with the
slices along the last axis, and ``start_slice`` (the slice where slice-to-slice inference starts, e.g. the rectum).
``SliceDataset`` serves the plain 2D slices (``image``/``mask``) of the same volumes for slice-wise baselines.

``EpisodicVolumeDataModule`` turns raw volumes (a subclass's ``raw_volumes()``: HU (D, H, W) with axis 0 running
from inferior to superior, the label, optional organ labels) into ``EpisodeVolume``s: the initial label by a
pluggable ``initial_label`` (Guided-SET-DCL's MRF by default), the HU window mapped to [0, 1], slices resized to
``image_size``, cached as ``.npz`` when a cache folder is given.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, writable_dir
from lightning_modules import batch as keys


@dataclass
class RawVolume:
    """One scan as read: HU (D, H, W) (axis 0 from inferior to superior), labels (D, H, W) (> 0: foreground),
    optional organ labels (D, H, W) (> 0: an unrelated structure, for the negatives' masks)."""

    name: str
    hu: np.ndarray
    labels: np.ndarray
    organs: Optional[np.ndarray] = None


@dataclass
class EpisodeVolume:
    """A preprocessed scan: image (D, H, W) float32 in [0, 1], mask / prior / unrelated (D, H, W) uint8."""

    name: str
    image: np.ndarray
    mask: np.ndarray
    prior: np.ndarray
    unrelated: np.ndarray
    start_slice: int
    #: per-slice superpixel labels (D, H, W) int32 (0 outside the body), for superpixel self-supervision
    superpixels: Optional[np.ndarray] = None

    @property
    def foreground_slices(self) -> np.ndarray:
        return np.flatnonzero(self.mask.reshape(len(self.mask), -1).any(1))

    @property
    def empty_slices(self) -> np.ndarray:
        return np.flatnonzero(~self.mask.reshape(len(self.mask), -1).any(1))


def window_hu(hu: np.ndarray, window: Sequence[float] = (-1000.0, 1000.0)) -> np.ndarray:
    """HU clipped to ``window`` and mapped linearly to [0, 1]."""
    low, high = float(window[0]), float(window[1])
    return ((np.clip(hu, low, high) - low) / (high - low)).astype(np.float32)


def resize_slices(volume: np.ndarray, size: int, mode: Literal["image", "mask"]) -> np.ndarray:
    """(D, H, W) -> (D, size, size): bilinear with antialiasing for images, nearest for masks."""
    if volume.shape[1:] == (size, size):
        return volume
    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[:, None]
    if mode == "image":
        out = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return out[:, 0].numpy().astype(np.float32)
    out = F.interpolate(tensor, size=(size, size), mode="nearest")
    return out[:, 0].numpy().round().astype(np.uint8)


def superpixel_mask(image: np.ndarray, rank: int = 2, scale: float = 100.0, sigma: float = 0.8,
                    min_size: int = 20) -> np.ndarray:
    """A binary mask of an unrelated structure from Felzenszwalb superpixels (scikit-image) of a [0, 1] slice: the
    ``rank``-th most frequent superpixel (1: the dominant one, as the paper says; 2: the released code's choice, since
    the dominant one is usually the air around the body)."""
    from skimage.segmentation import felzenszwalb

    segments = felzenszwalb(np.asarray(image, dtype=np.float64), scale=scale, sigma=sigma, min_size=min_size)
    ids, counts = np.unique(segments, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")]
    chosen = order[min(rank, len(order)) - 1]
    return (segments == chosen).astype(np.uint8)


def unrelated_masks(volume: RawVolume, image: np.ndarray, source: Literal["auto", "organs", "superpixel"],
                    superpixel_rank: int = 2) -> np.ndarray:
    """Per-slice masks for the negatives (D, H, W) uint8 on the preprocessed grid ``image`` (D, h, w): the organ labels
    (``organs`` or ``auto`` with organs), else superpixels (``superpixel`` or ``auto`` without organs); computed for
    the foreground-free slices only (zeros elsewhere)."""
    size = image.shape[1]
    if source == "organs" and volume.organs is None:
        raise ValueError(f"{volume.name}: unrelated masks from organs, but the scan has no organ labels")
    empty = ~(volume.labels > 0).reshape(len(volume.labels), -1).any(1)
    if source != "superpixel" and volume.organs is not None:
        organs = resize_slices((volume.organs > 0).astype(np.uint8), size, "mask")
        return np.where(empty[:, None, None], organs, 0).astype(np.uint8)
    out = np.zeros(image.shape, np.uint8)
    for z in np.flatnonzero(empty):
        out[z] = superpixel_mask(image[z], rank=superpixel_rank)
    return out


def body_mask(image: np.ndarray, threshold: float) -> np.ndarray:
    """The patient in a [0, 1] slice: the largest connected component above ``threshold``, holes filled (SSL-ALPNet's
    ``fg_mask2d``); an empty mask when nothing is above it."""
    from scipy import ndimage

    above = image > threshold
    components, count = ndimage.label(above)
    if count == 0:
        return above
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return ndimage.binary_fill_holes(components == largest)


def superpixel_labels(image: np.ndarray, min_size: int = 400, sigma: float = 1.0, scale: float = 1.0,
                      body_threshold: Optional[float] = 0.05) -> np.ndarray:
    """SSL-ALPNet's pseudo-label candidates of a [0, 1] slice: Felzenszwalb superpixels (``skimage``; the release's
    ``min_size 400, sigma 1`` at 256 px) kept inside the body (``body_mask``; ``None``: everywhere), renumbered
    1..K (int32, 0 outside the body)."""
    from skimage.segmentation import felzenszwalb

    segments = felzenszwalb(np.asarray(image, np.float64), scale=scale, sigma=sigma, min_size=int(min_size)) + 1
    if body_threshold is not None:
        segments = segments * body_mask(image, body_threshold)
    ids, inverse = np.unique(segments, return_inverse=True)
    out = inverse.reshape(segments.shape).astype(np.int32)
    return out if ids[0] == 0 else out + 1  # 0 stays "outside the body"


def superpixel_volume(image: np.ndarray, min_size: int = 400, sigma: float = 1.0,
                      body_threshold: Optional[float] = 0.05) -> np.ndarray:
    """``superpixel_labels`` of every slice of a (D, H, W) volume; ``min_size`` is given for 256 px slices and scaled
    with the slice area."""
    scaled = max(4, int(round(min_size * image.shape[1] * image.shape[2] / 256 ** 2)))
    return np.stack([superpixel_labels(s, scaled, sigma, body_threshold=body_threshold) for s in image])


def superpixel_prior(superpixels: np.ndarray, mask: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """A superpixel initial label of a structure (the "Superpixel" initialisation of Table 1's Guided-AAS-DCL rows on
    SABS): the union of the superpixels lying at least ``min_share`` inside ``mask``; (H, W) or (D, H, W) uint8."""
    labels, inside = superpixels.ravel(), mask.ravel() > 0
    total = np.bincount(labels, minlength=labels.max() + 1)
    hits = np.bincount(labels, weights=inside, minlength=labels.max() + 1)
    keep = (hits >= min_share * np.maximum(total, 1)) & (hits > 0)
    keep[0] = False
    return keep[superpixels].astype(np.uint8)


def class_volumes(volume: EpisodeVolume, classes: Sequence[int], prior_min_share: float = 0.5
                  ) -> list[EpisodeVolume]:
    """A multi-label scan (``mask`` holds class indices, ``superpixels`` set) as one binary episode scan per class
    present (named ``<scan>_c<k>``, the image shared, not copied): mask = the class, prior = its superpixel initial
    label (``superpixel_prior`` per slice), unrelated = the other classes on the slices free of it. How SABS's 13
    organs enter the episodes of Table 1's "SABS + CTC" rows beside the colon."""
    if volume.superpixels is None:
        raise ValueError(f"{volume.name}: class_volumes needs the scan's superpixels")
    # superpixel ids are per slice: make them unique over the volume before one vectorised superpixel_prior
    depth = len(volume.superpixels)
    offsets = (np.arange(depth, dtype=np.int64) * (int(volume.superpixels.max()) + 1))[:, None, None]
    unique_ids = np.where(volume.superpixels > 0, volume.superpixels + offsets, 0)
    out = []
    for k in classes:
        mask = (volume.mask == k).astype(np.uint8)
        present = mask.reshape(depth, -1).any(1)
        if present.sum() < 2:
            continue
        others = ((volume.mask > 0) & (volume.mask != k) & ~present[:, None, None]).astype(np.uint8)
        out.append(EpisodeVolume(f"{volume.name}_c{int(k)}", volume.image, mask,
                                 superpixel_prior(unique_ids, mask, prior_min_share), others,
                                 int(np.flatnonzero(present)[0]), volume.superpixels))
    return out


def preprocess_volume(volume: RawVolume, image_size: int, hu_window: Sequence[float], initial_label,
                      unrelated_source: Literal["auto", "organs", "superpixel"] = "auto",
                      superpixel_rank: int = 2) -> EpisodeVolume:
    """Initial label on the native grid (``initial_label(hu) -> (mask (D, H, W) bool, start slice)``), then the HU
    window and the resize of every slice to ``image_size``."""
    if volume.hu.ndim != 3 or volume.hu.shape != volume.labels.shape:
        raise ValueError(f"{volume.name}: image {volume.hu.shape} and labels {volume.labels.shape} must be one "
                         "(D, H, W) grid")
    prior, start = initial_label(volume.hu)
    image = resize_slices(window_hu(volume.hu, hu_window), image_size, "image")
    mask = resize_slices((volume.labels > 0).astype(np.uint8), image_size, "mask")
    prior = resize_slices(np.asarray(prior, np.uint8), image_size, "mask")
    unrelated = unrelated_masks(volume, image, unrelated_source, superpixel_rank)
    return EpisodeVolume(volume.name, image, mask, prior, unrelated, int(start))


def _seeded_rng() -> np.random.Generator:
    """A numpy generator drawn from torch's (so ``seed_everything`` and loader worker seeding make episodes
    reproducible)."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,)).item()))


class EpisodeDataset(Dataset):
    """``episodes_per_epoch`` random episodes over ``volumes`` (see the module docstring).

    Args:
        neighbour: the query lies at most this many slices from the support (``support_mode: neighbour``).
        n_unrelated: negatives per episode (drawn with replacement when a scan has fewer empty slices; from the other
            scans when it has none).
        support_mode: ``neighbour`` (sequential episodes) or ``random`` (any other foreground slice of the scan).
        gamma_range: random gamma of all the episode's images (one draw per episode), ``None``: no augmentation.
        geometric: a random affine + elastic warp (``random_warp``), one shared by support, query and prior, one per
            negative.
    """

    def __init__(self, volumes: Sequence[EpisodeVolume], episodes_per_epoch: int = 1000, neighbour: int = 1,
                 n_unrelated: int = 3, support_mode: Literal["neighbour", "random"] = "neighbour",
                 gamma_range: Optional[Sequence[float]] = None, geometric: bool = False) -> None:
        if neighbour < 1 or n_unrelated < 0 or episodes_per_epoch < 1:
            raise ValueError("neighbour and episodes_per_epoch must be >= 1 and n_unrelated >= 0")
        if support_mode not in ("neighbour", "random"):
            raise ValueError(f"support_mode must be 'neighbour' or 'random', got {support_mode!r}")
        self.volumes = list(volumes)
        self.episodes_per_epoch, self.neighbour, self.n_unrelated = episodes_per_epoch, neighbour, n_unrelated
        self.support_mode = support_mode
        self.gamma_range = None if gamma_range is None else tuple(float(g) for g in gamma_range)
        self.geometric = geometric
        # (volume, support slice) pairs that have at least one admissible query
        self.pairs: list[tuple[int, int, np.ndarray]] = []
        for v, volume in enumerate(self.volumes):
            foreground = volume.foreground_slices
            for z in foreground:
                if support_mode == "neighbour":
                    queries = foreground[(np.abs(foreground - z) <= neighbour) & (foreground != z)]
                else:
                    queries = foreground[foreground != z]
                if queries.size:
                    self.pairs.append((v, int(z), queries))
        if not self.pairs:
            raise ValueError("no scan has two foreground slices close enough for an episode")

    def __len__(self) -> int:
        return self.episodes_per_epoch

    def _negatives(self, v: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        empty = self.volumes[v].empty_slices
        if empty.size:
            return [(v, int(z)) for z in rng.choice(empty, self.n_unrelated, replace=empty.size < self.n_unrelated)]
        pool = [(u, int(z)) for u, volume in enumerate(self.volumes) for z in volume.empty_slices]
        if not pool:
            raise ValueError("no scan has a foreground-free slice for the negatives: set n_unrelated 0")
        return [pool[i] for i in rng.choice(len(pool), self.n_unrelated, replace=len(pool) < self.n_unrelated)]

    def __getitem__(self, index: int) -> dict:
        rng = _seeded_rng()
        v, support, queries = self.pairs[int(rng.integers(len(self.pairs)))]
        query = int(rng.choice(queries))
        volume = self.volumes[v]
        gamma = 1.0 if self.gamma_range is None else float(np.exp(rng.uniform(*np.log(self.gamma_range))))
        warp = (lambda images, masks: random_warp(images, masks, rng)) if self.geometric else (lambda i, m: (i, m))

        def image(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.clip(array, 0, 1) ** gamma)[None].float()

        def mask(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(array, np.float32))[None]

        # support, query and the query's prior share one warp (their slice-to-slice correspondence is the signal)
        (s_img, q_img), (s_mask, q_mask, prior) = warp([volume.image[support], volume.image[query]],
                                                       [volume.mask[support], volume.mask[query], volume.prior[query]])
        negatives = self._negatives(v, rng) if self.n_unrelated else []
        negative_images, negative_masks = [], []
        for u, z in negatives:
            (n_img,), (n_mask,) = warp([self.volumes[u].image[z]], [self.volumes[u].unrelated[z]])
            negative_images.append(image(n_img))
            negative_masks.append(mask(n_mask))
        size = volume.image.shape[1:]
        return {
            keys.SUPPORT_IMAGE: image(s_img), keys.SUPPORT_MASK: mask(s_mask),
            keys.IMAGE: image(q_img), keys.MASK: mask(q_mask), keys.PRIOR: mask(prior),
            keys.NEGATIVE_IMAGE: torch.stack(negative_images) if negatives else torch.zeros(0, 1, *size),
            keys.NEGATIVE_MASK: torch.stack(negative_masks) if negatives else torch.zeros(0, 1, *size),
            keys.NAME: f"{volume.name}_s{support:03d}_q{query:03d}",
        }


class SuperpixelEpisodeDataset(Dataset):
    """Self-supervised episodes from superpixel pseudo-labels (SSL-ALPNet, Ouyang et al. ECCV 2020): no annotation is
    read. An episode draws a slice that holds superpixels and one of them uniformly (the pseudo-label); support and
    query are two independent random augmentations (``random_warp`` and, with ``gamma_range``, a gamma each) of that
    slice and its pseudo-label, as the release's ``SuperpixelDataset`` (``num_rep = 2``).

    ``neighbour >= 1`` (ours, for Table 1's Guided-AAS-DCL on SABS, whose query lies within 5 slices of the support):
    the query is a slice up to ``neighbour`` away and its pseudo-label the superpixel there that overlaps the chosen one
    most (IoU >= ``min_iou``, else the support's own slice). The query's ``prior`` is its pseudo-label (the "superpixel
    initial labelling" of a guided model); the ``n_unrelated`` negatives are other slices of the scan, more than
    ``neighbour`` away where possible, masked by their largest superpixel inside the body.
    """

    def __init__(self, volumes: Sequence[EpisodeVolume], episodes_per_epoch: int = 1000, neighbour: int = 0,
                 n_unrelated: int = 3, gamma_range: Optional[Sequence[float]] = None, min_iou: float = 0.3) -> None:
        if neighbour < 0 or n_unrelated < 0 or episodes_per_epoch < 1:
            raise ValueError("neighbour and n_unrelated must be >= 0 and episodes_per_epoch >= 1")
        missing = [v.name for v in volumes if v.superpixels is None]
        if missing:
            raise ValueError(f"volumes without superpixels (superpixel_volume): {missing[:3]}")
        self.volumes = list(volumes)
        self.episodes_per_epoch, self.neighbour, self.n_unrelated = episodes_per_epoch, neighbour, n_unrelated
        self.gamma_range = None if gamma_range is None else tuple(float(g) for g in gamma_range)
        self.min_iou = min_iou
        self.slices = [(v, int(z)) for v, volume in enumerate(self.volumes)
                       for z in np.flatnonzero(volume.superpixels.reshape(len(volume.superpixels), -1).max(1) > 0)]
        if not self.slices:
            raise ValueError("no slice holds a superpixel inside the body")

    def __len__(self) -> int:
        return self.episodes_per_epoch

    def query_pseudo_label(self, volume: EpisodeVolume, z: int, support_label: np.ndarray,
                           rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """(query slice, its pseudo-label): the best-overlapping superpixel of a slice within ``neighbour``."""
        if self.neighbour == 0:
            return z, support_label
        offsets = [d for d in range(-self.neighbour, self.neighbour + 1) if d and 0 <= z + d < len(volume.image)]
        if not offsets:
            return z, support_label
        query = z + int(rng.choice(offsets))
        segments = volume.superpixels[query]
        overlap = np.bincount(segments[support_label > 0], minlength=segments.max() + 1)
        overlap[0] = 0
        best = int(overlap.argmax())
        candidate = (segments == best) & (best > 0)
        union = np.logical_or(candidate, support_label > 0).sum()
        if union == 0 or overlap[best] / union < self.min_iou:
            return z, support_label
        return query, candidate.astype(np.uint8)

    def __getitem__(self, index: int) -> dict:
        rng = _seeded_rng()
        v, z = self.slices[int(rng.integers(len(self.slices)))]
        volume = self.volumes[v]
        ids = np.unique(volume.superpixels[z])
        support_label = (volume.superpixels[z] == rng.choice(ids[ids > 0])).astype(np.uint8)
        query, query_label = self.query_pseudo_label(volume, z, support_label, rng)

        def gamma() -> float:
            return 1.0 if self.gamma_range is None else float(np.exp(rng.uniform(*np.log(self.gamma_range))))

        def image(array: np.ndarray, g: float) -> torch.Tensor:
            return torch.from_numpy(np.clip(array, 0, 1) ** g)[None].float()

        def mask(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.asarray(array, np.float32))[None]

        # the release's sabs_aug is set for 256 px slices: shifts and the elastic field scale with the slice
        factor = volume.image.shape[-1] / 256.0

        def warp(images, masks):
            return random_warp(images, masks, rng, shift=5.0 * factor, elastic_alpha=10.0 * factor,
                               elastic_sigma=max(5.0 * factor, 1.0))

        (s_img,), (s_mask,) = warp([volume.image[z]], [support_label])
        (q_img,), (q_mask,) = warp([volume.image[query]], [query_label])
        negative_images, negative_masks = [], []
        if self.n_unrelated:
            far = [u for u in range(len(volume.image)) if abs(u - z) > max(self.neighbour, 1)]
            pool = far or [u for u in range(len(volume.image)) if u != z] or [z]
            for u in rng.choice(pool, self.n_unrelated, replace=len(pool) < self.n_unrelated):
                segments = volume.superpixels[u]
                counts = np.bincount(segments.ravel())
                counts[0] = 0
                largest = (segments == counts.argmax()) & (counts.max() > 0)
                (n_img,), (n_mask,) = warp([volume.image[u]], [largest.astype(np.uint8)])
                negative_images.append(image(n_img, gamma()))
                negative_masks.append(mask(n_mask))
        size = volume.image.shape[1:]
        return {
            keys.SUPPORT_IMAGE: image(s_img, gamma()), keys.SUPPORT_MASK: mask(s_mask),
            keys.IMAGE: image(q_img, gamma()), keys.MASK: mask(q_mask), keys.PRIOR: mask(q_mask),
            keys.NEGATIVE_IMAGE: torch.stack(negative_images) if negative_images else torch.zeros(0, 1, *size),
            keys.NEGATIVE_MASK: torch.stack(negative_masks) if negative_masks else torch.zeros(0, 1, *size),
            keys.NAME: f"{volume.name}_s{z:03d}_q{query:03d}_superpixel",
        }


def random_warp(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], rng: np.random.Generator,
                rotate: float = 5.0, shift: float = 5.0, shear: float = 5.0, scale: Sequence[float] = (0.9, 1.2),
                elastic_alpha: float = 10.0, elastic_sigma: float = 5.0) -> tuple[list, list]:
    """One random affine (rotation, shift in px, shear in degrees, scale) plus an elastic displacement (Gaussian-
    smoothed noise, ``alpha`` px, ``sigma`` px) applied to every (H, W) array alike: images bilinear (edges
    replicated), masks nearest (zeros outside). SSL-ALPNet's ``sabs_aug`` parameters, as the released code uses."""
    from scipy import ndimage

    height, width = images[0].shape if images else masks[0].shape
    angle, shear_angle = np.deg2rad(rng.uniform(-rotate, rotate)), np.deg2rad(rng.uniform(-shear, shear))
    factor = rng.uniform(*scale)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.array([[1.0, np.tan(shear_angle)], [0.0, 1.0]]) / factor  # output -> input coordinates
    offset = rng.uniform(-shift, shift, 2)
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    coords = np.einsum("ij,jhw->ihw", matrix, np.stack([yy, xx]) - centre[:, None, None])
    coords += (centre + offset)[:, None, None]
    if elastic_alpha > 0:
        for axis in range(2):
            noise = ndimage.gaussian_filter(rng.uniform(-1, 1, (height, width)), elastic_sigma)
            coords[axis] += elastic_alpha * noise / max(np.abs(noise).max(), 1e-8)
    warped_images = [ndimage.map_coordinates(np.asarray(a, np.float32), coords, order=1, mode="nearest")
                     for a in images]
    warped_masks = [ndimage.map_coordinates(np.asarray(m, np.float32), coords, order=0, mode="constant").round()
                    .astype(np.uint8) for m in masks]
    return warped_images, warped_masks


class EpisodeVolumeDataset(Dataset):
    """Whole scans for slice-to-slice inference: ``image``, ``mask``, ``prior`` (1, H, W, D), ``start_slice``,
    ``name``."""

    def __init__(self, volumes: Sequence[EpisodeVolume]) -> None:
        self.volumes = list(volumes)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict:
        volume = self.volumes[index]

        def to_hwd(array: np.ndarray, dtype) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 0, -1), dtype=dtype))[None]

        return {keys.IMAGE: to_hwd(volume.image, np.float32), keys.MASK: to_hwd(volume.mask, np.float32),
                keys.PRIOR: to_hwd(volume.prior, np.float32), keys.START_SLICE: int(volume.start_slice),
                keys.NAME: volume.name}


class SliceDataset(Dataset):
    """The 2D slices of the scans (``image`` (1, H, W), ``mask`` (1, H, W) float 0/1, ``name``), for slice-wise
    baselines; ``foreground_only`` keeps the slices with foreground. ``context`` T > 1: ``image`` (T, H, W) holds the
    slice and the T - 1 below it, the slice last (the first slice repeated at the scan's start), for sequence models
    (the C-LSTM U-Net); ``mask`` stays the slice's."""

    def __init__(self, volumes: Sequence[EpisodeVolume], foreground_only: bool = False, context: int = 1) -> None:
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        self.volumes, self.context = list(volumes), int(context)
        self.index = [(v, int(z)) for v, volume in enumerate(self.volumes)
                      for z in (volume.foreground_slices if foreground_only else range(len(volume.image)))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> dict:
        v, z = self.index[index]
        volume = self.volumes[v]
        window = np.clip(np.arange(z - self.context + 1, z + 1), 0, None)
        return {keys.IMAGE: torch.from_numpy(volume.image[window].astype(np.float32)),
                keys.MASK: torch.from_numpy(volume.mask[z].astype(np.float32))[None],
                keys.NAME: f"{volume.name}_{z:03d}"}


class EpisodicVolumeDataModule(BaseDataModule):
    """Scans -> episodes for training, whole scans for validation and test (``mode: episodes``), or 2D slices
    throughout (``mode: slices``, for slice-wise baselines on the same data).

    Subclasses implement ``raw_volumes(split) -> list[RawVolume]`` for ``split`` in train/val/test, or
    ``volume_names(split)`` and ``read_volume(name)`` (then a cached scan is never read), may set ``cache_root`` to
    cache the preprocessed scans, and may override ``initial_label_fn()`` (default: the MRF of Guided-SET-DCL).

    Args:
        image_size: slices are resized to ``image_size`` squared.
        hu_window: the HU range mapped to [0, 1].
        mode: ``episodes`` or ``slices``.
        episodes_per_epoch, neighbour, n_unrelated, support_mode, gamma_range, geometric: see ``EpisodeDataset``.
        unrelated_source: the negatives' masks: ``organs``, ``superpixel`` or ``auto`` (organs when a scan has them).
        superpixel_rank: which superpixel (by size) is the unrelated structure (1 = dominant, 2 = the code's).
        mrf_erosion, mrf_dilation: the MRF's per-slice erosion and dilation iterations (at the native resolution).
        batch_size, num_workers, pin_memory: loaders (evaluation: one scan per batch in ``episodes`` mode).
        train_supervision: ``labels`` (episodes from the annotation) or ``superpixel`` (self-supervised episodes from
            superpixel pseudo-labels, ``SuperpixelEpisodeDataset``: the training scans' labels are not read).
        superpixel_min_size, superpixel_sigma: Felzenszwalb's settings at 256 px (SSL-ALPNet: 400, 1).
        superpixel_neighbour: ``superpixel``: the query lies up to this many slices away (0: the same slice).
        slice_context: ``slices`` mode: slices per sample (the slice and those below it, ``SliceDataset``).
    """

    standin_config: Optional[str] = None

    def __init__(self, image_size: int = 256, hu_window: Sequence[float] = (-1000.0, 1000.0),
                 mode: Literal["episodes", "slices"] = "episodes", episodes_per_epoch: int = 1000, neighbour: int = 1,
                 n_unrelated: int = 3, support_mode: Literal["neighbour", "random"] = "neighbour",
                 gamma_range: Optional[Sequence[float]] = None,
                 unrelated_source: Literal["auto", "organs", "superpixel"] = "auto", superpixel_rank: int = 2,
                 mrf_erosion: int = 4, mrf_dilation: int = 3, batch_size: int = 1, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, geometric: bool = False,
                 train_supervision: Literal["labels", "superpixel"] = "labels", superpixel_min_size: int = 400,
                 superpixel_sigma: float = 1.0, superpixel_neighbour: int = 0, slice_context: int = 1) -> None:
        if mode not in ("episodes", "slices"):
            raise ValueError(f"mode must be 'episodes' or 'slices', got {mode!r}")
        if train_supervision not in ("labels", "superpixel"):
            raise ValueError(f"train_supervision must be 'labels' or 'superpixel', got {train_supervision!r}")
        self.train_supervision, self.superpixel_min_size = train_supervision, superpixel_min_size
        self.superpixel_sigma, self.superpixel_neighbour = superpixel_sigma, superpixel_neighbour
        self.slice_context = slice_context
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size=1 if mode == "episodes" else batch_size)
        self.image_size, self.hu_window, self.mode = int(image_size), tuple(float(h) for h in hu_window), mode
        self.episodes_per_epoch, self.neighbour, self.n_unrelated = episodes_per_epoch, neighbour, n_unrelated
        self.support_mode, self.gamma_range, self.geometric = support_mode, gamma_range, geometric
        self.unrelated_source, self.superpixel_rank = unrelated_source, superpixel_rank
        self.mrf_erosion, self.mrf_dilation = mrf_erosion, mrf_dilation
        self.cache_root: Optional[Path] = None
        self.volumes: dict[str, list[EpisodeVolume]] = {}

    # -- subclass hooks ----------------------------------------------------------------------------
    def raw_volumes(self, split: str) -> list[RawVolume]:
        """The split's scans as read (an iterable: a generator keeps one raw scan in memory at a time)."""
        return [self.read_volume(name) for name in self.volume_names(split) or []]

    def volume_names(self, split: str) -> Optional[list[str]]:
        """The split's scan names, when known before reading (then cached scans are never read: ``read_volume``)."""
        return None

    def read_volume(self, name: str) -> RawVolume:
        raise NotImplementedError

    def initial_label_fn(self):
        """``hu (D, H, W) -> (initial mask (D, H, W), start slice)``: the MRF pipeline
        (lightning_modules.setdcl_mrf)."""
        from lightning_modules.setdcl_mrf import mrf_initial_label

        def initial_label(hu: np.ndarray):
            result = mrf_initial_label(hu, erosion_iterations=self.mrf_erosion, dilation_iterations=self.mrf_dilation)
            return result.mask, result.start_slice

        return initial_label

    def cache_settings(self) -> dict:
        return {"image_size": self.image_size, "hu_window": list(self.hu_window), "mrf_erosion": self.mrf_erosion,
                "mrf_dilation": self.mrf_dilation, "unrelated_source": self.unrelated_source,
                "superpixel_rank": self.superpixel_rank, "version": 1}

    # -- preprocessing with an optional .npz cache -------------------------------------------------
    def _cache_path(self, name: str) -> Optional[Path]:
        if self.cache_root is None:
            return None
        digest = hashlib.sha1(json.dumps(self.cache_settings(), sort_keys=True).encode()).hexdigest()[:10]
        return self.cache_root / digest / f"{name}.npz"

    def cached(self, name: str) -> Optional[EpisodeVolume]:
        """The preprocessed scan from the cache, or None."""
        path = self._cache_path(name)
        if path is None or not path.is_file():
            return None
        with np.load(path) as data:
            return EpisodeVolume(name, data["image"], data["mask"], data["prior"], data["unrelated"],
                                 int(data["start_slice"]))

    def preprocess(self, raw: RawVolume) -> EpisodeVolume:
        cached = self.cached(raw.name)
        if cached is not None:
            return cached
        path = self._cache_path(raw.name)
        volume = preprocess_volume(raw, self.image_size, self.hu_window, self.initial_label_fn(),
                                   self.unrelated_source, self.superpixel_rank)
        if path is not None and writable_dir(path.parent):
            tmp = path.parent / f".{raw.name}.{uuid.uuid4().hex}.tmp.npz"
            np.savez(tmp, image=volume.image, mask=volume.mask, prior=volume.prior, unrelated=volume.unrelated,
                     start_slice=np.int64(volume.start_slice))
            os.replace(tmp, path)
        return volume

    def load_split(self, split: str) -> list[EpisodeVolume]:
        if split not in self.volumes:
            names = self.volume_names(split)
            if names is None:
                self.volumes[split] = [self.preprocess(raw) for raw in self.raw_volumes(split)]
            else:
                self.volumes[split] = [self._cached_or_read(name) for name in names]
        return self.volumes[split]

    def _cached_or_read(self, name: str) -> EpisodeVolume:
        cached = self.cached(name)
        return cached if cached is not None else self.preprocess(self.read_volume(name))

    def setup(self, stage: Optional[str] = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage, ("train", "val", "test")):
            volumes = self.load_split(split)
            if self.mode == "slices":
                dataset = SliceDataset(volumes, context=self.slice_context)
            elif split == "train" and self.train_supervision == "superpixel":
                for volume in volumes:
                    if volume.superpixels is None:
                        volume.superpixels = superpixel_volume(volume.image, self.superpixel_min_size,
                                                               self.superpixel_sigma)
                dataset = SuperpixelEpisodeDataset(volumes, self.episodes_per_epoch, self.superpixel_neighbour,
                                                   self.n_unrelated, self.gamma_range)
            elif split == "train":
                dataset = EpisodeDataset(volumes, self.episodes_per_epoch, self.neighbour, self.n_unrelated,
                                         self.support_mode, self.gamma_range, self.geometric)
            else:
                dataset = EpisodeVolumeDataset(volumes)
            setattr(self, f"{split}_set", dataset)
