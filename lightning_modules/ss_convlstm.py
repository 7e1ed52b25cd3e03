"""SpecSlice-ConvLSTM (ICPR 2024): medical hyperspectral segmentation by spectral slicing and ConvLSTM skips.

A hypercube (B, C, H, W) with C = 60 bands is cut into T = C / k slices of k adjacent bands
(``SpectralSlicing``: slice t = bands [k t, ..., k t + k - 1]). One ResNet encoder (MONAI ResNet in
torchvision's layout, ``backbones._resnet_trunk``, first conv taking k channels) is shared over the slices
(T folded into the batch). Its features at the U-Net skip positions

    L1 = stem (conv1-BN-ReLU, 64 @ H/2), L2 = layer1 (64 @ H/4), L3 = layer2 (128 @ H/8), L4 = layer3 (256 @ H/16)

are either averaged over the T slices, or fed as a sequence through one ConvLSTM cell per position
(Shi et al. 2015, Eq. 1-6; 3x3 kernel, hidden channels = input channels, one layer; 72 c^2 + 4 c parameters)
whose output is:

- ``classical``: the last hidden state H_{T-1};
- ``sisom`` (single input, single output merge, Eq. 7): the sum of all hidden states;
- ``didom`` (dual input, dual output merge, Eq. 8): that sum plus the sum of the hidden states of the same
  cell run over the reversed sequence (no extra parameters).

The bottleneck (layer4, 512 @ H/32) is averaged over the slices. The decoder runs once: the
segmentation_models_pytorch U-Net decoder (channels 256, 128, 64, 32, 16; nearest x2 upsampling, concat skip,
2 x [3x3 conv-BN-ReLU]) and its 3x3 segmentation head (1 channel = binary logits).

``slicing=False`` gives the plain U-Net baseline (all C bands into the encoder's first conv, smp
``Unet("resnet34", in_channels=60)`` layout: 24.62 M parameters, Table 4).

The mapping of L1..L4 to the encoder levels and the cell size are derived from the paper's own parameter and
MAC counts (see docs/papers/ss_convlstm.md): the three cells at L2+L3+L4 hold 6,194,944 parameters
(paper: 32.21 M - 26.01 M) and cost 90.6 GMACs at 256 x 320 with T = 20 (214.60 - 123.96).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_modules.backbones import _resnet_trunk

POSITIONS = ("L1", "L2", "L3", "L4")
Merge = Literal["classical", "sisom", "didom"]


class SpectralSlicing(nn.Module):
    """(B, C, H, W) -> (B * T, k, H, W), T = C / k, slice t = bands [k t, k t + k) (sample-major order)."""

    def __init__(self, bands_per_slice: int = 3):
        super().__init__()
        self.k = int(bands_per_slice)

    def num_slices(self, channels: int) -> int:
        if channels % self.k:
            raise ValueError(f"{channels} bands do not split into slices of {self.k}")
        return channels // self.k

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        b, c, h, w = cube.shape
        return cube.reshape(b * self.num_slices(c), self.k, h, w)


class ConvLSTMCell(nn.Module):
    """ConvLSTM cell (Eq. 1-6): the gates i, f, o and the candidate C~ from one conv on [X_t, H_{t-1}];
    C_t = f * C_{t-1} + i * C~, H_t = o * tanh(C_t). No peephole terms (the paper's Eq. 1-6 have none)."""

    def __init__(self, in_channels: int, hidden_channels: Optional[int] = None, kernel_size: int = 3):
        super().__init__()
        self.hidden = int(hidden_channels or in_channels)
        self.conv = nn.Conv2d(in_channels + self.hidden, 4 * self.hidden, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor, state: Optional[tuple[torch.Tensor, torch.Tensor]] = None):
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden, *x.shape[2:])
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = self.conv(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def run(self, sequence: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, C, H, W) -> the T hidden states."""
        state, hidden = None, []
        for t in range(sequence.shape[1]):
            state = self(sequence[:, t], state)
            hidden.append(state[0])
        return hidden


class ConvLSTMSkip(nn.Module):
    """A skip connection over the slice sequence: (B, T, C, H, W) -> (B, C, H, W) by ``merge``."""

    def __init__(self, channels: int, merge: Merge = "sisom", kernel_size: int = 3,
                 reduce: Literal["sum", "mean"] = "sum"):
        super().__init__()
        if merge not in ("classical", "sisom", "didom"):
            raise ValueError(f"merge must be classical, sisom or didom, got {merge!r}")
        self.cell = ConvLSTMCell(channels, channels, kernel_size)
        self.merge, self.reduce = merge, reduce

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        hidden = self.cell.run(sequence)
        if self.merge == "classical":
            return hidden[-1]
        out = torch.stack(hidden).sum(0)
        count = len(hidden)
        if self.merge == "didom":
            out = out + torch.stack(self.cell.run(sequence.flip(1))).sum(0)
            count *= 2
        return out / count if self.reduce == "mean" else out


class DecoderBlock(nn.Module):
    """smp U-Net decoder block: nearest x2 upsampling, concat skip, 2 x (3x3 conv (no bias)-BN-ReLU)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()

        def conv(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                 nn.ReLU(inplace=True))

        self.conv1 = conv(in_channels + skip_channels, out_channels)
        self.conv2 = conv(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], 1)
        return self.conv2(self.conv1(x))


class SSConvLSTM(nn.Module):
    """SpecSlice-ConvLSTM (and its ablations / the plain U-Net baseline); returns binary logits (B, 1, H, W).

    Args:
        in_channels: bands C of the hypercube (60 for MDC).
        bands_per_slice: k (3 in the paper's best model; Table 5: 2..12); ignored when ``slicing=False``.
        backbone: resnet18/34/50/101 (Table 1).
        lstm_positions: skip positions with a ConvLSTM (subset of L1..L4; Table 3); the others average the
            slice features.
        merge: ``classical`` (last hidden state), ``sisom`` or ``didom`` (Table 2).
        reduce: ``sum`` (paper, Eq. 7-8) or ``mean`` of the merged hidden states (option).
        slicing: False = plain U-Net on all C bands (Table 4 "U-Net").
        decoder_channels: the smp default (256, 128, 64, 32, 16).
        num_classes: output channels (1: binary).
        kernel_size: ConvLSTM kernel.
        width: encoder width factor (1 = the paper; < 1 only for CPU demos).
        input_bands: use only these bands of the cube (e.g. ``[36]``: the single-band baseline of the
            stand-in); ``in_channels`` then counts the selected bands.
    """

    def __init__(self, in_channels: int = 60, bands_per_slice: int = 3, backbone: str = "resnet34",
                 lstm_positions: Sequence[str] = ("L2", "L3", "L4"), merge: Merge = "sisom",
                 reduce: Literal["sum", "mean"] = "sum", slicing: bool = True,
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), num_classes: int = 1,
                 kernel_size: int = 3, width: float = 1.0, input_bands: Optional[Sequence[int]] = None):
        super().__init__()
        unknown = set(lstm_positions) - set(POSITIONS)
        if unknown:
            raise ValueError(f"lstm_positions must be among {POSITIONS}, got {sorted(unknown)}")
        if not slicing and lstm_positions:
            raise ValueError("ConvLSTM skips need spectral slicing (slicing=True)")
        self.in_channels, self.slicing = in_channels, slicing
        self.input_bands = None if input_bands is None else [int(b) for b in input_bands]
        if self.input_bands is not None and len(self.input_bands) != in_channels:
            raise ValueError(f"in_channels={in_channels} but {len(self.input_bands)} input_bands")
        self.slicer = SpectralSlicing(bands_per_slice) if slicing else None
        if slicing:
            self.slicer.num_slices(in_channels)  # checks divisibility
        self.encoder, _ = _resnet_trunk(backbone, bands_per_slice if slicing else in_channels, width)
        stem = self.encoder.conv1.out_channels
        levels = [getattr(self.encoder, f"layer{i}")[-1].conv1.in_channels for i in (1, 2, 3, 4)]
        # skip channels at L1..L4 and the bottleneck
        self.skip_channels = [stem, *levels[:3]]
        self.lstm_positions = tuple(p for p in POSITIONS if p in lstm_positions)
        self.skips = nn.ModuleDict({p: ConvLSTMSkip(self.skip_channels[POSITIONS.index(p)], merge, kernel_size, reduce)
                                    for p in self.lstm_positions})
        dec = list(decoder_channels)
        ins = [levels[3], *dec[:-1]]
        skips = [*self.skip_channels[::-1], 0]  # L4, L3, L2, L1, none
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, dec))
        self.head = nn.Conv2d(dec[-1], num_classes, 3, padding=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features [L1, L2, L3, L4, bottleneck] of (N, c, H, W) inputs."""
        return resnet_features(self.encoder, x)

    def forward(self, cube: torch.Tensor) -> torch.Tensor:
        if self.input_bands is not None:
            cube = cube[:, self.input_bands]
        b, c, h, w = cube.shape
        if h % 32 or w % 32:
            raise ValueError(f"height and width must be multiples of 32, got {h}x{w}")
        if not self.slicing:
            feats = self.encode(cube)
        else:
            t = self.slicer.num_slices(c)
            feats = []
            for i, f in enumerate(self.encode(self.slicer(cube))):
                seq = f.reshape(b, t, *f.shape[1:])
                position = POSITIONS[i] if i < 4 else None
                feats.append(self.skips[position](seq) if position in self.skips else seq.mean(1))
        x = feats[4]
        for block, skip in zip(self.decoder, [feats[3], feats[2], feats[1], feats[0], None]):
            x = block(x, skip)
        return self.head(x)


def resnet_features(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The five feature maps of a ResNet trunk (``backbones._resnet_trunk``) as smp encoders give them:
    [stem (H/2), layer1 (H/4), layer2 (H/8), layer3 (H/16), layer4 (H/32)]."""
    stem = encoder.act(encoder.bn1(encoder.conv1(x)))
    f1 = encoder.layer1(encoder.maxpool(stem))
    f2 = encoder.layer2(f1)
    f3 = encoder.layer3(f2)
    return [stem, f1, f2, f3, encoder.layer4(f3)]


def convlstm_parameters(channels: int, kernel_size: int = 3) -> int:
    """Parameters of one ConvLSTM cell with hidden = input channels: 4c (2c k^2 + 1) (72 c^2 + 4 c for k = 3)."""
    return 4 * channels * (2 * channels * kernel_size ** 2 + 1)


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> float:
    """Multiply-accumulates of one forward pass (``torch.utils.flop_counter``: FLOPs / 2; convs, matmuls).

    Runs on the meta device, so it costs no memory or time even at 1 x 60 x 256 x 320."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        meta(torch.empty(*input_shape, device="meta"))
    return counter.get_total_flops() / 2


class HausdorffDistance(Metric):
    """Full (100th-percentile) symmetric Hausdorff distance per image, in pixels (MONAI
    ``compute_hausdorff_distance``, as the Dual-Stream evaluation used for MDC); ``compute()`` the mean over
    images where both prediction and mask are non-empty (MONAI gives NaN/inf otherwise; skipped)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, percentile: Optional[float] = None, **kwargs):
        super().__init__(**kwargs)
        self.percentile = percentile
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        import warnings

        from monai.metrics import compute_hausdorff_distance

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = compute_hausdorff_distance((prediction > 0).float(), (target > 0).float(), include_background=True,
                                           percentile=self.percentile).float().flatten()
        self.values.append(torch.where(torch.isfinite(d), d, torch.full_like(d, float("nan"))).to(prediction.device))

    def compute(self) -> torch.Tensor:
        values = dim_zero_cat(self.values) if self.values else torch.zeros(0)
        return values.nanmean() if values.numel() else torch.tensor(float("nan"))
