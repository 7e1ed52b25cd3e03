"""Attention blocks on token sequences of a 2D feature map: global token self-attention with a
Swin-style relative position bias, transposed (channel) attention, and SACA-UNet's Global-Block.

Token tensors are (B, N, C) with N = H * W in row-major order; blocks take ``(x, H, W)`` like the
UNeXt code's blocks, so either kind fits the same skeleton.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_index(height: int, width: int, device=None) -> torch.Tensor:
    """(N, N) index into a (2H-1)(2W-1) table of relative offsets (Swin's ``relative_position_index``)."""
    coords = torch.stack(torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                                        indexing="ij")).flatten(1)  # (2, N)
    relative = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (relative[0] + height - 1) * (2 * width - 1) + (relative[1] + width - 1)


class RelativePositionBias(nn.Module):
    """A learned bias per head and relative offset for a ``grid_size`` token grid.

    For another grid size the table is resized bicubically (as Swin does when fine-tuning at a new
    resolution), so a model trained at 256 px runs at 512 px.
    """

    def __init__(self, num_heads: int, grid_size: tuple[int, int]) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        h, w = self.grid_size
        self.table = nn.Parameter(torch.zeros((2 * h - 1) * (2 * w - 1), num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        self._index_cache: dict = {}

    def forward(self, height: int, width: int) -> torch.Tensor:
        """(heads, N, N) bias for an H x W token grid."""
        h, w = self.grid_size
        table = self.table
        if (height, width) != (h, w):
            grid = table.t().reshape(1, self.num_heads, 2 * h - 1, 2 * w - 1)
            grid = F.interpolate(grid, size=(2 * height - 1, 2 * width - 1), mode="bicubic", align_corners=False)
            table = grid.reshape(self.num_heads, -1).t()
        key = (height, width, table.device)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(height, width, table.device)
        index = self._index_cache[key]
        return table[index.reshape(-1)].reshape(height * width, height * width, self.num_heads).permute(2, 0, 1)


class TokenSelfAttention(nn.Module):
    """Global multi-head self-attention over all tokens: ``softmax(QK^T / sqrt(d) + B) V`` (heads concatenated)."""

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.position_bias = RelativePositionBias(num_heads, grid_size)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.position_bias(height, width).to(q.dtype)[None]  # (1, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scale 1/sqrt(head dim)
        return out.transpose(1, 2).reshape(b, n, c)


class ChannelAttention(nn.Module):
    """Transposed (XCA-style) attention: per head a C_h x C_h map ``softmax(Q^T K / sqrt(N))`` applied to V.

    Q^T K sums over the N tokens, so the scale is 1/sqrt(N) (the paper's ``1/sqrt(d)`` with d the
    length of the vectors whose dot products are taken).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax((q.transpose(-2, -1) @ k) / math.sqrt(n), dim=-1)  # (B, heads, C_h, C_h)
        out = v @ attention.transpose(-2, -1)  # out[n, c] = sum_c' A[c, c'] v[n, c']
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class GlobalBlock(nn.Module):
    """SACA-UNet's Global-Block (Eqs. 1-4 of the paper, read as in the spec card):

        Z  = TSA(LN(X)) * Linear(LN(X))        token self-attention, gated element-wise   (Eq. 1)
        Z' = CA(Z) + X                          channel attention, residual               (Eq. 2)
        G  = MLP(LN(Z')) + Z'                   MLP C -> 4C -> C with GELU, residual      (Eq. 3)

    Args:
        dim: channels C.
        num_heads: heads of both attentions (SACA-UNet: C / 32).
        grid_size: token grid (H, W) at the training resolution (for the relative position bias).
        mlp_ratio: hidden width of the MLP over C.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: tuple[int, int], mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_attention = TokenSelfAttention(dim, num_heads, grid_size, qkv_bias)
        self.gate = nn.Linear(dim, dim)
        self.channel_attention = ChannelAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = drop_path
        self.apply(_init_transformer_weights)

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth per sample (timm's DropPath), identity when 0 or in eval mode."""
        if self.drop_path == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_path
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        normed = self.norm1(x)
        z = self.token_attention(normed, height, width) * self.gate(normed)
        z = x + self._drop_path(self.channel_attention(z))
        return z + self._drop_path(self.mlp(self.norm2(z)))


def _init_transformer_weights(module: nn.Module) -> None:
    """The UNeXt/Swin convention: truncated normal (std 0.02) linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def default_num_heads(dim: int, head_dim: int = 32, given: Optional[int] = None) -> int:
    """SACA-UNet's choice: C / 32 heads (at least one)."""
    return given if given is not None else max(1, dim // head_dim)
