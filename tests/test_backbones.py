"""Backbones: parameter counts against torchvision's documented numbers, shapes, gradients, Grad-CAM target,
grey-scale input, and loading torchvision / MONAI / lukemelas-named checkpoints."""
from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from lightning_modules.backbones import (
    BACKBONES,
    ImageClassifier,
    PretrainedMismatchError,
    build_trunk,
)

# torchvision's documented ``num_params`` (1000 classes, RGB); efficientnet_b0/b4: lukemelas' EfficientNet-PyTorch
# (== torchvision's). Exact: with bias_downsample=False MONAI's ResNet is torchvision's layout.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "densenet121": 7_978_856,
    "vgg16": 138_357_544,
    "mobilenet_v2": 3_504_872,
    "efficientnet_v2_s": 21_458_488,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
}
SMALL = ["resnet18", "densenet121", "efficientnet_b0", "mobilenet_v2", "efficientnet_v2_s"]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_backbone_list_is_complete():
    assert set(BACKBONES) == set(TORCHVISION_PARAMS)


@pytest.mark.parametrize("name", list(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name):
    with torch.device("meta"):
        model = ImageClassifier(name, num_classes=1000, in_channels=3)
    assert n_params(model) == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", SMALL + ["resnet50"])
def test_shapes_gradients_and_target_layer(name):
    torch.manual_seed(0)
    model = ImageClassifier(name, num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    captured = {}
    handle = model.target_layer.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    logits = model(x)
    handle.remove()
    assert logits.shape == (2, 3)
    model.eval()
    with torch.no_grad():
        fmap, pooled = model.features(x), model.pooled(x)
    assert fmap.shape == (2, model.feature_channels, 2, 2)  # all trunks have stride 32
    assert pooled.shape == (2, model.feature_dim)
    torch.testing.assert_close(pooled, fmap.mean((2, 3)))
    # the hooked module's output is the feature map itself (same shape in train mode)
    assert captured["out"].shape == fmap.shape
    model.train()
    model.zero_grad()
    model(x).logsumexp(1).sum().backward()
    first_conv = next(m for m in model.trunk.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert isinstance(model.head, nn.Linear) and model.head.weight.grad.abs().sum() > 0


def test_vgg16_shapes_and_head():
    model = ImageClassifier("vgg16", num_classes=4, dropout=0.5)
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    assert model.features(x).shape == (1, 512, 1, 1)
    assert model.pooled(x).shape == (1, 4096) and model.feature_dim == 4096
    assert model(x).shape == (1, 4)
    assert model.target_layer is model.trunk.features
    assert model.head.in_features == 4096


def test_head_is_replaceable():
    model = ImageClassifier("mobilenet_v2", num_classes=2)
    model.head = nn.Linear(model.feature_dim, 7)
    model.eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "efficientnet_v2_s"])
def test_single_channel_input(name):
    model = ImageClassifier(name, num_classes=2, in_channels=1).eval()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 2)


def test_build_trunk():
    trunk, channels = build_trunk("mobilenet_v2", in_channels=1)
    assert channels == 1280
    assert trunk(torch.randn(1, 1, 64, 64)).shape == (1, 1280, 2, 2)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_trunk("alexnet")


# ------------------------------------------------------------------------------------------ checkpoints
def torchvision_resnet18_state_dict(num_classes: int = 1000) -> dict[str, torch.Tensor]:
    """torchvision resnet18's keys and shapes, written out from its architecture (not from our model)."""
    g = torch.Generator().manual_seed(1)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = torch.rand(c, generator=g)
        sd[f"{prefix}.bias"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(7)

    def conv(key, cout, cin, k):
        sd[key] = torch.randn(cout, cin, k, k, generator=g) * 0.05

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for layer, c in enumerate([64, 128, 256, 512], start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            conv(f"{p}.conv1.weight", c, cin if block == 0 else c, 3)
            bn(f"{p}.bn1", c)
            conv(f"{p}.conv2.weight", c, c, 3)
            bn(f"{p}.bn2", c)
            if block == 0 and layer > 1:
                conv(f"{p}.downsample.0.weight", c, cin, 1)
                bn(f"{p}.downsample.1", c)
        cin = c
    sd["fc.weight"] = torch.randn(num_classes, 512, generator=g)
    sd["fc.bias"] = torch.randn(num_classes, generator=g)
    return sd


def assert_trunk_equals(model: ImageClassifier, reference: dict[str, torch.Tensor], rename=lambda k: k):
    own = model.trunk.state_dict()
    for key, value in reference.items():
        if key.startswith(("fc.", "classifier", "_fc.")):
            continue
        torch.testing.assert_close(own[rename(key)], value, msg=key)


def test_torchvision_resnet18_checkpoint(tmp_path, caplog):
    ref = torchvision_resnet18_state_dict()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(ref, path)
    with caplog.at_level(logging.WARNING, logger="lightning_modules.backbones"):
        model = ImageClassifier("resnet18", num_classes=2, pretrained=str(path))
    assert_trunk_equals(model, ref)
    assert "fc.weight" not in model.trunk.state_dict()
    assert not torch.equal(model.head.weight[:2], ref["fc.weight"][:2, :])  # head skipped (1000 != 2)
    assert "head.weight" in caplog.text and "skipped" in caplog.text
    # same num_classes: the head is loaded too
    model = ImageClassifier("resnet18", num_classes=1000, pretrained=str(path))
    torch.testing.assert_close(model.head.weight, ref["fc.weight"])


def test_resnet18_grey_scale_from_rgb_checkpoint(tmp_path):
    ref = torchvision_resnet18_state_dict()
    path = tmp_path / "rgb.pth"
    torch.save({"state_dict": ref}, path)
    model = ImageClassifier("resnet18", num_classes=2, in_channels=1, pretrained=path)
    torch.testing.assert_close(model.trunk.conv1.weight, ref["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(model.trunk.layer4[1].conv2.weight, ref["layer4.1.conv2.weight"])


def test_wrong_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "not_a_resnet34.pth"
    torch.save(torchvision_resnet18_state_dict(), path)
    with pytest.raises(PretrainedMismatchError, match=re.escape(str(path))):
        ImageClassifier("resnet34", pretrained=str(path))
    with pytest.raises(PretrainedMismatchError, match="missing"):
        ImageClassifier("resnet34", pretrained=str(path))
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        ImageClassifier("resnet18", pretrained=str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("name", ["mobilenet_v2", "efficientnet_v2_s"])
def test_hand_written_models_load_their_torchvision_state_dict(tmp_path, name):
    torch.manual_seed(0)
    src = ImageClassifier(name, num_classes=1000)
    # the torchvision layout is: features.* (our trunk), classifier.0 = Dropout, classifier.1 = Linear
    tv = dict(src.trunk.state_dict())
    assert all(k.startswith("features.") for k in tv)
    tv["classifier.1.weight"], tv["classifier.1.bias"] = src.head.weight.detach(), src.head.bias.detach()
    path = tmp_path / f"{name}.pth"
    torch.save(tv, path)
    torch.manual_seed(1)
    model = ImageClassifier(name, num_classes=5, pretrained=str(path))
    assert_trunk_equals(model, tv)
    assert model.head.out_features == 5


def test_torchvision_key_names_of_hand_written_models():
    """Spot checks of torchvision's parameter names (as listed in its published state dicts)."""
    with torch.device("meta"):
        mob = ImageClassifier("mobilenet_v2").trunk.state_dict()
        eff = ImageClassifier("efficientnet_v2_s").trunk.state_dict()
        vgg = ImageClassifier("vgg16")
    for key in ["features.0.0.weight", "features.0.1.running_var", "features.1.conv.0.0.weight",
                "features.1.conv.1.weight", "features.1.conv.2.bias", "features.2.conv.0.0.weight",
                "features.17.conv.3.weight", "features.18.0.weight", "features.18.1.bias"]:
        assert key in mob, key
    assert mob["features.18.0.weight"].shape == (1280, 320, 1, 1)
    for key in ["features.0.0.weight", "features.1.0.block.0.0.weight", "features.2.0.block.1.0.weight",
                "features.4.0.block.2.fc1.weight", "features.4.0.block.2.fc2.bias", "features.6.14.block.3.1.bias",
                "features.7.0.weight"]:
        assert key in eff, key
    assert eff["features.6.14.block.0.0.weight"].shape == (1536, 256, 1, 1)
    assert vgg.trunk.state_dict()["features.28.weight"].shape == (512, 512, 3, 3)
    assert vgg.neck.state_dict()["0.weight"].shape == (4096, 25088)
    assert vgg.neck.state_dict()["3.weight"].shape == (4096, 4096)


def test_vgg16_torchvision_keys_map_to_neck_and_head():
    from lightning_modules.backbones import _to_classifier_keys

    with torch.device("meta"):
        model = ImageClassifier("vgg16", num_classes=2)
    tv = {"features.0.weight": 0, "classifier.0.weight": 1, "classifier.3.bias": 2, "classifier.6.weight": 3}
    tv = {k: torch.tensor(v) for k, v in tv.items()}
    mapped = _to_classifier_keys(tv, model)
    assert set(mapped) == {"trunk.features.0.weight", "neck.0.weight", "neck.3.bias", "head.weight"}
    assert set(mapped) <= set(model.state_dict())


def test_torchvision_densenet121_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = ImageClassifier("densenet121", num_classes=1000)
    ours = src.trunk.state_dict()
    # torchvision names: no ".layers" level; its legacy files (densenet121-a639ec97.pth) say "norm.1"
    tv = {k.replace(".layers.", "."): v.clone() for k, v in ours.items()}
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])", r"\1.\2", k): v for k, v in tv.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    for i, sd in enumerate([tv, legacy]):
        sd = dict(sd, **{"classifier.weight": src.head.weight.detach(), "classifier.bias": src.head.bias.detach()})
        path = tmp_path / f"densenet{i}.pth"
        torch.save(sd, path)
        loaded = ImageClassifier("densenet121", num_classes=3, pretrained=str(path)).trunk.state_dict()
        assert set(loaded) == set(ours)
        for k, v in ours.items():
            torch.testing.assert_close(loaded[k], v, msg=k)


def test_lukemelas_efficientnet_b0_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = ImageClassifier("efficientnet_b0", num_classes=1000)
    ours = src.trunk.state_dict()
    # lukemelas numbers the blocks globally without MONAI's stage level: _blocks.<i>.*
    luke = {re.sub(r"^_blocks\.\d+\.", "_blocks.", k): v for k, v in ours.items() if "num_batches" not in k}
    assert "_blocks.15._project_conv.weight" in luke and len(luke) == len(
        [k for k in ours if "num_batches" not in k])
    luke["_fc.weight"], luke["_fc.bias"] = src.head.weight.detach(), src.head.bias.detach()
    path = tmp_path / "efficientnet-b0-355c32eb.pth"
    torch.save(luke, path)
    model = ImageClassifier("efficientnet_b0", num_classes=1000, pretrained=str(path)).eval()
    src.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src(x))


def test_own_lightning_checkpoint_round_trip(tmp_path):
    src = ImageClassifier("mobilenet_v2", num_classes=4)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"network.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    model = ImageClassifier("mobilenet_v2", num_classes=4, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))


TORCHVISION_EQUIVALENT = ["resnet18", "resnet50", "densenet121", "vgg16", "mobilenet_v2", "efficientnet_v2_s"]


@pytest.mark.parametrize("name", TORCHVISION_EQUIVALENT)
def test_same_outputs_as_torchvision(tmp_path, name):
    """Where torchvision is installed (it is not a dependency): its randomly initialised model's state dict
    loads into ours and both give the same logits, i.e. the layouts are the same network."""
    models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    reference = getattr(models, name)(num_classes=10).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = ImageClassifier(name, num_classes=10, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet_b0"])
def test_same_outputs_as_lukemelas_efficientnet(tmp_path, name):
    """Where lukemelas' efficientnet_pytorch is installed (not a dependency): its state dict (flat ``_blocks.i``)
    loads into MONAI's EfficientNetBN and the logits agree."""
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    reference = efficientnet_pytorch.EfficientNet.from_name(name.replace("_", "-"), num_classes=10).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    ours = ImageClassifier(name, num_classes=10, pretrained=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


def test_grey_scale_model_equals_rgb_model_on_replicated_image(tmp_path):
    """Summing the first conv's RGB kernels makes the 1-channel model compute the RGB model's function on
    the grey image repeated over 3 channels."""
    torch.manual_seed(0)
    rgb = ImageClassifier("mobilenet_v2", num_classes=3).eval()
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    grey = ImageClassifier("mobilenet_v2", num_classes=3, in_channels=1, pretrained=str(path)).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_more_input_channels_repeat_scaled_kernels(tmp_path):
    """in_channels=6 from an RGB checkpoint: kernels repeated and scaled by 3/6, so the image stacked twice
    gives the RGB model's output."""
    torch.manual_seed(0)
    rgb = ImageClassifier("resnet18", num_classes=3).eval()
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    six = ImageClassifier("resnet18", num_classes=3, in_channels=6, pretrained=str(path)).eval()
    torch.testing.assert_close(six.trunk.conv1.weight, rgb.trunk.conv1.weight.repeat(1, 2, 1, 1) / 2)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(six(torch.cat([x, x], 1)), rgb(x), rtol=1e-4, atol=1e-5)


def test_resnet_width_multiplier():
    from lightning_modules.utils import count_parameters

    narrow = ImageClassifier("resnet18", num_classes=3, width=0.25)
    assert narrow.feature_channels == 128 and narrow.trunk.layer1[0].conv1.out_channels == 16
    assert narrow(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    # every conv has a quarter of the reference's input and output channels: ~1/16 of its weights
    full = count_parameters(ImageClassifier("resnet18", num_classes=3))
    assert 0.055 < count_parameters(narrow) / full < 0.07
    assert ImageClassifier("resnet50", num_classes=3, width=0.5).feature_channels == 1024
    with pytest.raises(ValueError, match="ResNets only"):
        ImageClassifier("vgg16", width=0.5)
