"""SpecSlice-ConvLSTM's Table 4 baselines: FPN and DeepLabV3+ (smp layout, ResNet-34, 60 bands), nnU-Net 2D."""
from __future__ import annotations

import torch

from lightning_modules.blocks.aspp import ASPP
from lightning_modules.ss_convlstm import count_macs
from lightning_modules.ss_convlstm_baselines import DeepLabV3PlusSeg, FPNSeg, NNUNet2D, SwinUNETRSeg, UNet3DSeg


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta(cls, **kwargs):
    with torch.device("meta"):
        return cls(**kwargs)


def test_parameter_counts_match_the_paper_table_4():
    # smp FPN / DeepLabV3Plus("resnet34", in_channels=60, classes=1); paper: 23.33 M / 22.62 M. The decoder counts
    # follow from smp's layers: FPN 246,784 (laterals) + 1,623,808 (GN conv blocks); DeepLabV3+ 1,152,528.
    encoder = n_params(meta(FPNSeg).encoder)
    assert encoder == 21_284_672 + 57 * 64 * 49  # ResNet-34 trunk, first conv with 60 instead of 3 inputs
    assert n_params(meta(FPNSeg)) == encoder + 246_784 + 1_623_808 + 129 == 23_334_145
    assert n_params(meta(DeepLabV3PlusSeg)) == encoder + 1_152_528 + 257 == 22_616_209
    assert round(n_params(meta(FPNSeg)) / 1e6, 2) == 23.33 and round(n_params(meta(DeepLabV3PlusSeg)) / 1e6, 2) == 22.62


def test_macs_near_the_paper():
    # paper 12.26 / 13.55 GMACs at 1 x 60 x 256 x 320; the flop counter skips norms, activations, interpolation
    shape = (1, 60, 256, 320)
    for cls, paper in ((FPNSeg, 12.26), (DeepLabV3PlusSeg, 13.55)):
        ours = count_macs(meta(cls), shape) / 1e9
        assert abs(ours - paper) / paper < 0.006, (cls.__name__, ours, paper)  # ours 12.23 / 13.52


def test_deeplab_encoder_runs_at_output_stride_16_and_shapes():
    torch.manual_seed(0)
    net = DeepLabV3PlusSeg(in_channels=12, width=0.25, decoder_channels=32).eval()
    x = torch.randn(2, 12, 64, 96)
    from lightning_modules.ss_convlstm import resnet_features
    feats = resnet_features(net.encoder, x)
    assert feats[-1].shape[-2:] == feats[-2].shape[-2:] == (4, 6)  # layer4 dilated, not strided
    assert net(x).shape == (2, 1, 64, 96)
    fpn = FPNSeg(in_channels=12, width=0.25, pyramid_channels=32, segmentation_channels=32).eval()
    assert fpn(x).shape == (2, 1, 64, 96)
    # gradients reach the first conv of both
    for model in (net.train(), fpn.train()):
        model(x).mean().backward()
        assert model.encoder.conv1.weight.grad.abs().sum() > 0


def test_separable_aspp_has_smp_layout():
    aspp = ASPP(512, (12, 24, 36), 256, separable=True)
    # smp's ASPP keys: convs.1.0.0 (depthwise), convs.1.0.1 (pointwise), convs.1.1 (BN)
    keys = aspp.state_dict().keys()
    assert {"convs.1.0.0.weight", "convs.1.0.1.weight", "convs.1.1.running_mean"} <= set(keys)
    assert aspp.convs[1][0][0].groups == 512 and aspp.convs[3][0][0].dilation == (36, 36)
    assert n_params(aspp) == 999_936
    assert n_params(ASPP(512, (12, 24, 36), 256)) > n_params(aspp)  # default stays the dense torchvision ASPP


def test_nnunet2d_plan_and_deep_supervision():
    assert NNUNet2D.plan((256, 320)) == [1, 2, 2, 2, 2, 2, 2]  # 256 x 320 -> 4 x 5 after six halvings
    assert NNUNet2D.plan((64, 96)) == [1, 2, 2, 2, 2]
    net = NNUNet2D(in_channels=6, image_size=(64, 96), base_features=8, max_features=32)
    x = torch.randn(2, 6, 64, 96)
    outputs = net.train()(x)
    assert isinstance(outputs, list) and len(outputs) == 4  # main + 3 (stages - 2) decoder heads
    assert all(o.shape == (2, 1, 64, 96) for o in outputs)
    assert net.eval()(x).shape == (2, 1, 64, 96)
    plain = NNUNet2D(in_channels=6, image_size=(64, 96), base_features=8, max_features=32, deep_supervision=False)
    assert plain.train()(x).shape == (2, 1, 64, 96)


def test_nnunet2d_deep_supervision_through_the_segmentation_task():
    from lightning_modules.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    weights = [1 / 2 ** i for i in range(4)]
    task = SegmentationTask(NNUNet2D(in_channels=6, image_size=(64, 96), base_features=8, max_features=32),
                            output_weights=[w / sum(weights) for w in weights], figure_every_n_epochs=0)
    x, mask = torch.randn(2, 6, 64, 96), (torch.rand(2, 1, 64, 96) > 0.7).float()
    task.train()
    outputs = task.network(x)
    loss = task.losses(outputs, mask)["loss"]
    expected = sum(w * task._loss_terms(o, mask)["loss"] for w, o in zip(task.output_weights, outputs))
    assert torch.isfinite(loss) and torch.allclose(loss, expected)
    loss.backward()
    assert task.network.net.input_block.conv1.conv.weight.grad.abs().sum() > 0


def test_3d_baselines_parameter_counts_are_monai_defaults():
    # The paper lists no params for 3D-UNet / Swin-UNETR ("-"); ours are MONAI's defaults, counted exactly:
    # BasicUNet(3D, 1 -> 1, features 32/32/64/128/256/32) and SwinUNETR(feature_size 48) (MONAI: ~62.2 M).
    assert n_params(meta(UNet3DSeg)) == 5_749_377
    assert n_params(meta(SwinUNETRSeg)) == 62_186_659
    assert all(p.is_meta for p in meta(SwinUNETRSeg, feature_size=12).parameters())


def test_3d_baselines_give_2d_logits_as_the_spectral_mean_and_gradients():
    torch.manual_seed(0)
    unet = UNet3DSeg(features=(4, 4, 8, 8, 16, 4))
    x = torch.randn(2, 60, 32, 32)  # all 60 bands: 60 -> 30 -> 15 -> 7 -> 3 in depth, MONAI pads the odd sizes
    assert unet(x).shape == (2, 1, 32, 32)
    volume = unet.eval().net(x.unsqueeze(1))
    assert volume.shape == (2, 1, 60, 32, 32) and torch.allclose(unet(x), volume.mean(2), atol=1e-6)
    swin = SwinUNETRSeg(feature_size=12)
    y = torch.randn(1, 20, 64, 64)  # 20 bands padded to 32 in depth, cropped back before the mean
    assert swin(y).shape == (1, 1, 64, 64)
    for model, inp, first in ((unet.train(), x, unet.net.conv_0.conv_0.conv.weight),
                              (swin, y, swin.net.swinViT.patch_embed.proj.weight)):
        model(inp).mean().backward()
        assert first.grad.abs().sum() > 0
