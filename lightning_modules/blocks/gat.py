"""Graph attention (Veličković et al., ICLR 2018) on dense, batched graphs with an adjacency mask.

For graphs of a few hundred nodes (a video's faces over time, a clip's frames) a dense masked softmax is simpler
and as fast as a sparse edge list, and needs no torch_geometric. The parameters follow PyG's ``GATConv`` layout
(``lin`` without bias, ``att_src``, ``att_dst``, ``bias``), so the counts match it and a PyG state dict loads
by name (its ``lin.weight`` is ours).

Convention (row = receiver): ``adjacency[..., i, j]`` True means node i aggregates from node j. Rows without any
edge would have an empty softmax: callers keep self loops (``DenseGATLayer`` adds them unless told not to).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DenseGATLayer(nn.Module):
    """One GAT layer: h = W x; e_ij = LeakyReLU(a_dst . h_i + a_src . h_j); alpha_i = softmax over j in N(i);
    out_i = sum_j alpha_ij h_j (+ bias), per head, heads concatenated (``concat``) or averaged.

    Args:
        in_channels, out_channels: feature sizes (``out_channels`` per head).
        heads: attention heads.
        concat: concatenate the heads (output heads * out_channels) or average them (output out_channels).
        negative_slope: LeakyReLU slope of the attention logits (0.2, as GAT).
        dropout: dropout on the attention coefficients (training only).
        add_self_loops: add i <- i to every adjacency.
        bias: a learned output bias.
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.negative_slope, self.dropout, self.add_self_loops = negative_slope, dropout, add_self_loops
        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, 1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, 1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.lin.weight)  # glorot, as PyG
        nn.init.xavier_uniform_(self.att_src.view(self.heads, self.out_channels))
        nn.init.xavier_uniform_(self.att_dst.view(self.heads, self.out_channels))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adjacency: Tensor, return_attention: bool = False):
        """x (B, V, in_channels); adjacency bool (V, V) or (B, V, V), row = receiver. Returns (B, V, out) and, with
        ``return_attention``, the coefficients (B, heads, V, V)."""
        b, v, _ = x.shape
        h = self.lin(x).view(b, v, self.heads, self.out_channels)
        score_src = (h * self.att_src).sum(-1)  # (B, V, H)
        score_dst = (h * self.att_dst).sum(-1)
        logits = F.leaky_relu(score_dst.transpose(1, 2).unsqueeze(-1) + score_src.transpose(1, 2).unsqueeze(-2),
                              self.negative_slope)  # (B, H, V_dst, V_src)
        mask = adjacency.bool()
        if self.add_self_loops:
            mask = mask | torch.eye(v, dtype=torch.bool, device=x.device)
        mask = mask.unsqueeze(-3) if mask.dim() == 3 else mask  # (B, 1, V, V) or (V, V)
        logits = logits.float().masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(logits, dim=-1)
        alpha = torch.nan_to_num(alpha, nan=0.0).to(h.dtype)  # a row without edges aggregates nothing
        alpha_used = F.dropout(alpha, self.dropout, self.training)
        out = torch.einsum("bhij,bjhc->bihc", alpha_used, h)
        out = out.reshape(b, v, self.heads * self.out_channels) if self.concat else out.mean(dim=2)
        if self.bias is not None:
            out = out + self.bias
        return (out, alpha) if return_attention else out


class DenseGAT(nn.Module):
    """A stack of ``DenseGATLayer`` (GAT's recipe): dropout on each layer's input, ELU between layers; hidden layers
    concatenate their heads (``hidden // heads`` channels each), the last averages them.

    Args:
        in_channels, hidden_channels, out_channels: feature sizes.
        num_layers: attention layers (>= 1).
        heads: attention heads per layer.
        dropout: input dropout of every layer and attention dropout.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int = 2,
                 heads: int = 1, dropout: float = 0.5):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if hidden_channels % heads:
            raise ValueError(f"hidden_channels ({hidden_channels}) must be divisible by heads ({heads})")
        self.dropout = dropout
        layers, cin = [], in_channels
        for i in range(num_layers):
            last = i == num_layers - 1
            out = out_channels if last else hidden_channels // heads
            layers.append(DenseGATLayer(cin, out, heads=heads, concat=not last, dropout=dropout))
            cin = out * heads if not last else out
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, adjacency: Tensor, node_mask: Optional[Tensor] = None) -> Tensor:
        """x (B, V, C); adjacency (V, V) or (B, V, V) bool, row = receiver; node_mask (B, V) bool: absent nodes send
        nothing (their own rows keep only the self loop)."""
        if node_mask is not None:
            adjacency = adjacency.bool() & node_mask.bool().unsqueeze(-2)
        for i, layer in enumerate(self.layers):
            if i:
                x = F.elu(x)
            x = layer(F.dropout(x, self.dropout, self.training), adjacency)
        return x
