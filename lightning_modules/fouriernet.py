"""Fourier-Net baseline (Jia et al., AAAI 2023) in the variant the FNOReg paper trained.

Follows the FNOReg code (``deep_fourier_reg/models.py`` ``SYMNet``/``FourierNet`` and
``models_3d.py`` ``SYMNet3d``/``FourierNet3d``), which differs from xi-jia/Fourier-Net in two ways:
every encoder conv is followed by batch norm, and the band-limited size follows the input size
(any ``patch_size``) instead of hard-coded paddings.

A SYMNet-style encoder (5 levels) with a decoder truncated after two up-steps outputs the
displacement at 1/4 resolution. Its spectrum (fftshift of the DFT) is zero-padded to the full size
and inverse-transformed, so the displacement is band-limited to the lowest 1/4 of the frequencies
per axis. The reference predicts it directly in normalised units (channel i along spatial dim i).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv
from torch import nn

from lightning_modules.blocks.init import init_small_output
from lightning_modules.blocks.padding import pad_to_multiple

__all__ = ["FourierNet", "band_limited_to_full"]


def band_limited_to_full(low_res: torch.Tensor, full_shape: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the centred spectrum of ``low_res`` (B, C, *n) to ``full_shape`` and return the real field.

    Uses the default 'backward' FFT norm like the reference, so amplitudes shrink by prod(n)/prod(N);
    the reference compensates only in 2D (``output_scale``). Runs in float32 with autocast off:
    cuFFT half precision needs power-of-two sizes and bf16 FFTs are unsupported.
    """
    dims = tuple(range(2, low_res.ndim))
    low_shape = low_res.shape[2:]
    with torch.autocast(device_type=low_res.device.type, enabled=False):
        spectrum = torch.fft.fftshift(torch.fft.fftn(low_res.float(), dim=dims), dim=dims)
        pads: list[int] = []
        for n, full in zip(reversed(low_shape), reversed(full_shape)):  # F.pad lists the last dim first
            before = full // 2 - n // 2  # keeps DC where ifftshift expects it, for odd and even sizes
            pads += [before, full - n - before]
        spectrum = F.pad(spectrum, pads)
        return torch.fft.ifftn(torch.fft.ifftshift(spectrum, dim=dims), dim=dims).real


def _conv_block(spatial_dims: int, in_channels: int, out_channels: int, stride: int, batch_norm: bool) -> Convolution:
    # SYMNet encoder block: conv 3 (bias) -> [BN] -> PReLU (one shared slope).
    return Convolution(spatial_dims, in_channels, out_channels, strides=stride, kernel_size=3,
                       norm="batch" if batch_norm else None, act="prelu", adn_ordering="NA", bias=True)


def _up_block(spatial_dims: int, channels: int) -> Convolution:
    # Transposed conv 2/2 (bias) -> PReLU; no batch norm in the reference decoder.
    return Convolution(spatial_dims, channels, channels, strides=2, kernel_size=2, padding=0, output_padding=0,
                       is_transposed=True, norm=None, act="prelu", bias=True)


class FourierNet(nn.Module):
    """Fourier-Net: SYMNet encoder -> 1/4-resolution displacement -> k-space zero-padding -> iDFT.

    Args:
        spatial_dims: 2 or 3.
        start_channels: 16 or 32 in the paper (2D: 1,429,680 / 5,709,648 params as built here;
            3D: 4,200,656 / 16,788,368).
        batch_norm: BN after each encoder conv, as in the FNOReg variant (original Fourier-Net: none).
        output_scale: factor on the low-resolution output; ``None`` = the reference's (64 in 2D, 1 in 3D).
        include_unused_reference_layers: also build the reference's four full-resolution decoder convs and
            two transposed convs that its forward never calls. They only matter for parameter counts
            (with them: 1,516,758 / 6,056,854 in 2D, as the FNOReg card, and 4,452,598 / 17,795,030 in 3D, the
            paper's 4.5M / 17.8M); they receive no gradient.

    Sizes that are not multiples of 16 are zero-padded internally and the field cropped back.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        start_channels: int = 16,
        in_channels: int = 2,
        batch_norm: bool = True,
        output_scale: float | None = None,
        include_unused_reference_layers: bool = False,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.spatial_dims = spatial_dims
        self.size_multiple = 16
        self.output_scale = float(output_scale if output_scale is not None else (64.0 if spatial_dims == 2 else 1.0))
        c = start_channels

        def block(cin: int, cout: int, stride: int = 1) -> Convolution:
            return _conv_block(spatial_dims, cin, cout, stride, batch_norm)

        # Encoder: pairs (conv, conv) per level; the first conv of levels 2-5 downsamples.
        self.encoder = nn.ModuleList([
            nn.Sequential(block(in_channels, c), block(c, c)),
            nn.Sequential(block(c, 2 * c, 2), block(2 * c, 2 * c)),
            nn.Sequential(block(2 * c, 4 * c, 2), block(4 * c, 4 * c)),
            nn.Sequential(block(4 * c, 8 * c, 2), block(8 * c, 8 * c)),
            nn.Sequential(block(8 * c, 16 * c, 2), block(16 * c, 8 * c)),
        ])
        # Decoder, truncated at 1/4 resolution: up (1/16 -> 1/8), merge with level-4 skip, up, merge level 3.
        self.up1 = _up_block(spatial_dims, 8 * c)
        self.decode1 = nn.Sequential(block(16 * c, 8 * c), block(8 * c, 4 * c))
        self.up2 = _up_block(spatial_dims, 4 * c)
        self.decode2 = nn.Sequential(block(8 * c, 4 * c), block(4 * c, 2 * c))
        self.band_limited = Conv[Conv.CONV, spatial_dims](2 * c, spatial_dims, kernel_size=3, padding=1, bias=False)
        init_small_output(self.band_limited)

        if include_unused_reference_layers:
            # r_dc5..r_dc8, r_up3, r_up4 of the reference: defined there, never called.
            self.unused_reference_layers = nn.ModuleList([
                block(4 * c, 4 * c), block(4 * c, 2 * c), block(3 * c, 2 * c), block(2 * c, 2 * c),
                _up_block(spatial_dims, 2 * c), _up_block(spatial_dims, 2 * c),
            ])

    def band_limited_displacement(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """The network's 1/4-resolution output (B, spatial_dims, *padded/4), already scaled."""
        x = torch.cat([moving, fixed], dim=1)
        x, _ = pad_to_multiple(x, self.size_multiple)
        skips = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = self.decode1(torch.cat([self.up1(skips[4]), skips[3]], dim=1))
        x = self.decode2(torch.cat([self.up2(x), skips[2]], dim=1))
        return self.band_limited(x) * self.output_scale

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        spatial = tuple(moving.shape[2:])
        padded = tuple(n + (-n) % self.size_multiple for n in spatial)
        low_res = self.band_limited_displacement(moving, fixed)
        full = band_limited_to_full(low_res, padded)
        return full[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)]
