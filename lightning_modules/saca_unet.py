"""SACA-UNet (Fan, Wang & Zhang): UNeXt's U-shape with Global-Blocks (token self-attention with a
relative position bias, gated, then channel attention and an MLP, with residuals) in place of the
shifted-MLP blocks, and a Cross-ASPP bottleneck.

Ablations (paper Tables II and III) are switches of the same network:
- ``bottleneck="none"``: "Global-Block" only; ``"aspp"``: "Global-Block + ASPP" (DeepLabV3 ASPP);
  ``"cross_aspp"``: SACA-UNet.
- ``n_skips`` 0-4: the number of skip connections kept, the deepest dropped first.
The skeleton, shared with UNeXt, is ``lightning_modules.unext.UNeXtSkeleton``.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

from lightning_modules.unext import UNEXT_CHANNELS, UNeXtSkeleton


class SACAUNet(UNeXtSkeleton):
    """SACA-UNet: channels (16, 32, 128, 160, 256), Global-Blocks with C/32 heads and MLP ratio 4,
    Cross-ASPP with rates (2, 4, 6), 4 additive skips, bilinear upsampling. See ``UNeXtSkeleton``."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, channels: Sequence[int] = UNEXT_CHANNELS,
                 bottleneck: Literal["none", "aspp", "cross_aspp"] = "cross_aspp",
                 aspp_rates: Sequence[int] = (2, 4, 6), n_skips: int = 4,
                 num_heads: Optional[Sequence[int]] = None, mlp_ratio: float = 4.0,
                 img_size: int | Sequence[int] = 256, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_channels, num_classes, channels, block="global", bottleneck=bottleneck,
                         aspp_rates=aspp_rates, n_skips=n_skips, num_heads=num_heads, mlp_ratio=mlp_ratio,
                         img_size=img_size, drop_path_rate=drop_path_rate)
