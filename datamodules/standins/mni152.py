"""Offline stand-in for brain MRI registration with real anatomy: the MNI152 template shipped with nilearn.

Each "subject" is the MNI152 T1 (1 mm, ICBM 2009) resampled to ``image_size`` (a slice in 2D, the
brain's bounding box in 3D), warped by its own random smooth deformation, with mild intensity
variation and noise. Labels: 0 background, 1 CSF/other brain, 2 grey matter, 3 white matter (argmax
of nilearn's tissue probability maps inside the brain mask), warped with nearest interpolation.

Deformations and slice offsets are drawn in millimetres on a grid tied to the anatomy, not to the
pixels, so a subject generated at 40x48 is the same anatomy as at 80x96 (resolution tests).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal, Optional

import numpy as np
from scipy import ndimage

from datamodules.base import BaseDataModule, EpochSeededRandomSampler
from datamodules.registration import InMemorySubjects, RegistrationPairDataset

#: target axis -> (axis of the MNI volume (x=L->R, y=P->A, z=I->S), direction); then the slice axis.
SLICE_ORIENTATIONS = {
    "coronal": (((2, -1), (0, 1)), 1),  # rows superior -> inferior, columns left -> right
    "axial": (((1, -1), (0, 1)), 2),  # rows anterior -> posterior
    "sagittal": (((2, -1), (1, -1)), 0),  # rows superior -> inferior, columns anterior -> posterior
}
DEFAULT_IMAGE_SIZE = {2: (80, 96), 3: (48, 56, 48)}
FIELD_POINTS_PER_SIGMA = 4.0  # the random fields are drawn on a grid with spacing sigma / 4


@functools.lru_cache(maxsize=1)
def load_mni152_tissues() -> tuple[np.ndarray, np.ndarray]:
    """MNI152 T1 in [0, 1] and tissue labels (0..3), 1 mm, cropped to the brain mask's bounding box."""
    from nilearn import datasets

    # resolution=1 is the stored grid (fast); resolution=2 would be resampled by nilearn (~2 s).
    t1 = np.asarray(datasets.load_mni152_template(resolution=1).dataobj, dtype=np.float32)
    grey = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    white = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    inside = np.argwhere(mask)
    box = tuple(slice(lo, hi + 1) for lo, hi in zip(inside.min(axis=0), inside.max(axis=0)))
    t1, grey, white, mask = t1[box], grey[box], white[box], mask[box]
    other = np.clip(1.0 - grey - white, 0.0, 1.0)
    labels = (np.argmax(np.stack([other, grey, white]), axis=0) + 1).astype(np.uint8)
    labels[~mask] = 0
    t1 = np.clip(t1 / max(float(t1.max()), 1e-6), 0.0, 1.0)
    return t1, labels


class MNI152RegistrationDataModule(BaseDataModule):
    """Registration pairs among deformed copies of the MNI152 template; batch keys as OASIS.

    Subjects 0..N-9 train (``train_pairs_per_epoch`` random ordered pairs per epoch, a new draw every
    epoch, reproducible from ``seed``); the last ``num_eval_subjects`` (8) give the validation pairs
    (consecutive, in a ring: 8 pairs) and the test pairs (all ordered pairs: 56).

    Args:
        spatial_dims: 2 (one slice) or 3 (the volume).
        image_size: output grid; ``None`` = (80, 96) in 2D, (48, 56, 48) in 3D.
        num_subjects: subjects generated (train + eval).
        num_eval_subjects: subjects held out for validation and test.
        train_pairs_per_epoch: training pairs drawn per epoch (an epoch's length).
        seed: everything (deformations, slice offsets, intensities, pair draws) follows from it.
        max_displacement_mm: largest displacement of a subject's deformation from the template.
        deformation_sigma_mm: smoothness (Gaussian sigma) of the deformation.
        slice_axis: 2D only: "coronal", "axial" or "sagittal".
        slice_position: 2D only: slice location as a fraction of the brain's extent along the axis.
        slice_jitter_mm: 2D only: each subject's slice is shifted by up to this much (inter-subject
            variability that no in-plane warp can undo, as in real 2D data).
        intensity_jitter: strength of the per-subject gamma, gain and bias-field variation.
        noise_std: Gaussian noise added to every image (intensities clipped to [0, 1]).
    """

    num_labels = 4  # 0 background, 1 CSF/other, 2 GM, 3 WM

    def __init__(
        self,
        spatial_dims: int = 2,
        image_size: Optional[tuple[int, ...]] = None,
        num_subjects: int = 40,
        num_eval_subjects: int = 8,
        train_pairs_per_epoch: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        pin_memory: Optional[bool] = None,
        eval_batch_size: Optional[int] = None,
        seed: int = 2002,
        max_displacement_mm: float = 5.0,
        deformation_sigma_mm: float = 16.0,
        slice_axis: Literal["coronal", "axial", "sagittal"] = "coronal",
        slice_position: float = 0.5,
        slice_jitter_mm: float = 2.0,
        intensity_jitter: float = 0.1,
        noise_std: float = 0.02,
    ) -> None:
        # In-memory arrays: workers would only add start-up time, hence num_workers=0 by default.
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        image_size = DEFAULT_IMAGE_SIZE[spatial_dims] if image_size is None else tuple(int(s) for s in image_size)
        if len(image_size) != spatial_dims:
            raise ValueError(f"image_size {image_size} does not have {spatial_dims} dimensions")
        if slice_axis not in SLICE_ORIENTATIONS:
            raise ValueError(f"slice_axis must be one of {sorted(SLICE_ORIENTATIONS)}, got {slice_axis!r}")
        if num_eval_subjects < 2 or num_subjects - num_eval_subjects < 2:
            raise ValueError(
                f"need >= 2 train and >= 2 eval subjects, got num_subjects={num_subjects}, "
                f"num_eval_subjects={num_eval_subjects}"
            )
        self.save_hyperparameters()
        self.spatial_dims = spatial_dims
        self.image_size = image_size
        self.num_subjects = num_subjects
        self.num_eval_subjects = num_eval_subjects
        self.train_pairs_per_epoch = train_pairs_per_epoch
        self.seed = seed
        self.max_displacement_mm = max_displacement_mm
        self.deformation_sigma_mm = deformation_sigma_mm
        self.slice_axis = slice_axis
        self.slice_position = slice_position
        self.slice_jitter_mm = slice_jitter_mm
        self.intensity_jitter = intensity_jitter
        self.noise_std = noise_std
        self.subjects: Optional[InMemorySubjects] = None

        train = range(num_subjects - num_eval_subjects)
        held_out = list(range(num_subjects - num_eval_subjects, num_subjects))
        self.pairs = {
            "train": [(i, j) for i in train for j in train if i != j],
            "val": list(zip(held_out, held_out[1:] + held_out[:1])),
            "test": [(i, j) for i in held_out for j in held_out if i != j],
        }

    # ---- Lightning hooks ----

    def setup(self, stage: Optional[str] = None) -> None:
        if self.subjects is None:  # fit then test call setup twice: generate once
            self.subjects = InMemorySubjects(*self.generate_subjects())
        self.train_set = RegistrationPairDataset(self.subjects, self.pairs["train"])
        self.val_set = RegistrationPairDataset(self.subjects, self.pairs["val"])
        self.test_set = RegistrationPairDataset(self.subjects, self.pairs["test"])

    def train_sampler(self, dataset):
        return EpochSeededRandomSampler(dataset, self.train_pairs_per_epoch, seed=self.seed)

    # ---- generation ----

    def generate_subjects(self) -> tuple[np.ndarray, np.ndarray]:
        """Images (N, *image_size) float32 in [0, 1] and labels (N, *image_size) uint8 in 0..3."""
        t1, labels = load_mni152_tissues()
        grid = self._sampling_grid(labels.shape)
        # Anti-aliasing before sampling at a coarser spacing than 1 mm.
        smoothed = ndimage.gaussian_filter(t1, sigma=0.4 * grid["spacing"]) if grid["spacing"] > 1.5 else t1
        images = np.empty((self.num_subjects, *self.image_size), np.float32)
        label_maps = np.empty((self.num_subjects, *self.image_size), np.uint8)
        for index in range(self.num_subjects):
            # One generator per subject: subject k is the same whatever num_subjects is.
            rng = np.random.default_rng([self.seed, index])
            coords = self._subject_coordinates(rng, grid)
            image = ndimage.map_coordinates(smoothed, coords, order=1, mode="constant", cval=0.0)
            label_maps[index] = ndimage.map_coordinates(labels, coords, order=0, mode="constant", cval=0)
            images[index] = self._vary_intensity(rng, image, grid)
        return images, label_maps

    def _sampling_grid(self, volume_shape: Sequence[int]) -> dict:
        """Where each output pixel samples the (cropped, 1 mm) volume before deformation."""
        if self.spatial_dims == 3:
            axes, slice_axis = ((0, 1), (1, 1), (2, 1)), None
        else:
            axes, slice_axis = SLICE_ORIENTATIONS[self.slice_axis]
        size = np.asarray(self.image_size, dtype=np.float64)
        extent = np.asarray([volume_shape[axis] for axis, _ in axes], dtype=np.float64)
        centre = (extent - 1) / 2
        slice_coord = None
        if slice_axis is not None:
            slice_coord = self.slice_position * (volume_shape[slice_axis] - 1)
            # Field of view from the brain's extent in the slab the slices can come from.
            _, labels = load_mni152_tissues()
            lo = int(max(0, np.floor(slice_coord - self.slice_jitter_mm - 1)))
            hi = int(min(volume_shape[slice_axis], np.ceil(slice_coord + self.slice_jitter_mm + 2)))
            slab = np.take(labels, np.arange(lo, hi), axis=slice_axis).any(axis=slice_axis)
            idx = np.argwhere(slab)  # axes of `slab` are the volume's axes without slice_axis, in order
            remaining = [a for a in range(3) if a != slice_axis]
            lo_hi = {a: (idx[:, k].min(), idx[:, k].max()) for k, a in enumerate(remaining)}
            extent = np.asarray([lo_hi[a][1] - lo_hi[a][0] + 1 for a, _ in axes], dtype=np.float64)
            centre = np.asarray([(lo_hi[a][0] + lo_hi[a][1]) / 2 for a, _ in axes])
        # Isotropic spacing (mm per pixel) so the brain fits with a 6% margin on every side.
        spacing = float(np.max(extent / (size * 0.88)))
        pixel_mm = [(np.arange(n) - (n - 1) / 2) * spacing for n in self.image_size]  # offsets from centre
        return {
            "axes": axes,
            "slice_axis": slice_axis,
            "slice_coord": slice_coord,
            "centre": centre,
            "spacing": spacing,
            "pixel_mm": pixel_mm,
            "fov_mm": [n * spacing for n in self.image_size],
        }

    def _smooth_field(self, rng: np.random.Generator, grid: dict, components: int, sigma_mm: float):
        """Gaussian-filtered noise drawn on a mm grid tied to the anatomy, sampled at the output pixels.

        The grid spacing follows sigma (a smooth field needs few points), which keeps 3D fast.
        """
        field_spacing = sigma_mm / FIELD_POINTS_PER_SIGMA
        field_shape = [int(np.ceil(fov / field_spacing)) + 1 for fov in grid["fov_mm"]]
        noise = rng.standard_normal((components, *field_shape))
        field = [ndimage.gaussian_filter(c, FIELD_POINTS_PER_SIGMA, mode="reflect") for c in noise]
        # Output pixel -> position on the field grid (both centred on the anatomy).
        at = np.meshgrid(
            *[mm / field_spacing + (n - 1) / 2 for mm, n in zip(grid["pixel_mm"], field_shape)], indexing="ij"
        )
        return np.stack([ndimage.map_coordinates(c, at, order=1, mode="nearest") for c in field])

    def _subject_coordinates(self, rng: np.random.Generator, grid: dict) -> np.ndarray:
        displacement = self._smooth_field(rng, grid, self.spatial_dims, self.deformation_sigma_mm)
        norm = np.sqrt((displacement**2).sum(axis=0)).max()
        displacement *= self.max_displacement_mm / max(norm, 1e-12)
        offsets = np.meshgrid(*grid["pixel_mm"], indexing="ij")
        coords = np.zeros((3, *self.image_size), np.float64)
        for k, (axis, direction) in enumerate(grid["axes"]):
            coords[axis] = grid["centre"][k] + direction * offsets[k] + displacement[k]
        if grid["slice_axis"] is not None:
            shift = rng.uniform(-self.slice_jitter_mm, self.slice_jitter_mm)
            coords[grid["slice_axis"]] = grid["slice_coord"] + shift
        return coords

    def _vary_intensity(self, rng: np.random.Generator, image: np.ndarray, grid: dict) -> np.ndarray:
        strength = self.intensity_jitter
        gamma = np.exp(rng.uniform(-strength, strength))
        gain = 1.0 + rng.uniform(-strength, strength) / 2
        bias = self._smooth_field(rng, grid, 1, sigma_mm=40.0)[0]
        bias *= (strength / 2) / max(np.abs(bias).max(), 1e-12)  # multiplicative field within +-strength/2
        image = gain * np.power(np.clip(image, 0.0, 1.0), gamma) * (1.0 + bias)
        image = image + self.noise_std * rng.standard_normal(image.shape)
        return np.clip(image, 0.0, 1.0).astype(np.float32)
