"""Classical (non-learned) segmentation of the dark, anechoic synovial-fluid region: SFRSeg-Net's Table 3 rows.

shared/papers/icpr24_sfrseg_net.md, Table 3: ACM [37], FCM [38], K-means [39], level set [40], Otsu [41],
watershed [42]. The paper only says that "the parameters ... are adjusted based on the recommendation of
the authors and when not available ... based on the enhanced results"; every choice below is ours. Each
function takes one grey image (2D, any intensity range) and returns a boolean fluid mask of its shape.
Synovial fluid is anechoic, so every method labels the *dark* part (lowest mean intensity) as fluid;
``benchmarks/sfrseg_classical_baselines.py`` evaluates them per image (DSC / JI).

Table 4's methods (Veronese et al. 2013, a semi-automatic cascade of two active contours; Hemalatha
et al. 2018, a comparison of several active contours) are not here: the paper gives one sentence on
each, not their energies, initialisation or user input.
"""
from __future__ import annotations

import numpy as np


def _as_unit_grey(grey: np.ndarray) -> np.ndarray:
    """Float64 copy scaled to [0, 1] (min-max); raises on anything but a finite 2D image."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2D grey image, got shape {grey.shape}")
    if grey.size == 0 or not np.isfinite(grey).all():
        raise ValueError("the grey image must be non-empty and finite")
    low, high = grey.min(), grey.max()
    return (grey - low) / (high - low) if high > low else np.zeros_like(grey)


# -- thresholding and clustering -----------------------------------------------------------------------
def otsu_dark(grey: np.ndarray) -> np.ndarray:
    """Otsu (1979): pixels below skimage's Otsu threshold."""
    from skimage.filters import threshold_otsu

    grey = _as_unit_grey(grey)
    if grey.max() == grey.min():
        return np.zeros(grey.shape, bool)
    return grey < threshold_otsu(grey)


def kmeans_dark(grey: np.ndarray, k: int = 3, seed: int = 0) -> np.ndarray:
    """K-means on intensities (sklearn, ``n_init=3``): the cluster of lowest centre."""
    from sklearn.cluster import KMeans

    unit = _as_unit_grey(grey)
    if unit.max() == unit.min():  # nothing to cluster
        return np.zeros(unit.shape, bool)
    values = unit.reshape(-1, 1)
    model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(values)
    darkest = int(np.argmin(model.cluster_centers_[:, 0]))
    return (model.labels_ == darkest).reshape(unit.shape)


def fuzzy_cmeans(data: np.ndarray, c: int, m: float = 2.0, max_iter: int = 150, tol: float = 1e-6,
                 seed: int = 0, memberships: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Fuzzy C-means (Bezdek 1981): alternate centre and membership updates of J_m = sum u_ik^m ||x_k - v_i||^2.

    ``v_i = sum_k u_ik^m x_k / sum_k u_ik^m``;  ``u_ik = 1 / sum_j (d_ik / d_jk)^(2 / (m - 1))``.
    Starts from random memberships (each column sums to 1) unless ``memberships`` (c, N) is given, stops
    when no membership moves more than ``tol``. Args: ``data`` (N, D) or (N,). Returns centres (c, D),
    memberships (c, N) and the objective J_m after each centre update.
    """
    x = np.asarray(data, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    if x.ndim != 2 or len(x) < c:
        raise ValueError(f"need (N, D) data with N >= c = {c}, got shape {np.shape(data)}")
    if c < 2 or m <= 1:
        raise ValueError(f"need c >= 2 and m > 1, got c={c}, m={m}")
    if memberships is None:
        u = np.random.default_rng(seed).random((c, len(x)))
    else:
        u = np.array(memberships, dtype=np.float64)
        if u.shape != (c, len(x)) or (u < 0).any():
            raise ValueError(f"memberships must be non-negative of shape {(c, len(x))}, got {u.shape}")
    u /= u.sum(0, keepdims=True)
    objective = []
    for _ in range(max_iter):
        weights = u ** m
        centres = weights @ x / weights.sum(1, keepdims=True)
        sq_dist = ((x[None] - centres[:, None]) ** 2).sum(-1)  # (c, N)
        objective.append(float((weights * sq_dist).sum()))
        # Memberships from inverse distances; a point on a centre belongs to it (shared if centres coincide).
        on_centre = sq_dist <= 1e-300
        inv = np.where(on_centre, 1.0, np.maximum(sq_dist, 1e-300)) ** (-1.0 / (m - 1))
        inv = np.where(on_centre.any(0, keepdims=True), on_centre.astype(np.float64), inv)
        new_u = inv / inv.sum(0, keepdims=True)
        converged = np.abs(new_u - u).max() < tol
        u = new_u
        if converged:
            break
    return centres, u, objective


def fcm_dark(grey: np.ndarray, c: int = 3, m: float = 2.0, seed: int = 0) -> np.ndarray:
    """FCM on intensities, c = 3 (as K-means), m = 2: pixels whose largest membership is the darkest cluster."""
    unit = _as_unit_grey(grey)
    if unit.max() == unit.min():
        return np.zeros(unit.shape, bool)
    centres, memberships, _ = fuzzy_cmeans(unit.reshape(-1), c=c, m=m, seed=seed)
    return (memberships.argmax(0) == int(np.argmin(centres[:, 0]))).reshape(unit.shape)


# -- contours and regions ----------------------------------------------------------------------------------
def acm_dark(grey: np.ndarray, num_iter: int = 200, sigma: float = 2.0, alpha: float = 100.0,
             smoothing: int = 1, inset: float = 0.05) -> np.ndarray:
    """Active contour model (edge-based, the snake family of ref. [37]): skimage's morphological geodesic
    active contour on the inverse Gaussian gradient (alpha 100, sigma 2), started from a box inset by 5 %
    of the image side and shrunk by an inward balloon force (skimage's recipe) until strong edges hold
    it; what the contour encloses at the end is fluid (the anechoic pocket is the region that its strong,
    closed boundary keeps from collapsing)."""
    from skimage.segmentation import inverse_gaussian_gradient, morphological_geodesic_active_contour

    unit = _as_unit_grey(grey)
    if unit.max() == unit.min():
        return np.zeros(unit.shape, bool)
    edge_map = inverse_gaussian_gradient(unit, alpha=alpha, sigma=sigma)
    init = np.zeros(unit.shape, np.int8)
    margin = max(1, int(round(inset * min(unit.shape))))
    init[margin:-margin, margin:-margin] = 1
    contour = morphological_geodesic_active_contour(edge_map, num_iter, init_level_set=init, smoothing=smoothing,
                                                    threshold="auto", balloon=-1)
    return contour.astype(bool)


def level_set_dark(grey: np.ndarray, num_iter: int = 200, mu: float = 0.25, sigma: float = 1.0) -> np.ndarray:
    """Level set (Chan-Vese 2001, the level-set PDE, skimage ``chan_vese``) on the lightly smoothed image
    (sigma 1, against speckle), from skimage's checkerboard initial level set; the phase of lower mean
    intensity is fluid."""
    from scipy import ndimage
    from skimage.segmentation import chan_vese

    unit = ndimage.gaussian_filter(_as_unit_grey(grey), sigma)
    if unit.max() == unit.min():  # no contrast: the initial checkerboard would be returned unchanged
        return np.zeros(unit.shape, bool)
    phase = chan_vese(unit, mu=mu, lambda1=1.0, lambda2=1.0, tol=1e-3, max_num_iter=num_iter,
                      init_level_set="checkerboard")
    if not phase.any() or phase.all():
        return np.zeros(unit.shape, bool)
    return phase if unit[phase].mean() < unit[~phase].mean() else ~phase


def watershed_dark(grey: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Marker-controlled watershed (Meyer 1994, skimage ``watershed``) on the Sobel gradient of the smoothed
    image; markers are the darkest and brightest of three multi-Otsu classes of the smoothed image, so
    the middle intensities are flooded from either; the dark marker's basins are fluid."""
    from scipy import ndimage
    from skimage.filters import sobel, threshold_multiotsu
    from skimage.segmentation import watershed

    smooth = ndimage.gaussian_filter(_as_unit_grey(grey), sigma)
    if np.unique(smooth).size < 3:
        return np.zeros(smooth.shape, bool)
    low, high = threshold_multiotsu(smooth, classes=3)
    markers = np.zeros(smooth.shape, np.int32)
    markers[smooth < low] = 1
    markers[smooth > high] = 2
    return watershed(sobel(smooth), markers) == 1


METHODS = {"ACM": acm_dark, "FCM": fcm_dark, "K-means": kmeans_dark, "Level set": level_set_dark,
           "Otsu": otsu_dark, "Watershed": watershed_dark}  # Table 3's order


def dice_iou(prediction: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Per-image DSC and JI; both 1 when prediction and target are empty (the shared metrics' rule)."""
    prediction, target = np.asarray(prediction, bool), np.asarray(target, bool)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {prediction.shape} and target {target.shape} differ in shape")
    tp = np.logical_and(prediction, target).sum()
    fp, fn = np.logical_and(prediction, ~target).sum(), np.logical_and(~prediction, target).sum()
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return float(2 * tp / (2 * tp + fp + fn)), float(tp / (tp + fp + fn))
