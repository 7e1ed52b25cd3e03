"""STFT front end for magnitude-domain audio models (torch.stft/istft; no torchaudio on our machines).

Masking separators (Chandna et al. 2017 and kin) work on the magnitude of a mono STFT and resynthesise
with the mixture's phase. The window comes from scipy (``hann``, ``blackmanharris``, ...; periodic, as
for spectral analysis) and is a non-persistent buffer, so it follows the module's device and never
enters a checkpoint. Transforms run in float32 even under autocast (FFTs in half precision are slow or
unsupported for non-power-of-two sizes).
"""
from __future__ import annotations

import torch
from scipy.signal import get_window
from torch import nn


class STFT(nn.Module):
    """Magnitude/phase analysis and mixture-phase synthesis.

    Args:
        n_fft: FFT size (bins = n_fft // 2 + 1).
        hop_length: frame hop in samples.
        window: scipy window name (``"hann"``, ``"blackmanharris"``, ...).

    ``forward(audio, center=True)`` reflect-pads by n_fft // 2 so frame k is centred on sample k * hop (full
    tracks); training excerpts use ``center=False``, so n_fft + (T - 1) * hop samples give exactly T frames.
    """

    def __init__(self, n_fft: int = 1024, hop_length: int = 256, window: str = "hann"):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.window_name = window
        self.register_buffer("window", torch.from_numpy(get_window(window, n_fft, fftbins=True)).float(),
                             persistent=False)

    @property
    def num_bins(self) -> int:
        return self.n_fft // 2 + 1

    def excerpt_samples(self, frames: int) -> int:
        """Samples that give exactly ``frames`` frames without centring."""
        return self.n_fft + (frames - 1) * self.hop_length

    def forward(self, audio: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Complex STFT of ``(..., samples)`` as ``(..., frames, bins)`` (time before frequency, as the CNN)."""
        shape = audio.shape[:-1]
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(audio.reshape(-1, audio.shape[-1]).float(), self.n_fft, self.hop_length,
                              window=self.window, center=center, pad_mode="reflect", return_complex=True)
        return spec.transpose(-1, -2).reshape(*shape, spec.shape[-1], spec.shape[-2])

    def magnitude(self, audio: torch.Tensor, center: bool = True) -> torch.Tensor:
        return self(audio, center=center).abs()

    def inverse(self, magnitude: torch.Tensor, phase: torch.Tensor, length: int) -> torch.Tensor:
        """Waveforms ``(..., length)`` from magnitudes and phases ``(..., frames, bins)`` (centred frames)."""
        shape = magnitude.shape[:-2]
        with torch.autocast(device_type=magnitude.device.type, enabled=False):
            spec = torch.polar(magnitude.float(), phase.float()).reshape(-1, *magnitude.shape[-2:]).transpose(-1, -2)
            audio = torch.istft(spec, self.n_fft, self.hop_length, window=self.window, center=True, length=length)
        return audio.reshape(*shape, length)
