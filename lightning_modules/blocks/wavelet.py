"""Wavelet and classical pooling layers for 2x down-sampling (SFRSeg-Net and its Table 2/5 rivals).

The Haar analysis filters come from PyWavelets: each 2 x 2 kernel is pywt's single-level
``dwt2(..., 'haar')`` response to a unit impulse, so ``HaarDWT`` reproduces ``pywt.dwt2`` exactly
(cA, cH, cV, cD = LL, LH, HL, HH) while staying a differentiable depthwise convolution.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import pywt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

BANDS = ("LL", "LH", "HL", "HH")  # pywt: cA, cH (horizontal detail), cV (vertical detail), cD (diagonal)


def haar_kernels() -> Tensor:
    """(4, 2, 2) analysis kernels in pywt's band order, read off ``pywt.dwt2`` of unit impulses."""
    return torch.tensor(_haar_kernels_numpy(), dtype=torch.float32)


def _haar_kernels_numpy() -> np.ndarray:
    kernels = np.zeros((4, 2, 2), dtype=np.float64)
    for i in range(2):
        for j in range(2):
            impulse = np.zeros((2, 2))
            impulse[i, j] = 1.0
            approx, (horizontal, vertical, diagonal) = pywt.dwt2(impulse, "haar", mode="periodization")
            for band, coefficient in enumerate((approx, horizontal, vertical, diagonal)):
                kernels[band, i, j] = coefficient.item()
    return kernels


def _pad_even(x: Tensor) -> Tensor:
    """Reflect-pad the last two axes to even sizes (a choice: the paper's sizes are always even)."""
    pad_h, pad_w = x.shape[-2] % 2, x.shape[-1] % 2
    return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x


class HaarDWT(nn.Module):
    """Single-level 2D Haar DWT per channel: (B, C, H, W) -> (B, 4, C, H/2, W/2) in LL, LH, HL, HH order."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernels", haar_kernels()[:, None], persistent=False)  # (4, 1, 2, 2)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        x = _pad_even(x)
        bands = F.conv2d(x.reshape(b * c, 1, *x.shape[-2:]), self.kernels.to(x.dtype), stride=2)
        return bands.reshape(b, c, 4, *bands.shape[-2:]).transpose(1, 2)


class IEWADWTPool(nn.Module):
    """SFRSeg-Net's IEWA-DWT pooling (Eq. 6): ``LL + LH + HL`` (HH dropped as noise), per channel.

    Args:
        bands: which sub-bands to keep (default the paper's three; ``("LL",)`` is Zhao et al.'s
            wavelet pooling, all four the "all bands added" variant of the paper's Fig. 3).
        combine: ``"add"`` (Eq. 6, same channels) or ``"concat"`` (the text's other reading: the kept
            bands stacked, ``len(bands) x`` channels).

    With ``combine="add"`` it is one fixed depthwise 2 x 2 stride-2 convolution whose kernel is the sum
    of the kept bands' kernels (``[[3, 1], [1, -1]] / 2`` for the paper's three).
    """

    def __init__(self, bands: tuple[str, ...] = ("LL", "LH", "HL"), combine: Literal["add", "concat"] = "add"):
        super().__init__()
        unknown = set(bands) - set(BANDS)
        if unknown or not bands:
            raise ValueError(f"bands must be a non-empty subset of {BANDS}, got {bands}")
        if combine not in ("add", "concat"):
            raise ValueError(f"combine must be 'add' or 'concat', got {combine!r}")
        self.bands = tuple(bands)
        self.combine = combine
        self.channel_multiplier = len(bands) if combine == "concat" else 1
        kernels = _haar_kernels_numpy()[[BANDS.index(band) for band in bands]]
        if combine == "add":
            kernels = kernels.sum(0, keepdims=True)
        self.register_buffer("kernels", torch.tensor(kernels[:, None], dtype=torch.float32), persistent=False)
        self.phase_weights = kernels.reshape(-1, 4).tolist()  # fixed filters as floats: no device sync in forward

    def forward(self, x: Tensor) -> Tensor:
        x = _pad_even(x)
        # The depthwise 2 x 2 stride-2 convolution as a weighted sum of the four polyphase components
        # (strided views): several times faster on CPU than a grouped convolution.
        phases = (x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2])
        outs = [sum(w * phase for w, phase in zip(row, phases)) for row in self.phase_weights]
        if len(outs) == 1:
            return outs[0]
        # concat keeps the bands of one channel adjacent: (B, C, K, h, w) -> (B, C*K, h, w)
        out = torch.stack(outs, dim=2)
        return out.reshape(out.shape[0], -1, *out.shape[-2:])


class MixedPool(nn.Module):
    """Mixed pooling (Yu et al. 2014): per forward pass in training, max or average pooling at random
    (lambda in {0, 1}); at evaluation the expectation ``(max + avg) / 2``."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            use_max = torch.rand((), device=x.device) < 0.5  # a device tensor: no host sync
            return torch.where(use_max, F.max_pool2d(x, 2), F.avg_pool2d(x, 2))
        return 0.5 * (F.max_pool2d(x, 2) + F.avg_pool2d(x, 2))


class StochasticPool(nn.Module):
    """Stochastic pooling (Zeiler & Fergus 2013) over 2 x 2 windows of non-negative (post-ReLU) maps.

    Training: one activation per window drawn with probability proportional to its value.
    Evaluation: the probability-weighted average ``sum(a_i^2) / sum(a_i)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        windows = x.clamp_min(0).reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5)
        windows = windows.reshape(b, c, h // 2, w // 2, 4)
        total = windows.sum(-1, keepdim=True)
        probabilities = torch.where(total > 0, windows / total.clamp_min(1e-12), torch.full_like(windows, 0.25))
        if self.training:
            choice = torch.multinomial(probabilities.reshape(-1, 4), 1).reshape(b, c, h // 2, w // 2, 1)
            return windows.gather(-1, choice).squeeze(-1)
        return (probabilities * windows).sum(-1)


class MaxWaveletPool(nn.Module):
    """Souza et al. (2021): max pooling and wavelet (LL) pooling concatenated, fused by a 1 x 1 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.wavelet = IEWADWTPool(bands=("LL",))
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fuse(torch.cat([F.max_pool2d(x, 2), self.wavelet(x)], dim=1))


POOLINGS = ("iewa_dwt", "iewa_dwt_concat", "dwt_ll", "dwt_all", "max", "avg", "mixed", "stochastic", "max_dwt")


def make_pool(kind: str, channels: int) -> nn.Module:
    """A 2x down-sampling layer by name (SFRSeg-Net's ``pool`` switch, Tables 2 and 5)."""
    if kind == "iewa_dwt":
        return IEWADWTPool()
    if kind == "iewa_dwt_concat":
        return IEWADWTPool(combine="concat")
    if kind == "dwt_ll":  # Zhao et al.: LL sub-band only
        return IEWADWTPool(bands=("LL",))
    if kind == "dwt_all":
        return IEWADWTPool(bands=BANDS)
    if kind == "max":
        return nn.MaxPool2d(2)
    if kind == "avg":
        return nn.AvgPool2d(2)
    if kind == "mixed":
        return MixedPool()
    if kind == "stochastic":
        return StochasticPool()
    if kind == "max_dwt":
        return MaxWaveletPool(channels)
    raise ValueError(f"unknown pooling {kind!r}; choose from {POOLINGS}")
