"""k-space utilities for Cartesian MRI: centred FFTs, line masks, k-space zero-padding, coil combination.

Conventions (fastMRI / CMRxRecon): the last two axes are (ky, kx) = (rows, columns) of the image;
k-space is centred (DC in the middle), and the transforms are orthonormal, so a fully sampled
round trip is exact and Parseval holds. Phase-encoding lines are rows: a mask keeps whole rows.
Functions accept numpy arrays or torch tensors (the CMRxRecon cache is built with numpy; the
stand-in and the tests use both).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]

#: CMRxRecon 2023: the 24 central phase-encoding lines (autocalibration) are always acquired.
CMRXRECON_CENTER_LINES = 24


def fft2c(image: Array) -> Array:
    """Centred orthonormal 2D FFT over the last two axes: ``fftshift(fft2(ifftshift(x)))``."""
    if isinstance(image, torch.Tensor):
        shifted = torch.fft.ifftshift(image, dim=(-2, -1))
        return torch.fft.fftshift(torch.fft.fft2(shifted, norm="ortho"), dim=(-2, -1))
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, norm="ortho"), axes=(-2, -1))


def ifft2c(kspace: Array) -> Array:
    """Centred orthonormal 2D inverse FFT over the last two axes: ``fftshift(ifft2(ifftshift(k)))``."""
    if isinstance(kspace, torch.Tensor):
        shifted = torch.fft.ifftshift(kspace, dim=(-2, -1))
        return torch.fft.fftshift(torch.fft.ifft2(shifted, norm="ortho"), dim=(-2, -1))
    shifted = np.fft.ifftshift(kspace, axes=(-2, -1))
    return np.fft.fftshift(np.fft.ifft2(shifted, norm="ortho"), axes=(-2, -1))


def zero_pad_kspace(kspace: Array, size: tuple[int, int]) -> Array:
    """Centre ``kspace`` in a zero array of ``size`` over the last two axes (DiffCMR Sec. 2.2).

    Zero-padding k-space adds no frequency content (the image is sinc-interpolated, not framed).
    An axis longer than ``size`` is centre-cropped, i.e. its highest frequencies are dropped.
    The centre convention (index n // 2 is DC) is kept: DC stays at the new centre.
    """
    height, width = kspace.shape[-2:]
    out_h, out_w = size
    is_torch = isinstance(kspace, torch.Tensor)
    shape = (*kspace.shape[:-2], out_h, out_w)
    out = torch.zeros(shape, dtype=kspace.dtype, device=kspace.device) if is_torch else np.zeros(shape, kspace.dtype)
    # Source and destination windows such that centre index n // 2 maps to out // 2.
    src, dst = [], []
    for n, m in ((height, out_h), (width, out_w)):
        keep = min(n, m)
        src_start = n // 2 - keep // 2
        dst_start = m // 2 - keep // 2
        src.append(slice(src_start, src_start + keep))
        dst.append(slice(dst_start, dst_start + keep))
    out[..., dst[0], dst[1]] = kspace[..., src[0], src[1]]
    return out


def root_sum_of_squares(coil_images: Array, coil_axis: int = -3) -> Array:
    """Root-sum-of-squares coil combination: ``sqrt(sum_c |x_c|^2)`` (Larsson et al. 2003)."""
    if isinstance(coil_images, torch.Tensor):
        return torch.sqrt((coil_images.abs() ** 2).sum(dim=coil_axis))
    return np.sqrt((np.abs(coil_images) ** 2).sum(axis=coil_axis))


def equispaced_line_mask(num_lines: int, acceleration: int, center_lines: int = CMRXRECON_CENTER_LINES,
                         offset: int = 0) -> np.ndarray:
    """Boolean (num_lines,) mask of the acquired phase-encoding lines, CMRxRecon 2023 style.

    Every ``acceleration``-th line is kept (starting at ``offset``) plus the ``center_lines`` central
    lines (the autocalibration region; the challenge keeps 24). The acceleration factor is thus the
    sampling step outside the centre, as the challenge defines AccFactor04/08/10; the overall
    fraction of acquired lines is about ``1/acceleration + center_lines/num_lines``.
    """
    if acceleration < 1:
        raise ValueError(f"acceleration must be >= 1, got {acceleration}")
    if not 0 <= center_lines <= num_lines:
        raise ValueError(f"center_lines must be in [0, {num_lines}], got {center_lines}")
    mask = np.zeros(num_lines, dtype=bool)
    mask[offset % acceleration::acceleration] = True
    start = num_lines // 2 - center_lines // 2
    mask[start:start + center_lines] = True
    return mask


def apply_line_mask(kspace: Array, line_mask: np.ndarray) -> Array:
    """Zero the phase-encoding lines (rows, axis -2) that ``line_mask`` does not keep."""
    if isinstance(kspace, torch.Tensor):
        keep = torch.as_tensor(line_mask, device=kspace.device)[:, None]
        return kspace * keep
    return kspace * line_mask[:, None]


def undersample_magnitude(image: Array, line_mask: np.ndarray) -> Array:
    """The zero-filled magnitude image of ``image`` (complex or real) under-sampled with ``line_mask``."""
    under = ifft2c(apply_line_mask(fft2c(image), line_mask))
    return under.abs() if isinstance(under, torch.Tensor) else np.abs(under)
