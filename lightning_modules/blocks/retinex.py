"""Multi-Scale Retinex with Colour Restoration (MSRCR; Jobson, Rahman and Woodell, IEEE TIP 1997).

Per channel c of an image I (values + 1, so that the logs are finite)::

    MSR_c  = sum_n w_n [log I_c - log(G_sigma_n * I_c)]            (w_n = 1 / N)
    CR_c   = beta [log(alpha I_c) - log sum_c' I_c']
    MSRCR_c = G (CR_c * MSR_c + b)

then each channel is clipped to its ``clip`` quantiles (1 % / 99 %) and stretched to [0, 255]. Logs are base 10
and the constants the preset of the widely used ``dongb5/Retinex`` code (sigma 15 / 80 / 250, alpha 125, beta 46,
G 5, b 25, clip 1 % / 99 %), which the face anti-spoofing paper does not give. The Gaussian surround is OpenCV's
``GaussianBlur`` (kernel radius 4 sigma on float input, reflect-101 borders: scipy's ``gaussian_filter`` with
``mode="mirror", truncate=4`` gives the same), one call per scale over all three channels.

This is a data-side transform (numpy, uint8 or float HxWx3 in, uint8 out): datasets compute it once per frame
and cache it with the frame.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class MSRCRParams:
    """MSRCR constants (the ``dongb5/Retinex`` preset by default)."""

    sigmas: Sequence[float] = (15.0, 80.0, 250.0)
    alpha: float = 125.0
    beta: float = 46.0
    gain: float = 5.0
    offset: float = 25.0
    clip: tuple[float, float] = field(default=(0.01, 0.99))

    def __post_init__(self) -> None:
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"sigmas must be positive, got {self.sigmas}")
        low, high = self.clip
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"clip must be quantiles 0 <= low < high <= 1, got {self.clip}")


def multiscale_retinex(image: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """MSR with equal weights on a positive float image (H, W, C): mean over scales of log10 I - log10 G*I."""
    log_image = np.log10(image)
    out = np.zeros_like(image)
    for sigma in sigmas:
        out += log_image - np.log10(cv2.GaussianBlur(image, (0, 0), sigma))
    return out / len(sigmas)


def color_restoration(image: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """CR = beta (log10(alpha I_c) - log10 sum_c I_c) on a positive float image (H, W, C)."""
    return beta * (np.log10(alpha * image) - np.log10(image.sum(axis=2, keepdims=True)))


def stretch(image: np.ndarray, clip: tuple[float, float]) -> np.ndarray:
    """Clip each channel to its (low, high) quantiles and stretch it linearly to [0, 255] (uint8)."""
    flat = image.reshape(-1, image.shape[2])
    low, high = np.quantile(flat, clip, axis=0)  # (C,) each
    span = np.where(high > low, high - low, 1.0)
    out = (np.clip(image, low, high) - low) / span * 255.0
    return np.round(out).astype(np.uint8)


def msrcr(image: np.ndarray, params: MSRCRParams = MSRCRParams()) -> np.ndarray:
    """MSRCR of an RGB image (H, W, 3), uint8 or float in [0, 255]; returns uint8 (H, W, 3)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"msrcr expects an (H, W, 3) image, got shape {image.shape}")
    x = image.astype(np.float64) + 1.0
    out = params.gain * (color_restoration(x, params.alpha, params.beta) * multiscale_retinex(x, params.sigmas)
                         + params.offset)
    return stretch(out, params.clip)


def msrcr_batch(images: np.ndarray, params: MSRCRParams = MSRCRParams()) -> np.ndarray:
    """MSRCR of (N, H, W, 3) frames, uint8 (N, H, W, 3)."""
    return np.stack([msrcr(image, params) for image in images]) if len(images) else np.asarray(images, np.uint8)
