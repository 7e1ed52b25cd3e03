"""Wavelet and classical pooling layers for 2x down-sampling (SFRSeg-Net and its Table 2/5 rivals).

Table 2 rivals: max, average, mixed, stochastic, polynomial, second-order, global max, global average.

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


def _windows_2x2(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H/2, W/2, 4): the four members of each non-overlapping 2 x 2 window."""
    b, c, h, w = x.shape
    windows = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5)
    return windows.reshape(b, c, h // 2, w // 2, 4)


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
        windows = _windows_2x2(x.clamp_min(0))
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


class PolynomialPool(nn.Module):
    """Polynomial pooling, P-pooling (Wei et al., CVPR 2019, the paper's ref. [28]), over 2 x 2 windows.

    For each window R of non-negative (post-ReLU) activations and a learnable exponent ``p >= 0`` per channel:

        y = sum_{i in R} x_i^(p+1) / sum_{i in R} x_i^p

    i.e. an average of the window weighted by ``x_i^p``: ``p = 0`` is average pooling, ``p -> inf`` max
    pooling, ``p = 1`` the contraharmonic mean; learning ``p`` lets each channel settle between the two
    ("an intermediate form between max and average pooling ... self-adjusted", Wei et al.'s abstract).
    Computed stably as ``sum softmax_i(p log(x_i + eps)) x_i`` (x^p normalised in log space); an all-zero
    window gives 0. The formula is Wei et al.'s as we recall it (only their abstract could be checked
    here). Choices: one ``p`` per channel, initialised to ``p_init`` = 1, clamped at 0 in the forward
    pass; even sizes only (SFRSeg-Net's inputs are multiples of 16).
    """

    def __init__(self, channels: int, p_init: float = 1.0, eps: float = 1e-6):
        super().__init__()
        if p_init < 0:
            raise ValueError(f"p_init must be >= 0, got {p_init}")
        self.p = nn.Parameter(torch.full((channels,), float(p_init)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        windows = _windows_2x2(x.clamp_min(0))
        p = self.p.clamp_min(0).to(x.dtype).view(1, -1, 1, 1, 1)
        weights = torch.softmax(p * torch.log(windows + self.eps), dim=-1)  # x_i^p / sum_j x_j^p
        return (weights * windows).sum(-1)


class SecondOrderPool(nn.Module):
    """Second-order pooling (Carreira et al., ECCV 2012, the paper's ref. [27]) as a 2x down-sampling layer.

    Carreira et al.'s 2O-avg pools a region R of descriptors into the matrix ``G = 1/|R| sum_i x_i x_i^T``
    and power-normalises it (``sign(g) |g|^h``); here R is each 2 x 2 window and x_i the C-channel
    vector at a pixel. ``G`` has C^2 entries; to keep C channels (and the decoder's widths) output
    channel k reads ``G`` through a learnable rank-one map, ``g_k = u_k^T G v_k = 1/|R| sum_i
    (u_k . x_i)(v_k . x_i)`` (two 1 x 1 convolutions without bias, multiplied, averaged over the
    window), then the power normalisation ``y_k = sign(g_k) |g_k|^(1/2)`` (h = 1/2, Carreira's setting),
    computed as ``sign(g) (sqrt(|g| + eps) - sqrt(eps))`` so that its slope at 0 stays finite. ``U`` and ``V``
    start as the identity, so the layer starts as the diagonal of ``G`` (root-mean-square pooling) and
    learns the cross-channel terms. Adds ``2 C^2`` parameters. Carreira's log-Euclidean map log(G) is
    left out: a window of 4 vectors gives a rank <= 4 matrix, singular for C > 4.
    """

    def __init__(self, channels: int, eps: float = 1e-4):
        super().__init__()
        self.left = nn.Conv2d(channels, channels, 1, bias=False)
        self.right = nn.Conv2d(channels, channels, 1, bias=False)
        with torch.no_grad():
            eye = torch.eye(channels)[:, :, None, None]
            self.left.weight.copy_(eye)
            self.right.weight.copy_(eye)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        second_order = F.avg_pool2d(self.left(x) * self.right(x), 2)  # u_k^T G v_k per window
        return second_order.sign() * ((second_order.abs() + self.eps).sqrt() - self.eps ** 0.5)


class GlobalContextPool(nn.Module):
    """Global max or average pooling read as a 2x down-sampling layer: local 2 x 2 pooling of the same kind
    plus the global (whole-map) pooled channel descriptor broadcast back and added.

    Global max pooling (Kim & Jeong 2019, ref. [34]: the max over the whole map per channel) and global
    average pooling (Lin et al.'s Network in Network, ref. [36]) collapse a map to 1 x 1; a U-Net encoder
    needs H/2 x W/2. The reading taken: ``local_pool(x) + global_pool(x)`` broadcast over the map (the
    global descriptor as ParseNet's unpooled context, added instead of concatenated so that it stays
    parameter-free and keeps C channels, like the other Table 2 rivals).
    """

    def __init__(self, mode: Literal["max", "avg"]):
        super().__init__()
        if mode not in ("max", "avg"):
            raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "max":
            return F.max_pool2d(x, 2) + F.adaptive_max_pool2d(x, 1)
        return F.avg_pool2d(x, 2) + F.adaptive_avg_pool2d(x, 1)


POOLINGS = ("iewa_dwt", "iewa_dwt_concat", "dwt_ll", "dwt_all", "max", "avg", "mixed", "stochastic", "max_dwt",
            "polynomial", "second_order", "global_max", "global_avg")


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
    if kind == "polynomial":
        return PolynomialPool(channels)
    if kind == "second_order":
        return SecondOrderPool(channels)
    if kind == "global_max":
        return GlobalContextPool("max")
    if kind == "global_avg":
        return GlobalContextPool("avg")
    raise ValueError(f"unknown pooling {kind!r}; choose from {POOLINGS}")
