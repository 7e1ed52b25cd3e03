"""Scanpath angle-fern feature extractor (Fuhl, "A Trainable Feature Extractor Module for Deep Neural Networks and
Scanpath Classification", ICPR 2024): raw gaze samples -> trainable angle-fern histograms -> ResNet-12 -> class.

- ``ScanpathFernNet``: ``AngleFernHistogram`` (``blocks/angle_ferns.py``; the paper's layer, Algorithms 1 and 2)
  in front of a ResNet-12 that reads the (n_sets, 2^S) histograms as a one-channel image. ``learn_ranges: false``
  freezes the ranges (the ablation that isolates the trainable backward).
- ``ResNet12``: the few-shot ResNet-12 (the paper names "ResNet-12 [He et al.]" without details): four residual
  blocks of three 3x3 conv -> BN -> LeakyReLU(0.1) (the last without activation before the sum), a 1x1 conv + BN
  shortcut, LeakyReLU after the sum, 2x2 max-pool; global average pool; linear classifier.
- ``ScanpathRNN``: the re-implemented "*RNN" / "*LSTM" rows of Table 2 on the raw (dx, dy) sequence.
- ``ScanpathFernTask``: the shared ``ClassificationTask`` with the ranges in their own optimiser group
  (``range_lr_scale`` times the base lr, no weight decay) and the ranges clamped after every step.

Input: the batch ``signal`` (B, T, 2) gaze samples (``signal_layout: time_first``), NaN where a sample is invalid
or pads a shorter recording.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.blocks.angle_ferns import AngleFernHistogram, RangeUpdateSign
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.tasks.optim import parameter_groups


class ResNet12Block(nn.Module):
    """Three 3x3 conv/BN (LeakyReLU 0.1 after the first two), 1x1 conv + BN shortcut, LeakyReLU, 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, slope: float = 0.1, bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels, momentum=bn_momentum)
        self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                        nn.BatchNorm2d(out_channels, momentum=bn_momentum))
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), self.slope)
        out = F.leaky_relu(self.bn2(self.conv2(out)), self.slope)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.downsample(x), self.slope)
        return F.max_pool2d(out, 2, ceil_mode=True)


class ResNet12(nn.Module):
    """ResNet-12 over a (B, C, H, W) input: blocks of ``widths`` (few-shot: 64-160-320-640), GAP, linear head.
    ``bn_momentum``: the BatchNorm running-statistics momentum (PyTorch's 0.1)."""

    def __init__(self, num_classes: int, in_channels: int = 1, widths: Sequence[int] = (64, 160, 320, 640),
                 dropout: float = 0.0, bn_momentum: float = 0.1):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet-12 has 4 blocks, got widths {list(widths)}")
        channels = [in_channels, *widths]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            ResNet12Block(channels[i], channels[i + 1], bn_momentum=bn_momentum) for i in range(4))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(widths[-1], num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class ScanpathFernNet(nn.Module):
    """Angle-fern histograms (B, n_sets, 2^S) -> ResNet-12 on them as a one-channel image -> logits.

    Args:
        num_classes: subjects or stimuli (linked from the task).
        n_sets, set_size: angle sets and checks per set (the paper: 4,096 x 5 -> 4,096 x 32).
        range_init, range_bounds, learn_ranges, range_update_sign, fern_seed: ``AngleFernHistogram``'s
            (range_init / range_bounds in radians; fern_seed its ``seed``).
        widths: the ResNet-12's block widths.
        dropout: before the linear head (0: none; the paper says nothing).
        bn_momentum: the ResNet's BatchNorm momentum. The histograms of different recordings differ little relative
            to the bins' means, so the running statistics must be close before evaluation-mode predictions separate
            the classes: PyTorch's 0.1 needs a few hundred steps (the real-data runs have them); the stand-in demo
            (5 steps per epoch) uses 0.5.
    """

    def __init__(self, num_classes: int, n_sets: int = 4096, set_size: int = 5,
                 range_init: tuple[float, float] = (math.pi / 18, math.pi / 2),
                 range_bounds: tuple[float, float] = (math.radians(1.0), math.pi), learn_ranges: bool = True,
                 range_update_sign: RangeUpdateSign = "descent", fern_seed: int = 0,
                 widths: Sequence[int] = (64, 160, 320, 640), dropout: float = 0.0, bn_momentum: float = 0.1):
        super().__init__()
        self.ferns = AngleFernHistogram(n_sets, set_size, tuple(range_init), tuple(range_bounds), learn_ranges,
                                        range_update_sign, seed=fern_seed)
        self.classifier = ResNet12(num_classes, in_channels=1, widths=widths, dropout=dropout, bn_momentum=bn_momentum)

    def histograms(self, xy: torch.Tensor) -> torch.Tensor:
        return self.ferns(xy)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.ferns(xy).unsqueeze(1))


def gaze_deltas(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(deltas (B, T-1, 2) with invalid steps dropped and the rest packed to the front in time order, zeros after;
    lengths (B,)). Each recording's steps are divided by their root-mean-square length (the coordinates' unit is
    the dataset's: pixels, degrees)."""
    delta = xy[:, 1:] - xy[:, :-1]
    valid = torch.isfinite(delta).all(dim=-1)
    lengths = valid.sum(dim=1)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)  # valid steps first, in time order
    packed = torch.gather(torch.nan_to_num(delta, nan=0.0), 1, order[..., None].expand(-1, -1, 2))
    keep = torch.arange(packed.shape[1], device=xy.device)[None, :] < lengths[:, None]
    packed = packed * keep[..., None]
    rms = (packed.pow(2).sum(dim=(1, 2)) / lengths.clamp_min(1)).sqrt()
    return packed / rms.clamp_min(1e-12)[:, None, None], lengths


class ScanpathRNN(nn.Module):
    """Table 2's re-implemented "*RNN" / "*LSTM": a recurrent net over the (dx, dy) steps of the raw gaze, the last
    valid step's hidden state -> linear classifier. Invalid samples are dropped (packed sequences).

    Args:
        num_classes: subjects or stimuli.
        cell: "rnn" (tanh Elman) or "lstm".
        hidden_size, num_layers, dropout: the recurrent stack's.
    """

    def __init__(self, num_classes: int, cell: Literal["rnn", "lstm"] = "lstm", hidden_size: int = 128,
                 num_layers: int = 2, dropout: float = 0.0):
        super().__init__()
        if cell not in ("rnn", "lstm"):
            raise ValueError(f"cell must be 'rnn' or 'lstm', got {cell!r}")
        recurrent = nn.LSTM if cell == "lstm" else nn.RNN
        self.rnn = recurrent(2, hidden_size, num_layers=num_layers, batch_first=True,
                             dropout=dropout if num_layers > 1 else 0.0)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        deltas, lengths = gaze_deltas(xy.float())
        packed = nn.utils.rnn.pack_padded_sequence(deltas, lengths.clamp_min(1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, hidden = self.rnn(packed)
        last = (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]  # (B, hidden) of the top layer
        return self.fc(last)


class ScanpathFernTask(ClassificationTask):
    """``ClassificationTask`` + the fern ranges' optimiser group and clamp.

    Args:
        range_lr_scale: the ranges' learning rate as a multiple of the optimiser's lr (the paper gives no value;
            card: 1e-1 against 1e-3 -> 100). Weight decay 0 on the ranges. Schedulers scale it with the rest.
        Others: ``ClassificationTask`` (``input_key`` defaults to ``signal``).
    """

    def __init__(self, network: nn.Module, num_classes: int, range_lr_scale: float = 100.0,
                 input_key: str = "signal", optimizer: OptimizerCallable = torch.optim.SGD, **kwargs: Any):
        super().__init__(network=network, num_classes=num_classes, input_key=input_key, optimizer=optimizer, **kwargs)
        if range_lr_scale < 0:
            raise ValueError(f"range_lr_scale must be >= 0, got {range_lr_scale}")
        self.range_lr_scale = range_lr_scale

    def fern_layers(self) -> list[AngleFernHistogram]:
        return [m for m in self.modules() if isinstance(m, AngleFernHistogram)]

    def optimizer_parameters(self) -> list[dict]:
        ranges = [layer.ranges for layer in self.fern_layers() if layer.ranges.requires_grad]
        range_ids = {id(p) for p in ranges}
        groups = parameter_groups(self, self.layer_decay, self._layer_id, getattr(self.network, "num_layers", None))
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in range_ids]
        groups = [g for g in groups if g["params"]]
        if ranges:
            groups.append({"params": ranges, "lr_scale": self.range_lr_scale, "weight_decay": 0.0, "name": "ranges"})
        return groups

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        for layer in self.fern_layers():
            layer.clamp_ranges_()
