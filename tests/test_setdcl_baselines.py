"""Guided-SET-DCL's Table 2 CNN baselines: the C-LSTM U-Net (Arbelle & Raviv's release layout, sizes in closed
form, memory over the slice sequence, the slice-context dataset) and PAN (smp's decoder on a dilated ResNet)."""
import numpy as np
import pytest
import torch

from datamodules.episodic import EpisodeVolume, SliceDataset
from lightning_modules import batch as keys
from lightning_modules.setdcl_clstm_unet import CLSTM_DOWN, CLSTM_UP, CLSTMUNet
from lightning_modules.setdcl_pan import PAN
from lightning_modules.utils import count_parameters


def conv(cin, cout, k, bn=True):
    return cin * cout * k * k + cout + (2 * cout if bn else 0)


def test_clstm_unet_size_is_the_release_layout():
    """ConvLSTMs (k 5: 4h (cin + h) 25 + 4h), 2 Conv-BN per down block, 2 per up block on [up, skip], a 1x1 head."""
    with torch.device("meta"):
        network = CLSTMUNet()
    total, channels, skips = 0, 1, []
    for width in CLSTM_DOWN:
        skips.append(channels)
        total += 4 * width * (channels + width) * 25 + 4 * width + conv(width, width, 5) + conv(width, width, 5)
        channels = width
    for skip, width in zip(reversed(skips), CLSTM_UP):
        total += conv(channels + skip, width, 5) + conv(width, width, 5)
        channels = width
    total += conv(channels, 1, 1, bn=False)
    assert count_parameters(network) == total == 93_596_033


def test_clstm_unet_remembers_the_slices_before_the_segmented_one():
    torch.manual_seed(0)
    network = CLSTMUNet(sequence_length=3, down_features=(4, 8, 8, 8), up_features=(8, 4, 4, 4)).eval()
    image = torch.rand(2, 3, 32, 32)
    logits = network(image)
    assert logits.shape == (2, 1, 32, 32)
    changed = image.clone()
    changed[:, 0] = 0  # only the first (oldest) slice differs
    assert not torch.allclose(network(changed), logits)  # it reaches the output through the ConvLSTM memory
    network.train()
    network(image).mean().backward()
    assert network.lstms[0].conv.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sequence"):
        CLSTMUNet(in_channels=2)(torch.rand(1, 3, 32, 32))


def test_slice_dataset_context_stacks_the_slices_below():
    image = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 8, 8), np.float32)
    mask = np.zeros((4, 8, 8), np.uint8)
    mask[2, 2:4, 2:4] = 1
    volume = EpisodeVolume("v", image, mask, mask, mask, 0)
    dataset = SliceDataset([volume], context=3)
    first, third = dataset[0], dataset[2]
    assert first[keys.IMAGE].shape == (3, 8, 8) and first[keys.IMAGE][:, 0, 0].tolist() == [0, 0, 0]
    assert third[keys.IMAGE][:, 0, 0].tolist() == [0, 1, 2] and third[keys.MASK].sum() == 4  # its own mask
    assert SliceDataset([volume])[2][keys.IMAGE].shape == (1, 8, 8)


def pan_decoder_size(channels, decoder=32, classes=1):
    """smp's PAN decoder: FPA (global 1x1, mid 1x1, 7/5/3/3 one-channel pyramid, 5 and 7 laterals), 3 GAUs, 3x3 head."""
    fpa = 2 * conv(channels[3], decoder, 1) + conv(channels[3], 1, 7) + conv(1, 1, 5) + 2 * conv(1, 1, 3) \
        + conv(1, 1, 5) + conv(1, 1, 7)
    gau = sum(conv(decoder, decoder, 1) + conv(c, decoder, 3) for c in channels[:3])
    return fpa + gau + decoder * classes * 9 + classes


def test_pan_size_is_the_resnet_trunk_plus_smp_decoder():
    with torch.device("meta"):
        network = PAN()
    # torchvision resnet101 without fc (42,500,160) with a 1-channel first convolution (2 x 64 x 49 fewer)
    trunk = 44_549_160 - 2_049_000 - 2 * 64 * 49
    assert count_parameters(network) == trunk + pan_decoder_size((256, 512, 1024, 2048))


def test_pan_forward_stride_and_gradients():
    torch.manual_seed(0)
    network = PAN(backbone="resnet18", width=0.25, decoder_channels=8)
    image = torch.rand(2, 1, 128, 128)
    e = network.encoder
    deepest = e.layer4(e.layer3(e.layer2(e.layer1(e.maxpool(e.act(e.bn1(e.conv1(image))))))))
    assert deepest.shape[-1] == 128 // 16  # layer4 dilated: output stride 16, as smp's PAN
    logits = network(image)
    assert logits.shape == (2, 1, 128, 128)
    logits.mean().backward()
    assert network.fpa.down1[1][0].weight.grad.abs().sum() > 0 and network.encoder.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiples of 128"):
        network(torch.rand(1, 1, 64, 64))


@pytest.mark.parametrize("name", ["clstm_unet", "pan"])
def test_baseline_fits_and_tests_through_the_segmentation_task_on_stand_in_slices(name):
    import lightning as L

    from datamodules.standins.synthetic_ct_colon import SyntheticCTColonDataModule
    from lightning_modules.tasks.segmentation import SegmentationTask

    L.seed_everything(0)
    if name == "clstm_unet":  # 3-slice sequences, as ctc/clstm_unet.yaml's 5
        network, data_args = CLSTMUNet(sequence_length=3, down_features=(4, 8, 8, 8), up_features=(8, 4, 4, 4)), \
            dict(slice_context=3)
    else:  # PAN needs slices of a multiple of 128 px
        network, data_args = PAN(backbone="resnet18", width=0.25, decoder_channels=8), dict(image_size=128)
    data = SyntheticCTColonDataModule(num_train=1, num_val=1, num_test=1, mode="slices", batch_size=4, **data_args)
    task = SegmentationTask(network, num_classes=1, figure_every_n_epochs=0)
    trainer = L.Trainer(max_steps=2, limit_val_batches=1, limit_test_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, data)
    results = trainer.test(task, data, verbose=False)[0]
    assert 0.0 <= results["test/dice"] <= 1.0 and results["test/dice_all_background"] == 0.0
