"""MT-UNet's Mixed Transformer Module (Wang et al., ICASSP 2022), vectorised.

The module is Local-Global Gaussian-weighted Self-Attention (LGG-SA) followed by External Attention
(EA), each pre-LayerNorm with a residual, no MLP. It follows the official code (Dootmaan/MT-UNet,
``MTUNet.py``: ``EAmodule`` = ``CSAttention`` + ``MEAttention``), computing the same functions with
tensor ops where that code loops over pixels in Python (``GaussianTrans``); tests/test_mtunet.py checks
``gaussian_axial_attention`` against such a loop.

Feature maps are channels-last ``(B, H, W, C)`` throughout, so LayerNorm and the linear layers act on
the last axis and no (B, N, C) <-> grid reshapes are needed between blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_axial_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             shift: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Row + column single-head attention with a Gaussian distance penalty (MT-UNet's global branch).

    For the token at (r, c), with q/k/v of shape (B, H, W, C):
        out[r, c] = sum_j softmax_j(q[r,c].k[r,j] - shift (j-c)^2 - bias) v[r, j]
                  + sum_i softmax_i(q[r,c].k[i,c] - shift (i-r)^2 - bias) v[i, c]
    i.e. two separately normalised axial attentions (no 1/sqrt(C) scaling), summed; ``bias`` is a
    constant inside each softmax and so has no effect, but it is part of the official formula.
    """
    height, width = query.shape[1], query.shape[2]
    rows = torch.arange(height, device=query.device, dtype=query.dtype)
    cols = torch.arange(width, device=query.device, dtype=query.dtype)
    row_penalty = -(shift * (cols[None, :] - cols[:, None]) ** 2 + bias)  # (W query col, W key col)
    col_penalty = -(shift * (rows[None, :] - rows[:, None]) ** 2 + bias)  # (H query row, H key row)
    # along each row: (B, H, W, W) scores of (r, c) against (r, j)
    row_attn = torch.softmax(query @ key.transpose(-1, -2) + row_penalty, dim=-1)
    row_out = row_attn @ value
    # along each column: (B, W, H, H) scores of (r, c) against (i, c)
    q_t, k_t, v_t = (t.transpose(1, 2) for t in (query, key, value))
    col_attn = torch.softmax(q_t @ k_t.transpose(-1, -2) + col_penalty, dim=-1)
    col_out = (col_attn @ v_t).transpose(1, 2)
    return row_out + col_out


def pad_to_windows(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Pad a (B, H, W, C) map so H and W are multiples of ``window_size``, as the official
    ``WinAttention`` does: zeros, except that the bottom-right corner repeats the map's last rows/cols."""
    height, width = x.shape[1], x.shape[2]
    pad_h, pad_w = -height % window_size, -width % window_size
    if not (pad_h or pad_w):
        return x
    padded = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    if pad_h and pad_w:
        padded[:, height:, width:] = x[:, height - pad_h:, width - pad_w:]
    return padded


class WindowSelfAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows (the official ``WinAttention``):
    separate q/k/v projections, scaled dot product, output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows: (..., T, C) with T tokens per window -> same shape."""
        *batch, tokens, dim = windows.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(-1, tokens, self.num_heads, dim // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.query(windows)), heads(self.key(windows)),
                                             heads(self.value(windows)))
        return self.out(out.transpose(1, 2).reshape(*batch, tokens, dim))


class WindowAggregation(nn.Module):
    """One token per window: softmax weights over the window's tokens, predicted from their mean
    (the official ``DlightConv``)."""

    def __init__(self, dim: int, window_size: int) -> None:
        super().__init__()
        self.weights = nn.Linear(dim, window_size * window_size)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows: (B, P, Q, T, C) -> (B, P, Q, C)."""
        weights = torch.softmax(self.weights(windows.mean(dim=-2)), dim=-1)
        return (windows * weights.unsqueeze(-1)).sum(dim=-2)


class GaussianAxialAttention(nn.Module):
    """Global branch of LGG-SA on the window tokens: q/k/v projections and ``gaussian_axial_attention``
    with a learned distance scale ``shift`` and offset ``bias`` (the official ``Attention(axial=True)``
    + ``GaussianTrans``, initialised as there: bias = -|N(0,1)|, shift = |N(0,1)|). The official module
    also builds an output projection that its axial path never uses; it is left out here."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.bias = nn.Parameter(-torch.randn(1).abs())
        self.shift = nn.Parameter(torch.randn(1).abs())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        return gaussian_axial_attention(self.query(x), self.key(x), self.value(x), self.shift, self.bias)


class LocalGlobalGaussianAttention(nn.Module):
    """LGG-SA (the official ``CSAttention``): window self-attention for local context; each window
    aggregated to one token, Gaussian-weighted axial attention among those tokens for global context,
    upsampled bilinearly (align_corners=True) by the window size; both concatenated (global first) and
    fused by a 1x1 projection. Maps whose sides are not window multiples are padded (``pad_to_windows``)
    and cropped back."""

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 4) -> None:
        super().__init__()
        self.window_size = window_size
        self.local_attention = WindowSelfAttention(dim, num_heads)
        self.aggregate = WindowAggregation(dim, window_size)
        self.global_attention = GaussianAxialAttention(dim)
        self.fuse = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        b, height, width, c = x.shape
        s = self.window_size
        x = pad_to_windows(x, s)
        p, q = x.shape[1] // s, x.shape[2] // s
        windows = x.reshape(b, p, s, q, s, c).transpose(2, 3).reshape(b, p, q, s * s, c)
        windows = self.local_attention(windows)
        local = windows.reshape(b, p, q, s, s, c).transpose(2, 3).reshape(b, p * s, q * s, c)
        global_ = self.global_attention(self.aggregate(windows))  # (B, P, Q, C)
        global_ = F.interpolate(global_.permute(0, 3, 1, 2), scale_factor=s, mode="bilinear",
                                align_corners=True).permute(0, 2, 3, 1)
        out = self.fuse(torch.cat([global_, local], dim=-1))
        return out[:, :height, :width]


class ExternalAttention(nn.Module):
    """Multi-head External Attention (Guo et al. 2021; the official ``MEAttention``): the input is
    expanded ``expansion``-fold and split into ``expansion * num_heads`` heads; two linear layers are
    the shared key/value memories of ``memory_size`` units; attention is normalised over the tokens
    (softmax) and then over the memory units (l1), per the EA paper's double normalisation."""

    def __init__(self, dim: int, num_heads: int = 8, expansion: int = 4, memory_size: int = 64) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = expansion * num_heads
        head_dim = dim * expansion // self.num_heads
        self.expand = nn.Linear(dim, dim * expansion)
        self.memory_key = nn.Linear(head_dim, memory_size)
        self.memory_value = nn.Linear(memory_size, head_dim)
        self.proj = nn.Linear(dim * expansion, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C); the softmax runs over all H*W tokens of a sample."""
        b, height, width, _ = x.shape
        heads = self.expand(x).reshape(b, height * width, self.num_heads, -1).transpose(1, 2)
        attn = torch.softmax(self.memory_key(heads), dim=-2)
        attn = attn / (1e-9 + attn.sum(dim=-1, keepdim=True))
        out = self.memory_value(attn).transpose(1, 2).reshape(b, height, width, -1)
        return self.proj(out)


class MixedTransformerModule(nn.Module):
    """MTM (the official ``EAmodule``): x + LGG-SA(LN(x)), then x + EA(LN(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 4, ea_expansion: int = 4,
                 ea_memory_size: int = 64) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = LocalGlobalGaussianAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.external_attention = ExternalAttention(dim, num_heads, ea_expansion, ea_memory_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, H, W, C) -> (B, H, W, C)."""
        x = x + self.self_attention(self.norm1(x))
        return x + self.external_attention(self.norm2(x))
