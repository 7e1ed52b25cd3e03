"""UNeXt (Valanarasu & Patel, MICCAI 2022) and the skeleton SACA-UNet shares with it.

The skeleton is the official code's ``UNext`` (github jeya-maria-jose/UNeXt-pytorch, ``archs.py``),
with its module names, so an official state dict loads unchanged::

    E1-E3  Conv3x3 -> BN -> MaxPool2 -> ReLU            t1 (H/2), t2 (H/4), t3 (H/8)
    E4     OverlapPatchEmbed (3x3 s2) + LN -> block1 -> norm3   t4 (H/16)
    E5     OverlapPatchEmbed (3x3 s2) + LN -> block2 -> norm4      (H/32)
    [bottleneck: none (UNeXt) | ASPP | Cross-ASPP (SACA-UNet)]
    D1     Conv3x3 -> BN -> bilinear x2 -> ReLU, + t4 -> dblock1 -> dnorm3
    D2     Conv3x3 -> BN -> x2 -> ReLU, + t3 -> dblock2 -> dnorm4
    D3, D4 Conv3x3 -> BN -> x2 -> ReLU, + t2, + t1
    D5     Conv3x3 -> x2 -> ReLU -> final Conv1x1 (logits)

Token blocks are UNeXt's shifted-MLP blocks (``block="shifted_mlp"``) or SACA-UNet's Global-Blocks
(``block="global"``). ``n_skips`` keeps the shallowest skips (t1..t_n): the deepest is dropped first.
Input height and width must be divisible by 32.
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.aspp import ASPP, CrossASPP
from lightning_modules.blocks.attention import GlobalBlock, _init_transformer_weights, default_num_heads

UNEXT_CHANNELS = (16, 32, 128, 160, 256)


def _init_unext_weights(module: nn.Module) -> None:
    """The official code's ``_init_weights`` (token blocks and patch embeddings)."""
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            module.bias.data.zero_()
    else:
        _init_transformer_weights(module)


class DWConv(nn.Module):
    """Depth-wise 3x3 convolution on tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width))
        return x.flatten(2).transpose(1, 2)


def _shift(x: torch.Tensor, height: int, width: int, shift_size: int, dim: int) -> torch.Tensor:
    """UNeXt's token shift: channel groups rolled by -pad..pad along ``dim`` (2: rows, 3: columns),
    zero-padded (no wrap-around); (B, N, C) -> (B, N, C)."""
    b, n, c = x.shape
    pad = shift_size // 2
    padded = F.pad(x.transpose(1, 2).reshape(b, c, height, width), (pad, pad, pad, pad))
    groups = torch.chunk(padded, shift_size, dim=1)
    shifted = torch.cat([torch.roll(g, s, dim) for g, s in zip(groups, range(-pad, pad + 1))], dim=1)
    shifted = shifted[:, :, pad:pad + height, pad:pad + width]
    return shifted.reshape(b, c, n).transpose(1, 2)


class ShiftMLP(nn.Module):
    """Shifted MLP: shift along rows -> fc1 -> DWConv -> GELU -> shift along columns -> fc2."""

    def __init__(self, dim: int, hidden: Optional[int] = None, shift_size: int = 5, drop: float = 0.0) -> None:
        super().__init__()
        hidden = hidden or dim
        if hidden != dim:  # the official code reshapes the hidden tokens with the input width
            raise ValueError("UNeXt's shifted MLP needs hidden == dim (mlp_ratio 1)")
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.shift_size = shift_size

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(_shift(x, height, width, self.shift_size, dim=2))
        x = self.drop(self.act(self.dwconv(x, height, width)))
        return self.drop(self.fc2(_shift(x, height, width, self.shift_size, dim=3)))


class ShiftedBlock(nn.Module):
    """UNeXt's tokenised MLP block: ``x + MLP_shift(LN(x))``."""

    def __init__(self, dim: int, mlp_ratio: float = 1.0, drop: float = 0.0) -> None:
        super().__init__()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ShiftMLP(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return x + self.mlp(self.norm2(x), height, width)


class OverlapPatchEmbed(nn.Module):
    """3x3 stride-2 convolution to tokens, then LayerNorm."""

    def __init__(self, in_channels: int, embed_dim: int, patch_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        _, _, height, width = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


def _tokens_to_map(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class UNeXtSkeleton(nn.Module):
    """The UNeXt U-shape with a choice of token block and bottleneck (see the module docstring).

    Args:
        in_channels: image channels.
        num_classes: output channels (1 for binary segmentation).
        channels: (E1, E2, E3, E4, E5) widths; UNeXt and SACA-UNet: (16, 32, 128, 160, 256).
        block: ``shifted_mlp`` (UNeXt) or ``global`` (SACA-UNet's Global-Block).
        bottleneck: ``none``, ``aspp`` (DeepLabV3) or ``cross_aspp`` (SACA-UNet), on the E5 output.
        aspp_rates: atrous rates of the (Cross-)ASPP.
        n_skips: number of additive skips kept, 0-4 (the deepest ones are dropped first).
        num_heads: heads of the four Global-Blocks (block1, block2, dblock1, dblock2); None: C / 32.
        mlp_ratio: hidden width over C of the blocks' MLP (UNeXt 1, SACA-UNet 4).
        img_size: training image size (Global-Blocks size their relative position tables from it).
        drop_path_rate: stochastic depth of the token blocks (0 in both papers' defaults).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1, channels: Sequence[int] = UNEXT_CHANNELS,
                 block: Literal["shifted_mlp", "global"] = "shifted_mlp",
                 bottleneck: Literal["none", "aspp", "cross_aspp"] = "none", aspp_rates: Sequence[int] = (2, 4, 6),
                 n_skips: int = 4, num_heads: Optional[Sequence[int]] = None, mlp_ratio: float = 1.0,
                 img_size: int | Sequence[int] = 256, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (int(c) for c in channels)
        if not 0 <= n_skips <= 4:
            raise ValueError(f"n_skips must be in 0..4, got {n_skips}")
        if block not in ("shifted_mlp", "global"):
            raise ValueError(f"block must be 'shifted_mlp' or 'global', got {block!r}")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
        self.n_skips = n_skips
        self.block_type = block

        self.encoder1 = nn.Conv2d(in_channels, c1, 3, stride=1, padding=1)
        self.encoder2 = nn.Conv2d(c1, c2, 3, stride=1, padding=1)
        self.encoder3 = nn.Conv2d(c2, c3, 3, stride=1, padding=1)
        self.ebn1, self.ebn2, self.ebn3 = nn.BatchNorm2d(c1), nn.BatchNorm2d(c2), nn.BatchNorm2d(c3)
        self.patch_embed3 = OverlapPatchEmbed(c3, c4)
        self.patch_embed4 = OverlapPatchEmbed(c4, c5)
        self.norm3, self.norm4 = nn.LayerNorm(c4), nn.LayerNorm(c5)
        self.dnorm3, self.dnorm4 = nn.LayerNorm(c4), nn.LayerNorm(c3)

        # (dim, token grid divisor) of block1, block2, dblock1, dblock2
        specs = [(c4, 16), (c5, 32), (c4, 16), (c3, 8)]
        heads = list(num_heads) if num_heads is not None else [default_num_heads(dim) for dim, _ in specs]
        drop_path = [0.0, float(drop_path_rate)]  # linspace(0, rate, depth 2), as in the official code
        blocks = []
        for i, ((dim, divisor), n_heads) in enumerate(zip(specs, heads)):
            if block == "shifted_mlp":
                blocks.append(ShiftedBlock(dim, mlp_ratio))
            else:
                grid = (max(1, size[0] // divisor), max(1, size[1] // divisor))
                blocks.append(GlobalBlock(dim, int(n_heads), grid, mlp_ratio, drop_path=drop_path[i % 2]))
        # ModuleLists of one block, as in the official code (state-dict keys block1.0.*)
        self.block1, self.block2, self.dblock1, self.dblock2 = (nn.ModuleList([b]) for b in blocks)

        if bottleneck == "none":
            self.bottleneck = nn.Identity()
        elif bottleneck == "aspp":
            self.bottleneck = ASPP(c5, aspp_rates, c5)
        elif bottleneck == "cross_aspp":
            self.bottleneck = CrossASPP(c5, c5, aspp_rates)
        else:
            raise ValueError(f"bottleneck must be 'none', 'aspp' or 'cross_aspp', got {bottleneck!r}")

        self.decoder1 = nn.Conv2d(c5, c4, 3, stride=1, padding=1)
        self.decoder2 = nn.Conv2d(c4, c3, 3, stride=1, padding=1)
        self.decoder3 = nn.Conv2d(c3, c2, 3, stride=1, padding=1)
        self.decoder4 = nn.Conv2d(c2, c1, 3, stride=1, padding=1)
        self.decoder5 = nn.Conv2d(c1, c1, 3, stride=1, padding=1)
        self.dbn1, self.dbn2, self.dbn3, self.dbn4 = (nn.BatchNorm2d(c) for c in (c4, c3, c2, c1))
        self.final = nn.Conv2d(c1, num_classes, kernel_size=1)
        for module in (self.patch_embed3, self.patch_embed4, *blocks):
            if block == "shifted_mlp" or isinstance(module, OverlapPatchEmbed):
                module.apply(_init_unext_weights)

    def _blocks(self, blocks: nn.ModuleList, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        for block in blocks:
            x = block(x, height, width)
        return x

    def _skip(self, x: torch.Tensor, skip: torch.Tensor, level: int) -> torch.Tensor:
        """Add the skip of encoder level ``level`` (1 = shallowest) when it is among the kept ones."""
        return x + skip if level <= self.n_skips else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(f"input height and width must be divisible by 32, got {tuple(x.shape[-2:])}")
        t1 = out = F.relu(F.max_pool2d(self.ebn1(self.encoder1(x)), 2, 2))
        t2 = out = F.relu(F.max_pool2d(self.ebn2(self.encoder2(out)), 2, 2))
        t3 = out = F.relu(F.max_pool2d(self.ebn3(self.encoder3(out)), 2, 2))

        out, h, w = self.patch_embed3(out)
        t4 = out = _tokens_to_map(self.norm3(self._blocks(self.block1, out, h, w)), h, w)
        out, h, w = self.patch_embed4(out)
        out = _tokens_to_map(self.norm4(self._blocks(self.block2, out, h, w)), h, w)
        out = self.bottleneck(out)

        out = self._skip(F.relu(_up(self.dbn1(self.decoder1(out)))), t4, 4)
        _, _, h, w = out.shape
        out = _tokens_to_map(self.dnorm3(self._blocks(self.dblock1, out.flatten(2).transpose(1, 2), h, w)), h, w)
        out = self._skip(F.relu(_up(self.dbn2(self.decoder2(out)))), t3, 3)
        _, _, h, w = out.shape
        out = _tokens_to_map(self.dnorm4(self._blocks(self.dblock2, out.flatten(2).transpose(1, 2), h, w)), h, w)
        out = self._skip(F.relu(_up(self.dbn3(self.decoder3(out)))), t2, 2)
        out = self._skip(F.relu(_up(self.dbn4(self.decoder4(out)))), t1, 1)
        out = F.relu(_up(self.decoder5(out)))
        return self.final(out)


class UNeXt(UNeXtSkeleton):
    """UNeXt as released: shifted-MLP blocks (MLP ratio 1), no bottleneck module, 4 skips."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1, channels: Sequence[int] = UNEXT_CHANNELS,
                 img_size: int | Sequence[int] = 256, drop_path_rate: float = 0.0) -> None:
        super().__init__(in_channels, num_classes, channels, block="shifted_mlp", bottleneck="none",
                         mlp_ratio=1.0, img_size=img_size, drop_path_rate=drop_path_rate)
