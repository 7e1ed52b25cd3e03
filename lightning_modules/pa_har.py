"""PA-HAR (Xu et al., ICPR 2024): a 3-block HAR ResNet over the "signal image" (time x sensor channels) with a
Parallel Attention (PA) block after its residual blocks.

PA (Eqs. 1-7): ``Out = act(Scale_1 + Scale_2 + Z)`` with ``Scale_1 = BN(Conv1x1(X))`` (high-resolution branch),
``Scale_2 = BN(Conv3x3(X))`` (high-semantic branch, 3x3 over time and sensors) and the Skip-Squeeze-Excitation
``Z`` with a single fully connected layer ``T``:

- ``sse_mode: vector`` is the paper's Eq. 4 literally: ``Z = sigmoid(T(GAP(X)))``, one value per channel
  broadcast over time and sensors;
- ``sse_mode: gate`` (default) is ParNet's SSE (Goyal et al. 2021), which the block matches: the "skip" gates the
  input, ``Z = BN(X) * sigmoid(T(GAP(BN(X))))``.

``pa_branches`` keeps a subset of the three branches (Table 3: ``[sse]`` = "+SSE", ``[scale1, scale2]`` =
"+Multi Scale"), ``pa_act`` is SiLU or ReLU (Table 4), ``positions`` the residual blocks followed by the attention
(Fig. 5: 1, 2, 3). ``attention`` swaps PA for the Fig. 7 comparison blocks (SE, CBAM, EPSA, NAM) or none (the ResNet
baseline of Fig. 3). The paper gives no backbone sizes: ``backbone: resnet`` is the card's choice (channels
64/128/256, kernels (3,1), stride (2,1)); ``zhang_resnet`` the public HAR-ResNet of ref. [7]'s group (kernels
(6,1), stride (3,1), 128/256/384).

Input: the batch ``signal`` as (B, T, C) (``signal_layout: time_first``) or already (B, 1, T, C).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Attention = Literal["pa", "none", "se", "cbam", "epsa", "nam"]
Branch = Literal["scale1", "scale2", "sse"]

BACKBONES = {  # channels, kernel of conv_a, stride, padding, shortcut kernel
    "resnet": dict(channels=(64, 128, 256), kernel=3, stride=2, padding=1, shortcut_kernel=1),
    "zhang_resnet": dict(channels=(128, 256, 384), kernel=6, stride=3, padding=1, shortcut_kernel=6),
}


def activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"pa_act must be 'silu' or 'relu', got {name!r}")


class SkipSqueezeExcitation(nn.Module):
    """SSE with one Linear(C, C) (no reduction): "vector" ``sigmoid(fc(GAP(x)))`` (B, C, 1, 1), or "gate"
    ``BN(x) * sigmoid(fc(GAP(BN(x))))`` (B, C, H, W) (ParNet)."""

    def __init__(self, channels: int, mode: Literal["gate", "vector"] = "gate"):
        super().__init__()
        if mode not in ("gate", "vector"):
            raise ValueError(f"sse_mode must be 'gate' or 'vector', got {mode!r}")
        self.mode = mode
        self.bn = nn.BatchNorm2d(channels) if mode == "gate" else None
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        source = self.bn(x) if self.bn is not None else x
        weights = torch.sigmoid(self.fc(source.mean(dim=(2, 3))))[:, :, None, None]
        return source * weights if self.mode == "gate" else weights


class ParallelAttention(nn.Module):
    """PA block: ``act(BN(Conv1x1 x) + BN(Conv3x3 x) + SSE(x))``, channels and size kept (Eq. 7)."""

    def __init__(self, channels: int, sse_mode: Literal["gate", "vector"] = "gate", act: str = "silu",
                 branches: Sequence[Branch] = ("scale1", "scale2", "sse")):
        super().__init__()
        branches = tuple(branches)
        if not branches or not set(branches) <= {"scale1", "scale2", "sse"}:
            raise ValueError(f"pa_branches must be a non-empty subset of scale1, scale2, sse; got {branches}")
        self.branches = branches
        self.scale1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)) \
            if "scale1" in branches else None
        self.scale2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)) \
            if "scale2" in branches else None
        self.sse = SkipSqueezeExcitation(channels, sse_mode) if "sse" in branches else None
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for branch in (self.scale1, self.scale2, self.sse):
            if branch is not None:
                out = out + branch(x)
        return self.act(out)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (Hu et al.), timm SEModule's layout: GAP -> fc1 (1x1) -> ReLU -> fc2 -> sigmoid gate."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class CBAMBlock(nn.Module):
    """CBAM (Woo et al.): channel attention from average- and max-pooled descriptors through a shared MLP, then
    spatial attention from a 7x7 conv over the channel-wise mean and max maps."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mlp = lambda s: self.fc2(F.relu(self.fc1(s)))  # noqa: E731
        x = x * torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(x.amax(dim=(2, 3), keepdim=True)))
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


class EPSABlock(nn.Module):
    """EPSANet's PSA module (Zhang et al. 2021): four parallel convs (kernels 3/5/7/9, groups 1/4/8/16 as far as the
    widths allow) each to C/4 channels, a shared SE (``se_fc1``/``se_fc2``) per branch, softmax over the branches,
    branch features re-weighted and concatenated back to C channels."""

    def __init__(self, channels: int, kernels: Sequence[int] = (3, 5, 7, 9), groups: Sequence[int] = (1, 4, 8, 16),
                 reduction: int = 16):
        super().__init__()
        import math

        if channels % len(kernels):
            raise ValueError(f"EPSA needs channels divisible by {len(kernels)}, got {channels}")
        split = channels // len(kernels)
        self.split = split
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, split, k, padding=k // 2, groups=math.gcd(g, split), bias=False)
            for k, g in zip(kernels, groups))
        hidden = max(1, split // reduction)
        self.se_fc1 = nn.Conv2d(split, hidden, 1)
        self.se_fc2 = nn.Conv2d(hidden, split, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = torch.stack([conv(x) for conv in self.convs], dim=1)  # (B, S, C/S, H, W)
        pooled = feats.mean(dim=(3, 4), keepdim=True).flatten(0, 1)  # (B*S, C/S, 1, 1)
        weights = self.se_fc2(F.relu(self.se_fc1(pooled))).view(*feats.shape[:3], 1, 1)
        weights = torch.softmax(weights, dim=1)  # EPSANet: softmax across the branches
        return (feats * weights).flatten(1, 2)


class NAMBlock(nn.Module):
    """NAM channel attention (Liu et al. 2021): BN's |gamma| share as channel weights,
    ``x * sigmoid(w * BN(x))``, w_c = |gamma_c| / sum |gamma|."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.bn.weight.abs() / self.bn.weight.abs().sum()
        return x * torch.sigmoid(self.bn(x) * weight[None, :, None, None])


class ResidualBlock(nn.Module):
    """conv_a (k,1)/stride (s,1) -> BN -> ReLU -> conv_b (3,1) -> BN, plus a strided shortcut conv + BN; ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int,
                 shortcut_kernel: int):
        super().__init__()
        self.conv_a = nn.Conv2d(in_channels, out_channels, (kernel, 1), (stride, 1), (padding, 0), bias=False)
        self.bn_a = nn.BatchNorm2d(out_channels)
        self.conv_b = nn.Conv2d(out_channels, out_channels, (3, 1), 1, (1, 0), bias=False)
        self.bn_b = nn.BatchNorm2d(out_channels)
        shortcut_padding = 0 if shortcut_kernel == 1 else padding
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, (shortcut_kernel, 1), (stride, 1), (shortcut_padding, 0), bias=False),
            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn_b(self.conv_b(F.relu(self.bn_a(self.conv_a(x)))))
        return F.relu(out + self.shortcut(x))


class PAHAR(nn.Module):
    """HAR ResNet (3 residual blocks) with an attention block after the blocks in ``positions``, GAP and a linear head.

    Args:
        num_classes: activities K.
        backbone: "resnet" (card: 64/128/256, (3,1)/2) or "zhang_resnet" ((6,1)/3, 128/256/384).
        channels, kernel, stride: override the backbone preset's per-block channels, conv_a kernel, stride.
        attention: "pa" (PA-HAR), "none" (ResNet baseline), "se", "cbam", "epsa" or "nam" (Fig. 7 comparisons).
        positions: 1-based residual blocks followed by the attention block (Fig. 5; default all three).
        sse_mode, pa_act, pa_branches: the PA block's SSE form, activation and branches (module docstring).
        head: "gap" (global average pooling -> Linear) or "flatten_fc" (flatten the last map -> Linear; needs
            ``input_shape`` (T, C)).
        input_shape: (window length, sensor channels), only for ``flatten_fc``.
        dropout: before the head (0: none, the paper names none).
    """

    def __init__(self, num_classes: int, backbone: Literal["resnet", "zhang_resnet"] = "resnet",
                 channels: Optional[list[int]] = None, kernel: Optional[int] = None, stride: Optional[int] = None,
                 attention: Attention = "pa", positions: Sequence[int] = (1, 2, 3),
                 sse_mode: Literal["gate", "vector"] = "gate", pa_act: Literal["silu", "relu"] = "silu",
                 pa_branches: Sequence[Branch] = ("scale1", "scale2", "sse"),
                 head: Literal["gap", "flatten_fc"] = "gap", input_shape: Optional[Sequence[int]] = None,
                 dropout: float = 0.0):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
        preset = dict(BACKBONES[backbone])
        channels = list(channels or preset["channels"])
        kernel = kernel or preset["kernel"]
        stride = stride or preset["stride"]
        if attention not in ("pa", "none", "se", "cbam", "epsa", "nam"):
            raise ValueError(f"attention must be pa, none, se, cbam, epsa or nam; got {attention!r}")
        if not set(positions) <= set(range(1, len(channels) + 1)):
            raise ValueError(f"positions must be among 1..{len(channels)}, got {list(positions)}")
        self.attention_kind, self.positions = attention, tuple(positions)
        blocks, attentions = [], []
        previous = 1
        for index, width in enumerate(channels, start=1):
            blocks.append(ResidualBlock(previous, width, kernel, stride, preset["padding"],
                                        1 if preset["shortcut_kernel"] == 1 else kernel))
            attentions.append(self._attention(attention, width, sse_mode, pa_act, pa_branches)
                              if index in self.positions else nn.Identity())
            previous = width
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.head_kind = head
        if head == "gap":
            features = channels[-1]
        elif head == "flatten_fc":
            if input_shape is None:
                raise ValueError("head: flatten_fc needs input_shape (window length, sensor channels)")
            with torch.no_grad():
                probe = torch.zeros(1, 1, *input_shape, device=self.blocks[0].conv_a.weight.device)
                features = self.features(probe).flatten(1).shape[1]
        else:
            raise ValueError(f"head must be 'gap' or 'flatten_fc', got {head!r}")
        self.fc = nn.Linear(features, num_classes)
        self.feature_dim = features

    @staticmethod
    def _attention(kind: str, channels: int, sse_mode: str, act: str, branches: Sequence[str]) -> nn.Module:
        if kind == "pa":
            return ParallelAttention(channels, sse_mode, act, branches)
        if kind == "se":
            return SEBlock(channels)
        if kind == "cbam":
            return CBAMBlock(channels)
        if kind == "nam":
            return NAMBlock(channels)
        if kind == "epsa":
            return EPSABlock(channels)
        return nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) or (B, 1, T, C) -> the last feature map (B, C_3, T', C)."""
        if x.dim() == 3:
            x = x.unsqueeze(1)
        for block, attention in zip(self.blocks, self.attentions):
            x = attention(block(x))
        return x

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x)
        return maps.mean(dim=(2, 3)) if self.head_kind == "gap" else maps.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pooled(x)))
