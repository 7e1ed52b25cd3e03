"""Chandna et al., "Monoaural audio source separation using deep convolutional neural networks"
(LVA/ICA 2017): the low-latency CNN masking network.

Structure settled against the authors' code (MTG/DeepConvSep ``examples/dsd100/trainCNN.py``):

    x (B, 1, T, F) -> vertical conv (N1, kernel t1 x f1)            timbre, no activation
                   -> horizontal conv (N2, kernel t2 x f2)          temporal evolution, no activation
                   -> flatten -> FC NN + ReLU                       bottleneck
                   -> per source: FC back to N2 x T' + ReLU -> transposed horizontal conv -> transposed
                      vertical conv (weight-tied to the encoder, Lasagne InverseLayer, no own bias)
                   -> + one bias per source -> ReLU -> y_hat (B, S, T, F)
                   -> soft masks m_n = |y_hat_n| / sum_k |y_hat_k|;  y_tilde_n = m_n * x

The network is a plain nn.Module; the task (tasks/separation.py) owns the STFT and resynthesis.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MASK_EPS = 1e-8


def soft_masks(estimates: torch.Tensor, eps: float = MASK_EPS) -> torch.Tensor:
    """m_n = |y_n| / sum_k |y_k| over the source axis (dim 1); eps keeps silent bins finite."""
    magnitude = estimates.abs()
    return magnitude / (magnitude.sum(dim=1, keepdim=True) + eps)


class ChandnaCNN(nn.Module):
    """The paper's CNN. Defaults are the paper's (report) setting (t1, f1, t2, f2, N1, N2, NN) =
    (1, 513, 12, 1, 50, 30, 128) with T = 30 frames (the code's time context).

    Args:
        time_context: T, frames per input chunk.
        num_bins: F, frequency bins of the magnitude spectrogram (n_fft / 2 + 1).
        num_sources: S (vocals, bass, drums, other).
        vertical_filters, vertical_kernel: N1 and (t1, f1); f1 = num_bins spans the whole spectrum.
        horizontal_filters, horizontal_kernel: N2 and (t2, f2).
        bottleneck: NN, width of the shared fully connected layer.
        tied_decoder: decoders reuse the encoder conv weights transposed (the code); False gives each
            decoder stage its own ConvTranspose2d (shared by the sources, as in the tied case).
        dropout: dropout on the bottleneck output (report Exp. 6; 0 in the paper).
    """

    def __init__(self, time_context: int = 30, num_bins: int = 513, num_sources: int = 4,
                 vertical_filters: int = 50, vertical_kernel: tuple[int, int] = (1, 513),
                 horizontal_filters: int = 30, horizontal_kernel: tuple[int, int] = (12, 1),
                 bottleneck: int = 128, tied_decoder: bool = True, dropout: float = 0.0):
        super().__init__()
        t1, f1 = vertical_kernel
        t2, f2 = horizontal_kernel
        self.time_context, self.num_bins, self.num_sources = time_context, num_bins, num_sources
        self.vertical = nn.Conv2d(1, vertical_filters, (t1, f1))
        self.horizontal = nn.Conv2d(vertical_filters, horizontal_filters, (t2, f2))
        # Shape of the horizontal conv's output: what the bottleneck flattens and the decoders rebuild.
        self.code_shape = (horizontal_filters, time_context - t1 - t2 + 2, num_bins - f1 - f2 + 2)
        if min(self.code_shape[1:]) < 1:
            raise ValueError(f"kernels {vertical_kernel}, {horizontal_kernel} do not fit a {time_context} x "
                             f"{num_bins} input")
        code_size = self.code_shape[0] * self.code_shape[1] * self.code_shape[2]
        self.bottleneck = nn.Linear(code_size, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.decoders = nn.ModuleList(nn.Linear(bottleneck, code_size) for _ in range(num_sources))
        self.tied_decoder = tied_decoder
        if not tied_decoder:
            self.horizontal_inverse = nn.ConvTranspose2d(horizontal_filters, vertical_filters, (t2, f2), bias=False)
            self.vertical_inverse = nn.ConvTranspose2d(vertical_filters, 1, (t1, f1), bias=False)
        self.source_bias = nn.Parameter(torch.zeros(num_sources))

    def raw_estimates(self, mixture: torch.Tensor) -> torch.Tensor:
        """y_hat (B, S, T, F) >= 0 for a mixture magnitude chunk (B, 1, T, F) or (B, T, F)."""
        if mixture.ndim == 3:
            mixture = mixture[:, None]
        batch = mixture.shape[0]
        code = self.horizontal(self.vertical(mixture)).flatten(1)
        hidden = self.dropout(F.relu(self.bottleneck(code)))
        # All sources' decoders at once: (S, B, code) -> (S * B, N2, T', F') through the shared deconvs.
        decoded = torch.stack([F.relu(decoder(hidden)) for decoder in self.decoders])
        decoded = decoded.reshape(self.num_sources * batch, *self.code_shape)
        if self.tied_decoder:
            decoded = F.conv_transpose2d(F.conv_transpose2d(decoded, self.horizontal.weight), self.vertical.weight)
        else:
            decoded = self.vertical_inverse(self.horizontal_inverse(decoded))
        decoded = decoded.reshape(self.num_sources, batch, *decoded.shape[-2:]).transpose(0, 1)
        return F.relu(decoded + self.source_bias[:, None, None])

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """Masked source magnitudes y_tilde (B, S, T, F) for a mixture magnitude chunk (B, [1,] T, F)."""
        masks = soft_masks(self.raw_estimates(mixture))
        return masks * (mixture if mixture.ndim == 3 else mixture[:, 0])[:, None]
