"""The denoising U-Net of "improved diffusion" (Nichol & Dhariwal 2021), the backbone of SegDiff and
DiffCMR: ResBlocks with timestep-conditioned (adaptive) group norm, multi-head self-attention at
chosen downsampling factors, strided-conv down / nearest+conv up, skip concatenation.

Written here because MONAI's DiffusionModelUNet adds the timestep embedding instead of the
scale-shift norm, uses other attention projections and cannot add a conditioning feature map after
the first convolution, all of which change DiffCMR's network. Module names follow the reference
code, so its state dicts map one to one.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim): ``[cos(t f_i), sin(t f_i)]``, ``f_i = max_period^(-i/half)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a module's parameters: residual branches start as the identity (reference ``zero_module``)."""
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""


class TimestepSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to the children that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """GN -> SiLU -> conv3 -> (GN * (1 + scale) + shift | + emb) -> SiLU -> dropout -> zero-init conv3, plus skip."""

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, out_channels: Optional[int] = None,
                 use_scale_shift_norm: bool = True):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(),
                                       nn.Conv2d(channels, self.out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(group_norm(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
                                        zero_init(nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)))
        self.skip_connection = (nn.Identity() if self.out_channels == channels
                                else nn.Conv2d(channels, self.out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions: GN -> 1x1 qkv -> attention -> zero-init 1x1 proj, plus x.

    The qkv channels are split per head as in the reference ``QKVAttention`` (head-major); the
    attention itself is PyTorch's fused scaled_dot_product_attention (same maths, less memory).
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = zero_init(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x)).reshape(b, self.num_heads, 3 * c // self.num_heads, -1)
        q, k, v = qkv.transpose(-1, -2).chunk(3, dim=-1)  # each (b, heads, tokens, c / heads)
        h = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, -1)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class DiffusionUNet(nn.Module):
    """improved-diffusion's ``UNetModel`` (2D, no class conditioning, conv resampling).

    ``forward(x, timesteps, features=None)``: ``features`` (B, model_channels, H, W), when given, is
    added to the output of the first convolution (SegDiff/DiffCMR's conditioning: E(F(x) + G(c), H(t))).

    Args:
        in_channels, out_channels: image channels in and out.
        model_channels: width C of the first level; level widths are ``C * channel_mult``.
        channel_mult: one multiplier per level; ``len(channel_mult) - 1`` downsamplings.
        num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
        attention_downsample: downsampling factors (1, 2, 4, ...) whose levels get self-attention.
        num_heads: attention heads.
        dropout: dropout inside the ResBlocks.
        use_scale_shift_norm: adaptive group norm ``GN(h)(1 + s) + b`` (else the embedding is added).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, model_channels: int = 128,
                 channel_mult: Sequence[int] = (1, 1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 attention_downsample: Sequence[int] = (8, 16), num_heads: int = 4, dropout: float = 0.0,
                 use_scale_shift_norm: bool = True):
        super().__init__()
        self.model_channels = model_channels
        self.num_levels = len(channel_mult)
        emb_channels = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(),
                                        nn.Linear(emb_channels, emb_channels))
        res_block = lambda cin, cout: ResBlock(cin, emb_channels, dropout, cout, use_scale_shift_norm)  # noqa: E731
        attention = set(int(a) for a in attention_downsample)

        self.input_blocks = nn.ModuleList([TimestepSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention:
                    layers.append(AttentionBlock(ch, num_heads))
                self.input_blocks.append(TimestepSequential(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepSequential(res_block(ch, ch), AttentionBlock(ch, num_heads), res_block(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention:
                    layers.append(AttentionBlock(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepSequential(*layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(),
                                 zero_init(nn.Conv2d(model_channels, out_channels, 3, padding=1)))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {factor}")
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        skips = []
        h = x
        for index, module in enumerate(self.input_blocks):
            h = module(h, emb)
            if index == 0 and features is not None:
                h = h + features
            skips.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = module(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
