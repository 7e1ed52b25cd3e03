"""DCCANet: Dense Coordinate Channel Attention Network for depression level estimation from speech
(Zhao, Liu, Niu, Wang, Schuller, ICPR 2024; shared/papers/icpr24_dcca_depression_speech.md).

Waveform segment (3 s at 8 kHz) -> per-frame normalised STFT amplitude and phase (2 x 129 x 188) ->
Conv2d stem (64) -> dense block (6 layers, growth 32 -> 256 channels) -> coordinate channel attention
(time-frequency coordinate attention, then ECA) -> time-frequency-channel vectorisation (256) ->
fully connected -> BDI-II score. The recording's score is the mean over its segments (the regression
task does that). A plain nn.Module: it knows nothing of Lightning.

Table 4's ablations are ``attention``: "none" (C2+DB), "eca" (C2+DB+ECA), "ca" (C2+DB+CA), "cca" (DCCANet).
"""
from __future__ import annotations

from typing import Literal

import torch
from monai.networks.nets.densenet import _DenseBlock
from torch import nn

from lightning_modules.blocks.coordinate_attention import TimeFrequencyCoordinateAttention
from lightning_modules.blocks.eca import EfficientChannelAttention
from lightning_modules.blocks.stft_features import NormalisedSTFTFeatures
from lightning_modules.blocks.vectorisation import TimeFrequencyChannelVectorisation

Attention = Literal["cca", "ca", "eca", "none"]


class DCCANet(nn.Module):
    """Segments (B, samples) -> scores (B,).

    Args:
        segment_samples: samples per segment (3 s at 8 kHz = 24,000); fixes T, which the attention and
            vectorisation layers are sized by.
        n_fft, hop_length: STFT (paper: 256-sample = 32 ms Hamming window, 128 = 16 ms hop).
        norm_divide_by: per-frame normalisation divisor, "var" (paper Eq. 2) or "std".
        log_amplitude: log(1 + |S|) instead of |S| (paper: |S|).
        stem_channels: output channels of the Conv2d stem (paper: 64; kernel 3x3 + BN + ReLU is our choice).
        stem_stride: stride of the stem (1 = the paper's full 129 x 188 maps; 2 quarters the memory).
        dense_layers: layers of the dense block (paper: 6, "the number of Dense blocks is 6").
        growth_rate: DenseNet growth rate (paper: 32); 64 + 6 * 32 = the paper's 256 channels.
        bn_size: DenseNet-B bottleneck factor (1x1 conv to bn_size * growth_rate; DenseNet's 4).
        attention: "cca" (CA then ECA), "ca", "eca" or "none" (Table 4).
        ca_hidden_channels: hidden width of the CA branches (paper silent; 32).
        time_kernel_size, frequency_kernel_size, channel_kernel_size: v_t, v_f, v_c (paper: 7, 7, 13).
        ca_softmax_rescale: scale the CA softmax map by F*T (see TimeFrequencyCoordinateAttention).
        per_channel_vectorisation: per-channel time/frequency fusion weights (paper silent; shared).
    """

    def __init__(self, segment_samples: int = 24000, n_fft: int = 256, hop_length: int = 128,
                 norm_divide_by: Literal["var", "std"] = "var", log_amplitude: bool = False,
                 stem_channels: int = 64, stem_stride: int = 1, dense_layers: int = 6, growth_rate: int = 32,
                 bn_size: int = 4, attention: Attention = "cca", ca_hidden_channels: int = 32,
                 time_kernel_size: int = 7, frequency_kernel_size: int = 7, channel_kernel_size: int = 13,
                 ca_softmax_rescale: bool = True, per_channel_vectorisation: bool = False):
        super().__init__()
        if attention not in ("cca", "ca", "eca", "none"):
            raise ValueError(f"attention must be 'cca', 'ca', 'eca' or 'none', got {attention!r}")
        self.segment_samples = segment_samples
        self.attention = attention
        self.features = NormalisedSTFTFeatures(n_fft, hop_length, norm_divide_by, log_amplitude)
        bins, frames = self.features.num_bins, self.features.num_frames(segment_samples)
        # 3x3 conv, padding 1: size (n - 1) // stride + 1
        self.feature_size = ((bins - 1) // stem_stride + 1, (frames - 1) // stem_stride + 1)
        f, t = self.feature_size
        self.stem = nn.Sequential(
            nn.Conv2d(2, stem_channels, kernel_size=3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True))
        self.num_channels = stem_channels + dense_layers * growth_rate
        self.dense_block = nn.Sequential(
            _DenseBlock(spatial_dims=2, layers=dense_layers, in_channels=stem_channels, bn_size=bn_size,
                        growth_rate=growth_rate, dropout_prob=0.0),
            nn.BatchNorm2d(self.num_channels), nn.ReLU(inplace=True))  # DenseNet's final norm-act
        self.coordinate_attention = (
            TimeFrequencyCoordinateAttention(f, t, time_kernel_size, frequency_kernel_size, ca_hidden_channels,
                                             ca_softmax_rescale) if attention in ("cca", "ca") else nn.Identity())
        self.channel_attention = (EfficientChannelAttention(channel_kernel_size) if attention in ("cca", "eca")
                                  else nn.Identity())
        self.vectorisation = TimeFrequencyChannelVectorisation(f, t, self.num_channels, per_channel_vectorisation)
        self.regressor = nn.Linear(self.num_channels, 1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.shape[-1] != self.segment_samples:
            raise ValueError(f"DCCANet was built for {self.segment_samples}-sample segments, got {waveform.shape[-1]}")
        x = self.features(waveform)  # (B, 2, F, T)
        x = self.dense_block(self.stem(x))  # (B, C, F, T)
        x = self.channel_attention(self.coordinate_attention(x))
        return self.regressor(self.vectorisation(x)).squeeze(-1)
