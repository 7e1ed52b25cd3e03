"""Spatial-temporal graph convolution (ST-GCN, Yan et al., AAAI 2018), single-partition form, and the graph
helpers the landmark papers share (engagement ST-GCN; group-emotion graphs).

One layer (Eq. 1 of the engagement paper)::

    f_out = (Lambda^-1/2 ((A + I) * M) Lambda^-1/2  f_in W_spatial) W_temporal,   Lambda_ii = sum_j (A + I)_ij

``W_spatial`` is a 1 x 1 convolution, the normalised adjacency multiplies the node axis, ``M`` is the learnable
edge importance (N x N, initialised to ones; optional) and ``W_temporal`` is st-gcn's temporal unit
BN -> ReLU -> Conv(Gamma x 1) -> BN -> Dropout; an optional residual (identity, or 1 x 1 conv + BN when the
shape changes) is added before the final ReLU. Tensors are (B, C, T, N): channels, frames, nodes.
Since Lambda is diagonal, Lambda^-1/2 ((A+I) * M) Lambda^-1/2 = (Lambda^-1/2 (A+I) Lambda^-1/2) * M: the layer keeps
the normalised (A + I) as a buffer and multiplies it by M.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.spatial import Delaunay
from torch import nn


def delaunay_adjacency(points: np.ndarray) -> np.ndarray:
    """(N, N) binary symmetric adjacency with zero diagonal: i ~ j when they share a Delaunay triangle of the
    2-D ``points`` (N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"delaunay_adjacency needs (N, 2) points, got {points.shape}")
    simplices = Delaunay(points).simplices  # (M, 3)
    n = len(points)
    adjacency = np.zeros((n, n), dtype=np.float32)
    i = simplices[:, [0, 1, 2, 1, 2, 0]].ravel()
    j = simplices[:, [1, 2, 0, 0, 1, 2]].ravel()
    adjacency[i, j] = 1.0
    np.fill_diagonal(adjacency, 0.0)
    return adjacency


def normalize_adjacency(adjacency: np.ndarray | torch.Tensor, self_loops: bool = True) -> torch.Tensor:
    """Lambda^-1/2 (A + I) Lambda^-1/2 with Lambda_ii = sum_j (A + I)_ij (symmetric normalisation; without
    ``self_loops`` of A alone). Nodes without edges keep a zero row."""
    a = torch.as_tensor(np.asarray(adjacency), dtype=torch.float32)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency must be square, got {tuple(a.shape)}")
    if self_loops:
        a = a + torch.eye(a.shape[0])
    degree = a.sum(1)
    inv_sqrt = torch.where(degree > 0, degree.clamp_min(1e-12).rsqrt(), torch.zeros_like(degree))
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


class STGCNLayer(nn.Module):
    """One ST-GCN layer over a fixed graph; input (B, C_in, T, N) -> (B, C_out, T / stride, N).

    Args:
        in_channels, out_channels: feature channels.
        adjacency: (N, N) binary adjacency without self loops (self loops are added and the result normalised).
        temporal_kernel: Gamma, odd (padding Gamma // 2 keeps T).
        stride: temporal stride.
        dropout: after the temporal convolution.
        residual: add the input (identity when shapes match, else 1 x 1 conv + BN).
        edge_importance: learn M (N x N, ones at init); False: M = 1, not a parameter.
    """

    def __init__(self, in_channels: int, out_channels: int, adjacency: np.ndarray | torch.Tensor,
                 temporal_kernel: int = 9, stride: int = 1, dropout: float = 0.0, residual: bool = True,
                 edge_importance: bool = True):
        super().__init__()
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd and positive, got {temporal_kernel}")
        self.register_buffer("adjacency", normalize_adjacency(adjacency))
        n = self.adjacency.shape[0]
        self.edge_importance = nn.Parameter(torch.ones(n, n)) if edge_importance else None
        self.gcn = nn.Conv2d(in_channels, out_channels, kernel_size=1)  # W_spatial
        self.tcn = nn.Sequential(  # W_temporal (st-gcn's layout)
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1), (temporal_kernel // 2, 0)),
            nn.BatchNorm2d(out_channels), nn.Dropout(dropout, inplace=True))
        if not residual:
            self.residual: Optional[nn.Module] = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, (stride, 1)),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU(inplace=True)

    def graph(self) -> torch.Tensor:
        """The (N, N) operator of the spatial step: normalised (A + I), times M when learnt."""
        return self.adjacency if self.edge_importance is None else self.adjacency * self.edge_importance

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        """W_spatial, then the graph over the node axis: out[b, c, t, i] = sum_j G[i, j] x'[b, c, t, j]."""
        return torch.matmul(self.gcn(x), self.graph().transpose(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tcn(self.spatial(x))
        if self.residual is not None:
            out = out + self.residual(x)
        return self.relu(out)
