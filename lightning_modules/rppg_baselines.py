"""Unsupervised rPPG baselines on a clip's mean ROI colour (R, G, B traces), the classic rows of rPPG tables:

* ``chrom_pulse``: CHROM (de Haan & Jeanne, IEEE TBME 2013): X = 3R - 2G, Y = 1.5R + G - 1.5B on the mean-normalised
  colours, band-passed, S = X - (std X / std Y) Y (one window per clip).
* ``pos_pulse``: POS (Wang et al., IEEE TBME 2017): within sliding 1.6 s windows, the projection
  [[0, 1, -1], [-2, 1, 1]] of the mean-normalised colours, h = S1 + (std S1 / std S2) S2, overlap-added.
* ``ica_pulse``: ICA (Poh et al., Opt. Express 2010): detrended, z-scored R, G, B unmixed by FastICA
  (scikit-learn) into three sources; the source with the strongest spectral peak in the HR band is the pulse.

Each maps ``rgb`` (N, 3, f) numpy to pulses (N, f); the HR is then ``metrics.rppg.hr_from_pulse``'s.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.signal import butter, sosfiltfilt


def _bandpass(x: np.ndarray, fps: float, band: Sequence[float], order: int = 4) -> np.ndarray:
    return sosfiltfilt(butter(order, list(band), btype="bandpass", fs=fps, output="sos"), x, axis=-1)


def _normalised(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return rgb / np.maximum(rgb.mean(-1, keepdims=True), 1e-8)


def chrom_pulse(rgb: np.ndarray, fps: float, band: Sequence[float] = (0.7, 4.0)) -> np.ndarray:
    c = _normalised(rgb)
    x = 3 * c[:, 0] - 2 * c[:, 1]
    y = 1.5 * c[:, 0] + c[:, 1] - 1.5 * c[:, 2]
    xf, yf = _bandpass(x, fps, band), _bandpass(y, fps, band)
    alpha = xf.std(-1, keepdims=True) / np.maximum(yf.std(-1, keepdims=True), 1e-12)
    return xf - alpha * yf


def pos_pulse(rgb: np.ndarray, fps: float, window_seconds: float = 1.6) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    n, _, f = rgb.shape
    length = min(f, max(2, int(round(window_seconds * fps))))
    projection = np.array([[0.0, 1.0, -1.0], [-2.0, 1.0, 1.0]])
    out = np.zeros((n, f))
    for start in range(0, f - length + 1):
        window = _normalised(rgb[:, :, start:start + length])
        s = np.einsum("pc,nct->npt", projection, window)
        h = s[:, 0] + s[:, 0].std(-1, keepdims=True) / np.maximum(s[:, 1].std(-1, keepdims=True), 1e-12) * s[:, 1]
        out[:, start:start + length] += h - h.mean(-1, keepdims=True)
    return out


def ica_pulse(rgb: np.ndarray, fps: float, band: Sequence[float] = (0.7, 4.0), nfft: int = 2048,
              seed: int = 0) -> np.ndarray:
    import warnings

    from sklearn.decomposition import FastICA

    from datamodules.rppg import detrend

    rgb = np.asarray(rgb, np.float64)
    out = np.zeros((rgb.shape[0], rgb.shape[-1]))
    freqs = np.fft.rfftfreq(max(nfft, rgb.shape[-1]), 1 / fps)
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    for i, clip in enumerate(rgb):
        x = detrend(clip, 10.0)
        x = (x - x.mean(-1, keepdims=True)) / np.maximum(x.std(-1, keepdims=True), 1e-12)
        if not np.isfinite(x).all() or (x.std(-1) < 1e-9).any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings on short clips
            sources = FastICA(3, whiten="unit-variance", random_state=seed, max_iter=400).fit_transform(x.T).T
        power = np.abs(np.fft.rfft(sources, max(nfft, x.shape[-1]), axis=-1)) ** 2
        peak = power[:, in_band].max(-1) / np.maximum(power[:, in_band].sum(-1), 1e-12)
        out[i] = sources[int(np.argmax(peak))]
    return out


BASELINES = {"chrom": chrom_pulse, "pos": pos_pulse, "ica": ica_pulse}
