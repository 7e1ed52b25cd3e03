"""Offline stand-in for hippocampal subfield segmentation (SMDGC): synthetic "hippocampus" phantoms, 2 channels, 4 labels.

Each volume (default 32^3) holds a random ellipsoid (radii about 10, 7, 6 voxels, each +-1; rotated by up to
+-15 degrees about each axis; centre jittered by up to +-3 voxels). In the ellipsoid's frame: SUB (3) is the part more
than one voxel below the centre plane, CA4/DG (2) the inner core (the ellipsoid scaled by 0.5) above it, CA1-3 (1)
the remaining shell; background (0) outside. Channel means (T1-like, T2-like): background (0.30, 0.50), CA1-3
(0.55, 0.35), CA4/DG (0.65, 0.60), SUB (0.45, 0.70); the image is multiplied by a smooth random bias field (+-10 %),
blurred (Gaussian, sigma 1 voxel: low-contrast boundaries), given Gaussian noise (sigma 0.12) and z-scored per
channel, as the real crops are. The spec card's recipe; everything follows from ``seed``.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from datamodules.registration import InMemorySubjects
from datamodules.volume import VolumeCollection, VolumeSegmentationDataModule

CLASS_NAMES = ("background", "ca1_3", "ca4_dg", "sub")
#: per-label means of (T1-like, T2-like) channels, labels in CLASS_NAMES order
CHANNEL_MEANS = np.array([[0.30, 0.50], [0.55, 0.35], [0.65, 0.60], [0.45, 0.70]])


def hippocampus_phantom(rng: np.random.Generator, size: int = 32, noise_std: float = 0.12, blur_sigma: float = 1.0,
                        bias_amplitude: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """One phantom: image (2, size, size, size) float32 (z-scored per channel) and labels (size,)*3 uint8."""
    radii = np.array([10.0, 7.0, 6.0]) + rng.uniform(-1, 1, 3)
    rotation = Rotation.from_euler("xyz", rng.uniform(-15, 15, 3), degrees=True).as_matrix()
    centre = (size - 1) / 2 + rng.uniform(-3, 3, 3)
    grid = np.stack(np.meshgrid(*[np.arange(size, dtype=np.float64)] * 3, indexing="ij"), -1) - centre
    local = grid @ rotation  # coordinates in the ellipsoid's frame (rows of R^T applied to each point)
    radius = ((local / radii) ** 2).sum(-1)
    inside = radius <= 1
    sub = inside & (local[..., 2] < -1)
    core = (radius <= 0.25) & ~sub
    labels = np.zeros((size,) * 3, np.uint8)
    labels[inside] = 1
    labels[core] = 2
    labels[sub] = 3
    coarse = rng.uniform(-1, 1, (4, 4, 4))
    bias = 1 + bias_amplitude * ndimage.zoom(coarse, size / 4, order=3, mode="nearest")[:size, :size, :size]
    image = np.stack([CHANNEL_MEANS[labels, c] * bias for c in range(2)])
    image = np.stack([ndimage.gaussian_filter(channel, blur_sigma) for channel in image])
    image = image + rng.normal(scale=noise_std, size=image.shape)
    image = (image - image.mean(axis=(1, 2, 3), keepdims=True)) / image.std(axis=(1, 2, 3), keepdims=True)
    return image.astype(np.float32), labels


class SyntheticHippocampusDataModule(VolumeSegmentationDataModule):
    """Hippocampus phantoms: ``num_train`` / ``num_val`` / ``num_test`` volumes (predefined split), or ``split: kfold``
    over all of them (each phantom its own subject), as the KY module's batches.

    Args:
        size: the cube's side (voxels).
        noise_std, blur_sigma, bias_amplitude: the image model (see the module docstring).
        seed: the phantoms.
        (others: ``datamodules.volume.VolumeSegmentationDataModule``)
    """

    num_labels = 4
    class_names = CLASS_NAMES

    def __init__(self, num_train: int = 16, num_val: int = 4, num_test: int = 4, size: int = 32,
                 noise_std: float = 0.12, blur_sigma: float = 1.0, bias_amplitude: float = 0.1, seed: int = 0,
                 patch_size: Optional[Sequence[int]] = None, samples_per_volume: int = 1,
                 foreground_probability: float = 0.5, split: Literal["kfold", "predefined"] = "predefined",
                 folds: int = 5, fold: int = 0, val_groups: int = 2, split_seed: int = 42, batch_size: int = 2,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = 1) -> None:
        super().__init__(patch_size, samples_per_volume, foreground_probability, split, folds, fold, val_groups,
                         split_seed, batch_size, num_workers, pin_memory, eval_batch_size)
        self.save_hyperparameters()
        self.counts = (num_train, num_val, num_test)
        self.size, self.noise_std, self.blur_sigma, self.bias_amplitude = size, noise_std, blur_sigma, bias_amplitude
        self.seed = seed

    def volumes(self) -> VolumeCollection:
        rng = np.random.default_rng(self.seed)
        total = sum(self.counts)
        samples = [hippocampus_phantom(rng, self.size, self.noise_std, self.blur_sigma, self.bias_amplitude)
                   for _ in range(total)]
        names = [f"phantom{k:03d}" for k in range(total)]
        n_train, n_val, _ = self.counts
        splits = {"train": list(range(n_train)), "val": list(range(n_train, n_train + n_val)),
                  "test": list(range(n_train + n_val, total))}
        images, labels = zip(*samples)
        return VolumeCollection(InMemorySubjects(list(images), list(labels)), names, list(names), splits)
