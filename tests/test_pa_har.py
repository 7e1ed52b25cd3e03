"""PA-HAR: the Parallel Attention block against a hand computation (SSE vector vs gate), shapes, gradients and
parameter counts of the backbones and comparison blocks, and a short stand-in run that beats the prior."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import run
from lightning_modules.pa_har import PAHAR, CBAMBlock, EPSABlock, NAMBlock, ParallelAttention, SEBlock, SkipSqueezeExcitation
from lightning_modules.utils import count_parameters

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "pa_har_demo.yaml")


def _randomise(module):
    """Non-trivial BN statistics and affine parameters so the hand computation checks them."""
    torch.manual_seed(1)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.3, 0.3)
    return module.eval()


def _bn(x, bn):
    return ((x - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
            * bn.weight[None, :, None, None] + bn.bias[None, :, None, None])


@pytest.mark.parametrize("mode", ["vector", "gate"])
def test_parallel_attention_matches_eq_7_by_hand(mode):
    block = _randomise(ParallelAttention(4, sse_mode=mode, act="silu"))
    x = torch.randn(2, 4, 10, 6)
    conv1, bn1 = block.scale1
    conv3, bn3 = block.scale2
    scale1 = _bn(F.conv2d(x, conv1.weight), bn1)
    scale2 = _bn(F.conv2d(x, conv3.weight, padding=1), bn3)
    fc = block.sse.fc
    if mode == "vector":  # Eq. 4 literally: Z = sigmoid(T(GAP(X))) broadcast over time and sensors
        z = torch.sigmoid(x.mean(dim=(2, 3)) @ fc.weight.T + fc.bias)[:, :, None, None]
    else:  # ParNet: Z = BN(X) * sigmoid(T(GAP(BN(X))))
        xb = _bn(x, block.sse.bn)
        z = xb * torch.sigmoid(xb.mean(dim=(2, 3)) @ fc.weight.T + fc.bias)[:, :, None, None]
    expected = scale1 + scale2 + z
    expected = expected * torch.sigmoid(expected)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    relu = _randomise(ParallelAttention(4, sse_mode=mode, act="relu"))
    relu.load_state_dict(block.state_dict())
    torch.testing.assert_close(relu(x), torch.relu(scale1 + scale2 + z), rtol=1e-5, atol=1e-5)


def test_sse_vector_is_constant_over_time_and_sensors_and_branch_subsets():
    sse = SkipSqueezeExcitation(8, "vector")
    z = sse(torch.randn(3, 8, 5, 7))
    assert z.shape == (3, 8, 1, 1) and ((z > 0) & (z < 1)).all()
    only_sse = _randomise(ParallelAttention(4, branches=["sse"]))
    x = torch.randn(2, 4, 6, 3)
    torch.testing.assert_close(only_sse(x), F.silu(only_sse.sse(x)))
    multiscale = ParallelAttention(4, branches=["scale1", "scale2"])
    assert multiscale.sse is None and count_parameters(multiscale) == 10 * 16 + 4 * 4
    with pytest.raises(ValueError):
        ParallelAttention(4, branches=[])


@pytest.mark.parametrize("mode,extra", [("gate", 2), ("vector", 0)])
def test_parallel_attention_parameter_count(mode, extra):
    c = 32  # 1x1 conv C^2, 3x3 conv 9C^2 (no biases: BN follows), two BNs 4C, one Linear C^2 + C, gate BN 2C
    assert count_parameters(ParallelAttention(c, sse_mode=mode)) == 10 * c * c + 4 * c + c * c + c + extra * c


@pytest.mark.parametrize("kwargs", [dict(), dict(attention="none"), dict(attention="se"), dict(attention="cbam"),
                                    dict(attention="epsa"), dict(attention="nam"), dict(sse_mode="vector", pa_act="relu"),
                                    dict(backbone="zhang_resnet"), dict(positions=[3]),
                                    dict(head="flatten_fc", input_shape=[128, 9])])
def test_network_shapes_and_gradients(kwargs):
    net = PAHAR(num_classes=6, **kwargs)
    x = torch.randn(3, 128, 9, requires_grad=True)
    logits = net(x)
    assert logits.shape == (3, 6)
    assert net.features(x).shape[-1] == 9  # the sensor axis is never strided
    logits.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters()), kwargs
    torch.testing.assert_close(net(x.detach().unsqueeze(1)), logits.detach())  # (B, 1, T, C) input alike


def test_backbone_parameter_counts():
    """The paper gives none; these pin the card's backbones (closed forms) so a change shows up."""
    baseline = PAHAR(num_classes=6, attention="none")
    convs = 0
    previous = 1
    for c in (64, 128, 256):
        convs += previous * c * 3 + c * c * 3 + previous * c + 3 * 2 * c  # conv_a, conv_b, shortcut, 3 BNs
        previous = c
    assert count_parameters(baseline) == convs + 256 * 6 + 6
    pa = PAHAR(num_classes=6)
    assert count_parameters(pa) - count_parameters(baseline) == sum(11 * c * c + 7 * c for c in (64, 128, 256))
    assert count_parameters(PAHAR(num_classes=6, backbone="zhang_resnet")) > count_parameters(pa)
    # blocks keep the shape
    for block in (SEBlock(64), CBAMBlock(64), EPSABlock(64), NAMBlock(64)):
        assert block(torch.randn(2, 64, 8, 9)).shape == (2, 64, 8, 9)


def test_epsa_weights_are_a_softmax_over_the_branches():
    """Zeroing the convs of branches 2-4 leaves their outputs zero and scales branch 1's features by its softmax
    weight, strictly between 0 and 1."""
    block = EPSABlock(16).eval()
    with torch.no_grad():
        for conv in block.convs[1:]:
            conv.weight.zero_()
        x = torch.randn(2, 16, 6, 5)
        out = block(x).view(2, 4, 4, 6, 5)
        first = block.convs[0](x)
        ratio = out[:, 0] / first
        assert torch.all(ratio > 0) and torch.all(ratio < 1)
        torch.testing.assert_close(out[:, 1:], torch.zeros_like(out[:, 1:]))


def test_demo_learns_and_beats_the_prior(tmp_path):
    """Three epochs of the demo: the training loss falls and accuracy is far above the 1/6 prior."""
    cli = run.main(["--config", DEMO, "--trainer.max_epochs", "3",
              "--runs_dir", str(tmp_path), "--run_id", "t", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / "pa_har_demo" / "t" / "results.json").read_text())
    assert results["test/acc_prior"] == pytest.approx(1 / 6, abs=0.05)
    assert results["test/acc"] > 0.6 and results["test/macro_f1"] > 0.5
    # the training loss fell from chance level (ln 6 = 1.79 at initialisation) to well below it
    batch = next(iter(cli.datamodule.train_dataloader()))
    fresh = PAHAR(num_classes=6, channels=[16, 32, 64]).eval()
    trained = cli.model.network.eval()
    with torch.no_grad():
        before = F.cross_entropy(fresh(batch["signal"]), batch["label"]).item()
        after = F.cross_entropy(trained(batch["signal"]), batch["label"]).item()
    assert before > 1.2 and after < 0.5 * before
