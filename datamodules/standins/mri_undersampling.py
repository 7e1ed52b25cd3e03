"""Offline stand-in for undersampled MRI reconstruction: real anatomy pushed through simulated k-space.

Images: slices of nilearn's MNI152 T1 template (random axis, position, rotation and contrast) and
scikit-image's Shepp-Logan phantom with random extra ellipses. Each gets a smooth random phase (real
MR images are complex), goes to k-space with the centred FFT, loses its phase-encoding lines outside
a CMRxRecon-style mask (every ``acceleration``-th line plus the central lines), and comes back as the
zero-filled magnitude I^u. As in DiffCMR's preprocessing, I^u and I^f are each divided by their max.
Batch keys are those of CMRxRecon: ``image`` (I^u) and ``target`` (I^f), (1, H, W).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from datamodules.base import BaseDataModule
from datamodules.cmrxrecon import ReconstructionPairDataset
from datamodules.standins.mni152 import load_mni152_tissues
from lightning_modules.blocks.kspace import apply_line_mask, equispaced_line_mask, fft2c, ifft2c


def mni152_slice(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random slice of the MNI152 T1 template, square-padded, resized to ``size``, in [0, 1]."""
    t1, _ = load_mni152_tissues()
    axis = int(rng.integers(0, 3))
    position = int(rng.uniform(0.3, 0.7) * (t1.shape[axis] - 1))
    image = np.take(t1, position, axis=axis)
    side = max(image.shape) + 8
    padded = np.zeros((side, side), np.float32)
    top, left = (side - image.shape[0]) // 2, (side - image.shape[1]) // 2
    padded[top:top + image.shape[0], left:left + image.shape[1]] = image
    padded = ndimage.gaussian_filter(padded, sigma=0.4 * side / size)  # anti-aliasing before the zoom
    image = ndimage.zoom(padded, size / side, order=1)[:size, :size]
    image = np.rot90(image, k=int(rng.integers(0, 4)))
    gamma = np.exp(rng.uniform(-0.3, 0.3))
    return np.clip(image, 0, None) ** gamma


def phantom_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Shepp-Logan phantom plus 1-3 random ellipses, randomly rotated, resized to ``size``."""
    from skimage.data import shepp_logan_phantom
    from skimage.draw import ellipse
    from skimage.transform import resize, rotate

    work = 2 * size  # draw and rotate at twice the output size (the 400 x 400 original is slow to rotate)
    image = resize(shepp_logan_phantom(), (work, work), order=1, anti_aliasing=True).astype(np.float32)
    n = image.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        rows, cols = ellipse(rng.uniform(0.3, 0.7) * n, rng.uniform(0.3, 0.7) * n, rng.uniform(0.03, 0.12) * n,
                             rng.uniform(0.03, 0.12) * n, shape=image.shape, rotation=rng.uniform(0, np.pi))
        image[rows, cols] += rng.uniform(-0.2, 0.3)
    image = rotate(np.clip(image, 0, None), rng.uniform(0, 360), order=1)
    return resize(image, (size, size), order=1, anti_aliasing=True).astype(np.float32)


def smooth_phase(rng: np.random.Generator, size: int, max_phase: float = np.pi) -> np.ndarray:
    """A smooth random phase map (low-frequency Gaussian-filtered noise scaled to +-max_phase)."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 6, mode="wrap")
    return max_phase * field / max(np.abs(field).max(), 1e-12)


def simulate_pair(magnitude: np.ndarray, line_mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(2, H, W): zero-filled magnitude and fully sampled magnitude, each / its max."""
    image = magnitude * np.exp(1j * smooth_phase(rng, magnitude.shape[0]))
    zero_filled = np.abs(ifft2c(apply_line_mask(fft2c(image), line_mask)))
    target = np.abs(image)
    return np.stack([zero_filled / max(zero_filled.max(), 1e-12), target / max(target.max(), 1e-12)]).astype(np.float32)


class MRIUndersamplingDataModule(BaseDataModule):
    """Simulated (zero-filled, fully sampled) pairs from real anatomy; a new image for every sample.

    Args:
        image_size: side of the square images.
        acceleration: sampling step of the phase-encoding lines outside the centre (4, 8, 10, ...).
        center_lines: always-sampled central lines; default: CMRxRecon's 24 of ~246 lines, scaled.
        num_train, num_val, num_test: samples per split (independent draws).
        phantom_fraction: share of Shepp-Logan phantoms (the rest are MNI152 slices).
        augment: the paper's random flips of training pairs.
        seed: all images, phases and flips-free data follow from it.
    """

    def __init__(self, image_size: int = 64, acceleration: int = 4, center_lines: Optional[int] = None,
                 num_train: int = 512, num_val: int = 32, num_test: int = 64, phantom_fraction: float = 0.25,
                 augment: bool = True, seed: int = 666, batch_size: int = 16, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        # In-memory arrays: workers would only add start-up time, hence num_workers=0 by default.
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.save_hyperparameters()
        self.image_size = image_size
        self.acceleration = acceleration
        self.center_lines = round(24 * image_size / 246) if center_lines is None else center_lines
        self.num_samples = {"train": num_train, "val": num_val, "test": num_test}
        self.phantom_fraction = phantom_fraction
        self.augment = augment
        self.seed = seed
        self.line_mask = equispaced_line_mask(image_size, acceleration, self.center_lines)
        self.pairs: Optional[dict[str, np.ndarray]] = None

    def generate(self, split: str) -> np.ndarray:
        """(n, 2, H, W) pairs of ``split``; sample k of a split is the same whatever n is."""
        split_id = {"train": 0, "val": 1, "test": 2}[split]
        pairs = np.empty((self.num_samples[split], 2, self.image_size, self.image_size), np.float32)
        for index in range(len(pairs)):
            rng = np.random.default_rng([self.seed, split_id, index])
            if rng.random() < self.phantom_fraction:
                magnitude = phantom_image(rng, self.image_size)
            else:
                magnitude = mni152_slice(rng, self.image_size)
            pairs[index] = simulate_pair(magnitude, self.line_mask, rng)
        return pairs

    def setup(self, stage: Optional[str] = None) -> None:
        if self.pairs is None:  # fit then test call setup twice: generate once
            self.pairs = {split: self.generate(split) for split in self.num_samples}
        for split in self.num_samples:
            dataset = ReconstructionPairDataset([self.pairs[split]], [(0, i) for i in range(len(self.pairs[split]))],
                                                augment=self.augment and split == "train")
            setattr(self, f"{split}_set", dataset)
