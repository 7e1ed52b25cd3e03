"""Guided-SET-DCL's MRF initial colon labelling (Harb et al., ICPR 2024, Sect. 2.2, Algorithm 1; code ``final_MRF``).

CT volume in Hounsfield units, axial slices along axis 0 (index 0 = the most inferior slice):

1. ``fit_hu_mixture``: EM with 4 Gaussians (air, fat, muscle, fluid) on the HU histogram in (-1000, 1000), 150 bins
   (of the body: ``body_histogram`` leaves out the air around the patient, our choice, see ``mrf_initial_label``),
   started at mu = [-950, -100, 100, 500], sigma = 400 (weighted EM on the bin centres, the histogram counts
   as weights: the same fixed point as EM on the voxels, binned).
2. ``em_thresholds``: th1 = the first HU where w2 N2 > w1 N1 (air | fat), th2 = the first HU above the muscle mean where
   w4 N4 > w3 N3 (muscle | fluid); ``O_EM`` = (HU < th1, air not connected to the slice border, i.e. inside the
   body) or (HU > th2 and below the bone level, opacified fluid).
3. per-slice erosion (3x3, ``erosion_iterations``) of ``O_EM``, which cuts thin contacts to small-bowel gas;
4. per-slice binary graph cut (Potts model, one s-t cut on PyMaxflow through ``lightning_modules/graphcut.py``; unary:
   -log of the GMM posterior of the colon classes, air or fluid; gamma from the label co-occurrence of the eroded map);
5. ``detect_rectum``: in the lowest slices (window 5, 10, ... slices) the largest 2D component of ``O_EM`` with mean
   HU < -850; its centroid (the nearest component voxel) is the seed;
6. region growing from the seed: the 3D connected component of the graph-cut map that holds the seed (26-conn.);
7. per-slice dilation (3x3, ``dilation_iterations``) intersected with ``O_EM``: the initial colon mask.

``mrf_initial_label`` runs all of it and returns the mask, the rectum slice and diagnostics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from lightning_modules.graphcut import PairwiseEnergy, grid_edges, swap_move

#: the code's EM start: air, fat, muscle, fluid (HU)
DEFAULT_MEANS = (-950.0, -100.0, 100.0, 500.0)


@dataclass
class HUMixture:
    """A 1D Gaussian mixture over HU: weights, means, standard deviations (K,), sorted by mean."""

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    iterations: int = 0

    def component_densities(self, hu: np.ndarray) -> np.ndarray:
        """w_k N_k(hu): (..., K)."""
        hu = np.asarray(hu, dtype=np.float64)[..., None]
        return self.weights * np.exp(-0.5 * ((hu - self.means) / self.stds) ** 2) / (np.sqrt(2 * np.pi) * self.stds)

    def posteriors(self, hu: np.ndarray) -> np.ndarray:
        dens = self.component_densities(hu)
        return dens / np.maximum(dens.sum(-1, keepdims=True), 1e-300)


def fit_hu_mixture(volume_hu: np.ndarray, bins: int = 150, hu_range: tuple[float, float] = (-1000.0, 1000.0),
                   means: Sequence[float] = DEFAULT_MEANS, std: float = 400.0, max_iter: int = 500,
                   tol: float = 1e-8) -> HUMixture:
    """EM for a K-Gaussian mixture on the histogram of ``volume_hu`` (bin centres weighted by their counts)."""
    counts, edges = np.histogram(np.asarray(volume_hu, dtype=np.float32).ravel(), bins=bins, range=hu_range)
    x = 0.5 * (edges[:-1] + edges[1:])
    n = counts.astype(np.float64)
    if n.sum() <= 0:
        raise ValueError("no voxel in the HU range of the histogram")
    k = len(means)
    mu = np.asarray(means, dtype=np.float64).copy()
    sigma = np.full(k, float(std))
    w = np.full(k, 1.0 / k)
    previous = -np.inf
    floor = (edges[1] - edges[0]) / 2.0  # a component cannot collapse below half a bin
    iteration = 0
    for iteration in range(1, max_iter + 1):
        dens = w * np.exp(-0.5 * ((x[:, None] - mu) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)
        total = np.maximum(dens.sum(1, keepdims=True), 1e-300)
        resp = dens / total * n[:, None]
        nk = np.maximum(resp.sum(0), 1e-12)
        w = nk / nk.sum()
        mu = (resp * x[:, None]).sum(0) / nk
        sigma = np.maximum(np.sqrt((resp * (x[:, None] - mu) ** 2).sum(0) / nk), floor)
        log_likelihood = float((n * np.log(total[:, 0])).sum())
        if abs(log_likelihood - previous) <= tol * max(1.0, abs(log_likelihood)):
            break
        previous = log_likelihood
    order = np.argsort(mu)
    return HUMixture(w[order], mu[order], sigma[order], iteration)


def em_thresholds(mixture: HUMixture, hu_range: tuple[float, float] = (-1000.0, 1000.0),
                  step: float = 1.0) -> tuple[float, float]:
    """(th1, th2): the first HU where component 2 outweighs component 1 (air | fat), and the first HU above the
    third component's mean where component 4 outweighs component 3 (muscle | fluid)."""
    hu = np.arange(hu_range[0], hu_range[1] + step, step)
    dens = mixture.component_densities(hu)
    above = np.flatnonzero(dens[:, 1] > dens[:, 0])
    th1 = float(hu[above[0]]) if above.size else float(mixture.means[:2].mean())
    start = hu >= mixture.means[2]
    above = np.flatnonzero(start & (dens[:, 3] > dens[:, 2]))
    th2 = float(hu[above[0]]) if above.size else float(mixture.means[2:].mean())
    return th1, th2


def body_air(volume_hu: np.ndarray, th1: float) -> np.ndarray:
    """Air (HU < th1) inside the body: per slice, the air components that do not touch the slice border."""
    air = volume_hu < th1
    inside = np.zeros_like(air)
    for z in range(air.shape[0]):
        labels, count = ndimage.label(air[z])
        if count == 0:
            continue
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        keep = np.ones(count + 1, bool)
        keep[0] = False
        keep[border] = False
        inside[z] = keep[labels]
    return inside


def body_air_outside(volume_hu: np.ndarray, air_hu: float = -500.0) -> np.ndarray:
    """The air around the patient: per slice, the components of HU < ``air_hu`` that touch the slice border."""
    air = volume_hu < air_hu
    return air & ~body_air(volume_hu, air_hu)


def potts_gamma(labels: np.ndarray, low: float = 0.1, high: float = 5.0) -> float:
    """The Potts smoothness from the label co-occurrence of a binary map: log(P(equal) / P(different)) of
    4-neighbour pairs (the pseudo-likelihood-style estimate), clipped to [low, high]."""
    labels = np.asarray(labels, bool)
    pairs = [(labels[..., 1:, :], labels[..., :-1, :]), (labels[..., :, 1:], labels[..., :, :-1])]
    equal = sum(float((a == b).sum()) for a, b in pairs)
    total = sum(float(a.size) for a, _ in pairs)
    different = max(total - equal, 1.0)
    return float(np.clip(np.log(max(equal, 1.0) / different), low, high))


class PottsEnergy(PairwiseEnergy):
    """A Potts model on grid edges: ``gamma`` for every edge whose two labels differ."""

    def __init__(self, unary: np.ndarray, i: np.ndarray, j: np.ndarray, gamma: float) -> None:
        super().__init__(unary, i, j)
        self.gamma = float(gamma)

    def pair_cost(self, edges: np.ndarray, a, b) -> np.ndarray:
        return self.gamma * (np.broadcast_to(a, edges.shape) != np.broadcast_to(b, edges.shape))


def graph_cut_slice(colon_probability: np.ndarray, gamma: float, eps: float = 1e-6) -> np.ndarray:
    """Binary MAP labelling of one slice by one s-t min cut (``graphcut.swap_move`` with labels 0/1 on PyMaxflow, exact
    for two labels): unary -log(1 - p) / -log p, Potts pairwise ``gamma`` on 4-neighbour edges. Returns bool (H, W)."""
    p = np.clip(np.asarray(colon_probability, dtype=np.float64), eps, 1 - eps)
    nodes = np.ones(p.shape, bool)
    i, j, _ = grid_edges(p.shape, nodes, connectivity=1)
    energy = PottsEnergy(np.stack([-np.log(1 - p).ravel(), -np.log(p).ravel()], 1), i, j, gamma)
    start = (p > 0.5).ravel().astype(np.int64)
    labels, _ = swap_move(energy, start, 0, 1)
    return labels.reshape(p.shape).astype(bool)


def detect_rectum(o_em: np.ndarray, volume_hu: np.ndarray, air_hu: float = -850.0, window_step: int = 5,
                  min_area: int = 4) -> Optional[tuple[int, int, int]]:
    """The rectum seed (z, y, x): among the lowest slices (window grown by ``window_step`` until found), the
    largest 2D component of ``o_em`` whose mean HU is below ``air_hu``; its centroid, moved to the nearest
    component voxel. None when no slice has such a component."""
    depth = o_em.shape[0]
    for window in range(window_step, depth + window_step, window_step):
        best, best_area = None, 0
        for z in range(min(window, depth)):
            labels, count = ndimage.label(o_em[z])
            for index in range(1, count + 1):
                component = labels == index
                area = int(component.sum())
                if area < min_area or area <= best_area or volume_hu[z][component].mean() >= air_hu:
                    continue
                best, best_area = (z, component), area
        if best is not None:
            z, component = best
            cy, cx = ndimage.center_of_mass(component)
            ys, xs = np.nonzero(component)
            nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
            return int(z), int(ys[nearest]), int(xs[nearest])
    return None


@dataclass
class MRFResult:
    """The initial colon mask (D, H, W) bool, the rectum seed (z, y, x) or None, and the intermediate maps."""

    mask: np.ndarray
    seed: Optional[tuple[int, int, int]]
    thresholds: tuple[float, float]
    mixture: HUMixture
    o_em: np.ndarray = field(repr=False)
    o_gc: np.ndarray = field(repr=False)
    o_rg: np.ndarray = field(repr=False)

    @property
    def start_slice(self) -> int:
        """The rectum slice (0 when no rectum was found)."""
        return 0 if self.seed is None else self.seed[0]


def mrf_initial_label(volume_hu: np.ndarray, erosion_iterations: int = 4, dilation_iterations: int = 3,
                      bone_hu: float = 1000.0, rectum_hu: float = -850.0, graph_cut: bool = True,
                      mixture: Optional[HUMixture] = None, body_histogram: bool = True) -> MRFResult:
    """Algorithm 1 on a (D, H, W) HU volume (axis 0 from inferior to superior); see the module docstring."""
    volume_hu = np.asarray(volume_hu, dtype=np.float32)
    if volume_hu.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume_hu.shape}")
    if mixture is None:
        # the histogram of the body (everything but the air connected to the slice border): the air around the
        # patient is a spike at -1000 HU that otherwise draws two of the four components (our choice; see the docs)
        sample = volume_hu[~body_air_outside(volume_hu)] if body_histogram else volume_hu
        mixture = fit_hu_mixture(sample)
    th1, th2 = em_thresholds(mixture)
    air = body_air(volume_hu, th1)
    fluid = (volume_hu > th2) & (volume_hu < bone_hu)
    o_em = air | fluid
    structure = ndimage.generate_binary_structure(2, 1)
    eroded = np.stack([ndimage.binary_erosion(s, structure, iterations=erosion_iterations) if erosion_iterations
                       else s for s in o_em])
    if graph_cut:
        posterior = mixture.posteriors(volume_hu)
        p_colon = np.where(o_em, posterior[..., 0] + posterior[..., 3], 0.0)  # air or fluid, inside the body
        gamma = potts_gamma(eroded)
        # the eroded map is the seed: voxels the erosion removed lean to background
        p_colon = np.where(eroded, np.maximum(p_colon, 0.9), np.minimum(p_colon, 0.1))
        o_gc = np.stack([graph_cut_slice(p, gamma) for p in p_colon])
    else:
        o_gc = eroded
    seed = detect_rectum(o_em, volume_hu, air_hu=rectum_hu)
    o_rg = np.zeros_like(o_gc)
    if seed is not None:
        labels, _ = ndimage.label(o_gc, structure=np.ones((3, 3, 3), bool))
        z, y, x = seed
        if labels[z, y, x] == 0:  # the erosion removed the seed voxel: take the nearest component voxel of its slice
            zs, ys, xs = np.nonzero(labels[z:z + 1])
            if zs.size:
                nearest = int(np.argmin((ys - y) ** 2 + (xs - x) ** 2))
                y, x = int(ys[nearest]), int(xs[nearest])
        if labels[z, y, x] > 0:
            o_rg = labels == labels[z, y, x]
    dilated = np.stack([ndimage.binary_dilation(s, structure, iterations=dilation_iterations) if dilation_iterations
                        else s for s in o_rg])
    mask = dilated & o_em
    return MRFResult(mask, seed, (th1, th2), mixture, o_em, o_gc, o_rg)
