"""FNOReg (ICPR 2024): resolution-robust registration with a Fourier Neural Operator.

Networks only (plain ``nn.Module``s). Both follow the registration contract of this project:
``forward(moving, fixed) -> displacement`` with inputs (B, 1, *spatial), the network input being
``cat([moving, fixed])`` (official code order), and the output (B, spatial_dims, *spatial) a
displacement in normalised grid units ([-1, 1] coordinates), channel i along spatial dim i
(ch0 along H, ch1 along W, ch2 along D). The channel meaning is fixed by the warp in the loss;
the network only has to output ``spatial_dims`` channels. Any spatial size at least as large as
``n_modes`` works (e.g. trained at 80x96, applied at 160x192). The output is float32.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lightning_modules.blocks.spectral import FFCResNetBlock, FourierLayer, STResNetBlock, conv1x1

# The paper's configurations (Table 1, Table 2): hidden h, layers N, k_max, projection p.
PAPER_CONFIGS: dict[str, dict] = {
    "small": dict(spatial_dims=2, hidden_channels=16, n_layers=6, n_modes=(40, 48), projection_channels=32),
    "medium": dict(spatial_dims=2, hidden_channels=32, n_layers=12, n_modes=(40, 48), projection_channels=64),
    "large": dict(spatial_dims=2, hidden_channels=32, n_layers=12, n_modes=(60, 72), projection_channels=64),
    "3d": dict(spatial_dims=3, hidden_channels=12, n_layers=15, n_modes=(40, 48, 56), projection_channels=24),
}


def _check_config(spatial_dims: int, n_modes: Sequence[int]) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    n_modes = tuple(int(m) for m in n_modes)
    if len(n_modes) != spatial_dims:
        raise ValueError(f"n_modes={n_modes} must have one entry per spatial dim ({spatial_dims})")
    return n_modes


def _pair_input(moving: torch.Tensor, fixed: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    if moving.shape != fixed.shape or moving.dim() != spatial_dims + 2:
        raise ValueError(
            f"moving and fixed must both be (B, C, {spatial_dims} spatial dims) of equal shape, "
            f"got {tuple(moving.shape)} and {tuple(fixed.shape)}"
        )
    return torch.cat([moving, fixed], dim=1)


class FNOReg(nn.Module):
    """FNOReg: lifting Conv1x1 -> spectral feature extractor -> N residual Fourier layers
    ``y = GELU(SpectralConv(x) + Conv1x1(x)) + x`` -> spectral feature extractor ->
    Conv1x1(h -> p) -> ReLU -> Conv1x1(p -> spatial_dims).

    The extractor is ``FFCResNetBlock`` (alpha = 1; Fourier Unit over H only by default, as in
    the official code; ``fu_fft_dims=(-2, -1)`` for both dims) in 2D and ``STResNetBlock`` in 3D.
    Attribute names follow the official code (lifting, encoder, fno_blocks, decoder, projection).
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 2,
        hidden_channels: int = 32,
        n_layers: int = 12,
        n_modes: Sequence[int] = (60, 72),
        projection_channels: int = 64,
        factorization: str | None = "tucker",
        rank: float = 0.42,
        fu_fft_dims: Sequence[int] | None = None,
    ):
        super().__init__()
        n_modes = _check_config(spatial_dims, n_modes)
        self.spatial_dims = spatial_dims
        self.n_modes = n_modes
        h = hidden_channels
        extractor = FFCResNetBlock if spatial_dims == 2 else STResNetBlock

        self.lifting = conv1x1(spatial_dims, in_channels, h)
        self.encoder = extractor(h, spatial_dims, fu_fft_dims)
        self.fno_blocks = nn.Sequential(
            *(FourierLayer(h, n_modes, factorization, rank, fft_norm="backward") for _ in range(n_layers))
        )
        self.decoder = extractor(h, spatial_dims, fu_fft_dims)
        self.projection = nn.Sequential(
            conv1x1(spatial_dims, h, projection_channels),
            nn.ReLU(),
            conv1x1(spatial_dims, projection_channels, spatial_dims),
        )

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = self.lifting(_pair_input(moving, fixed, self.spatial_dims))
        x = self.decoder(self.fno_blocks(self.encoder(x)))
        return self.projection(x).float()


class FNO(nn.Module):
    """Plain FNO baseline, as neuralop 0.2.0 ``FNO`` builds it with the paper's arguments:
    lifting Conv1x1 -> N x [SpectralConv(fft_norm="forward") + Conv1x1 skip without bias, then
    GELU] -> Conv1x1(h -> p) -> GELU -> Conv1x1(p -> spatial_dims).

    ``gelu_first_half_only`` reproduces 0.2.0's ``FNOBlocks`` quirk: the GELU is applied only
    to layers with ``i < N - i`` (the first half); set False for GELU after every layer.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 2,
        hidden_channels: int = 32,
        n_layers: int = 12,
        n_modes: Sequence[int] = (60, 72),
        projection_channels: int = 64,
        factorization: str | None = "tucker",
        rank: float = 0.42,
        gelu_first_half_only: bool = True,
    ):
        super().__init__()
        n_modes = _check_config(spatial_dims, n_modes)
        self.spatial_dims = spatial_dims
        self.n_modes = n_modes
        h = hidden_channels

        self.lifting = conv1x1(spatial_dims, in_channels, h)
        self.fno_blocks = nn.Sequential(
            *(
                FourierLayer(
                    h,
                    n_modes,
                    factorization,
                    rank,
                    fft_norm="forward",
                    skip_bias=False,
                    activation=(i < n_layers - i) or not gelu_first_half_only,
                    residual=False,
                )
                for i in range(n_layers)
            )
        )
        self.projection = nn.Sequential(
            conv1x1(spatial_dims, h, projection_channels),
            nn.GELU(),
            conv1x1(spatial_dims, projection_channels, spatial_dims),
        )

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = self.lifting(_pair_input(moving, fixed, self.spatial_dims))
        return self.projection(self.fno_blocks(x)).float()


def build_fnoreg(config: str = "large", **overrides) -> FNOReg:
    """FNOReg with one of ``PAPER_CONFIGS`` ("small", "medium", "large", "3d"), keys overridable."""
    return FNOReg(**{**_paper_config(config), **overrides})


def build_fno(config: str = "large", **overrides) -> FNO:
    """Plain FNO baseline with one of the 2D ``PAPER_CONFIGS`` ("small", "medium", "large")."""
    return FNO(**{**_paper_config(config), **overrides})


def _paper_config(config: str) -> dict:
    if config not in PAPER_CONFIGS:
        raise ValueError(f"Unknown config {config!r}; choose one of {sorted(PAPER_CONFIGS)}")
    return dict(PAPER_CONFIGS[config])


