"""Differential attention (Ye et al., "Differential Transformer", 2024; ASDA eq. 1-3), multi-head.

    [Q1, Q2] = Z W_Q,  [K1, K2] = Z W_K,  V = Z W_V          W_Q, W_K: D x 2D,  W_V: D x D
    head_i   = Norm_i((softmax(Q1_i K1_i^T / sqrt(d)) - lambda softmax(Q2_i K2_i^T / sqrt(d))) V_i)
    out      = out_scale * Concat(head_1..head_h) W_O                             d = D / h

Both softmax maps go through ``F.scaled_dot_product_attention`` in one call (the two query/key paths
are stacked as 2h heads), since (A1 - lambda A2) V = A1 V - lambda A2 V.

``lambda``: ASDA uses a fixed coefficient (paper: 0, 0.1, 0.3, 0.5; best 0.3). ``learnable_lambda`` gives
the Differential Transformer's re-parameterisation lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,
with lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) for layer l (1-based) when ``lambda_init`` is None.

``differential=False`` is standard multi-head attention with the same layout (one Q/K path of D
channels): the "ViT"/EAT baseline. ``lambda_init=0`` keeps both paths but the second has no effect.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

HeadNormKind = Literal["per_head", "full", "rms_per_head", "none"]


def diff_lambda_init(layer_index: int) -> float:
    """The Differential Transformer's depth schedule; ``layer_index`` is 1-based."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer_index - 1))


class HeadNorm(nn.Module):
    """Normalisation of each head's output before concatenation.

    ``per_head``: LayerNorm over each head's d channels (ASDA eq. 3; a GroupNorm(h, D) per token), affine
    over all D channels; ``full``: one LayerNorm over D (ASDA's code); ``rms_per_head``: RMSNorm per head
    (the Differential Transformer); ``none``.
    """

    def __init__(self, dim: int, num_heads: int, kind: HeadNormKind = "per_head", eps: float = 1e-5):
        super().__init__()
        if kind not in ("per_head", "full", "rms_per_head", "none"):
            raise ValueError(f"unknown head norm {kind!r}")
        self.kind, self.num_heads, self.eps = kind, num_heads, eps
        if kind != "none":
            self.weight = nn.Parameter(torch.ones(dim))
        if kind in ("per_head", "full"):
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, L, h, d) -> (B, L, h * d)."""
        b, n, h, d = heads.shape
        if self.kind == "none":
            return heads.reshape(b, n, h * d)
        if self.kind == "full":
            return F.layer_norm(heads.reshape(b, n, h * d), (h * d,), self.weight, self.bias, self.eps)
        if self.kind == "per_head":
            out = F.layer_norm(heads, (d,), eps=self.eps).reshape(b, n, h * d)
            return out * self.weight + self.bias
        out = heads * torch.rsqrt(heads.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return out.reshape(b, n, h * d) * self.weight


class DifferentialAttention(nn.Module):
    """Multi-head (differential) self-attention on (B, L, D) tokens.

    Args:
        dim: D. num_heads: h (ASDA paper: 8; its code: 12). qkv_bias: biases on W_Q, W_K, W_V.
        differential: two softmax maps (True) or standard attention (False).
        lambda_init: the fixed coefficient (``learnable_lambda=False``) or the re-parameterisation's
            offset; ``None`` with ``learnable_lambda`` takes the depth schedule at ``layer_index``.
        head_norm: see HeadNorm. out_scale: factor on the concatenated heads (ASDA code: 0.95;
            ``None``: 1 - lambda_init as the Differential Transformer).
        attn_drop, proj_drop: dropout on the attention maps and the output.
    """

    def __init__(self, dim: int, num_heads: int = 8, *, differential: bool = True, lambda_init: Optional[float] = 0.3,
                 learnable_lambda: bool = False, layer_index: int = 1, head_norm: HeadNormKind = "per_head",
                 out_scale: Optional[float] = 0.95, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.differential = differential
        if lambda_init is None:
            if not learnable_lambda:
                raise ValueError("a fixed lambda needs lambda_init")
            lambda_init = diff_lambda_init(layer_index)
        self.lambda_init = float(lambda_init) if differential else 0.0
        self.learnable_lambda = learnable_lambda and differential
        self.out_scale = (1.0 - self.lambda_init) if out_scale is None else float(out_scale)
        self.qk = nn.Linear(dim, (4 if differential else 2) * dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        if self.learnable_lambda:
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                self.register_parameter(name, nn.Parameter(torch.randn(self.head_dim) * 0.1))
        self.norm = HeadNorm(dim, num_heads, head_norm, norm_eps)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def diff_lambda(self) -> torch.Tensor | float:
        if not self.learnable_lambda:
            return self.lambda_init
        return (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1)) - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2))
                + self.lambda_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h, d = self.num_heads, self.head_dim
        paths = 2 if self.differential else 1
        q, k = self.qk(x).chunk(2, dim=-1)  # each (B, L, paths * D): [Q1 | Q2], [K1 | K2]
        # (B, paths * h, L, d): heads of Q1 first, then those of Q2.
        q = q.view(b, n, paths * h, d).transpose(1, 2)
        k = k.view(b, n, paths * h, d).transpose(1, 2)
        v = self.v(x).view(b, n, h, d).transpose(1, 2)
        if paths == 2:
            v = torch.cat([v, v], dim=1)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        if paths == 2:
            first, second = out.chunk(2, dim=1)
            out = first - self.diff_lambda() * second
        out = self.norm(out.transpose(1, 2))  # (B, L, D)
        return self.proj_drop(self.proj(out * self.out_scale))
