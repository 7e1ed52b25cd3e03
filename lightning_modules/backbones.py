"""ImageNet-style classification backbones for the medical image classification papers.

One classifier, :class:`ImageClassifier`, over a set of named trunks (``BACKBONES``):

* ``resnet18/34/50/101/152``: MONAI :class:`monai.networks.nets.ResNet`, 2-D, in torchvision's layout
  (7x7 stride-2 ``conv1``, 3x3 stride-2 max pool, shortcut type B, stride on the bottleneck's 3x3 conv,
  and ``bias_downsample=False``: MONAI's default gives the 1x1 shortcut convs a bias that torchvision's lack,
  896 / 3,840 extra parameters). Parameter names are then identical to torchvision's, so a torchvision
  ``resnet*.pth`` loads without renaming.
* ``densenet121``: MONAI ``DenseNet`` (6, 12, 24, 16). MONAI puts each dense layer's modules under
  ``.layers``; torchvision checkpoints (``norm1``) and the old ``norm.1`` form are renamed with the regex
  MONAI itself uses for its ImageNet weights. torchvision's final ``F.relu`` after ``norm5`` is a module here.
* ``efficientnet_b0`` ... ``efficientnet_b7``: MONAI ``EfficientNetBN``, the port of lukemelas'
  EfficientNet-PyTorch (TF "same" padding, BN eps 1e-3). Names equal lukemelas' except that MONAI nests the
  blocks per stage (``_blocks.<stage>.<global index>`` for lukemelas' ``_blocks.<global index>``); loading
  removes the stage index exactly as MONAI's own loader does.
* ``vgg16``, ``mobilenet_v2``, ``efficientnet_v2_s``: MONAI has none of them and torchvision cannot be
  imported here, so they are written below with torchvision's module tree, so that ``state_dict()`` keys
  and shapes are torchvision's and a torchvision checkpoint loads directly.

Layout of :class:`ImageClassifier`: ``trunk`` (image -> last conv feature map, the reference model's own
parameter names) -> global average pool -> ``neck`` (identity, except vgg16: 7x7 adaptive pool, flatten,
fc6-ReLU-dropout(0.5)-fc7-ReLU as torchvision's ``classifier[0:5]``, so ``pooled`` is the 4096-d fc7 output
and ``feature_dim`` is 4096 while ``feature_channels`` is 512) -> ``Dropout(dropout)`` -> ``head``
(``nn.Linear``). The reference models' classifier dropout (torchvision: 0.5 vgg, 0.2 mobilenet_v2 and
efficientnet_v2_s; lukemelas: 0.2-0.5 for b0-b7) is the ``dropout`` argument, 0 by default; pass the
reference value to reproduce the reference head exactly.

``target_layer`` is the module whose forward output *is* ``features(x)`` (resnet ``layer4``, densenet the
final ReLU, efficientnet-b the head activation, vgg ``features``, mobilenet/effnet-v2 ``features[-1]``), so a
Grad-CAM forward hook sees exactly the map that is pooled.

``pretrained`` is a local file only (never a download): a state dict, or a dict holding it under
``state_dict`` / ``model`` (``module.`` prefixes and Lightning's ``network.`` style prefixes in front of this
class's own ``trunk.`` keys are removed). Reference-named keys are mapped as above; the reference head
(``fc``, ``classifier``, ``class_layers.out``, ``_fc``, ``classifier.6``, ``classifier.1``) goes to ``head``
and is skipped, with a log line, when its shape differs (another ``num_classes``). A trunk key that is
missing, unexpected or of another shape raises :class:`PretrainedMismatchError` naming the file. When
``in_channels`` differs from the checkpoint's first conv, ``in_channels=1`` sums the RGB kernels (the usual
grey-scale trick) and other counts repeat the kernels cyclically scaled by ``c_ckpt / in_channels``.
"""
from __future__ import annotations

import copy
import logging
import math
import re
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
EFFICIENTNETS = tuple(f"efficientnet_b{i}" for i in range(8))
BACKBONES = RESNETS + ("densenet121",) + EFFICIENTNETS + ("vgg16", "mobilenet_v2", "efficientnet_v2_s")

# name of the reference model's final classification Linear (the key prefix in its state dict)
_HEAD_PREFIX = {
    **{n: "fc" for n in RESNETS},
    "densenet121": "classifier",  # torchvision; MONAI's own DenseNet calls it class_layers.out
    **{n: "_fc" for n in EFFICIENTNETS},
    "vgg16": "classifier.6",
    "mobilenet_v2": "classifier.1",
    "efficientnet_v2_s": "classifier.1",
}
_EXTRA_HEAD_PREFIXES = {"densenet121": ("class_layers.out",)}


class PretrainedMismatchError(RuntimeError):
    """A pretrained checkpoint's trunk does not fit the requested backbone."""


# --------------------------------------------------------------------------------------------- MONAI trunks
def _resnet_trunk(name: str, in_channels: int, width: float = 1.0) -> tuple[nn.Module, int]:
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import ResNetBlock, ResNetBottleneck

    block, layers = {
        "resnet18": (ResNetBlock, [2, 2, 2, 2]),
        "resnet34": (ResNetBlock, [3, 4, 6, 3]),
        "resnet50": (ResNetBottleneck, [3, 4, 6, 3]),
        "resnet101": (ResNetBottleneck, [3, 4, 23, 3]),
        "resnet152": (ResNetBottleneck, [3, 8, 36, 3]),
    }[name]

    class ResNetTrunk(ResNet):
        """MONAI ResNet without avgpool/fc; forward returns the layer4 map."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv1(x)
            x = self.act(self.bn1(x))
            x = self.maxpool(x)
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        @property
        def target_layer(self) -> nn.Module:
            return self.layer4

    planes = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    trunk = ResNetTrunk(
        block, layers, planes, spatial_dims=2, n_input_channels=in_channels, conv1_t_size=7,
        conv1_t_stride=2, no_max_pool=False, shortcut_type="B", feed_forward=False, bias_downsample=False,
    )
    del trunk.avgpool
    return trunk, planes[-1] * block.expansion


def _densenet_trunk(in_channels: int) -> tuple[nn.Module, int]:
    from monai.networks.nets import DenseNet

    class DenseNetTrunk(DenseNet):
        """MONAI DenseNet-121 without the classifier; forward returns relu(norm5(...))."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.final_relu(self.features(x))

        @property
        def target_layer(self) -> nn.Module:
            return self.final_relu

    trunk = DenseNetTrunk(spatial_dims=2, in_channels=in_channels, out_channels=1, init_features=64,
                          growth_rate=32, block_config=(6, 12, 24, 16))
    del trunk.class_layers
    trunk.final_relu = nn.ReLU(inplace=False)
    return trunk, 1024


def _efficientnet_trunk(name: str, in_channels: int) -> tuple[nn.Module, int]:
    from monai.networks.nets import EfficientNetBN

    class EfficientNetTrunk(EfficientNetBN):
        """MONAI EfficientNetBN without pooling/dropout/fc; forward returns swish(bn1(conv_head(...)))."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
            x = self._blocks(x)
            return self.head_act(self._bn1(self._conv_head(self._conv_head_padding(x))))

        @property
        def target_layer(self) -> nn.Module:
            return self.head_act

    trunk = EfficientNetTrunk(name.replace("_", "-"), pretrained=False, spatial_dims=2, in_channels=in_channels,
                              num_classes=1)
    channels = trunk._fc.in_features
    del trunk._fc, trunk._avg_pooling, trunk._dropout
    # MONAI reuses one swish module for stem and head; a separate one keeps Grad-CAM hooks to the head
    trunk.head_act = copy.deepcopy(trunk._swish)
    return trunk, channels


# ------------------------------------------------------------------------------- hand-written (torchvision)
def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """Channel rounding of the MobileNet/EfficientNet reference code."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> BN -> activation, as torchvision's ``Conv2dNormActivation`` (keys 0, 1, 2)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                 norm: Callable[[int], nn.Module] = nn.BatchNorm2d, act: Optional[Callable[[], nn.Module]] = None):
        layers = [nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
                  norm(cout)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)
        self.out_channels = cout


class StochasticDepth(nn.Module):
    """Per-sample residual-branch drop ("row" mode of torchvision.ops.StochasticDepth)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Permute(nn.Module):
    """``x.permute(*dims)`` as a layer (torchvision's ``Permute``), for channels-last blocks inside ``nn.Sequential``."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.dims = list(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class SqueezeExcitation(nn.Module):
    """torchvision's SE block: avgpool -> fc1 (1x1) -> act -> fc2 (1x1) -> sigmoid, scaling the input."""

    def __init__(self, channels: int, squeeze: int, act: Callable[[], nn.Module] = nn.SiLU):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class _FeaturesTrunk(nn.Module):
    """A torchvision-style ``features`` Sequential as trunk; target layer = its last module."""

    def __init__(self, features: nn.Sequential, target: Optional[nn.Module] = None):
        super().__init__()
        self.features = features
        self._target_is_all = target is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @property
    def target_layer(self) -> nn.Module:
        return self.features if self._target_is_all else self.features[-1]


def _init_torchvision(module: nn.Module, linear: str = "normal") -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear == "uniform":  # torchvision EfficientNet
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
            else:  # torchvision VGG / MobileNetV2
                nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


# VGG-16, configuration "D" of Simonyan & Zisserman (torchvision vgg16, no batch norm)
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def _vgg16_trunk(in_channels: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    c = in_channels
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            c = v
    trunk = _FeaturesTrunk(nn.Sequential(*layers))
    # torchvision VGG: kaiming_normal fan_out for convs (bias 0)
    _init_torchvision(trunk)
    return trunk, 512


def _vgg16_neck() -> nn.Sequential:
    """torchvision ``vgg16.classifier[0:5]`` (fc6, ReLU, Dropout(0.5), fc7, ReLU); indices kept for loading."""
    neck = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(0.5), nn.Linear(4096, 4096),
                         nn.ReLU(True))
    _init_torchvision(neck)
    return neck


class InvertedResidual(nn.Module):
    """MobileNetV2 block (torchvision names: ``conv`` = [pw ConvNormAct], dw ConvNormAct, pw-linear conv, BN)."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(cin, hidden, 1, act=nn.ReLU6))
        layers += [ConvNormAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def _mobilenet_v2_trunk(in_channels: int) -> tuple[nn.Module, int]:
    setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
               (6, 320, 1, 1)]  # t, c, n, s (Sandler et al., Table 2)
    c = 32
    layers: list[nn.Module] = [ConvNormAct(in_channels, c, 3, 2, act=nn.ReLU6)]
    for t, cout, n, s in setting:
        for i in range(n):
            layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
            c = cout
    layers.append(ConvNormAct(c, 1280, 1, act=nn.ReLU6))
    trunk = _FeaturesTrunk(nn.Sequential(*layers), target="last")
    _init_torchvision(trunk)
    return trunk, 1280


class MBConv(nn.Module):
    """EfficientNet(V2) MBConv, torchvision names (``block`` = [expand], depthwise, SE, project)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: float, sd_prob: float,
                 norm: Callable[[int], nn.Module]):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = _make_divisible(cin * expand_ratio, 8)
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(ConvNormAct(cin, hidden, 1, norm=norm, act=nn.SiLU))
        layers += [ConvNormAct(hidden, hidden, kernel, stride, groups=hidden, norm=norm, act=nn.SiLU),
                   SqueezeExcitation(hidden, max(1, cin // 4), act=partial(nn.SiLU, inplace=True)),
                   ConvNormAct(hidden, cout, 1, norm=norm, act=None)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


class FusedMBConv(nn.Module):
    """EfficientNetV2 Fused-MBConv, torchvision names (``block`` = fused expand [+ project])."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand_ratio: float, sd_prob: float,
                 norm: Callable[[int], nn.Module]):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = _make_divisible(cin * expand_ratio, 8)
        if hidden != cin:
            layers = [ConvNormAct(cin, hidden, kernel, stride, norm=norm, act=nn.SiLU),
                      ConvNormAct(hidden, cout, 1, norm=norm, act=None)]
        else:
            layers = [ConvNormAct(cin, cout, kernel, stride, norm=norm, act=nn.SiLU)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


def _efficientnet_v2_s_trunk(in_channels: int, stochastic_depth_prob: float = 0.2) -> tuple[nn.Module, int]:
    # (block, expand ratio, kernel, stride, in, out, layers): Tan & Le 2021, Table 4 (torchvision's setting)
    setting = [(FusedMBConv, 1, 3, 1, 24, 24, 2), (FusedMBConv, 4, 3, 2, 24, 48, 4),
               (FusedMBConv, 4, 3, 2, 48, 64, 4), (MBConv, 4, 3, 2, 64, 128, 6),
               (MBConv, 6, 3, 1, 128, 160, 9), (MBConv, 6, 3, 2, 160, 256, 15)]
    norm = partial(nn.BatchNorm2d, eps=1e-3)
    layers: list[nn.Module] = [ConvNormAct(in_channels, 24, 3, 2, norm=norm, act=nn.SiLU)]
    total = sum(s[-1] for s in setting)
    block_id = 0
    for block, ratio, k, stride, cin, cout, n in setting:
        stage = []
        for i in range(n):
            # stochastic depth rises linearly with the block index, as in torchvision
            stage.append(block(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, ratio,
                               stochastic_depth_prob * block_id / total, norm))
            block_id += 1
        layers.append(nn.Sequential(*stage))
    layers.append(ConvNormAct(256, 1280, 1, norm=norm, act=nn.SiLU))
    trunk = _FeaturesTrunk(nn.Sequential(*layers), target="last")
    _init_torchvision(trunk)
    return trunk, 1280


# --------------------------------------------------------------------------------------------------- API
def build_trunk(name: str, in_channels: int = 3, width: float = 1.0) -> tuple[nn.Module, int]:
    """The image -> last-conv-feature-map trunk of ``name`` and its channel count.

    The trunk's ``state_dict`` keys are the reference model's (torchvision / MONAI) minus its head; it has a
    ``target_layer`` property (the module whose output is the returned map). ``width`` scales the ResNets' stage
    widths (64, 128, 256, 512): a cheap network for CPU demos; 1 (the reference) for every other backbone.
    """
    if width != 1.0 and name not in RESNETS:
        raise ValueError(f"width applies to the ResNets only, got width={width} for {name!r}")
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    if name in RESNETS:
        return _resnet_trunk(name, in_channels, width)
    if name == "densenet121":
        return _densenet_trunk(in_channels)
    if name in EFFICIENTNETS:
        return _efficientnet_trunk(name, in_channels)
    if name == "vgg16":
        return _vgg16_trunk(in_channels)
    if name == "mobilenet_v2":
        return _mobilenet_v2_trunk(in_channels)
    if name == "efficientnet_v2_s":
        return _efficientnet_v2_s_trunk(in_channels)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


class ImageClassifier(nn.Module):
    """trunk -> global average pool -> (vgg16: fc6/fc7) -> dropout -> ``head`` Linear.

    Args:
        backbone: one of ``BACKBONES``.
        num_classes: outputs of ``head``.
        in_channels: image channels (1 for grey-scale; a 3-channel checkpoint's first conv is summed).
        pretrained: optional local checkpoint path (see the module docstring for the accepted formats).
        dropout: dropout before ``head`` (the reference classifiers' dropout; 0 = none).
        width: ResNet stage-width multiplier (1 = the reference network; e.g. 0.25 for a fast CPU demo).
    """

    def __init__(self, backbone: str = "resnet18", num_classes: int = 2, in_channels: int = 3,
                 pretrained: Optional[str] = None, dropout: float = 0.0, width: float = 1.0):
        super().__init__()
        self.backbone = backbone
        self.trunk, self.feature_channels = build_trunk(backbone, in_channels, width)
        if backbone == "vgg16":
            self.pool = nn.AdaptiveAvgPool2d((7, 7))
            self.neck = _vgg16_neck()
            self.feature_dim = 4096
        else:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.neck = nn.Identity()
            self.feature_dim = self.feature_channels
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)
        if backbone in ("vgg16", "mobilenet_v2"):
            _init_torchvision(self.head, "normal")
        elif backbone == "efficientnet_v2_s":
            _init_torchvision(self.head, "uniform")
        if pretrained:
            load_pretrained(self, pretrained)

    @property
    def target_layer(self) -> nn.Module:
        """The module whose output is ``features(x)`` (for Grad-CAM forward/backward hooks)."""
        return self.trunk.target_layer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Last conv feature map, (B, feature_channels, h, w)."""
        return self.trunk(x)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled features (vgg16: the fc7 output), (B, feature_dim), before dropout/head."""
        return self.neck(torch.flatten(self.pool(self.features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.pooled(x)))


# ---------------------------------------------------------------------------------------------- loading
_DENSE_LAYER = re.compile(r"^(.*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|"
                          r"num_batches_tracked)$")
_EFFNET_STAGE = re.compile(r"^_blocks\.\d+\.(\d+\..+)$")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist (no download is attempted)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # e.g. a Lightning checkpoint with pickled hyper-parameters
        log.warning("%s: weights_only load failed (%s); loading it as a full pickle", path, err)
        obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise PretrainedMismatchError(f"pretrained checkpoint {path} holds no state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _to_classifier_keys(state: dict[str, torch.Tensor], model: ImageClassifier) -> dict[str, torch.Tensor]:
    """Rename a checkpoint's keys to ``model``'s (``trunk.``/``neck.``/``head.``)."""
    own = [k for k in state if re.search(r"(^|\.)trunk\.", k)]
    if own:  # this class's own format, possibly behind a prefix such as Lightning's "network."
        prefix = own[0][: own[0].index("trunk.")]
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    name = model.backbone
    trunk_keys = set(model.trunk.state_dict())
    flat = {}
    if name in EFFICIENTNETS:  # lukemelas' flat _blocks.<i> -> MONAI's _blocks.<stage>.<i>
        flat = {_EFFNET_STAGE.sub(r"_blocks.\1", k): k for k in trunk_keys}
    heads = (_HEAD_PREFIX[name],) + _EXTRA_HEAD_PREFIXES.get(name, ())
    out = {}
    for key, value in state.items():
        head = next((h for h in heads if key.startswith(h + ".")), None)
        if head is not None:
            out["head." + key[len(head) + 1:]] = value
            continue
        if name == "vgg16" and re.match(r"^classifier\.[0-4]\.", key):
            out["neck." + key[len("classifier."):]] = value
            continue
        if name == "densenet121":
            key = _DENSE_LAYER.sub(r"\1.layers.\2\3.\4", key)
        key = flat.get(key, key)
        out["trunk." + key] = value
    return out


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    reps = math.ceil(in_channels / weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def load_pretrained(model: ImageClassifier, path: str | Path) -> dict[str, list[str]]:
    """Load a local checkpoint into ``model`` (see the module docstring); returns the skipped head keys."""
    path = Path(path)
    state = _to_classifier_keys(_read_state_dict(path), model)
    target = model.state_dict()
    first_conv = next(k for k, v in target.items() if k.startswith("trunk.") and v.ndim == 4)
    skipped, missing, unexpected, wrong = [], [], [], []
    for key, value in list(state.items()):
        if key not in target:
            if not key.endswith("num_batches_tracked"):
                unexpected.append(key)
            del state[key]
        elif key.startswith("head.") and value.shape != target[key].shape:
            skipped.append(key)
            del state[key]
        elif key == first_conv and value.shape != target[key].shape and value.shape[0] == target[key].shape[0] \
                and value.shape[2:] == target[key].shape[2:]:
            state[key] = _adapt_first_conv(value, target[key].shape[1]).to(value.dtype)
            log.info("%s: first conv %s adapted from %d to %d input channels", path, key, value.shape[1],
                     target[key].shape[1])
        elif value.shape != target[key].shape:
            wrong.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(target[key].shape)}")
    for key in target:
        if key not in state and not key.startswith("head.") and not key.endswith("num_batches_tracked"):
            missing.append(key)
    if missing or unexpected or wrong:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
        parts = [f"{label}: {few(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong)) if keys]
        raise PretrainedMismatchError(
            f"pretrained checkpoint {path} does not match backbone {model.backbone!r} ("
            + "; ".join(parts) + "). Expected a torchvision/MONAI/lukemelas state dict of that architecture.")
    if skipped:
        log.warning("%s: head keys skipped (their shape differs from this head's %s): %s", path,
                    tuple(getattr(model.head, "weight", torch.empty(0)).shape), ", ".join(skipped))
    model.load_state_dict(state, strict=False)
    return {"skipped": skipped}
