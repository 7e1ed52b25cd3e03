"""EdgeHier-BT's classical preprocessing (Table 1): grey uint8 -> resize -> Gaussian blur 5 -> BCET contrast
stretch -> 4-cluster K-means -> opening then closing 3x3 -> Canny(100, 200) -> binary edge map on 3 channels.

Everything is OpenCV (the paper's library) so the thresholds mean what they mean there. Deterministic: the
K-means is seeded (``cv2.setRNGSeed``) and started from k-means++ centres.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import cv2
import numpy as np


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Grey uint8: uint8 images as they are (colour ones -> grey), anything else (the .mat int16) min-max to 0-255."""
    image = np.asarray(image)
    if image.ndim == 3:
        if image.shape[-1] == 1:
            image = image[..., 0]
        elif image.dtype == np.uint8:
            return cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_RGB2GRAY)
        else:
            image = image[..., :3].mean(-1)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    image = image.astype(np.float64)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - low) / (high - low) * 255.0).astype(np.uint8)


def bcet(image: np.ndarray, L: float = 0.0, H: float = 255.0, E: float = 110.0) -> np.ndarray:
    """Balance Contrast Enhancement Technique (Guo 1991): y = a (x - b)^2 + c maps the input's min/max to L/H and
    its mean to E, with l, h, e the input min, max, mean and s the mean of x^2:
    b = [h^2 (E-L) - s (H-L) + l^2 (H-E)] / (2 [h (E-L) - e (H-L) + l (H-E)]), a = (H-L) / ((h-l)(h+l-2b)),
    c = L - a (l-b)^2. A constant image, or one whose parabola is degenerate, is stretched linearly instead."""
    x = image.astype(np.float64)
    l, h, e, s = float(x.min()), float(x.max()), float(x.mean()), float((x ** 2).mean())
    if h <= l:
        return image.astype(np.uint8)
    denominator = 2.0 * (h * (E - L) - e * (H - L) + l * (H - E))
    b = (h ** 2 * (E - L) - s * (H - L) + l ** 2 * (H - E)) / denominator if abs(denominator) > 1e-12 else np.inf
    if not np.isfinite(b) or l <= b <= h:  # vertex inside [l, h]: not monotone; fall back to a linear stretch
        y = L + (x - l) * (H - L) / (h - l)
    else:
        a = (H - L) / ((h - l) * (h + l - 2.0 * b))
        c = L - a * (l - b) ** 2
        y = a * (x - b) ** 2 + c
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def kmeans_quantize(image: np.ndarray, k: int = 4, keep: Literal["all", "brightest"] = "all", seed: int = 0,
                    attempts: int = 3) -> np.ndarray:
    """K-means on pixel intensities; every pixel becomes its cluster's centre (``all``: a k-level image), or only
    the brightest cluster stays (``brightest``: its pixels at its centre, the rest 0)."""
    data = image.reshape(-1, 1).astype(np.float32)
    k = min(k, len(np.unique(data)))
    if k < 2:
        return image.copy()
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 0.2)
    _, labels, centers = cv2.kmeans(data, k, None, criteria, attempts, cv2.KMEANS_PP_CENTERS)
    centers = np.clip(np.round(centers[:, 0]), 0, 255).astype(np.uint8)
    labels = labels[:, 0]
    if keep == "brightest":
        out = np.where(labels == int(np.argmax(centers)), centers.max(), 0).astype(np.uint8)
    elif keep == "all":
        out = centers[labels]
    else:
        raise ValueError(f"kmeans_keep must be 'all' or 'brightest', got {keep!r}")
    return out.reshape(image.shape)


@dataclass
class EdgePipeline:
    """The paper's Table 1 pipeline with its parameters (card names): ``size`` the resize (None: keep),
    ``blur_ksize`` 5, BCET ``bcet_L/H/E`` 0/255/110, ``kmeans_k`` 4, ``kmeans_keep`` all|brightest,
    ``morph_ksize`` 3, ``canny`` (100, 200). ``__call__`` returns the binary map (0/255) on 3 channels."""

    size: Optional[int] = 256
    blur_ksize: int = 5
    bcet_L: float = 0.0
    bcet_H: float = 255.0
    bcet_E: float = 110.0
    kmeans_k: int = 4
    kmeans_keep: Literal["all", "brightest"] = "all"
    kmeans_seed: int = 0
    morph_ksize: int = 3
    canny: tuple[int, int] = field(default=(100, 200))
    channels: int = 3

    def stages(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Every intermediate image (grey, blur, bcet, kmeans, morphology, edges), for figures and tests."""
        out = {"grey": to_uint8(image)}
        grey = out["grey"]
        if self.size is not None and grey.shape[:2] != (self.size, self.size):
            grey = cv2.resize(grey, (self.size, self.size), interpolation=cv2.INTER_AREA)
            out["grey"] = grey
        out["blur"] = cv2.GaussianBlur(grey, (self.blur_ksize, self.blur_ksize), 0)
        out["bcet"] = bcet(out["blur"], self.bcet_L, self.bcet_H, self.bcet_E)
        out["kmeans"] = kmeans_quantize(out["bcet"], self.kmeans_k, self.kmeans_keep, self.kmeans_seed)
        kernel = np.ones((self.morph_ksize, self.morph_ksize), np.uint8)
        opened = cv2.morphologyEx(out["kmeans"], cv2.MORPH_OPEN, kernel)
        out["morphology"] = cv2.morphologyEx(opened, cv2.MORPH_CLOSE, kernel)
        out["edges"] = cv2.Canny(out["morphology"], int(self.canny[0]), int(self.canny[1]))  # 3x3 Sobel, L1
        return out

    def __call__(self, image: np.ndarray) -> np.ndarray:
        edges = self.stages(image)["edges"]
        return np.repeat(edges[..., None], self.channels, axis=-1) if self.channels > 1 else edges[..., None]
