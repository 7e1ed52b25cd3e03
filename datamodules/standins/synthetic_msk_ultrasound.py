"""Offline stand-in for SFRSeg-Net: synthetic finger/wrist-joint ultrasound with a synovial-fluid pocket.

Each image (RGB palette, grey replicated as the B-mode scans of ultrasoundcases.info): a layered
soft-tissue texture, a bright curved bone cortex with its acoustic shadow, and above it a dark
(anechoic) fluid pocket of random size, position and shape: the mask. Rayleigh-distributed
multiplicative speckle and additive Gaussian noise on top. The pocket is not simply the darkest
region (the bone shadow is darker), so a network must use shape and context.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from datamodules.ra_usg import RAUltrasoundBase


def synthetic_joint_ultrasound(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One (size, size, 3) uint8 image and its (size, size) {0, 1} uint8 fluid mask."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Soft tissue: smooth texture with horizontal layering, brighter skin line at the top.
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=(1.0, 4.0))
    tissue = 0.45 + 0.12 * texture / (texture.std() + 1e-6) + 0.06 * np.sin(2 * np.pi * rows * rng.uniform(4, 8))
    tissue += 0.35 * np.exp(-((rows - 0.05) / 0.03) ** 2)
    # Bone cortex: a bright arc y = y0 + c (x - xc)^2 in the lower half, dark shadow beneath it.
    y0, xc, curvature = rng.uniform(0.62, 0.78), rng.uniform(0.35, 0.65), rng.uniform(0.3, 1.2)
    arc = y0 + curvature * (cols - xc) ** 2
    thickness = rng.uniform(0.025, 0.045)
    cortex = np.abs(rows - arc) < thickness
    image = np.where(rows > arc + thickness, 0.08, tissue)
    image = np.where(cortex, 0.95, image)
    # Fluid pocket above the cortex: an ellipse, possibly fused with a second one (lobulated).
    cx = np.clip(xc + rng.uniform(-0.2, 0.2), 0.2, 0.8)
    cy = y0 + curvature * (cx - xc) ** 2 - thickness - rng.uniform(0.07, 0.14)
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 3)):
        ry, rx = rng.uniform(0.05, 0.1), rng.uniform(0.12, 0.24)
        angle = rng.uniform(-0.4, 0.4)
        dx, dy = cols - cx - rng.uniform(-0.06, 0.06), rows - cy - rng.uniform(-0.02, 0.02)
        u, v = dx * np.cos(angle) + dy * np.sin(angle), -dx * np.sin(angle) + dy * np.cos(angle)
        mask |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    mask &= rows < arc - thickness  # the fluid lies on the bone, not in it
    soft_mask = ndimage.gaussian_filter(mask.astype(np.float32), 1.0)
    image = image * (1 - soft_mask) + 0.12 * soft_mask
    # Speckle (Rayleigh, unit mean) and noise; log-compression-like gamma.
    speckle = rng.rayleigh(scale=np.sqrt(2 / np.pi), size=(size, size))
    image = np.clip(image * (1 + 0.35 * (speckle - 1)) + rng.normal(0, 0.03, (size, size)), 0, 1) ** 0.8
    grey = (image * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1), mask.astype(np.uint8)


class SyntheticJointUltrasoundDataModule(RAUltrasoundBase):
    """``num_images`` synthetic joints (49 as the real set), split and augmented exactly as the real data.

    Args:
        num_images: base images before the offline augmentation.
        generator_seed: seed of the image generator (the split uses ``seed``).
        generated_size: side of the generated images before the resize to ``image_size``.
    """

    def __init__(self, num_images: int = 49, generator_seed: int = 0, generated_size: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.num_images = num_images
        self.generator_seed = generator_seed
        self.generated_size = generated_size

    def load_samples(self):
        rng = np.random.default_rng(self.generator_seed)
        samples = [synthetic_joint_ultrasound(rng, self.generated_size) for _ in range(self.num_images)]
        ids = [f"joint{i:03d}" for i in range(self.num_images)]
        return ids, [s[0] for s in samples], [s[1] for s in samples], {}
