"""Efficient Channel Attention (Wang et al., ECA-Net, CVPR 2020).

Global average pooling, a 1D convolution across neighbouring channels (no dimensionality reduction),
a sigmoid gate. Parameter names follow the authors' ``eca_layer`` and timm's ``EcaModule`` (``conv``), so
their state dicts load unchanged.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def adaptive_eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA-Net's k = |log2(C) / gamma + beta / gamma|, rounded to the nearest odd number below (paper Eq. 12)."""
    t = int(abs(math.log2(channels) / gamma + beta / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(nn.Module):
    """x * sigmoid(conv1d_k(GAP(x))) over the channels of a (B, C, *spatial) tensor.

    Args:
        kernel_size: channel neighbourhood k (odd); ``None`` picks ECA-Net's adaptive size from ``channels``.
        channels: only needed when ``kernel_size`` is ``None``.
    """

    def __init__(self, kernel_size: Optional[int] = 3, channels: Optional[int] = None):
        super().__init__()
        if kernel_size is None:
            if channels is None:
                raise ValueError("give kernel_size, or channels for the adaptive kernel size")
            kernel_size = adaptive_eca_kernel_size(channels)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (symmetric neighbourhood), got {kernel_size}")
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=kernel_size // 2, bias=False)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> gates (B, C) in (0, 1)."""
        pooled = x.flatten(2).mean(dim=2)  # (B, C)
        return torch.sigmoid(self.conv(pooled.unsqueeze(1)).squeeze(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)
        return x * weights.view(*weights.shape, *([1] * (x.ndim - 2)))
