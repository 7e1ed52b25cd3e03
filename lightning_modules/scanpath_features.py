"""Hand-crafted scanpath features of Table 2's non-deep baselines (Fuhl, ICPR 2024, Sect. 4.2):

- **Random Ferns** [Fuhl et al., ETRA 2019]: the same angle-fern histograms with fixed random ranges
  (``AngleFernHistogram(learn_ranges=False)``), flattened, into a tree ensemble (``fern_features``).
- **EM statistics** [Goldberg & Helfman 2010, as re-implemented in the paper]: eye-movement events from a
  velocity-threshold (I-VT) detector, then per event type (fixation, saccade) the mean, variance, standard deviation
  and 95 % confidence half-width of the duration, the speed and the acceleration, all in one vector
  (``em_statistics``), for an SVM, a tree ensemble or a two-layer network.

The paper gives no thresholds; the I-VT threshold here is ``threshold_factor`` times the recording's median
sample speed (unit-free: the datasets record pixels at different geometries).
"""
from __future__ import annotations

import numpy as np
import torch

from lightning_modules.blocks.angle_ferns import AngleFernHistogram

STATISTICS = ("mean", "var", "std", "ci95")
EVENT_FEATURES = ("duration", "speed", "acceleration")


def fern_features(layer: AngleFernHistogram, signals: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, n_sets * 2^S) flattened fern histograms of gaze recordings (N, T, 2) (NaN = invalid / padding)."""
    with torch.no_grad():
        return torch.cat([layer(signals[i:i + batch_size]).flatten(1)
                          for i in range(0, len(signals), batch_size)]).numpy()


def ivt_events(xy: np.ndarray, sample_rate: float, threshold_factor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """(per-step saccade flags (T-1,) bool, per-step speed (T-1,)) of one recording's valid samples (T, 2)."""
    speed = np.linalg.norm(np.diff(xy, axis=0), axis=1) * sample_rate
    threshold = threshold_factor * np.median(speed) if len(speed) else 0.0
    return speed > threshold, speed


def _summary(values: list[float]) -> list[float]:
    if not values:
        return [0.0] * len(STATISTICS)
    v = np.asarray(values, dtype=np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return [float(v.mean()), std ** 2, std, 1.96 * std / np.sqrt(len(v))]


def em_statistics(xy: np.ndarray, sample_rate: float, threshold_factor: float = 3.0) -> np.ndarray:
    """One recording's EM-statistics vector: for fixations then saccades, for duration (s), mean speed and mean
    absolute acceleration of each event, the ``STATISTICS`` over the events; 2 x 3 x 4 = 24 values. NaN samples
    are dropped first."""
    xy = np.asarray(xy, dtype=np.float64)
    xy = xy[np.isfinite(xy).all(axis=1)]
    saccade, speed = ivt_events(xy, sample_rate, threshold_factor)
    acceleration = np.abs(np.diff(speed, prepend=speed[:1])) * sample_rate if len(speed) else speed
    # runs of equal labels: the events
    edges = np.flatnonzero(np.diff(saccade.astype(np.int8))) + 1
    starts, stops = np.concatenate([[0], edges]), np.concatenate([edges, [len(saccade)]])
    features = []
    for kind in (False, True):
        events = [(a, b) for a, b in zip(starts, stops) if b > a and saccade[a] == kind]
        features += _summary([(b - a) / sample_rate for a, b in events])
        features += _summary([float(speed[a:b].mean()) for a, b in events])
        features += _summary([float(acceleration[a:b].mean()) for a, b in events])
    return np.asarray(features, dtype=np.float64)
