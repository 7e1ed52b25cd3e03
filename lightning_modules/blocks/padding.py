"""Padding a tensor's spatial dims up to what a network's total stride needs, and cropping back."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Zero-pad the spatial dims at their end up to a multiple; return the tensor and the crop back.

    The references assume sizes divisible by their total stride (all paper sizes are); padding
    lets other sizes run. Zero matches the background of skull-stripped, [0, 1] scaled MRI.
    """
    spatial = x.shape[2:]
    extra = [(-n) % multiple for n in spatial]
    crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
    if not any(extra):
        return x, crop
    pads: list[int] = []
    for e in reversed(extra):  # F.pad lists the last dim first
        pads += [0, e]
    return F.pad(x, pads), crop
