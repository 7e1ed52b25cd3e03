"""Vision-transformer pieces for spectrogram (or image) patches: patch embedding, fixed sin-cos positions,
the MLP and the post-norm data2vec 2.0 "AltBlock" used by EAT and ASDA.

Layer names follow timm/data2vec (``patch_embed.proj``, ``attn``, ``norm1``, ``mlp.fc1``, ``mlp.fc2``, ``norm2``)
so a state dict from those code bases maps over with few renames.
"""
from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
from monai.networks.layers import DropPath
from torch import nn

from lightning_modules.blocks.differential_attention import DifferentialAttention


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D) by a stride-p convolution (row-major over the patch grid)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """MAE's 1-D sin-cos embedding: (len(positions), dim), half sines then half cosines."""
    if dim % 2:
        raise ValueError(f"embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_pos_embed(dim: int, grid: tuple[int, int], kind: Literal["1d", "2d"] = "2d") -> torch.Tensor:
    """Fixed positional embedding for a row-major (rows, cols) patch grid: (rows * cols, dim).

    ``2d``: MAE's get_2d_sincos_pos_embed (half the channels encode the column, half the row);
    ``1d``: one sin-cos code of the flattened patch index.
    """
    rows, cols = grid
    if kind == "1d":
        return torch.from_numpy(sincos_1d(dim, np.arange(rows * cols))).float()
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    col, row = np.meshgrid(np.arange(cols), np.arange(rows))  # MAE: first half from w, second from h
    return torch.from_numpy(np.concatenate([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], axis=1)).float()


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class PostNormBlock(nn.Module):
    """data2vec 2.0 AltBlock with ``layer_norm_first=False`` (EAT, ASDA):

        x = x + DropPath(Attn(x));  r = LN1(x);  h = MLP(r);  x = LN2(r + DropPath(h))

    Returns ``(x, h)``: the FFN output ``h`` is the block's teacher target (``ffn_targets``).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 3.5, *, differential: bool = True,
                 lambda_init: Optional[float] = 0.3, learnable_lambda: bool = False, layer_index: int = 1,
                 head_norm: str = "per_head", out_scale: Optional[float] = 0.95, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.attn = DifferentialAttention(dim, num_heads, differential=differential, lambda_init=lambda_init,
                                          learnable_lambda=learnable_lambda, layer_index=layer_index,
                                          head_norm=head_norm, out_scale=out_scale, qkv_bias=qkv_bias,
                                          attn_drop=attn_drop, proj_drop=drop)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.drop_path(self.attn(x))
        r = self.norm1(x)
        h = self.mlp(r)
        return self.norm2(r + self.drop_path(h)), h
