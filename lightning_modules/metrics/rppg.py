"""Heart rate from a pulse signal (HR-TRACK Eq. 4-5) and the per-clip HR metrics of rPPG papers.

``pulse_spectrum`` is the zero-padded power spectrum of a batch of pulses; ``hr_from_pulse`` takes its peak in
the heart-rate band (0.7-4 Hz = 42-240 bpm) and the SNR of Eq. 5 (power within +-``snr_window_bpm`` of the peak
over the rest of the band); ``soft_hr`` is a differentiable HR (soft-argmax over the band), used where the HR
must carry a gradient (HR-TRACK's joint fine-tuning). ``hr_errors`` gives the papers' SD / MAE / RMSE / Pearson r
in bpm from per-clip predictions, computed with torchmetrics' functional metrics.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torchmetrics.functional import mean_absolute_error, mean_squared_error, pearson_corrcoef

Band = Sequence[float]


def pulse_spectrum(pulse: torch.Tensor, fps: Union[float, torch.Tensor], nfft: int = 2048,
                   band: Band = (0.7, 4.0)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Power spectrum of ``pulse`` (..., f) (mean removed, zero-padded to ``max(nfft, f)``).

    Returns ``(power (..., bins), freqs (bins,) or (..., bins) in Hz, in_band bool like freqs)``; ``fps`` is a
    number or a tensor broadcastable to ``pulse.shape[:-1]`` (clips of different frame rates in one batch).
    """
    pulse = pulse.float()
    n = max(int(nfft), pulse.shape[-1])
    spectrum = torch.fft.rfft(pulse - pulse.mean(-1, keepdim=True), n=n, dim=-1)
    power = spectrum.real ** 2 + spectrum.imag ** 2
    bins = torch.arange(power.shape[-1], device=pulse.device, dtype=torch.float32) / n
    if isinstance(fps, torch.Tensor):
        freqs = fps.to(device=pulse.device, dtype=torch.float32).unsqueeze(-1) * bins
    else:
        freqs = float(fps) * bins
    in_band = (freqs >= band[0]) & (freqs <= band[1])
    return power, freqs, in_band


def hr_from_pulse(pulse: torch.Tensor, fps: Union[float, torch.Tensor], nfft: int = 2048, band: Band = (0.7, 4.0),
                  snr_window_bpm: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4-5: HR (bpm) = 60 x the frequency of the spectral peak within ``band``; SNR = the power within
    +-``snr_window_bpm`` of the peak over the remaining power of the band (linear, >= 0). Both (...,)."""
    power, freqs, in_band = pulse_spectrum(pulse, fps, nfft, band)
    freqs = freqs.expand_as(power)
    in_band = in_band.expand_as(power)
    banded = torch.where(in_band, power, torch.full_like(power, -1.0))
    peak = banded.argmax(-1, keepdim=True)
    f_max = torch.gather(freqs, -1, peak)
    near = in_band & ((freqs - f_max).abs() <= snr_window_bpm / 60.0)
    signal = (power * near).sum(-1)
    rest = (power * (in_band & ~near)).sum(-1)
    snr = signal / rest.clamp_min(1e-12 * signal.clamp_min(1e-30))
    return 60.0 * f_max.squeeze(-1), snr


def soft_hr(pulse: torch.Tensor, fps: Union[float, torch.Tensor], nfft: int = 2048, band: Band = (0.7, 4.0),
            temperature: float = 0.1) -> torch.Tensor:
    """Differentiable HR (bpm): the mean band frequency under ``softmax(power / max power / temperature)``
    (a soft argmax of Eq. 4; ``temperature`` -> 0 gives the hard peak). (...,)."""
    power, freqs, in_band = pulse_spectrum(pulse, fps, nfft, band)
    freqs = freqs.expand_as(power)
    in_band = in_band.expand_as(power)
    scaled = power / power.masked_fill(~in_band, 0.0).amax(-1, keepdim=True).clamp_min(1e-12)
    weights = torch.softmax((scaled / temperature).masked_fill(~in_band, float("-inf")), dim=-1)
    return 60.0 * (weights * freqs).sum(-1)


def hr_errors(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rPPG papers' per-clip metrics in bpm: ``mae``, ``rmse``, ``r`` (Pearson) and ``sd`` (sample standard
    deviation of the error, ``predicted - target``)."""
    predicted, target = predicted.double().flatten(), target.double().flatten()
    error = predicted - target
    out = {"mae": mean_absolute_error(predicted, target), "rmse": mean_squared_error(predicted, target, squared=False),
           "sd": error.std() if error.numel() > 1 else error.new_zeros(())}
    if predicted.numel() > 1 and predicted.std() > 0 and target.std() > 0:
        out["r"] = pearson_corrcoef(predicted, target)
    else:
        out["r"] = predicted.new_tensor(float("nan"))
    return {k: v.float() for k, v in out.items()}
