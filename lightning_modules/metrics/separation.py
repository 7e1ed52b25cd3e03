"""Metrics of the source-separation family: BSS Eval images v3 (SiSEC 2016) for mono signals.

SiSEC 2016 (the DSD100 campaign Chandna et al. report on) used BSS Eval **images** v3: 30 s windows
with a 15 s hop, distortion filters (512 taps) estimated anew in every window, SDR / ISR / SIR / SAR per
source and window. The reference implementation is ``museval.metrics.bss_eval(..., window, hop,
framewise_filters=True)``, but the ``museval`` package needs ffmpeg at import time. We compute the
same decomposition with fast_bss_eval's projections (``square_cosine_metrics``: the exact least-squares
filters, solved on the GPU when the signals are there):

    coh_j   = |P_j s^|^2 / |s^|^2      projection of the estimate on its own reference (512-tap filter)
    coh_all = |P_all s^|^2 / |s^|^2    projection on all references

For one channel, the images decomposition s^ = s_j + e_spat + e_interf + e_artif has
s_j + e_spat = P_j s^, e_interf = P_all s^ - P_j s^, e_artif = s^ - P_all s^, so

    SDR = |s_j|^2 / |s^ - s_j|^2                        (the reference itself, no filter: images SDR)
    ISR = |s_j|^2 / |P_j s^ - s_j|^2,  with |P_j s^ - s_j|^2 = |P_j s^|^2 - 2 <s^, s_j> + |s_j|^2
          (<P_j s^, s_j> = <s^, s_j> is the first normal equation of the filter's least-squares problem)
    SIR = coh_j / (coh_all - coh_j)     SAR = coh_all / (1 - coh_all)   (as bss_eval_sources)

tests/test_separation_metrics.py checks this against museval's metrics module (loaded by file path,
which needs no ffmpeg) and against closed forms. Windows follow museval's ``Framing``; a window in which
any reference or estimate is silent gives NaN, as in museval, and is skipped when averaging.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from fast_bss_eval.torch.metrics import square_cosine_metrics
from torchmetrics.functional.audio import scale_invariant_signal_distortion_ratio

BSS_METRICS = ("sdr", "isr", "sir", "sar")


def bss_windows(num_samples: int, window: int, hop: int) -> list[slice]:
    """museval's Framing: floor((n - window + hop) / hop) windows; one window (all) if the track is shorter."""
    if window >= num_samples:
        return [slice(0, num_samples)]
    count = (num_samples - window + hop) // hop
    return [slice(k * hop, min(k * hop + window, num_samples)) for k in range(count)]


def _db(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(numerator / denominator)


def bss_eval_images_mono(references: torch.Tensor, estimates: torch.Tensor, window: int, hop: int,
                         filter_length: int = 512) -> dict[str, torch.Tensor]:
    """BSS Eval images v3 of mono sources, per source and window.

    Args:
        references, estimates: (sources, samples); float64 is used inside (the projections need it).
        window, hop: in samples (SiSEC 2016: 30 s and 15 s).
        filter_length: distortion filter taps (BSS Eval's 512).

    Returns:
        ``{"sdr", "isr", "sir", "sar"}`` -> (sources, windows) in dB; NaN where a reference or an
        estimate of the window is silent.
    """
    if references.shape != estimates.shape or references.ndim != 2:
        raise ValueError(f"expected (sources, samples) references and estimates, got "
                         f"{tuple(references.shape)} and {tuple(estimates.shape)}")
    references, estimates = references.double(), estimates.double()
    results = {name: [] for name in BSS_METRICS}
    for span in bss_windows(references.shape[-1], window, hop):
        ref, est = references[:, span], estimates[:, span]
        if (ref.abs().amax(dim=-1) == 0).any() or (est.abs().amax(dim=-1) == 0).any():
            nan = torch.full((ref.shape[0],), math.nan, dtype=ref.dtype, device=ref.device)
            for name in BSS_METRICS:
                results[name].append(nan)
            continue
        coh_own, coh_all = square_cosine_metrics(ref, est, filter_length=filter_length, pairwise=False)
        ref_energy, est_energy = ref.square().sum(-1), est.square().sum(-1)
        spatial_error = coh_own * est_energy - 2 * (ref * est).sum(-1) + ref_energy
        results["sdr"].append(_db(ref_energy, (est - ref).square().sum(-1)))
        results["isr"].append(_db(ref_energy, spatial_error.clamp_min(torch.finfo(ref.dtype).tiny)))
        results["sir"].append(_db(coh_own, (coh_all - coh_own).clamp_min(torch.finfo(ref.dtype).tiny)))
        results["sar"].append(_db(coh_all, (1 - coh_all).clamp_min(torch.finfo(ref.dtype).tiny)))
    return {name: torch.stack(values, dim=-1) for name, values in results.items()}


def track_bss_scores(references: torch.Tensor, estimates: torch.Tensor, sample_rate: int,
                     window_seconds: float = 30.0, hop_seconds: float = 15.0,
                     aggregate: Literal["mean", "median"] = "mean") -> dict[str, torch.Tensor]:
    """One value per source and metric for a track: the windows' mean (the card) or median (museval's
    aggregate), NaN windows skipped. Returns ``{"sdr", ...}`` -> (sources,)."""
    framewise = bss_eval_images_mono(references, estimates, round(window_seconds * sample_rate),
                                     round(hop_seconds * sample_rate))
    reduce = torch.nanmean if aggregate == "mean" else (lambda x, dim: torch.nanmedian(x, dim=dim).values)
    return {name: reduce(values, dim=-1) for name, values in framewise.items()}


def si_sdr(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Scale-invariant SDR (dB) over the last axis, torchmetrics' implementation (zero-mean)."""
    return scale_invariant_signal_distortion_ratio(estimates.double(), references.double(), zero_mean=True)
