"""Angle-fern histograms of a scanpath (Fuhl, ICPR 2024, after the Random Ferns of Fuhl et al., ETRA 2019).

The inter-sample angles of a gaze recording, ``theta_t = atan2(y_{t+1} - y_t, x_{t+1} - x_t)`` (radians), are
checked by ``n_sets`` random "angle sets" of ``set_size`` (S) checks. Check k of set i holds a fixed base angle
``b_ik`` and a range ``r_ik`` and fires when ``theta`` lies within ``r_ik / 2`` of ``b_ik`` on the circle.
For every window start j (j = 0 .. L - S - 1 over the L angles, Algorithm 1's loop bound) and every set, the S
checks on ``theta_j .. theta_{j+S-1}`` form the bin ``sum_k bit_k 2^k``; each set's histogram over its 2^S bins is
normalised to sum 1. Output (B, n_sets, 2^S).

Backward (Algorithm 2): the ranges receive, for every window and set, the gradient of the bin the window fell in,
accumulated over every check that fired: ``U_ik = sum_{b, j} g[b, i, index_bij] * bit_bijk``. Because a window's
bin determines its bits, this is ``sum_b sum_bin g[b, i, bin] * count[b, i, bin] * bit_k(bin)`` with the
forward's (unnormalised) bin counts: nothing per window is stored. ``range_update_sign: descent`` hands ``+U``
to the optimiser as the ranges' gradient (SGD then moves ``r -= lr U``: the paper's ``r += lr U`` read with U the
back-propagated *error* ``-dL/dh``); ``paper_literal`` hands ``-U`` (``r += lr U`` with ``U`` from ``+dL/dh``).
No gradient flows to the gaze samples (the checks are step functions of them).

Invalid samples (NaN: blinks, track loss, padding of shorter recordings in a batch) make the angles that touch
them invalid; a window counts only when its S angles and the next one are valid (Algorithm 1's bound
``j < L - S`` applied to every valid stretch), so a recording padded with NaN has the histograms of the recording
alone.
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import torch
from torch import nn

RangeUpdateSign = Literal["descent", "paper_literal"]


def inter_sample_angles(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(angles (B, T-1) in [-pi, pi], valid (B, T-1) bool) of gaze samples ``xy`` (B, T, 2); NaN samples
    make the angles touching them invalid (their value is then 0)."""
    delta = xy[:, 1:] - xy[:, :-1]
    valid = torch.isfinite(delta).all(dim=-1)
    delta = torch.where(valid[..., None], delta, torch.zeros_like(delta))
    return torch.atan2(delta[..., 1], delta[..., 0]), valid


def bin_bits(set_size: int, device=None) -> torch.Tensor:
    """(2^S, S) float: bit k of every bin index."""
    bins = torch.arange(2 ** set_size, device=device)
    return ((bins[:, None] >> torch.arange(set_size, device=device)) & 1).float()


def fern_counts(angles: torch.Tensor, valid: torch.Tensor, base: torch.Tensor, ranges: torch.Tensor,
                max_elements: int = 2 ** 25) -> torch.Tensor:
    """Unnormalised histograms (B, n_sets, 2^S) float: windows per bin, vectorised over batch, sets and windows.

    ``max_elements`` bounds the (B, windows, sets, S) intermediate by processing the sets in chunks.
    """
    batch, length = angles.shape
    n_sets, set_size = base.shape
    windows = length - set_size  # Algorithm 1: seq_j < size(sequence) - size(set)
    bins = 2 ** set_size
    counts = angles.new_zeros(batch, n_sets, bins)
    if windows <= 0:
        return counts
    # window j counts when its S angles and angle j + S are valid: Algorithm 1's bound j < L - S applied to every
    # valid stretch, so a recording padded with NaN gives the histograms of the recording alone
    win_valid = valid.unfold(1, set_size + 1, 1).all(dim=-1)  # (B, W)
    # |wrap(theta - b)| <= r/2  <=>  cos(theta - b) >= cos(r/2) (r/2 in [0, pi]): one product per sample and
    # check instead of a per-window difference and wrap.
    unit = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (B, L, 2)
    threshold = torch.cos(ranges / 2)
    code = torch.int16 if set_size < 15 else torch.int32
    chunk = max(1, max_elements // max(1, batch * length * set_size))
    for start in range(0, n_sets, chunk):
        stop = min(n_sets, start + chunk)
        size = stop - start
        directions = torch.stack([base[start:stop].cos(), base[start:stop].sin()], dim=-1)  # (c, S, 2)
        fires = torch.einsum("blx,ckx->blck", unit, directions) >= threshold[start:stop]  # (B, L, c, S)
        index = torch.zeros(batch, windows, size, dtype=code, device=angles.device)
        for k in range(set_size):  # check k looks at angle j + k of window j
            index += fires[:, k:k + windows, :, k].to(code) << k
        # one flat bin per (sample, set, bin); windows with an invalid angle go to one extra, dropped bin
        offsets = (torch.arange(batch, device=angles.device)[:, None, None] * size
                   + torch.arange(size, device=angles.device)[None, None, :]) * bins  # (B, 1, c)
        flat = torch.where(win_valid[:, :, None], index.long() + offsets, batch * size * bins)
        hist = torch.bincount(flat.reshape(-1), minlength=batch * size * bins + 1)[:-1]
        counts[:, start:stop] = hist.view(batch, size, bins).to(counts.dtype)
    return counts


class AngleFernFunction(torch.autograd.Function):
    """Forward: normalised fern histograms; backward: Algorithm 2's accumulated range update (see the module)."""

    @staticmethod
    def forward(ctx, angles: torch.Tensor, valid: torch.Tensor, base: torch.Tensor, ranges: torch.Tensor,
                sign: float, max_elements: int) -> torch.Tensor:
        counts = fern_counts(angles, valid, base, ranges, max_elements)
        ctx.save_for_backward(counts)
        ctx.set_size, ctx.sign = base.shape[1], sign
        return counts / counts.sum(dim=-1, keepdim=True).clamp_min(1.0)

    @staticmethod
    def backward(ctx, grad_hist: torch.Tensor):
        (counts,) = ctx.saved_tensors
        grad_ranges = None
        if ctx.needs_input_grad[3]:
            per_bin = (grad_hist * counts).sum(dim=0)  # (n_sets, 2^S): summed over windows and the batch
            grad_ranges = ctx.sign * per_bin @ bin_bits(ctx.set_size, per_bin.device).to(per_bin.dtype)
        return None, None, None, grad_ranges, None, None


class AngleFernHistogram(nn.Module):
    """The trainable angle-fern layer: gaze samples (B, T, 2) (NaN = invalid) -> histograms (B, n_sets, 2^S).

    Args:
        n_sets: angle sets (the paper: 2^12 = 4,096).
        set_size: checks per set, S (the paper: 5, i.e. 32 bins).
        range_init: the ranges' initial full widths in radians, drawn U[low, high] (card: [pi/18, pi/2]).
        range_bounds: the ranges are clamped to [low, high] radians (card: [1 deg, 180 deg]).
        learn_ranges: train the ranges by Algorithm 2 (False: fixed, the Random-Ferns features / the ablation).
        range_update_sign: "descent" (default) or "paper_literal" (the module docstring).
        seed: the base angles U[-pi, pi) and initial ranges come from this seed (not from the global RNG), so
            the features are the same in every run and process.
        max_elements: memory bound of the forward's intermediate (elements).
    """

    def __init__(self, n_sets: int = 4096, set_size: int = 5,
                 range_init: tuple[float, float] = (math.pi / 18, math.pi / 2),
                 range_bounds: tuple[float, float] = (math.radians(1.0), math.pi), learn_ranges: bool = True,
                 range_update_sign: RangeUpdateSign = "descent", seed: int = 0, max_elements: int = 2 ** 25):
        super().__init__()
        if n_sets < 1 or not 1 <= set_size <= 15:
            raise ValueError(f"n_sets must be >= 1 and set_size in 1..15, got {n_sets}, {set_size}")
        if range_update_sign not in ("descent", "paper_literal"):
            raise ValueError(f"range_update_sign must be 'descent' or 'paper_literal', got {range_update_sign!r}")
        low, high = range_bounds
        if not 0 < low <= high:
            raise ValueError(f"range_bounds must satisfy 0 < low <= high, got {range_bounds}")
        generator = torch.Generator().manual_seed(seed)
        self.n_sets, self.set_size = n_sets, set_size
        self.range_bounds = (float(low), float(high))
        self.range_update_sign = range_update_sign
        self.max_elements = max_elements
        self.register_buffer("base", torch.rand(n_sets, set_size, generator=generator) * 2 * math.pi - math.pi)
        init = torch.empty(n_sets, set_size).uniform_(*range_init, generator=generator).clamp(low, high)
        self.ranges = nn.Parameter(init, requires_grad=learn_ranges)

    @property
    def num_bins(self) -> int:
        return 2 ** self.set_size

    @torch.no_grad()
    def clamp_ranges_(self) -> None:
        """Keep the ranges within ``range_bounds`` (called after every optimiser step)."""
        self.ranges.clamp_(*self.range_bounds)

    def forward(self, xy: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``xy`` (B, T, 2) gaze samples (NaN: invalid); ``valid`` (B, T) optional extra sample mask."""
        if xy.ndim != 3 or xy.shape[-1] != 2:
            raise ValueError(f"expected gaze samples (B, T, 2), got {tuple(xy.shape)}")
        xy = xy.float()
        if valid is not None:
            xy = torch.where(valid[..., None].bool(), xy, torch.full_like(xy, float("nan")))
        angles, angle_valid = inter_sample_angles(xy)
        sign = 1.0 if self.range_update_sign == "descent" else -1.0
        return AngleFernFunction.apply(angles, angle_valid, self.base, self.ranges, sign, self.max_elements)

    def extra_repr(self) -> str:
        return (f"n_sets={self.n_sets}, set_size={self.set_size}, learn_ranges={self.ranges.requires_grad}, "
                f"range_update_sign={self.range_update_sign}")
