"""C-LSTM U-Net (Arbelle & Raviv, "Microscopy cell segmentation via convolutional LSTM networks", ISBI 2019): Table 2's
"C-LSTMs" baseline of Guided-SET-DCL, "the fusion of C-LSTM with U-Net by replacing the convolutional layers in the
encoder section with C-LSTM layers", run over a sequence of consecutive CT slices.

Layout of the authors' release (``Networks.py``, ``ULSTMnet2D`` defaults; TensorFlow), written here in PyTorch:

- 4 down blocks, each a ConvLSTM (5x5; 128, 256, 256, 512 hidden channels) over the sequence, then 2 x [Conv 5x5 +
  BN + LeakyReLU] (128, 256, 256, 512), the first with stride 2 except in the last block (output stride 8);
- 4 up blocks on each time step: bilinear x2 upsampling (not before the first), concatenation with the skip (the
  down blocks' inputs: the last block's input, ..., the slices themselves), 2 x [Conv 5x5 + BN + LeakyReLU] (256, 128,
  64, 32), the last block ending in a 1x1 convolution to the logits (the release: 3 classes, cell / background /
  edge; here ``num_classes``, 1 = binary colon logits for the segmentation task).

A sample is ``sequence_length`` consecutive slices stacked as channels (the segmented slice last; the data's
``slice_context``); the network unrolls the ConvLSTMs over them and returns the last step's logits: the stateful
release carries the memory from slice to slice the same way. Ours: no reflection padding (slice sizes are multiples
of 8 here), and the loss is the segmentation family's (as the U-Net row), not the release's weighted 3-class
cross-entropy.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.ss_convlstm import ConvLSTMCell

#: the release's widths: ConvLSTM and down convolutions per block, and the up blocks' convolutions
CLSTM_DOWN = (128, 256, 256, 512)
CLSTM_UP = (256, 128, 64, 32)


def conv_bn_lrelu(ch_in: int, ch_out: int, kernel_size: int = 5, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(ch_in, ch_out, kernel_size, stride=stride, padding=kernel_size // 2),
            nn.BatchNorm2d(ch_out), nn.LeakyReLU(0.3)]  # Keras' LeakyReLU default slope


class CLSTMUNet(nn.Module):
    """The ConvLSTM U-Net (see the module docstring): (B, T * in_channels, H, W) -> last-step logits
    (B, num_classes, H, W).

    Args:
        in_channels: channels of one slice.
        sequence_length: slices per sample (T).
        down_features: ConvLSTM and convolution widths of the 4 down blocks.
        up_features: convolution widths of the 4 up blocks.
        num_classes: output channels (1: binary logits).
        kernel_size: every ConvLSTM and convolution (5 in the release).
    """

    def __init__(self, in_channels: int = 1, sequence_length: int = 5, down_features: Sequence[int] = CLSTM_DOWN,
                 up_features: Sequence[int] = CLSTM_UP, num_classes: int = 1, kernel_size: int = 5) -> None:
        super().__init__()
        if len(down_features) != len(up_features):
            raise ValueError("down_features and up_features need one width per level each")
        self.in_channels, self.sequence_length = in_channels, sequence_length
        self.lstms, self.downs = nn.ModuleList(), nn.ModuleList()
        skips, channels = [], in_channels
        for level, width in enumerate(down_features):
            skips.append(channels)
            self.lstms.append(ConvLSTMCell(channels, width, kernel_size))
            stride = 2 if level < len(down_features) - 1 else 1
            self.downs.append(nn.Sequential(*conv_bn_lrelu(width, width, kernel_size, stride),
                                            *conv_bn_lrelu(width, width, kernel_size)))
            channels = width
        self.ups = nn.ModuleList()
        for skip, width in zip(reversed(skips), up_features):
            self.ups.append(nn.Sequential(*conv_bn_lrelu(channels + skip, width, kernel_size),
                                          *conv_bn_lrelu(width, width, kernel_size)))
            channels = width
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = image.shape
        steps = channels // self.in_channels
        if steps * self.in_channels != channels:
            raise ValueError(f"{channels} channels are not a sequence of {self.in_channels}-channel slices")
        sequence = image.reshape(batch, steps, self.in_channels, height, width)
        skips = []
        for lstm, down in zip(self.lstms, self.downs):
            skips.append(sequence)
            hidden = torch.stack(lstm.run(sequence), 1)  # (B, T, C, h, w)
            out = down(hidden.flatten(0, 1))
            sequence = out.unflatten(0, (batch, steps))
        x = sequence[:, -1]  # the segmented slice's step: its memory holds the slices before it
        for level, (up, skip) in enumerate(zip(self.ups, reversed(skips))):
            if level > 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip[:, -1]], 1))
        return self.head(x)
