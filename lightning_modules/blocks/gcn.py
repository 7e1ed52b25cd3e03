"""Global Convolutional Network block (Peng et al., "Large Kernel Matters", CVPR 2017).

A k x k receptive field from two separable branches, ``(k x 1 -> 1 x k) + (1 x k -> k x 1)``:
4k weights per channel pair instead of k^2. As in Peng et al., the convolutions have biases and
no normalisation or activation between them.
"""
from __future__ import annotations

from torch import Tensor, nn


class GlobalConvBlock(nn.Module):
    """``GCN(x) = conv_1xk(conv_kx1(x)) + conv_kx1(conv_1xk(x))`` with 'same' padding.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (default: ``in_channels``).
        kernel_size: k, the length of the separable kernels (odd).
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, kernel_size: int = 7):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
        out_channels = in_channels if out_channels is None else out_channels
        k, pad = kernel_size, kernel_size // 2
        self.left = nn.Sequential(nn.Conv2d(in_channels, out_channels, (k, 1), padding=(pad, 0)),
                                  nn.Conv2d(out_channels, out_channels, (1, k), padding=(0, pad)))
        self.right = nn.Sequential(nn.Conv2d(in_channels, out_channels, (1, k), padding=(0, pad)),
                                   nn.Conv2d(out_channels, out_channels, (k, 1), padding=(pad, 0)))

    def forward(self, x: Tensor) -> Tensor:
        return self.left(x) + self.right(x)
