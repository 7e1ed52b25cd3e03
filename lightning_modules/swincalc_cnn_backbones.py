"""SwinCalc's CNN backbones of the paper's Table 3 beside the ResNets: ConvNeXt-T/S and EfficientNet (B3, the card's
choice: the paper names no variant), as multi-scale feature extractors for the FPN (``forward_features`` -> the NCHW
maps of ``out_indices``; stages 0-3 at strides 4/8/16/32).

ConvNeXt (Liu et al. 2022) is written in torchvision's layout (``features.<i>``, blocks ``block.0`` depthwise 7x7,
``block.2`` LayerNorm, ``block.3``/``block.5`` the MLP, ``layer_scale``; ``classifier``), so torchvision's ImageNet
``convnext_tiny``/``convnext_small`` state dicts load as they are (``swincalc.load_backbone``); with the
1000-class head it has torchvision's parameter counts (28,589,128 and 50,223,688). For detection each returned stage
gets its own LayerNorm, as MMDetection's ConvNeXt adds.

EfficientNet is MONAI's ``EfficientNetBNFeatures`` (the EfficientNet-PyTorch layout; B3 with its 1000-class head has
timm's and torchvision's 12,233,232 parameters) without the unused classifier end (head conv, its BN, the FC).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_modules.backbones import Permute, StochasticDepth

CONVNEXT_CONFIGS = {
    "convnext_tiny": dict(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), stochastic_depth_prob=0.1),
    "convnext_small": dict(dims=(96, 192, 384, 768), depths=(3, 3, 27, 3), stochastic_depth_prob=0.4),
}
EFFICIENTNET_NAMES = tuple(f"efficientnet_b{i}" for i in range(8))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (torchvision's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> LayerNorm -> Linear 4x -> GELU -> Linear, scaled (layer scale 1e-6) and
    added to the input through stochastic depth."""

    def __init__(self, dim: int, layer_scale: float = 1e-6, stochastic_depth_prob: float = 0.0):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True), Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim),
            Permute([0, 3, 1, 2]))
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.stochastic_depth(self.layer_scale * self.block(x))


class ConvNeXt(nn.Module):
    """ConvNeXt in torchvision's layout. ``out_indices`` (stages 0-3) selects the maps ``forward_features``
    returns, each through its own LayerNorm2d (``out_norms``); ``num_classes`` > 0 adds torchvision's classifier
    (LayerNorm2d, flatten, linear) for ``forward``."""

    def __init__(self, dims: Sequence[int] = (96, 192, 384, 768), depths: Sequence[int] = (3, 3, 9, 3),
                 stochastic_depth_prob: float = 0.1, layer_scale: float = 1e-6, in_channels: int = 3,
                 num_classes: int = 1000, out_indices: Sequence[int] = ()):
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError("dims and depths need one entry per stage")
        layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
                                                 LayerNorm2d(dims[0], eps=1e-6))]
        total, block_id = sum(depths), 0
        for stage, (dim, depth) in enumerate(zip(dims, depths)):
            blocks = []
            for _ in range(depth):
                blocks.append(CNBlock(dim, layer_scale, stochastic_depth_prob * block_id / max(total - 1, 1)))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if stage < len(dims) - 1:
                layers.append(nn.Sequential(LayerNorm2d(dim, eps=1e-6),
                                            nn.Conv2d(dim, dims[stage + 1], kernel_size=2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.stage_channels = list(dims)
        self.stage_strides = [4 * 2 ** i for i in range(len(dims))]
        self.out_indices = list(out_indices)
        if num_classes == 0 and not self.out_indices:
            raise ValueError("a ConvNeXt without a classifier needs out_indices (the stages it returns)")
        if any(i < 0 or i >= len(dims) for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} outside stages 0..{len(dims) - 1}")
        self.out_norms = nn.ModuleList([LayerNorm2d(dims[i], eps=1e-6) for i in self.out_indices])
        self.num_classes = num_classes
        if num_classes > 0:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1),
                                            nn.Linear(dims[-1], num_classes))
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def out_channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index % 2 == 1:  # features 1, 3, 5, 7 are the stages
                stage = index // 2
                if stage in self.out_indices:
                    outputs.append(self.out_norms[self.out_indices.index(stage)](x))
                if stage >= max(self.out_indices) and self.num_classes == 0:
                    break
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_classes == 0:
            raise RuntimeError("built without a classifier (num_classes=0): use forward_features")
        return self.classifier(self.avgpool(self.features(x)))


def convnext(name: str = "convnext_tiny", **kwargs) -> ConvNeXt:
    """``convnext_tiny``/``convnext_small`` with torchvision's hyperparameters, overridable."""
    if name not in CONVNEXT_CONFIGS:
        raise ValueError(f"unknown ConvNeXt variant {name!r}; choose from {sorted(CONVNEXT_CONFIGS)}")
    return ConvNeXt(**{**CONVNEXT_CONFIGS[name], **kwargs})


class EfficientNetStages(nn.Module):
    """MONAI's EfficientNet-B0..B7 trunk returning the NCHW maps of ``out_indices`` (stages 0-3: strides
    4/8/16/32, the blocks after which the resolution halves). MONAI pads its convolutions statically for the
    variant's ImageNet size (B3: 300 px), so other sizes get that padding; the detector pads its input to a multiple
    of the coarsest stride, where the maps are exactly size / stride."""

    def __init__(self, name: str = "efficientnet_b3", in_channels: int = 3, out_indices: Sequence[int] = (1, 2, 3)):
        super().__init__()
        from monai.networks.nets import EfficientNetBNFeatures

        if name not in EFFICIENTNET_NAMES:
            raise ValueError(f"unknown EfficientNet {name!r}; choose from {EFFICIENTNET_NAMES}")
        net = EfficientNetBNFeatures(name.replace("_", "-"), pretrained=False, spatial_dims=2,
                                     in_channels=in_channels)
        # the classifier end is never run for features: drop it (no unused parameters under DDP)
        net._conv_head = net._conv_head_padding = net._bn1 = net._fc = nn.Identity()
        self.net = net
        self.out_indices = list(out_indices)
        if not self.out_indices or any(i < 0 or i > 3 for i in self.out_indices):
            raise ValueError(f"out_indices {self.out_indices} must be stages within 0..3")
        # channels of the stride 4/8/16/32 maps (MONAI's extract stacks 1-4): the last BN of the block group
        self.stage_channels = [[m for m in net._blocks[i - 1].modules() if isinstance(m, nn.BatchNorm2d)][-1]
                               .num_features for i in net.extract_stacks[1:5]]
        self.stage_strides = [4, 8, 16, 32]

    @property
    def out_channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.net(x)[1:5]
        return [features[i] for i in self.out_indices]
