"""Synthetic fODF phantom for RL tractography (offline stand-in of TractoInferno / ISMRM 2015).

A cube of ``size``^3 voxels of 1 mm (identity affine) with two bundles:

- bundle A, the target: a U — a semicircular arc of radius ``radius`` in the x-z plane, its legs running straight
  down to near the floor; tube radius ``tube_radius``;
- bundle B, a distractor: a straight tube along y that crosses the top of the arc at right angles.

Each voxel's peaks are the tangents of the bundles it lies in (two peaks in the crossing). Its fODF is a sum of
sharp lobes exp(kappa ((u . p)^2 - 1)), kappa 20, on dipy's ``repulsion724`` sphere, projected on SH of order 8 (45
coefficients, descoteaux07 basis) with ``dipy.reconst.shm.sf_to_sh``, plus Gaussian noise (std ``noise``) on the
coefficients. Tracking mask: bundle A dilated by one voxel; seed mask and reference bundle: bundle A. Subjects
differ by a random arc radius (+-``jitter``), centre shift and noise, so training, validation and test subjects
are distinct phantoms.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from datamodules.tractography import TractographyDataModule
from lightning_modules.tasks.tracking_env import TractographySubject


def bundle_geometry(size: int, radius: float, centre: np.ndarray, leg_bottom: float) -> tuple[np.ndarray, np.ndarray]:
    """Densely sampled centreline points (M, 3) and unit tangents (M, 3) of the U bundle (legs and arc)."""
    theta = np.linspace(0, np.pi, 400)
    arc = centre + radius * np.stack([np.cos(theta), np.zeros_like(theta), np.sin(theta)], 1)
    arc_tangent = np.stack([-np.sin(theta), np.zeros_like(theta), np.cos(theta)], 1)
    z = np.linspace(leg_bottom, centre[2], 100)
    legs, tangents = [], []
    for x in (centre[0] + radius, centre[0] - radius):
        legs.append(np.stack([np.full_like(z, x), np.full_like(z, centre[1]), z], 1))
        tangents.append(np.tile([0.0, 0.0, 1.0], (len(z), 1)))
    return np.concatenate([legs[0], arc, legs[1]]), np.concatenate([tangents[0], arc_tangent, tangents[1]])


def make_phantom(size: int = 24, radius: float = 8.0, tube_radius: float = 2.0, kappa: float = 20.0,
                 noise: float = 0.02, shift: Optional[np.ndarray] = None, seed: int = 0,
                 sh_order: int = 8) -> dict[str, np.ndarray]:
    """One phantom: ``sh`` (X, Y, Z, 45), ``peaks`` (X, Y, Z, 2, 3), ``bundle_a``/``bundle_b`` masks, the bundle-A
    centreline ``centreline`` (M, 3) (the reference streamline)."""
    from dipy.data import get_sphere
    from dipy.reconst.shm import sf_to_sh

    rng = np.random.default_rng(seed)
    shift = np.zeros(3) if shift is None else np.asarray(shift, dtype=float)
    centre = np.array([(size - 1) / 2, (size - 1) / 2, size * 0.3]) + shift
    line, tangent = bundle_geometry(size, radius, centre, leg_bottom=2.0)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).reshape(-1, 3).astype(float)
    # nearest centreline point of every voxel
    distance, nearest = cKDTree(line).query(grid)
    in_a = distance <= tube_radius
    top = centre[2] + radius
    in_b = np.hypot(grid[:, 0] - centre[0], grid[:, 2] - top) <= tube_radius
    peaks = np.zeros((len(grid), 2, 3))
    peaks[in_a, 0] = tangent[nearest[in_a]]
    b_slot = np.where(in_a, 1, 0)
    peaks[in_b, b_slot[in_b]] = [0.0, 1.0, 0.0]
    sphere = get_sphere(name="repulsion724")
    u = sphere.vertices
    fibre = in_a | in_b
    dots = np.einsum("npk,vk->npv", peaks[fibre], u)
    present = (np.linalg.norm(peaks[fibre], axis=-1) > 0)[..., None]
    sf = (np.exp(kappa * (dots ** 2 - 1)) * present).sum(1)
    n_coef = (sh_order + 1) * (sh_order + 2) // 2
    sh = np.zeros((len(grid), n_coef))
    sh[fibre] = sf_to_sh(sf, sphere, sh_order_max=sh_order, basis_type="descoteaux07", legacy=False)
    sh = sh + noise * rng.standard_normal(sh.shape)
    shape = (size,) * 3
    return {"sh": sh.reshape(*shape, -1).astype(np.float32), "peaks": peaks.reshape(*shape, 2, 3).astype(np.float32),
            "bundle_a": in_a.reshape(shape), "bundle_b": in_b.reshape(shape), "centreline": line.astype(np.float32)}


class SyntheticFODFPhantomDataModule(TractographyDataModule):
    """The phantom as a tractography dataset: ``train_subjects`` + ``val_subjects`` + ``test_subjects`` phantoms
    (see the module docstring); every other argument is ``TractographyDataModule``'s."""

    def __init__(self, size: int = 24, radius: float = 8.0, tube_radius: float = 2.0, kappa: float = 20.0,
                 noise: float = 0.02, jitter: float = 1.0, train_subjects: int = 2, val_subjects: int = 1,
                 test_subjects: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.size, self.radius, self.tube_radius, self.kappa, self.noise = size, radius, tube_radius, kappa, noise
        self.jitter = jitter
        self.counts = {"train": train_subjects, "val": val_subjects, "test": test_subjects}

    def subject_names(self, split: str) -> list[str]:
        offset = {"train": 0, "val": 1000, "test": 2000}[split]
        return [f"phantom-{offset + i:04d}" for i in range(self.counts[split])]

    def load_subject(self, name: str) -> TractographySubject:
        number = int(name.split("-")[1])
        rng = np.random.default_rng(self.seed * 7919 + number)
        radius = self.radius + rng.uniform(-self.jitter, self.jitter)
        shift = np.array([rng.uniform(-self.jitter, self.jitter), rng.uniform(-self.jitter, self.jitter), 0.0])
        phantom = make_phantom(self.size, radius, self.tube_radius, self.kappa, self.noise, shift, seed=number)
        bundle = phantom["bundle_a"]
        return TractographySubject(name=name, sh=phantom["sh"], peaks=phantom["peaks"],
                                   tracking_mask=ndimage.binary_dilation(bundle), seed_mask=bundle,
                                   bundle_mask=bundle, affine=np.eye(4), reference=[phantom["centreline"]],
                                   bundle="U", sh_basis="descoteaux07", sh_legacy=False)
