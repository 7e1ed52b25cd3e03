"""Spectral (Fourier-domain) layers shared by several papers, in 2D and 3D.

- ``SpectralConv``: the factorised FNO spectral convolution of neuralop 0.2.0
  (``FactorizedSpectralConv{2,3}d``), built on neuralop 2.0.0's legacy layer so that the kept
  modes and the parameter counts are those of the papers that used 0.2.0.
- ``FourierLayer``: one FNO layer, ``act(SpectralConv(x) + Conv1x1(x))`` with an optional residual.
- ``FourierUnit``, ``SpectralTransform``, ``FFCResNetBlock``, ``STResNetBlock``: the global path of
  Fast Fourier Convolution (Chi et al., NeurIPS 2020) as used by FNOReg.

Every FFT runs in float32 with autocast disabled: cuFFT in half precision only accepts
power-of-two sizes (160x192 is not) and bf16 FFTs are unsupported or inaccurate. Spectral outputs
are float32; the surrounding convolutions may still run in reduced precision under autocast.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from neuralop.layers.legacy_spectral_convolution import SpectralConv as _LegacySpectralConv
from torch import nn


def conv1x1(spatial_dims: int, in_channels: int, out_channels: int, bias: bool = True) -> nn.Module:
    """Pointwise convolution, ``nn.Conv2d`` or ``nn.Conv3d``."""
    return _conv_class(spatial_dims)(in_channels, out_channels, kernel_size=1, bias=bias)


def batch_norm(spatial_dims: int, channels: int) -> nn.Module:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_check_spatial_dims(spatial_dims)](channels)


def _conv_class(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_spatial_dims(spatial_dims)]


def _check_spatial_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def _float32_no_autocast(x: torch.Tensor):
    """Context that disables autocast on ``x``'s device (FFTs must run in float32)."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class SpectralConv(_LegacySpectralConv):
    """Factorised spectral convolution with neuralop 0.2.0's mode layout (2D or 3D).

    ``n_modes=(k1, ..., kd)`` keeps, of the rfftn of the input, the lowest ``k/2`` positive and
    ``k/2`` negative frequencies along every dim but the last, and the lowest ``k_d/2``
    frequencies along the last (half-spectrum) dim: ``2**(d-1)`` corner blocks, each with its own
    complex weight of shape ``(in, out, k1/2, ..., kd/2)``, factorised (e.g. Tucker with
    ``rank=0.42``). The number of spatial dims is ``len(n_modes)``.

    The weights act on a fixed set of frequencies, so the layer accepts any input at least
    ``2*(k//2)`` samples long along each dim (resolution-agnostic): the forward and inverse FFT
    normalisations cancel for every ``fft_norm``, so a band-limited signal gives the same output
    function at any such resolution.

    Parameters and state-dict keys are those of the neuralop layer (``weight.{i}.core``,
    ``weight.{i}.factors.factor_{j}``, ``bias``); the forward is re-implemented only to run in
    float32 under autocast, validate the input size and index with tuples.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_modes: Sequence[int],
        factorization: str | None = "tucker",
        rank: float = 0.42,
        fft_norm: str = "backward",
        bias: bool = True,
    ):
        n_modes = [int(m) for m in ([n_modes] if isinstance(n_modes, int) else n_modes)]
        if not 1 <= len(n_modes) <= 3 or any(m < 2 for m in n_modes):
            raise ValueError(f"n_modes must hold 1 to 3 ints >= 2, got {n_modes}")
        super().__init__(
            in_channels,
            out_channels,
            n_modes,
            bias=bias,
            factorization=factorization,
            rank=rank,
            fft_norm=fft_norm,
            implementation="reconstructed",  # neuralop 0.2.0's default
        )
        self._dense_cache = None

    @property
    def min_spatial_size(self) -> tuple[int, ...]:
        """Smallest input size per spatial dim whose spectrum holds all the kept modes."""
        return tuple(2 * m for m in self.half_n_modes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.order:
            raise ValueError(
                f"SpectralConv with n_modes={tuple(self.n_modes)} expects (B, C, {self.order} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )
        if any(s < m for s, m in zip(spatial, self.min_spatial_size)):
            raise ValueError(
                f"Input spatial size {spatial} is too small for SpectralConv with n_modes="
                f"{tuple(self.n_modes)}: need at least {self.min_spatial_size} per dim"
            )
        with _float32_no_autocast(x):
            return self._spectral_conv(x.float())

    def _corner_weights(self) -> list:
        """The corner weights, rebuilt from their factors on every call while gradients are needed.

        Without gradients (validation, test, inference) the dense weights are kept until a parameter
        changes (tracked by storage and version counter): rebuilding a Tucker tensor costs more than
        the layer's FFTs for a single pair (FNOReg large: ~85% of a 160x192 forward on CPU).
        """
        if torch.is_grad_enabled():
            self._dense_cache = None
            return [self._get_weight(i) for i in range(self.n_weights_per_layer)]
        key = tuple((p.data_ptr(), p._version) for p in self.weight.parameters())
        if self._dense_cache is None or self._dense_cache[0] != key:
            weights = [self._get_weight(i) for i in range(self.n_weights_per_layer)]
            self._dense_cache = (key, [w if torch.is_tensor(w) else w.to_tensor() for w in weights])
        return self._dense_cache[1]

    def _spectral_conv(self, x: torch.Tensor) -> torch.Tensor:
        fft_dims = tuple(range(-self.order, 0))
        x_hat = torch.fft.rfftn(x, dim=fft_dims, norm=self.fft_norm)
        out_hat = x_hat.new_zeros((x.shape[0], self.out_channels, *x_hat.shape[2:]))
        # Corners: low positive and negative frequencies on the full dims, low positive ones on
        # the last (rfft) dim; same order as neuralop so weight i matches its corner.
        corner_slices = [(slice(None, m), slice(-m, None)) for m in self.half_n_modes[:-1]]
        corner_slices.append((slice(None, self.half_n_modes[-1]),))
        weights = self._corner_weights()
        for i, corner in enumerate(itertools.product(*corner_slices)):
            index = (slice(None), slice(None), *corner)
            out_hat[index] = self._contract(x_hat[index], weights[i], separable=self.separable)
        y = torch.fft.irfftn(out_hat, s=x.shape[2:], dim=fft_dims, norm=self.fft_norm)
        if self.bias is not None:
            y = y + self.bias[0]
        return y


class FourierLayer(nn.Module):
    """One FNO layer: ``y = act(SpectralConv(x) + Conv1x1(x))``, plus ``x`` if ``residual``.

    FNOReg: GELU, skip conv with bias, residual after the activation (the paper's addition).
    Plain neuralop 0.2.0 FNO: fft_norm "forward", skip without bias, no residual, and the
    activation switched off for the second half of the layers (``activation=False``).
    Attribute names follow the FNOReg code (``spectral_conv``, ``skip``).
    """

    def __init__(
        self,
        channels: int,
        n_modes: Sequence[int],
        factorization: str | None = "tucker",
        rank: float = 0.42,
        fft_norm: str = "backward",
        skip_bias: bool = True,
        activation: bool = True,
        residual: bool = True,
    ):
        super().__init__()
        spatial_dims = len(n_modes)
        self.spectral_conv = SpectralConv(channels, channels, n_modes, factorization, rank, fft_norm)
        self.skip = conv1x1(spatial_dims, channels, channels, bias=skip_bias)
        self.act = nn.GELU() if activation else nn.Identity()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.spectral_conv(x) + self.skip(x))
        return y + x if self.residual else y


class FourierUnit(nn.Module):
    """FFC Fourier Unit: rfftn (ortho) over ``fft_dims`` -> [real, imag] as channels ->
    Conv1x1 -> BN -> ReLU -> complex -> irfftn back to the input size.

    ``fft_dims`` defaults to ``(-2,)`` (H only) in 2D, as in the FNOReg code (the FFC block's
    ``use_only_freq=True``), and to all three dims in 3D. Real and imaginary parts are
    interleaved per channel (c0.re, c0.im, c1.re, ...) like the official code, so its
    checkpoints load unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        spatial_dims: int = 2,
        fft_dims: Sequence[int] | None = None,
        fft_norm: str = "ortho",
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if fft_dims is None:
            fft_dims = (-2,) if spatial_dims == 2 else tuple(range(-spatial_dims, 0))
        fft_dims = tuple(int(d) for d in fft_dims)
        if not fft_dims or any(not -spatial_dims <= d < 0 for d in fft_dims):
            raise ValueError(f"fft_dims must be negative spatial dims in [-{spatial_dims}, -1], got {fft_dims}")
        self.fft_dims = fft_dims
        self.fft_norm = fft_norm
        self.inter_conv = nn.Sequential(
            conv1x1(spatial_dims, 2 * in_channels, 2 * out_channels, bias=True),
            batch_norm(spatial_dims, 2 * out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _float32_no_autocast(x):
            x_hat = torch.fft.rfftn(x.float(), dim=self.fft_dims, norm=self.fft_norm)
            stacked = torch.stack((x_hat.real, x_hat.imag), dim=2).flatten(1, 2)
        y = self.inter_conv(stacked)  # may run in reduced precision under autocast
        with _float32_no_autocast(y):
            y = y.float().unflatten(1, (-1, 2))
            y_hat = torch.complex(y[:, :, 0], y[:, :, 1])
            sizes = [x.shape[d] for d in self.fft_dims]
            return torch.fft.irfftn(y_hat, s=sizes, dim=self.fft_dims, norm=self.fft_norm)


class SpectralTransform(nn.Module):
    """FFC Spectral Transform: ``r = ReLU(BN(Conv1x1(in -> out/2)))``,
    ``y = Conv1x1(out/2 -> out)(FU(r) + r)``; with ``output_bn_relu`` the last conv is followed
    by BN + ReLU (the 3D variant of the FNOReg code, ``SpectralTransform3d``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        fu_fft_dims: Sequence[int] | None = None,
        bias: bool = True,
        output_bn_relu: bool = False,
    ):
        super().__init__()
        half_channels = out_channels // 2
        self.conv1 = nn.Sequential(
            conv1x1(spatial_dims, in_channels, half_channels, bias=bias),
            batch_norm(spatial_dims, half_channels),
            nn.ReLU(),
        )
        self.fu = FourierUnit(half_channels, half_channels, spatial_dims, fft_dims=fu_fft_dims)
        conv2 = conv1x1(spatial_dims, half_channels, out_channels, bias=bias)
        if output_bn_relu:
            self.conv2 = nn.Sequential(conv2, batch_norm(spatial_dims, out_channels), nn.ReLU())
        else:
            self.conv2 = conv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.conv1(x)
        return self.conv2(self.fu(residual) + residual)


class GlobalFFC(nn.Module):
    """Fast Fourier Convolution with alpha_in = alpha_out = 1: every channel is global, the
    local paths vanish, so ``FFC(x) = ReLU(BN(SpectralTransform(x)))``. Attribute names follow
    the FFC code (``g2g_layer``, ``global_bn_relu``)."""

    def __init__(self, channels: int, spatial_dims: int = 2, fu_fft_dims: Sequence[int] | None = None):
        super().__init__()
        self.g2g_layer = SpectralTransform(channels, channels, spatial_dims, fu_fft_dims)
        self.global_bn_relu = nn.Sequential(batch_norm(spatial_dims, channels), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_bn_relu(self.g2g_layer(x))


class FFCResNetBlock(nn.Module):
    """Residual FFC block with alpha = 1 (FNOReg's 2D feature extractor): ``x + FFC(FFC(x))``.

    ``fu_fft_dims`` defaults to H only in 2D (FNOReg code) and to all dims in 3D.
    """

    def __init__(self, channels: int, spatial_dims: int = 2, fu_fft_dims: Sequence[int] | None = None):
        super().__init__()
        self.ffc1 = GlobalFFC(channels, spatial_dims, fu_fft_dims)
        self.ffc2 = GlobalFFC(channels, spatial_dims, fu_fft_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ffc2(self.ffc1(x))


class STResNetBlock(nn.Module):
    """Residual Spectral-Transform block (FNOReg's 3D feature extractor, ``STResNetBlock3d``):
    ``x + ST(ST(x))`` with each ST ending in BN + ReLU and its Fourier Unit over all spatial dims.

    Structurally the same as ``FFCResNetBlock``; kept separate so the two match the code's
    module names (``st1``/``st2``) and FFT-dim defaults.
    """

    def __init__(self, channels: int, spatial_dims: int = 3, fu_fft_dims: Sequence[int] | None = None):
        super().__init__()
        if fu_fft_dims is None:
            fu_fft_dims = tuple(range(-spatial_dims, 0))
        self.st1 = SpectralTransform(channels, channels, spatial_dims, fu_fft_dims, output_bn_relu=True)
        self.st2 = SpectralTransform(channels, channels, spatial_dims, fu_fft_dims, output_bn_relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.st2(self.st1(x))
