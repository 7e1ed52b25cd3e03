"""SMDGC: Shape induced Multi-class Deep Graph Cut for hippocampus subfield segmentation (De & Chowdhury, ICPR 2024).

shared/papers/icpr24_hippocampus_deep_graph_cut.md. Stage A is a plain 3D U-Net (``lightning_modules.unet3d.UNet3D``)
trained with a soft multi-class Dice loss by ``tasks.segmentation.SegmentationTask``; Stage B, here, is a
test-time post-processing of the U-Net's softmax (``GraphCutPostprocessor``, one per table row):

- data term (Eq. 9): ``lambda(x) * -ln P(f_x | x)``, P clamped at 1e-6; lambda(x) = ``data_scale`` times 1
  (``data_weight: one``) or max_l P(l | x) (``max_prob``): the paper takes lambda_DGC from its ref. [12];
- smoothness (Eqs. 6-8) for neighbours x, y with f_x != f_y, in a pair (a, b) with alpha = min(a, b), beta = max:
  ``B = K * exp(-(I_x - I_y)^2 / (2 sigma^2)) / d(x, y) / delta``, ``K = 1 - |P_x(alpha) - P_y(alpha)|``,
  ``delta = max(|P_x(alpha) - P_y(alpha)| + |P_x(beta) - P_y(beta)|, 1e-3)``, sigma = std of the T1 channel,
  d the Euclidean distance of the voxel centres (times ``spacing``);
- shape (Eqs. 12-13): ``eta * S`` with ``eta = exp(-(P_x(f_x) - P_y(f_y))^2)`` and ``S`` the mean at x and y of the
  unsigned distance to the boundaries of the U-Net segmentation thresholded at kappa (per class P > kappa);
- energy (Eq. 14): sum over 26-neighbour pairs with f_x != f_y of (B + eta S) plus the data terms, minimised by
  alpha-beta swap (``lightning_modules.graphcut``, PyMaxflow) from the U-Net's argmax, on the region of interest
  dilate(U-Net foreground, ``roi_dilation``) (outside: background), with the deep-learned swap (Eq. 11: voxels
  whose U-Net margin for their label exceeds tau stay out of the move).

Baselines of the ablation tables: ``gc_intensity`` (Table 1, a multi-class graph cut without deep learning:
per-class diagonal Gaussian intensity models fitted on the training labels, Boykov-Jolly smoothness),
``dgc_swap`` / ``dgc_deep_swap`` (Table 2: the DGC energy without the shape term, plain or deep swap) and
``adaptive_shape_wang`` (Table 3: Wang et al.'s adaptive shape term with the Gaussian models' posteriors on the
Gaussian-filtered image in place of the U-Net's probabilities, added to ``gc_intensity``).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
from scipy import ndimage

from lightning_modules.graphcut import PairwiseEnergy, alpha_beta_swap, confident_nodes, grid_edges
from lightning_modules.tasks.segmentation import SegmentationPostprocessor

Variant = Literal["gc_intensity", "dgc_swap", "dgc_deep_swap", "adaptive_shape_wang", "smdgc"]
#: (probability source, smoothness, shape term, deep-learned swap) of each variant
VARIANTS = {
    "gc_intensity": ("intensity", "boykov_jolly", False, False),
    "adaptive_shape_wang": ("intensity", "boykov_jolly", True, False),
    "dgc_swap": ("unet", "dgc", False, False),
    "dgc_deep_swap": ("unet", "dgc", False, True),
    "smdgc": ("unet", "dgc", True, True),
}


class GraphCutEnergy(PairwiseEnergy):
    """Eq. 14's pairwise terms on the edges (i, j) of a region.

    Args:
        unary: (n, L) data costs.
        i, j, distance: the edges and their voxel-centre distances (``graphcut.grid_edges``).
        intensity: (n,) the intensities of the smoothness contrast term; sigma: their scale.
        probabilities: (n, L): the U-Net's (``dgc``: K, delta; the shape weight eta) or another model's (eta).
        smoothness: ``dgc`` (Eqs. 6-8) or ``boykov_jolly`` (Potts, ``exp(-dI^2 / 2 sigma^2) / d``).
        shape_distance: (n,) the unsigned distance to the template's boundaries (Eq. 13); None: no shape term.
        smoothness_weight: a factor on B (1 in the paper).
        delta_min: the floor of delta (Eq. 8), which is 0 between voxels of equal probabilities.
    """

    def __init__(self, unary: np.ndarray, i: np.ndarray, j: np.ndarray, distance: np.ndarray, intensity: np.ndarray,
                 sigma: float, probabilities: Optional[np.ndarray] = None,
                 smoothness: Literal["dgc", "boykov_jolly"] = "dgc", shape_distance: Optional[np.ndarray] = None,
                 smoothness_weight: float = 1.0, delta_min: float = 1e-3) -> None:
        super().__init__(unary, i, j)
        if (smoothness == "dgc" or shape_distance is not None) and probabilities is None:
            raise ValueError("the dgc smoothness and the shape term need probabilities")
        if smoothness not in ("dgc", "boykov_jolly"):
            raise ValueError(f"smoothness must be 'dgc' or 'boykov_jolly', got {smoothness!r}")
        intensity = np.asarray(intensity, dtype=np.float64)
        sigma = max(float(sigma), 1e-8)
        self.contrast = (smoothness_weight * np.exp(-(intensity[self.i] - intensity[self.j]) ** 2 / (2 * sigma ** 2))
                         / np.asarray(distance, dtype=np.float64))
        self.probabilities = None if probabilities is None else np.asarray(probabilities, dtype=np.float64)
        self.smoothness = smoothness
        self.delta_min = delta_min
        self.shape = (None if shape_distance is None
                      else 0.5 * (shape_distance[self.i] + shape_distance[self.j]).astype(np.float64))

    def pair_cost(self, edges: np.ndarray, a, b) -> np.ndarray:
        a, b = np.broadcast_to(a, edges.shape), np.broadcast_to(b, edges.shape)
        i, j = self.i[edges], self.j[edges]
        if self.smoothness == "dgc":
            P = self.probabilities
            low, high = np.minimum(a, b), np.maximum(a, b)
            change_low = np.abs(P[i, low] - P[j, low])
            change_high = np.abs(P[i, high] - P[j, high])
            delta = np.maximum(change_low + change_high, self.delta_min)
            cost = (1.0 - change_low) * self.contrast[edges] / delta
        else:
            cost = self.contrast[edges].copy()
        if self.shape is not None:
            eta = np.exp(-(self.probabilities[i, a] - self.probabilities[j, b]) ** 2)
            cost = cost + eta * self.shape[edges]
        return np.where(a != b, cost, 0.0)


def boundary_distance(probabilities: np.ndarray, kappa: float = 0.5,
                      spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Eq. 13's unsigned distance function: the Euclidean distance (in units of ``spacing``) of every voxel to the
    nearest boundary voxel of the segmentation G = {P(l) > kappa} of any class l (the inner boundary of each
    class region). (L, *S) -> (*S); zeros when G has no boundary."""
    structure = ndimage.generate_binary_structure(probabilities.ndim - 1, probabilities.ndim - 1)
    boundary = np.zeros(probabilities.shape[1:], bool)
    for class_probability in probabilities:
        region = class_probability > kappa
        boundary |= region & ~ndimage.binary_erosion(region, structure, border_value=1)
    if not boundary.any():
        return np.zeros(boundary.shape)
    return ndimage.distance_transform_edt(~boundary, sampling=spacing)


class GaussianIntensityModel:
    """Per-class diagonal Gaussian models of the voxel intensities (all channels), fitted on labelled volumes."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.mean: Optional[np.ndarray] = None  # (L, C)
        self.var: Optional[np.ndarray] = None

    def fit(self, batches) -> "GaussianIntensityModel":
        """``batches``: dicts with ``image`` (B, C, *S) and ``mask`` (B, 1, *S) tensors or arrays."""
        count = total = squares = None
        for batch in batches:
            image = np.asarray(batch["image"], dtype=np.float64)
            labels = np.asarray(batch["mask"]).astype(np.int64)[:, 0].ravel()
            channels = np.moveaxis(image, 1, 0).reshape(image.shape[1], -1)
            if count is None:
                count = np.zeros(self.num_classes)
                total = np.zeros((self.num_classes, len(channels)))
                squares = np.zeros_like(total)
            count += np.bincount(labels, minlength=self.num_classes)[:self.num_classes]
            for c, values in enumerate(channels):
                total[:, c] += np.bincount(labels, values, minlength=self.num_classes)[:self.num_classes]
                squares[:, c] += np.bincount(labels, values ** 2, minlength=self.num_classes)[:self.num_classes]
        if count is None or (count == 0).any():
            raise ValueError(f"every class needs training voxels to fit its intensity model, got counts {count}")
        self.mean = total / count[:, None]
        self.var = np.maximum(squares / count[:, None] - self.mean ** 2, 1e-6)
        return self

    def negative_log_likelihood(self, image: np.ndarray) -> np.ndarray:
        """(C, *S) -> (L, *S): -ln N(I(x); mean_l, var_l)."""
        if self.mean is None:
            raise RuntimeError("fit the intensity model first")
        shape = (self.num_classes, image.shape[0]) + (1,) * (image.ndim - 1)
        mean, var = self.mean.reshape(shape), self.var.reshape(shape)
        return 0.5 * (((image[None] - mean) ** 2) / var + np.log(2 * np.pi * var)).sum(1)


class GraphCutPostprocessor(SegmentationPostprocessor):
    """Stage B of SMDGC and the graph-cut rows of its ablation tables, on one sample at a time.

    Args:
        variant: ``smdgc`` (data + smoothness + shape, deep-learned swap), ``dgc_swap`` / ``dgc_deep_swap`` (no
            shape; plain / deep-learned swap), ``gc_intensity`` (no deep learning: Gaussian intensity data term,
            Boykov-Jolly smoothness) or ``adaptive_shape_wang`` (``gc_intensity`` + Wang et al.'s shape term).
        num_classes: labels, background first.
        kappa: the threshold of the shape template (Eq. 13), 0.5 in the paper.
        tau: the deep-learned swap's confidence margin (Eq. 11; not given in the paper).
        data_weight, data_scale: lambda(x) = data_scale * (1 | max_l P(l | x)).
        connectivity: 3 = the 26-neighbourhood (2: 18, 1: 6) in 3D.
        max_cycles: swap cycles over the 6 label pairs (fewer when a cycle lowers the energy no more).
        roi_dilation: U-Net variants: the graph covers dilate(foreground, this many voxels); None: the whole volume.
            The intensity variants always use the whole volume (they have no U-Net foreground).
        spacing: voxel size (distances d and the shape distance), 1 per axis by default.
        intensity_channel: the image channel of the contrast term (0: T1).
        smoothness_weight, delta_min, probability_floor: see ``GraphCutEnergy``; -ln P uses P >= probability_floor.
        wang_sigma: ``adaptive_shape_wang``: the Gaussian filter (voxels) before the posteriors of its shape term.
    """

    stat_names = ("free_nodes", "moves", "cycles", "energy_start", "energy_end", "nodes")

    def __init__(self, variant: Variant = "smdgc", num_classes: int = 4, kappa: float = 0.5, tau: float = 0.5,
                 data_weight: Literal["one", "max_prob"] = "one", data_scale: float = 1.0, connectivity: int = 3,
                 max_cycles: int = 5, roi_dilation: Optional[int] = 3, spacing: Optional[Sequence[float]] = None,
                 intensity_channel: int = 0, smoothness_weight: float = 1.0, delta_min: float = 1e-3,
                 probability_floor: float = 1e-6, wang_sigma: float = 1.0) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        if data_weight not in ("one", "max_prob"):
            raise ValueError(f"data_weight must be 'one' or 'max_prob', got {data_weight!r}")
        self.variant = variant
        self.source, self.smoothness, self.use_shape, self.deep_swap = VARIANTS[variant]
        self.requires_fit = self.source == "intensity"
        self.num_classes = num_classes
        self.kappa, self.tau = kappa, tau
        self.data_weight, self.data_scale = data_weight, data_scale
        self.connectivity, self.max_cycles, self.roi_dilation = connectivity, max_cycles, roi_dilation
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.intensity_channel = intensity_channel
        self.smoothness_weight, self.delta_min, self.probability_floor = smoothness_weight, delta_min, probability_floor
        self.wang_sigma = wang_sigma
        self.intensity_model = GaussianIntensityModel(num_classes)

    def fit(self, loader) -> None:
        """The intensity variants' class models, from the training batches (``image``, ``mask``)."""
        def arrays(batch: dict) -> dict:
            return {key: np.asarray(batch[key].cpu() if hasattr(batch[key], "cpu") else batch[key])
                    for key in ("image", "mask")}

        self.intensity_model.fit(arrays(batch) for batch in loader)

    # -- the terms ---------------------------------------------------------------------------------
    def _unet_terms(self, probabilities: np.ndarray):
        start = probabilities.argmax(0)
        P = np.clip(probabilities, self.probability_floor, 1.0)
        weight = self.data_scale * (np.ones(P.shape[1:]) if self.data_weight == "one" else probabilities.max(0))
        unary = weight[None] * -np.log(P)
        if self.roi_dilation is None:
            roi = np.ones(start.shape, bool)
        else:
            structure = ndimage.generate_binary_structure(start.ndim, start.ndim)
            roi = start > 0
            if self.roi_dilation > 0 and roi.any():
                roi = ndimage.binary_dilation(roi, structure, iterations=self.roi_dilation)
        shape = boundary_distance(probabilities, self.kappa, self.spacing) if self.use_shape else None
        return unary, start, roi, probabilities, shape

    def _intensity_terms(self, image: np.ndarray):
        unary = self.intensity_model.negative_log_likelihood(image)
        start = unary.argmin(0)
        roi = np.ones(start.shape, bool)
        probabilities = shape = None
        if self.use_shape:  # Wang et al.: the posteriors on the Gaussian-filtered image, and their template
            smoothed = np.stack([ndimage.gaussian_filter(channel, self.wang_sigma) for channel in image])
            log_likelihood = -self.intensity_model.negative_log_likelihood(smoothed)
            log_likelihood -= log_likelihood.max(0, keepdims=True)
            probabilities = np.exp(log_likelihood)
            probabilities /= probabilities.sum(0, keepdims=True)
            shape = boundary_distance(probabilities, self.kappa, self.spacing)
        return unary, start, roi, probabilities, shape

    def build(self, probabilities: np.ndarray, image: np.ndarray):
        """The energy on the region's nodes, the starting labels, the nodes' mask, the frozen nodes and the swap's
        confidence rule (for tests and benchmarks; ``__call__`` minimises it)."""
        if self.source == "unet":
            unary, start, roi, P, shape = self._unet_terms(probabilities)
        else:
            unary, start, roi, P, shape = self._intensity_terms(image)
        structure = ndimage.generate_binary_structure(start.ndim, self.connectivity)
        nodes = ndimage.binary_dilation(roi, structure) if not roi.all() else roi  # the ROI and a frozen shell
        frozen = (nodes & ~roi)[nodes]
        labels = np.where(roi, start, 0)[nodes]
        i, j, distance = grid_edges(start.shape, nodes, self.spacing, self.connectivity)
        intensity = image[self.intensity_channel]
        energy = GraphCutEnergy(np.moveaxis(unary, 0, -1)[nodes], i, j, distance, intensity[nodes],
                                float(intensity.std()), None if P is None else np.moveaxis(P, 0, -1)[nodes],
                                self.smoothness, None if shape is None else shape[nodes], self.smoothness_weight,
                                self.delta_min)
        confident = confident_nodes(energy.probabilities, self.tau) if self.deep_swap else None
        return energy, labels, nodes, frozen, confident

    def __call__(self, probabilities: np.ndarray, image: np.ndarray):
        energy, labels, nodes, frozen, confident = self.build(probabilities, image)
        result, info = alpha_beta_swap(energy, labels, frozen=frozen, confident=confident, max_cycles=self.max_cycles)
        out = np.zeros(nodes.shape, dtype=np.int64)
        out[nodes] = result
        return out, {"free_nodes": info["free_nodes"], "moves": info["moves"], "cycles": info["cycles"],
                     "energy_start": info["energies"][0], "energy_end": info["energies"][-1],
                     "nodes": float(nodes.sum())}
