"""Kaldi log-mel filterbank features in torch (``torchaudio.compliance.kaldi.fbank`` semantics, batched).

The audio transformers of the AST / Audio-MAE / EAT / ASDA line all feed
``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=16000, use_energy=False,
window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)``. torchaudio does not load beside the
CPU torch on our machines, so this is a port of that definition, batched over clips so that it runs on the
accelerator:

1. frames of ``frame_length`` ms every ``frame_shift`` ms, ``snip_edges`` (only whole frames);
2. per frame: remove the DC offset, pre-emphasis ``x[n] - 0.97 x[n-1]`` (the first sample uses itself),
   window (``povey`` = Hann^0.85, ``hanning``, ``hamming``, ``rectangular``, ``blackman``);
3. zero-pad to the next power of two, power spectrum ``|rfft|^2``;
4. triangular filters equally spaced on Kaldi's mel scale ``1127 ln(1 + f / 700)`` between
   ``low_freq`` and ``high_freq`` (``<= 0``: offset from Nyquist), Nyquist bin weighted 0;
5. ``log(max(energy, float32 eps))``.

Not ported (unused by these papers): dither, VTLN warping, the energy column (``use_energy``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

FLOAT32_EPS = torch.finfo(torch.float32).eps


def kaldi_mel(freq):
    return 1127.0 * torch.log1p(torch.as_tensor(freq, dtype=torch.float64) / 700.0)


def kaldi_mel_banks(num_mel_bins: int, padded_window_size: int, sample_frequency: float,
                    low_freq: float = 20.0, high_freq: float = 0.0) -> torch.Tensor:
    """Triangular mel filters as Kaldi builds them: (num_mel_bins, padded_window_size // 2 + 1), float64."""
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < high_freq <= nyquist:
        raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist, got {low_freq}, {high_freq}, {nyquist}")
    num_fft_bins = padded_window_size // 2
    fft_bin_width = sample_frequency / padded_window_size
    mel_low, mel_high = kaldi_mel(low_freq), kaldi_mel(high_freq)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    index = torch.arange(num_mel_bins, dtype=torch.float64)[:, None]
    left, centre, right = mel_low + index * delta, mel_low + (index + 1) * delta, mel_low + (index + 2) * delta
    mel = kaldi_mel(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float64))[None, :]
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin gets weight 0, as in Kaldi


def kaldi_window(window_type: str, size: int, blackman_coeff: float = 0.42) -> torch.Tensor:
    if window_type == "hanning":
        return torch.hann_window(size, periodic=False, dtype=torch.float64)
    if window_type == "povey":
        return torch.hann_window(size, periodic=False, dtype=torch.float64).pow(0.85)
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=torch.float64)
    if window_type == "rectangular":
        return torch.ones(size, dtype=torch.float64)
    if window_type == "blackman":
        n = torch.arange(size, dtype=torch.float64) * (2 * math.pi / (size - 1))
        return blackman_coeff - 0.5 * torch.cos(n) + (0.5 - blackman_coeff) * torch.cos(2 * n)
    raise ValueError(f"unknown window_type {window_type!r}")


class KaldiFbank(nn.Module):
    """(B, samples) or (samples,) waveforms -> (B, frames, num_mel_bins) log-mel energies, float32.

    Always computed in float32, also inside bf16/fp16 autocast (the log of small energies and the FFT
    need the range). No trainable parameters: the window and filters are buffers.
    """

    def __init__(self, sample_frequency: int = 16000, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                 frame_shift_ms: float = 10.0, window_type: str = "hanning", preemphasis_coefficient: float = 0.97,
                 remove_dc_offset: bool = True, low_freq: float = 20.0, high_freq: float = 0.0,
                 round_to_power_of_two: bool = True, use_log_fbank: bool = True, use_power: bool = True):
        super().__init__()
        self.window_size = int(sample_frequency * frame_length_ms * 0.001)
        self.window_shift = int(sample_frequency * frame_shift_ms * 0.001)
        self.padded_window_size = (1 << (self.window_size - 1).bit_length()) if round_to_power_of_two \
            else self.window_size
        self.num_mel_bins = num_mel_bins
        self.preemphasis_coefficient = preemphasis_coefficient
        self.remove_dc_offset = remove_dc_offset
        self.use_log_fbank = use_log_fbank
        self.use_power = use_power
        self.register_buffer("window", kaldi_window(window_type, self.window_size).float(), persistent=False)
        banks = kaldi_mel_banks(num_mel_bins, self.padded_window_size, sample_frequency, low_freq, high_freq)
        self.register_buffer("mel_banks", banks.float().T.contiguous(), persistent=False)  # (fft bins, mels)

    def num_frames(self, num_samples: int) -> int:
        return 0 if num_samples < self.window_size else 1 + (num_samples - self.window_size) // self.window_shift

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        squeeze = waveform.ndim == 1
        if squeeze:
            waveform = waveform[None]
        if waveform.shape[-1] < self.window_size:
            raise ValueError(f"waveform of {waveform.shape[-1]} samples is shorter than one frame "
                             f"({self.window_size} samples)")
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            frames = waveform.float().unfold(-1, self.window_size, self.window_shift)  # (B, F, W)
            if self.remove_dc_offset:
                frames = frames - frames.mean(dim=-1, keepdim=True)
            if self.preemphasis_coefficient != 0.0:
                previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
                frames = frames - self.preemphasis_coefficient * previous
            frames = frames * self.window
            spectrum = torch.fft.rfft(frames, n=self.padded_window_size).abs()
            if self.use_power:
                spectrum = spectrum.pow(2)
            energies = spectrum @ self.mel_banks
            if self.use_log_fbank:
                energies = torch.clamp_min(energies, FLOAT32_EPS).log()
        return energies[0] if squeeze else energies
