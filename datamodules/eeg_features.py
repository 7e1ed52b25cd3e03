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

Per-window features of raw windows (Coglier): ``window_band_de`` (each window band-passed on its own, Butterworth
+ ``lfilter``; the code's 0.5 log2(2 pi e std) or the textbook Gaussian DE), ``window_band_psd`` (Hann FFT band mean
power, log1p), and the 9 x 9 electrode grids of the 62-channel SEED / SEED-IV and 14-channel GAMEEMO montages
(``grid_positions``, ``to_grid``) that CCNN takes.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

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


# ---- Per-window band features of 2-s raw windows (Coglier, TorchEEG's BandDifferentialEntropy / PSD) ----------
#: Coglier's bands (Hz, the paper's Sec. 3.3): theta, alpha, beta, gamma. The code filters 4-8, 8-14, 14-31, 31-49.
COGLIER_BANDS: dict[str, tuple[float, float]] = {"theta": (4.0, 7.0), "alpha": (8.0, 13.0), "beta": (14.0, 31.0),
                                                 "gamma": (32.0, 49.0)}
COGLIER_CODE_BANDS: dict[str, tuple[float, float]] = {"theta": (4.0, 8.0), "alpha": (8.0, 14.0), "beta": (14.0, 31.0),
                                                      "gamma": (31.0, 49.0)}


def window_band_de(windows: np.ndarray, fs: float, bands: Sequence[tuple[float, float]] = tuple(COGLIER_BANDS.values()),
                   order: int = 5, formula: Literal["code", "textbook"] = "code", eps: float = 1e-12) -> np.ndarray:
    """DE per window, channel and band of ``windows`` (N, C, T): (N, C, n_bands), float32.

    Each window is band-passed on its own (causal Butterworth of ``order``, ``scipy.signal.butter`` + ``lfilter``,
    as TorchEEG's ``BandDifferentialEntropy`` and the Coglier code do); then ``formula``:
    ``"code"`` 0.5 * log2(2 pi e * std) (the code: the standard deviation inside a base-2 log);
    ``"textbook"`` 0.5 * ln(2 pi e * var), the Gaussian DE (``gaussian_de``).
    """
    if formula not in ("code", "textbook"):
        raise ValueError(f"formula must be 'code' or 'textbook', got {formula!r}")
    x = np.asarray(windows, dtype=np.float64)
    out = []
    for lo, hi in bands:
        b, a = sps.butter(order, [lo, min(hi, 0.999 * fs / 2)], btype="bandpass", fs=fs)
        filtered = sps.lfilter(b, a, x, axis=-1)
        if formula == "code":
            out.append(0.5 * np.log2(2 * np.pi * np.e * np.maximum(filtered.std(axis=-1), eps)))
        else:
            out.append(gaussian_de(np.maximum(filtered.var(axis=-1), eps)))
    return np.stack(out, axis=-1).astype(np.float32)


def window_band_psd(windows: np.ndarray, fs: float,
                    bands: Sequence[tuple[float, float]] = tuple(COGLIER_BANDS.values()),
                    nfft: Optional[int] = None, log: bool = True) -> np.ndarray:
    """Band power per window, channel and band of ``windows`` (N, C, T): (N, C, n_bands), float32.

    Hann-tapered ``nfft``-point FFT of each window (default: the window length), the mean of |X(f)|^2 over the bins
    with lo <= f <= hi (the code's ``BandPowerSpectralDensity``), then ``log1p`` (the code's ``scaling('log')``).
    """
    x = np.asarray(windows, dtype=np.float64)
    n = int(nfft or x.shape[-1])
    spectrum = np.abs(np.fft.rfft(x * sps.windows.hann(x.shape[-1], sym=True), n=n, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(n, 1 / fs)
    out = []
    for lo, hi in bands:
        in_band = (freqs >= lo) & (freqs <= hi)
        if not in_band.any():
            raise ValueError(f"band {lo}-{hi} Hz has no FFT bin at fs {fs} Hz, nfft {n}")
        out.append(spectrum[..., in_band].mean(axis=-1))
    power = np.stack(out, axis=-1)
    return (np.log1p(power) if log else power).astype(np.float32)


# ---- 9 x 9 electrode grids (CCNN's input), the 10-20 positions of the Coglier code's utils/constant.py -----------
SEED_CHANNELS = ("FP1", "FPZ", "FP2", "AF3", "AF4", "F7", "F5", "F3", "F1", "FZ", "F2", "F4", "F6", "F8", "FT7", "FC5",
                 "FC3", "FC1", "FCZ", "FC2", "FC4", "FC6", "FT8", "T7", "C5", "C3", "C1", "CZ", "C2", "C4", "C6", "T8",
                 "TP7", "CP5", "CP3", "CP1", "CPZ", "CP2", "CP4", "CP6", "TP8", "P7", "P5", "P3", "P1", "PZ", "P2",
                 "P4", "P6", "P8", "PO7", "PO5", "PO3", "POZ", "PO4", "PO6", "PO8", "CB1", "O1", "OZ", "O2", "CB2")
SEED_GRID = (("-", "-", "-", "FP1", "FPZ", "FP2", "-", "-", "-"),
             ("-", "-", "-", "AF3", "-", "AF4", "-", "-", "-"),
             ("F7", "F5", "F3", "F1", "FZ", "F2", "F4", "F6", "F8"),
             ("FT7", "FC5", "FC3", "FC1", "FCZ", "FC2", "FC4", "FC6", "FT8"),
             ("T7", "C5", "C3", "C1", "CZ", "C2", "C4", "C6", "T8"),
             ("TP7", "CP5", "CP3", "CP1", "CPZ", "CP2", "CP4", "CP6", "TP8"),
             ("P7", "P5", "P3", "P1", "PZ", "P2", "P4", "P6", "P8"),
             ("-", "PO7", "PO5", "PO3", "POZ", "PO4", "PO6", "PO8", "-"),
             ("-", "-", "CB1", "O1", "OZ", "O2", "CB2", "-", "-"))
GAMEEMO_CHANNELS = ("AF3", "AF4", "F3", "F4", "F7", "F8", "FC5", "FC6", "O1", "O2", "P7", "P8", "T7", "T8")
GAMEEMO_GRID = (("-",) * 9,
                ("-", "-", "-", "AF3", "-", "AF4", "-", "-", "-"),
                ("F7", "-", "F3", "-", "-", "-", "F4", "-", "F8"),
                ("-", "FC5", "-", "-", "-", "-", "-", "FC6", "-"),
                ("T7", "-", "-", "-", "-", "-", "-", "-", "T8"),
                ("-",) * 9,
                ("P7", "-", "-", "-", "-", "-", "-", "-", "P8"),
                ("-",) * 9,
                ("-", "-", "-", "O1", "-", "O2", "-", "-", "-"))


def grid_positions(channels: Sequence[str], grid: Sequence[Sequence[str]]) -> np.ndarray:
    """(C, 2) row/column of each channel in ``grid`` (a KeyError names a channel the grid lacks)."""
    where = {name: (r, c) for r, row in enumerate(grid) for c, name in enumerate(row) if name != "-"}
    missing = [ch for ch in channels if ch.upper() not in where]
    if missing:
        raise KeyError(f"channels {missing} have no position in the electrode grid")
    return np.array([where[ch.upper()] for ch in channels], dtype=np.int64)


def to_grid(features: np.ndarray, positions: np.ndarray, size: tuple[int, int] = (9, 9)) -> np.ndarray:
    """(N, C, B) channel features -> (N, B, H, W) grid maps, zeros where no electrode sits (TorchEEG's ToGrid)."""
    features = np.asarray(features)
    out = np.zeros((features.shape[0], features.shape[2], *size), dtype=features.dtype)
    out[:, :, positions[:, 0], positions[:, 1]] = features.transpose(0, 2, 1)
    return out
