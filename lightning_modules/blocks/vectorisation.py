"""Time-frequency-channel vectorisation (Niu et al., Neurocomputing 2021 TFCAV; DCCANet Sec. 2.3, Fig. 1c).

Every channel X'_c (F x T) is fused along frequency into a time vector V_T (1 x T) and along time into a
frequency vector V_F (1 x F) by 1x1 Conv1Ds; their concatenation V_c (1 x (F+T)) is one row of V^m
(C x (F+T)), which a second Conv1D fuses into V' (C values), one per channel.
"""
from __future__ import annotations

import torch
from torch import nn


class TimeFrequencyChannelVectorisation(nn.Module):
    """(B, C, F, T) -> (B, C).

    Args:
        num_bins: F.
        num_frames: T.
        num_channels: C; only used when ``per_channel`` is true.
        per_channel: separate time/frequency fusion weights per channel (grouped convolutions) instead
            of weights shared by all channels (paper silent; shared by default).
    """

    def __init__(self, num_bins: int, num_frames: int, num_channels: int = 1, per_channel: bool = False):
        super().__init__()
        self.num_bins, self.num_frames = num_bins, num_frames
        self.per_channel = per_channel
        groups = num_channels if per_channel else 1
        self.groups = groups
        # V_T: frequency bins as Conv1d channels, k = 1, along time; V_F: frames as channels, along frequency.
        self.time_vector = nn.Conv1d(num_bins * groups, groups, kernel_size=1, groups=groups)
        self.frequency_vector = nn.Conv1d(num_frames * groups, groups, kernel_size=1, groups=groups)
        # Fuse each channel's (F + T) row: the row entries as Conv1d channels, along the channel axis.
        self.channel_fusion = nn.Conv1d(num_bins + num_frames, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        if self.per_channel:
            v_t = self.time_vector(x.reshape(b, c * f, t))  # (B, C, T)
            v_f = self.frequency_vector(x.transpose(2, 3).reshape(b, c * t, f))  # (B, C, F)
        else:
            channels = x.reshape(b * c, f, t)
            v_t = self.time_vector(channels).view(b, c, t)
            v_f = self.frequency_vector(channels.transpose(1, 2)).view(b, c, f)
        rows = torch.cat([v_t, v_f], dim=2)  # V^m: (B, C, T + F)
        return self.channel_fusion(rows.transpose(1, 2)).squeeze(1)  # (B, C)
