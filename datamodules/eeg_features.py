"""Differential-entropy (DE) band features of EEG, and LDS smoothing (ConTL, SEED / SEED-IV, DEAP).

DE of a Gaussian band signal of variance sigma^2 is ``0.5 * log(2 * pi * e * sigma^2)`` (Shi, Jiao & Lu 2013;
ConTL eq. 1). Two ways to get the band variance per non-overlapping window:

- ``method="stft"`` (ConTL's paper, Sec. 3.1): each ``window_s`` window is Hann-tapered, zero-padded to an
  ``nfft``-point FFT (256), and its one-sided power spectral density summed over the band's bins times the bin
  width (Parseval: the variance of the band-limited part of the window);
- ``method="bandpass"``: a zero-phase Butterworth band-pass (``scipy.signal.butter`` + ``sosfiltfilt``) of the
  whole recording, then the variance of each window of the filtered signal.

Bands (Hz, inclusive edges as in the paper): delta 1-3, theta 4-7, alpha 8-13, beta 14-30, gamma 31-50.

``lds_smooth`` is the linear dynamical system smoothing that SEED's ``de_LDS*`` features apply along the
windows of a trial: a random-walk state z_t = z_{t-1} + w (var ``process_var``), observation x_t = z_t + v
(var ``observation_var``), Kalman filter then Rauch-Tung-Striebel smoother, per channel and band.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from scipy import signal as sps

#: ConTL's bands (Hz, inclusive): delta, theta, alpha, beta, gamma.
BANDS: dict[str, tuple[float, float]] = {"delta": (1.0, 3.0), "theta": (4.0, 7.0), "alpha": (8.0, 13.0),
                                         "beta": (14.0, 30.0), "gamma": (31.0, 50.0)}
LOG_2PI_E = float(np.log(2 * np.pi * np.e))


def gaussian_de(variance: np.ndarray | float) -> np.ndarray:
    """Closed-form differential entropy (nats) of a Gaussian of the given variance."""
    return 0.5 * (LOG_2PI_E + np.log(np.asarray(variance, dtype=np.float64)))


def band_variances(x: np.ndarray, fs: float, bands: Sequence[tuple[float, float]] = tuple(BANDS.values()),
                   window_s: float = 1.0, method: Literal["stft", "bandpass"] = "stft", nfft: int = 256,
                   filter_order: int = 4) -> np.ndarray:
    """Per-window band variance of ``x`` (..., T): returns (..., n_windows, n_bands), float64.

    Windows are ``round(window_s * fs)`` samples, non-overlapping; a trailing partial window is dropped.
    """
    x = np.asarray(x, dtype=np.float64)
    n = int(round(window_s * fs))
    n_windows = x.shape[-1] // n
    if n_windows < 1:
        raise ValueError(f"signal of {x.shape[-1]} samples is shorter than one {window_s} s window at {fs} Hz")
    x = x[..., :n_windows * n]
    bands = [tuple(map(float, b)) for b in bands]
    if method == "stft":
        if nfft < n:
            raise ValueError(f"nfft {nfft} is shorter than the {n}-sample window")
        # One-sided PSD density of each Hann window: sum(P[band]) * df is the band's variance.
        freqs, _, psd = sps.spectrogram(x, fs=fs, window="hann", nperseg=n, noverlap=0, nfft=nfft,
                                        detrend=False, scaling="density", mode="psd", axis=-1)
        # psd: (..., F, n_windows)
        df = fs / nfft
        out = [psd[..., (freqs >= lo) & (freqs <= hi), :].sum(axis=-2) * df for lo, hi in bands]
        return np.stack(out, axis=-1)
    if method == "bandpass":
        out = []
        for lo, hi in bands:
            hi_eff = min(hi, 0.999 * fs / 2)
            sos = sps.butter(filter_order, [lo, hi_eff], btype="bandpass", fs=fs, output="sos")
            filtered = sps.sosfiltfilt(sos, x, axis=-1)
            windows = filtered.reshape(*filtered.shape[:-1], n_windows, n)
            out.append(windows.var(axis=-1))
        return np.stack(out, axis=-1)
    raise ValueError(f"method must be 'stft' or 'bandpass', got {method!r}")


def differential_entropy(x: np.ndarray, fs: float, bands: Sequence[tuple[float, float]] = tuple(BANDS.values()),
                         window_s: float = 1.0, method: Literal["stft", "bandpass"] = "stft", nfft: int = 256,
                         eps: float = 1e-12) -> np.ndarray:
    """DE features of ``x`` (channels, T) -> (channels, n_windows, n_bands), float32 (SEED's ``de_*`` layout)."""
    var = band_variances(x, fs, bands, window_s=window_s, method=method, nfft=nfft)
    return gaussian_de(np.maximum(var, eps)).astype(np.float32)


def lds_smooth(x: np.ndarray, process_var: float = 1e-3, observation_var: float = 1.0,
               axis: int = -2) -> np.ndarray:
    """RTS-smoothed ``x`` along ``axis`` (the windows; default the middle axis of (channels, windows, bands)).

    The state starts at the sequence mean with the sequence variance (the usual SEED-code initialisation).
    """
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    T = x.shape[0]
    q, r = float(process_var), float(observation_var)
    if q <= 0 or r <= 0:
        raise ValueError("process_var and observation_var must be > 0")
    mean_f = np.empty_like(x)
    var_f = np.empty_like(x)
    m = x.mean(axis=0)
    p = x.var(axis=0) + r  # prior variance of the first state
    for t in range(T):
        if t > 0:
            p = p + q
        gain = p / (p + r)
        m = m + gain * (x[t] - m)
        p = (1 - gain) * p
        mean_f[t], var_f[t] = m, p
    smooth = np.empty_like(x)
    smooth[-1] = mean_f[-1]
    for t in range(T - 2, -1, -1):
        pred_var = var_f[t] + q
        c = var_f[t] / pred_var
        smooth[t] = mean_f[t] + c * (smooth[t + 1] - mean_f[t])
    return np.moveaxis(smooth, 0, axis).astype(np.float32)
