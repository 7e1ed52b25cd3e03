"""The shared ST-GCN layer and graph helpers (blocks/stgcn.py) against hand computation."""
import numpy as np
import pytest
import torch

from lightning_modules.blocks.stgcn import STGCNLayer, delaunay_adjacency, normalize_adjacency


def test_delaunay_adjacency_of_a_square_with_centre():
    points = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]])
    a = delaunay_adjacency(points)
    assert a.shape == (5, 5) and np.array_equal(a, a.T) and np.all(np.diag(a) == 0)
    assert a[4, :4].sum() == 4  # the centre joins every corner
    assert a[0, 1] == a[1, 2] == a[2, 3] == a[3, 0] == 1 and a[0, 2] == a[1, 3] == 0  # sides, no diagonals
    assert set(np.unique(a)) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        delaunay_adjacency(np.zeros((4, 3)))


def test_normalize_adjacency_matches_the_formula():
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float)
    a_hat = a + np.eye(3)
    d = np.diag(1 / np.sqrt(a_hat.sum(1)))
    assert torch.allclose(normalize_adjacency(a), torch.tensor(d @ a_hat @ d, dtype=torch.float32))


def test_layer_is_eq1_with_edge_importance():
    """Eq. 1 by hand: Lambda^-1/2 ((A+I) * M) Lambda^-1/2 applied to the 1 x 1 conv's output over the nodes."""
    torch.manual_seed(0)
    a = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 1, 0]], float)
    layer = STGCNLayer(2, 3, a, temporal_kernel=3, residual=False).eval()
    with torch.no_grad():
        layer.edge_importance.copy_(torch.rand(4, 4) + 0.5)
    x = torch.randn(2, 2, 5, 4)
    a_hat = torch.tensor(a + np.eye(4), dtype=torch.float32)
    lam = torch.diag(a_hat.sum(1).rsqrt())
    graph = lam @ (a_hat * layer.edge_importance) @ lam
    wx = layer.gcn(x)  # (B, C, T, N)
    expected = torch.einsum("ij,bctj->bcti", graph, wx)
    assert torch.allclose(layer.spatial(x), expected, atol=1e-6)
    assert torch.allclose(layer(x), torch.relu(layer.tcn(expected)), atol=1e-6)
    # a node's output only depends on its neighbours (and itself)
    x2 = x.clone()
    x2[..., 3] += 10.0
    changed = (layer.spatial(x2) - layer.spatial(x)).abs().amax(dim=(0, 1, 2)) > 1e-6
    assert changed.tolist() == [False, False, True, True]


def test_layer_shapes_residual_and_parameters():
    a = delaunay_adjacency(np.random.default_rng(0).random((10, 2)))
    layer = STGCNLayer(3, 8, a, temporal_kernel=9, stride=2, residual=True, edge_importance=False)
    assert layer.edge_importance is None and layer(torch.randn(2, 3, 16, 10)).shape == (2, 8, 8, 10)
    # gcn 3*8+8, tcn BN 16 + conv 8*8*9+8 + BN 16, residual conv 3*8+8 + BN 16
    assert sum(p.numel() for p in layer.parameters()) == 32 + 16 + 584 + 16 + 32 + 16
    same = STGCNLayer(8, 8, a, residual=True)
    assert isinstance(same.residual, torch.nn.Identity)
    assert sum(p.numel() for p in same.parameters()) == 72 + 16 + 584 + 16 + 100
    with pytest.raises(ValueError):
        STGCNLayer(3, 8, a, temporal_kernel=4)
