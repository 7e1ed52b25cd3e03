"""Time-frequency coordinate attention (DCCANet's "CA" block, Zhao et al., ICPR 2024, Eqs. 4-6).

Unlike Hou et al.'s Coordinate Attention (pooling along H and W), each channel x_i (F x T) of a
spectrogram feature map is looked at on its own: a temporal branch convolves along time with the F
frequency bins as Conv1d channels, a frequency branch along frequency with the T frames as channels.
Their sigmoid profiles A_F (F x 1) and A_T (1 x T) form an outer product, a softmax over all F*T
positions turns it into a weight map, and x_i is multiplied by it. The convolutions are shared by all
channels (the C channels are folded into the batch), so T and F are fixed at construction.
"""
from __future__ import annotations

import torch
from torch import nn


class _AxisProfile(nn.Module):
    """sigma(conv2(act(conv1(x)))) for x (N, channels_in, length) -> (N, length): one attention profile."""

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int):
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-length output), got {kernel_size}")
        self.conv1 = nn.Conv1d(in_channels, hidden_channels, kernel_size, padding=kernel_size // 2)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv1d(hidden_channels, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(self.act(self.conv1(x)))).squeeze(1)


class TimeFrequencyCoordinateAttention(nn.Module):
    """X_i^CA = X_i * softmax(A_F(X_i) (x) A_T(X_i)) for every channel X_i of a (B, C, F, T) tensor.

    Args:
        num_bins: F, the frequency size of the feature maps.
        num_frames: T, their time size.
        time_kernel_size: v_t, kernel of the temporal convolutions (paper: 7).
        frequency_kernel_size: v_f, kernel of the frequency convolutions (paper: 7).
        hidden_channels: width between the two convolutions of each branch (paper silent; 32).
        softmax_rescale: multiply the softmax map by F*T so that a uniform map is 1, not 1/(F*T)
            (the literal softmax shrinks every feature by ~1/(F*T); paper silent on the scale).
    """

    def __init__(self, num_bins: int, num_frames: int, time_kernel_size: int = 7, frequency_kernel_size: int = 7,
                 hidden_channels: int = 32, softmax_rescale: bool = True):
        super().__init__()
        self.num_bins = num_bins
        self.num_frames = num_frames
        self.softmax_rescale = softmax_rescale
        self.time_profile = _AxisProfile(num_bins, hidden_channels, time_kernel_size)  # con_T^1, con_T^2
        self.frequency_profile = _AxisProfile(num_frames, hidden_channels, frequency_kernel_size)  # con_F^1, con_F^2

    def weight_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, F, T) -> the softmax weight map (B, C, F, T)."""
        b, c, f, t = x.shape
        if (f, t) != (self.num_bins, self.num_frames):
            raise ValueError(f"expected feature maps of {self.num_bins} x {self.num_frames} (F x T), got {f} x {t}")
        channels = x.reshape(b * c, f, t)
        a_t = self.time_profile(channels)  # (BC, T)
        a_f = self.frequency_profile(channels.transpose(1, 2))  # (BC, F)
        scores = (a_f.unsqueeze(2) * a_t.unsqueeze(1)).flatten(1)  # outer product, (BC, F*T)
        weights = torch.softmax(scores.float(), dim=1).to(x.dtype)
        if self.softmax_rescale:
            weights = weights * (f * t)
        return weights.view(b, c, f, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight_map(x)
