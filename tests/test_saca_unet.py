"""SACA-UNet, UNeXt and the Table IV baselines: shapes, parameter counts, gradients, ablation switches."""
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.blocks.aspp import ASPP, CrossASPP
from lightning_modules.blocks.attention import ChannelAttention, GlobalBlock, relative_position_index
from lightning_modules.saca_unet import SACAUNet
from lightning_modules.attention_unet import AttentionUNet
from lightning_modules.unet import UNet
from lightning_modules.unext import UNeXt, _shift
from lightning_modules.utils import count_parameters


SMALL = dict(channels=[8, 16, 32, 40, 64], img_size=64)


def test_unext_parameter_count_is_the_official_one():
    """UNeXt paper (Table 1) and the official code: 1.47M. Ours is the official module tree, so the
    count is exact (1,471,921 rounds to 1.47M); a 0.5 % tolerance would still catch any missing layer."""
    with torch.device("meta"):
        assert count_parameters(UNeXt()) == 1_471_921


def test_baseline_parameter_counts():
    """U-Net / Attention U-Net equal the LeeJunHyun/Image_Segmentation U_Net / AttU_Net counts (3 -> 1)."""
    with torch.device("meta"):
        assert count_parameters(UNet()) == 34_527_041
        assert count_parameters(AttentionUNet()) == 34_878_573
        # torchvision's DeepLabV3 ASPP(256, [12, 24, 36], 256), counted by hand:
        # 1x1 65,536+512; 3 atrous 3x(589,824+512); pooling 65,536+512; projection 327,680+512
        assert count_parameters(ASPP(256, [12, 24, 36], 256)) == 2_231_296


def test_saca_unet_parameter_counts_of_the_ablations():
    """The paper gives no count; these are ours (documented in docs/papers/saca_unet.md)."""
    with torch.device("meta"):
        counts = {b: count_parameters(SACAUNet(bottleneck=b)) for b in ("cross_aspp", "aspp", "none")}
    assert counts == {"cross_aspp": 5_465_223, "aspp": 5_596_295, "none": 3_364_999}
    # Cross-ASPP at C=256: two 1x1 heads, three atrous 3x3, the 3C -> C fusion (each conv + BN)
    c = 256
    assert counts["cross_aspp"] - counts["none"] == 2 * (c * c + 2 * c) + 3 * (9 * c * c + 2 * c) + (3 * c * c + 2 * c)


def test_official_unext_state_dict_keys():
    keys = set(UNeXt(**SMALL).state_dict())
    for key in ("encoder1.weight", "ebn1.running_mean", "patch_embed3.proj.weight", "patch_embed3.norm.weight",
                "block1.0.norm2.weight", "block1.0.mlp.fc1.weight", "block1.0.mlp.dwconv.dwconv.weight",
                "block2.0.mlp.fc2.bias", "dblock2.0.mlp.fc1.weight", "norm3.weight", "dnorm4.bias",
                "decoder5.weight", "dbn4.weight", "final.weight"):
        assert key in keys, key


@pytest.mark.parametrize("model_cls", [SACAUNet, UNeXt])
@pytest.mark.parametrize("size", [(32, 32), (64, 96), (32, 64)])
def test_output_shapes_at_several_sizes(model_cls, size):
    model = model_cls(**SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 1, *size)


def test_input_size_must_be_divisible_by_32():
    with pytest.raises(ValueError, match="divisible by 32"):
        SACAUNet(**SMALL)(torch.randn(1, 3, 48, 64))


def test_multiclass_and_grayscale_inputs():
    model = SACAUNet(in_channels=1, num_classes=3, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.parametrize("bottleneck", ["cross_aspp", "aspp", "none"])
def test_gradients_reach_every_parameter(bottleneck):
    # 64 px: the deepest token grid is 2x2 (at 1x1 the position bias would have nothing to act on)
    model = SACAUNet(bottleneck=bottleneck, channels=[4, 8, 16, 16, 32], img_size=64)
    F.binary_cross_entropy_with_logits(model(torch.randn(2, 3, 64, 64)), torch.rand(2, 1, 64, 64)).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [name for name, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, zero


def test_ablation_switches_change_the_structure():
    assert isinstance(SACAUNet(**SMALL).bottleneck, CrossASPP)
    assert isinstance(SACAUNet(bottleneck="aspp", **SMALL).bottleneck, ASPP)
    assert isinstance(SACAUNet(bottleneck="none", **SMALL).bottleneck, torch.nn.Identity)
    torch.manual_seed(0)
    reference = SACAUNet(**SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    outputs = {}
    for n_skips in range(5):
        model = SACAUNet(n_skips=n_skips, **SMALL).eval()
        model.load_state_dict(reference.state_dict())  # same weights, fewer skips
        with torch.no_grad():
            outputs[n_skips] = model(x)
    with torch.no_grad():
        assert torch.allclose(outputs[4], reference(x), atol=1e-6)
    for a in range(5):
        for b in range(a + 1, 5):
            assert not torch.allclose(outputs[a], outputs[b])


def test_deepest_skip_is_dropped_first():
    """n_skips = 3 keeps t1..t3: the first decoder stage sees t4 only through E5, not added 1:1."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    gradients = {}
    for n_skips in (3, 4):
        model = SACAUNet(n_skips=n_skips, **SMALL).eval()
        if n_skips == 4:
            model.load_state_dict(reference_state)
        reference_state = model.state_dict()
        seen = {}
        model.norm3.register_forward_hook(lambda m, args, out: seen.update(t4=out))
        model.dblock1[0].register_forward_pre_hook(lambda m, args: seen.update(stage=args[0]))  # returns None
        model(x)
        gradients[n_skips] = torch.autograd.grad(seen["stage"].sum(), seen["t4"])[0]
    # same weights: the path through E5 is common, the skip adds d(stage)/d(t4) = 1 everywhere
    assert torch.allclose(gradients[4] - gradients[3], torch.ones_like(gradients[3]), atol=1e-5)


def test_cross_aspp_fuses_neighbouring_scales_residually():
    torch.manual_seed(0)
    block = CrossASPP(8, 8, (1, 2, 3)).eval()
    x = torch.randn(2, 8, 6, 6)
    m1 = block.atrous[0](x)
    m2 = block.atrous[1](x) + m1
    m3 = block.atrous[2](x) + m2
    expected = block.fuse(torch.cat([block.left(x), m3, block.right(x)], 1))
    assert torch.allclose(block(x), expected, atol=1e-6)
    assert [conv[0].dilation for conv in block.atrous] == [(1, 1), (2, 2), (3, 3)]
    assert [conv[0].padding for conv in block.atrous] == [(1, 1), (2, 2), (3, 3)]  # padding = dilation


def test_aspp_has_torchvision_module_names():
    keys = set(ASPP(16, [2, 4], 8).state_dict())
    for key in ("convs.0.0.weight", "convs.0.1.running_var", "convs.1.0.weight", "convs.3.1.weight",
                "project.0.weight", "project.1.bias"):
        assert key in keys, key


def test_relative_position_index_matches_swin():
    index = relative_position_index(2, 2)
    # Swin's formula: (dy + H - 1) * (2W - 1) + (dx + W - 1); token 0 = (0, 0), token 3 = (1, 1)
    assert index[0, 0] == 1 * 3 + 1 and index[0, 3] == 0 * 3 + 0 and index[3, 0] == 2 * 3 + 2
    assert index.max() == 8 and index.min() == 0


def test_position_bias_is_resized_for_another_grid():
    model = SACAUNet(**SMALL).eval()  # tables sized for 64 px
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 1, 128, 128)
    bias = model.block1[0].token_attention.position_bias
    assert bias(4, 4).shape == (bias.num_heads, 16, 16) and bias(8, 8).shape == (bias.num_heads, 64, 64)


def test_channel_attention_matches_a_hand_computation():
    torch.manual_seed(0)
    attention = ChannelAttention(dim=4, num_heads=1)
    x = torch.randn(1, 5, 4)
    q, k, v = attention.qkv(x).chunk(3, dim=-1)
    a = torch.softmax(q[0].T @ k[0] / math.sqrt(5), dim=-1)  # C x C, scaled by sqrt(N)
    expected = attention.proj((a @ v[0].T).T)
    assert torch.allclose(attention(x)[0], expected, atol=1e-6)


def test_global_block_residuals():
    block = GlobalBlock(dim=32, num_heads=1, grid_size=(4, 4)).eval()
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        for layer in (block.channel_attention.proj, block.mlp[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        assert torch.allclose(block(x, 4, 4), x)  # Z' = CA(Z) + X, G = MLP(LN(Z')) + Z'
    assert GlobalBlock(dim=160, num_heads=5, grid_size=(16, 16)).mlp[0].out_features == 640  # MLP ratio 4


def test_default_heads_are_c_over_32():
    model = SACAUNet()
    heads = [blocks[0].token_attention.num_heads for blocks in (model.block1, model.block2, model.dblock1, model.dblock2)]
    assert heads == [5, 8, 5, 4]


def test_shift_matches_the_official_code():
    """UNeXt's shift, written as in the official ``shiftmlp.forward`` (pad, chunk, roll, narrow)."""
    torch.manual_seed(0)
    b, c, h, w, shift_size = 2, 10, 6, 7, 5
    x = torch.randn(b, h * w, c)
    pad = shift_size // 2
    for dim in (2, 3):
        xn = F.pad(x.transpose(1, 2).view(b, c, h, w), (pad, pad, pad, pad), "constant", 0)
        xs = torch.chunk(xn, shift_size, 1)
        x_cat = torch.cat([torch.roll(x_c, s, dim) for x_c, s in zip(xs, range(-pad, pad + 1))], 1)
        x_s = torch.narrow(torch.narrow(x_cat, 2, pad, h), 3, pad, w)
        expected = x_s.reshape(b, c, h * w).transpose(1, 2)
        assert torch.equal(_shift(x, h, w, shift_size, dim), expected)


def test_unet_and_attention_unet_shapes_and_gates():
    small = dict(features=[4, 8, 16, 32, 64])
    x = torch.randn(2, 3, 32, 48)
    assert UNet(**small)(x).shape == (2, 1, 32, 48)
    model = AttentionUNet(num_classes=2, **small)
    assert model(x).shape == (2, 2, 32, 48) and hasattr(model, "Att2") and not hasattr(UNet(**small), "Att2")
