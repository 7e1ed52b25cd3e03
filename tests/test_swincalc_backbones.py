"""SwinCalc's ConvNeXt-T/S and EfficientNet-B3 backbones (the paper's Table 3 CNN rows): torchvision's parameter
counts and key names, feature strides and channels, checkpoint loading, and a RetinaNet detector on each that trains
(finite losses, gradients into the stem) and returns boxes."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.swincalc import RetinaNetCalcDetector, build_backbone, load_backbone
from lightning_modules.swincalc_cnn_backbones import EfficientNetStages, convnext
from lightning_modules.utils import count_parameters

TINY_CONVNEXT = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1))


@pytest.mark.parametrize("name,expected", [("convnext_tiny", 28_589_128), ("convnext_small", 50_223_688)])
def test_convnext_parameter_counts_match_torchvision(name, expected):
    """The card's 28.6M / 50.2M (torchvision's convnext_tiny / convnext_small with the 1000-class head): exact."""
    with torch.device("meta"):
        model = convnext(name)
    assert count_parameters(model) == expected


def test_efficientnet_b3_parameter_count_matches_timm_and_torchvision():
    """The card's 12.2M for EfficientNet-B3 is timm's / torchvision's 12,233,232 with the 1000-class head; the
    trunk here drops the head conv (384 -> 1536), its BN and the FC: 1536 * 384 + 2 * 1536 + 1536 * 1000 + 1000."""
    from monai.networks.nets import EfficientNetBN

    with torch.device("meta"):
        full = EfficientNetBN("efficientnet-b3", pretrained=False, spatial_dims=2, num_classes=1000)
        trunk = build_backbone("efficientnet_b3", out_indices=(1, 2, 3))
    assert count_parameters(full) == 12_233_232
    assert count_parameters(trunk) == 12_233_232 - (1536 * 384 + 2 * 1536 + 1536 * 1000 + 1000)
    assert trunk.out_channels == [48, 136, 384]


def test_convnext_keeps_torchvision_key_names():
    keys = set(convnext("convnext_tiny", **TINY_CONVNEXT, num_classes=10).state_dict())
    for key in ("features.0.0.weight", "features.0.1.weight", "features.1.0.block.0.weight",
                "features.1.0.block.2.weight", "features.1.0.block.3.weight", "features.1.0.block.5.bias",
                "features.1.0.layer_scale", "features.2.0.weight", "features.2.1.weight", "features.7.0.layer_scale",
                "classifier.0.weight", "classifier.2.weight"):
        assert key in keys, key


@pytest.mark.parametrize("name,args", [("convnext_tiny", TINY_CONVNEXT), ("efficientnet_b0", {})])
def test_feature_strides_and_channels(name, args):
    model = build_backbone(name, out_indices=(0, 1, 2, 3), **args).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, 128, 96))
    assert [f.shape[-2:] for f in features] == [(128 // s, 96 // s) for s in (4, 8, 16, 32)]
    assert [f.shape[1] for f in features] == model.out_channels
    assert model.stage_strides == [4, 8, 16, 32]


def test_load_convnext_from_a_classifier_state_dict(tmp_path):
    source = convnext("convnext_tiny", **TINY_CONVNEXT, num_classes=5)
    path = tmp_path / "convnext.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone("convnext_tiny", out_indices=(1, 2, 3), **TINY_CONVNEXT)
    result = load_backbone(backbone, str(path))
    assert result["unexpected"] == [] and all(k.startswith("out_norms") for k in result["missing"])
    torch.testing.assert_close(backbone.features[3][0].block[3].weight, source.features[3][0].block[3].weight)


@pytest.mark.parametrize("backbone,args", [("convnext_tiny", TINY_CONVNEXT), ("efficientnet_b0", {})])
def test_detector_on_the_cnn_backbones_trains_and_detects(backbone, args):
    torch.manual_seed(0)
    detector = RetinaNetCalcDetector(backbone=backbone, backbone_args=args, out_indices=(1, 2, 3), fpn_channels=16,
                                     extra_levels="none", anchor_sizes=[[16], [32], [64]], aspect_ratios=(1.0,),
                                     detections_per_img=5)
    images = torch.randn(2, 3, 64, 64)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 36.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detector.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stem = next(detector.backbone.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    with torch.no_grad():
        out = detector.eval()(images)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4 and len(out[0]["scores"]) <= 5


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("convnext_s")
    with pytest.raises(ValueError, match="no backbone_args"):
        build_backbone("efficientnet_b3", widen_factor=2)
    with pytest.raises(ValueError, match="unknown EfficientNet"):
        EfficientNetStages("efficientnet_b9")
