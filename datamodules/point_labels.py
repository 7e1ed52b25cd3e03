"""Weak (point) labels for segmentation and the intensity-aware distance maps computed from them (PointBL, ICPR 2024).

Reusable by any segmentation dataset that has dense masks to draw points from:

- ``sample_points(mask, num_classes, width=4, rng=...)``: per foreground class present, one random pixel inside the
  class, a disk of diameter ``width`` drawn there and clipped to the class (the official ``gen_weak.py random_strat``);
  ``per_component=True`` draws one per connected component ("every foreground object"). Unlabelled pixels get
  ``IGNORE`` (-1); background stays unlabelled (the paper's losses use foreground classes only).
- ``distance_map(image, seeds, kind)``: the distance of every pixel from a seed set, full connectivity (8 in 2D, 26
  in 3D), on intensities rescaled to 0-255:
  ``euc`` chamfer distance (paper's lambda = 1: steps of 1, sqrt(2), sqrt(3)), ``geo`` weighted-L1 geodesic
  ``sum (1 - lam)|dI| + lam c`` with lam = 0.5, ``int`` lam = 0 (intensity only): Dijkstra over the pixel graph
  (``scipy.sparse.csgraph.dijkstra``); ``mbd`` the exact minimum barrier distance ``min over paths of
  (max I - min I)`` on the 256-level intensity lattice: for every lower level t, the minimax path value U_t from the
  seeds through pixels >= t is a grey-level reconstruction by erosion (``skimage.morphology.reconstruction``), and
  MBD = min_t (U_t - t) (exact: the optimal path's own minimum is one of the t).
- ``signed_distance_maps(image, points, num_classes, kind)``: per class k, phi_k = D(., Y_k) outside the annotation
  and -D(., complement) inside (zero where the class has no point: the paper's ACDC rule), as the boundary loss
  (Kervadec et al.) needs.
"""
from __future__ import annotations

import itertools
from typing import Literal, Optional

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

IGNORE = -1
DistanceKind = Literal["euc", "geo", "int", "mbd"]
#: the paper's lambda per distance (spatial weight; FastGeodis' ``lamb`` is 1 - this)
LAMBDAS = {"euc": 1.0, "geo": 0.5, "int": 0.0}
DISTANCES = ("euc", "geo", "int", "mbd")


def rescale_255(image: np.ndarray) -> np.ndarray:
    """Min-max to 0-255 (float, rounded to the 256 integer levels as the paper's uint8 slices)."""
    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image)
    return np.round((image - low) / (high - low) * 255.0)


def disk(width: int, ndim: int = 2) -> np.ndarray:
    """A ball of diameter ``width`` pixels (boolean, odd side)."""
    radius = width / 2.0
    half = int(np.ceil(radius - 0.5))
    grid = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * ndim, indexing="ij"))
    return (grid ** 2).sum(0) <= radius ** 2


def sample_points(mask: np.ndarray, num_classes: int, width: int = 4, rng: Optional[np.random.Generator] = None,
                  per_component: bool = False) -> np.ndarray:
    """Point labels from a dense label map (``*S`` ints): ``IGNORE`` everywhere but a disk of diameter ``width``
    around one random pixel of each present foreground class (or connected component), clipped to that class."""
    rng = rng if rng is not None else np.random.default_rng(0)
    mask = np.asarray(mask)
    points = np.full(mask.shape, IGNORE, dtype=np.int64)
    ball = disk(width, mask.ndim)
    for k in range(1, num_classes):
        region = mask == k
        if not region.any():
            continue
        parts = [region]
        if per_component:
            labelled, count = ndimage.label(region, structure=np.ones((3,) * mask.ndim))
            parts = [labelled == c for c in range(1, count + 1)]
        for part in parts:
            coordinates = np.argwhere(part)
            centre = coordinates[rng.integers(len(coordinates))]
            seed = np.zeros(mask.shape, dtype=bool)
            seed[tuple(centre)] = True
            drawn = ndimage.binary_dilation(seed, structure=ball) & part
            points[drawn] = k
    return points


def _offsets(ndim: int) -> list[tuple[int, ...]]:
    """Half of the full-connectivity neighbourhood (each undirected edge once)."""
    return [o for o in itertools.product((-1, 0, 1), repeat=ndim) if o > (0,) * ndim]


def _shifted(array: np.ndarray, offset: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    source = tuple(slice(max(0, -o), n - max(0, o)) for o, n in zip(offset, array.shape))
    target = tuple(slice(max(0, o), n - max(0, -o)) for o, n in zip(offset, array.shape))
    return source, target


def pixel_graph(image: np.ndarray, lam: float) -> sparse.csr_matrix:
    """Symmetric full-connectivity graph with edge weights ``(1 - lam)|dI| + lam * c`` (c = 1, sqrt 2, sqrt 3);
    a tiny floor keeps zero-cost edges edges."""
    index = np.arange(image.size).reshape(image.shape)
    rows, cols, weights = [], [], []
    for offset in _offsets(image.ndim):
        source, target = _shifted(image, offset)
        step = float(np.sqrt(np.sum(np.square(offset))))
        weight = (1.0 - lam) * np.abs(image[target] - image[source]) + lam * step
        rows.append(index[source].ravel())
        cols.append(index[target].ravel())
        weights.append(np.maximum(weight.ravel(), 1e-9))
    rows, cols, weights = (np.concatenate(x) for x in (rows, cols, weights))
    graph = sparse.coo_matrix((np.concatenate([weights, weights]), (np.concatenate([rows, cols]),
                                                                   np.concatenate([cols, rows]))),
                              shape=(image.size, image.size))
    return graph.tocsr()


def geodesic_distance(image: np.ndarray, seeds: np.ndarray, lam: float,
                      graph: Optional[sparse.csr_matrix] = None) -> np.ndarray:
    """Weighted-L1 geodesic distance from the ``seeds`` (boolean) over ``image`` (already 0-255); ``graph``: its
    ``pixel_graph(image, lam)`` when already built (it depends on the image only, not on the seeds)."""
    seeds = np.asarray(seeds, dtype=bool)
    if not seeds.any():
        raise ValueError("geodesic distance from an empty seed set")
    if graph is None:
        graph = pixel_graph(np.asarray(image, dtype=np.float64), lam)
    distance = csgraph.dijkstra(graph, directed=False, indices=np.flatnonzero(seeds), min_only=True)
    return distance.reshape(seeds.shape)


def minimum_barrier_distance(image: np.ndarray, seeds: np.ndarray, level_step: int = 1) -> np.ndarray:
    """Minimum barrier distance from ``seeds``: exact on integer levels (``image`` 0-255 rounded) with
    ``level_step`` 1; a step s > 1 tries every s-th lower level only (an upper bound, at most s - 1 too large,
    s times faster)."""
    from skimage.morphology import reconstruction

    seeds = np.asarray(seeds, dtype=bool)
    if not seeds.any():
        raise ValueError("minimum barrier distance from an empty seed set")
    image = np.asarray(image, dtype=np.float64)
    big = float(image.max()) + 1.0
    footprint = np.ones((3,) * image.ndim, dtype=bool)
    best = np.full(image.shape, np.inf)
    seed_levels = image[seeds]
    for t in np.unique(image)[::max(1, int(level_step))]:
        if t > seed_levels.max():
            break  # every path starts at a seed, so its minimum is <= the largest seed value
        allowed = image >= t
        start = seeds & allowed
        if not start.any():
            continue
        mask = np.where(allowed, image, big)
        marker = np.where(start, image, big)
        upper = reconstruction(marker, mask, method="erosion", footprint=footprint)
        reachable = allowed & (upper < big)
        best = np.where(reachable, np.minimum(best, upper - t), best)
    return best


def distance_map(image: np.ndarray, seeds: np.ndarray, kind: DistanceKind, mbd_step: int = 1,
                 graph: Optional[sparse.csr_matrix] = None) -> np.ndarray:
    """Distance of every pixel from the seed set (``image`` already rescaled to 0-255); ``graph``: the image's
    pixel graph for ``kind`` (euc/geo/int), reused across seed sets."""
    if kind == "mbd":
        return minimum_barrier_distance(image, seeds, mbd_step)
    if kind not in LAMBDAS:
        raise ValueError(f"distance must be one of {DISTANCES}, got {kind!r}")
    return geodesic_distance(image, seeds, LAMBDAS[kind], graph)


def signed_distance_maps(image: np.ndarray, points: np.ndarray, num_classes: int, kind: DistanceKind,
                         absent_value: float = 0.0, mbd_step: int = 1) -> np.ndarray:
    """(K, *S) float32: per class k >= 1 with points, D(., points_k) outside and -D(., not points_k) inside;
    ``absent_value`` everywhere for a class without points (and for the background channel 0, unused)."""
    image = rescale_255(image)
    maps = np.full((num_classes, *points.shape), absent_value, dtype=np.float32)
    maps[0] = 0.0
    graph = None  # the whole image's pixel graph, built once for every class (most of a Dijkstra map's cost)
    for k in range(1, num_classes):
        inside = points == k
        if not inside.any():
            continue
        if graph is None and kind in LAMBDAS:
            graph = pixel_graph(image, LAMBDAS[kind])
        outside = distance_map(image, inside, kind, mbd_step, graph)
        signed = np.where(inside, 0.0, outside)
        if (~inside).any():  # paths from inside pixels end at the first outside pixel: the box + 1 is exact
            box = tuple(slice(max(0, int(lo) - 1), int(hi) + 2)
                        for lo, hi in zip(np.argwhere(inside).min(0), np.argwhere(inside).max(0)))
            crop = np.zeros_like(signed)
            crop[box] = np.where(inside[box], distance_map(image[box], ~inside[box], kind, mbd_step), 0.0)
            signed = signed - crop
        maps[k] = signed.astype(np.float32)
    return maps
