"""STFT amplitude and phase spectrograms, each normalised per time frame (DCCANet's input, CSENet-style).

A plain torch front end (no torchaudio): ``torch.stft`` with a Hamming window, computed in float32 even
under autocast (cuFFT half precision only takes power-of-two sizes, and bf16 phases are too coarse).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn


def normalise_per_frame(spectrogram: torch.Tensor, divide_by: Literal["var", "std"] = "var",
                        eps: float = 1e-5) -> torch.Tensor:
    """``(x_t - mean(x_t)) / var(x_t)`` for every frame ``x_t`` (column) of a (..., F, T) spectrogram.

    DCCANet's Eq. (2) divides by the variance (kept by default); ``divide_by="std"`` gives the usual
    standardisation. The statistics are over the F frequency bins of each frame (population variance).
    """
    mean = spectrogram.mean(dim=-2, keepdim=True)
    var = spectrogram.var(dim=-2, keepdim=True, unbiased=False)
    scale = var + eps if divide_by == "var" else torch.sqrt(var + eps)
    return (spectrogram - mean) / scale


class NormalisedSTFTFeatures(nn.Module):
    """Waveforms (B, samples) -> (B, 2, F, T): per-frame normalised amplitude |S| and phase angle(S).

    DCCANet's defaults: 8 kHz audio, 256-sample (32 ms) Hamming window, 128-sample (16 ms) hop, centred
    frames, so a 3 s segment (24,000 samples) gives 129 x 188.

    Args:
        n_fft: FFT size (= window length); F = n_fft // 2 + 1.
        hop_length: frame hop in samples.
        norm_divide_by: "var" (the paper's Eq. 2) or "std".
        log_amplitude: use log(1 + |S|) instead of |S| (the paper uses |S|).
        eps: added to the variance before dividing.
    """

    def __init__(self, n_fft: int = 256, hop_length: int = 128, norm_divide_by: Literal["var", "std"] = "var",
                 log_amplitude: bool = False, eps: float = 1e-5):
        super().__init__()
        if norm_divide_by not in ("var", "std"):
            raise ValueError(f"norm_divide_by must be 'var' or 'std', got {norm_divide_by!r}")
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.norm_divide_by = norm_divide_by
        self.log_amplitude = log_amplitude
        self.eps = eps
        self.register_buffer("window", torch.hamming_window(n_fft, periodic=True), persistent=False)

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.hop_length  # centred frames

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform if waveform.dtype == torch.float64 else waveform.float()  # float32 at least
            spectrum = torch.stft(x, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
                                  window=self.window.to(x.dtype), center=True, return_complex=True)
            amplitude = spectrum.abs()
            if self.log_amplitude:
                amplitude = torch.log1p(amplitude)
            phase = spectrum.angle()
            features = torch.stack([amplitude, phase], dim=1)  # (B, 2, F, T)
            return normalise_per_frame(features, self.norm_divide_by, self.eps)
