"""SpecSlice-ConvLSTM: slicing, ConvLSTM cell, merges, parameter / MAC counts vs the paper, metrics, MDC reader."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lightning_modules.ss_convlstm import (ConvLSTMCell, ConvLSTMSkip, HausdorffDistance, SSConvLSTM,
                                           SpectralSlicing, convlstm_parameters, count_macs)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_net(**kwargs) -> SSConvLSTM:
    """Built on the meta device: no weight initialisation, no memory (counts only)."""
    with torch.device("meta"):
        return SSConvLSTM(**kwargs)


def test_spectral_slicing_groups_adjacent_bands():
    cube = torch.arange(2 * 60 * 2 * 3, dtype=torch.float32).reshape(2, 60, 2, 3)
    slices = SpectralSlicing(3)(cube)
    assert slices.shape == (2 * 20, 3, 2, 3)
    assert torch.equal(slices[0], cube[0, 0:3]) and torch.equal(slices[7], cube[0, 21:24])
    assert torch.equal(slices[20 + 19], cube[1, 57:60])
    with pytest.raises(ValueError):
        SpectralSlicing(7)(cube)


@pytest.mark.parametrize("c", [8, 64, 128])
def test_convlstm_cell_parameters_are_72c2_plus_4c(c):
    assert n_params(ConvLSTMCell(c)) == convlstm_parameters(c) == 72 * c * c + 4 * c


def test_convlstm_cell_follows_the_equations():
    torch.manual_seed(0)
    cell = ConvLSTMCell(2, 3, kernel_size=3)
    x, h, c = torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    z = torch.nn.functional.conv2d(torch.cat([x, h], 1), cell.conv.weight, cell.conv.bias, padding=1)
    i, f, o, g = z[:, 0:3].sigmoid(), z[:, 3:6].sigmoid(), z[:, 6:9].sigmoid(), z[:, 9:12].tanh()
    c_new = f * c + i * g
    h_new, c_out = cell(x, (h, c))
    assert torch.allclose(c_out, c_new, atol=1e-6) and torch.allclose(h_new, o * c_new.tanh(), atol=1e-6)


def test_merges_sisom_didom_classical():
    torch.manual_seed(0)
    seq = torch.randn(2, 5, 4, 6, 6)
    sisom, didom, classical = (ConvLSTMSkip(4, m) for m in ("sisom", "didom", "classical"))
    didom.load_state_dict(sisom.state_dict())
    classical.load_state_dict(sisom.state_dict())
    hidden = sisom.cell.run(seq)
    backward = sisom.cell.run(seq.flip(1))
    assert torch.allclose(sisom(seq), torch.stack(hidden).sum(0), atol=1e-6)
    assert torch.allclose(didom(seq), torch.stack(hidden).sum(0) + torch.stack(backward).sum(0), atol=1e-5)
    assert torch.allclose(classical(seq), hidden[-1])
    assert n_params(didom) == n_params(sisom)  # DIDOM reuses the same cell (Eq. 8)
    mean = ConvLSTMSkip(4, "sisom", reduce="mean")
    mean.load_state_dict(sisom.state_dict())
    assert torch.allclose(mean(seq), sisom(seq) / 5, atol=1e-6)


def test_parameter_counts_match_the_paper_tables():
    m = lambda **kw: n_params(meta_net(**kw))  # noqa: E731
    # Table 4 "U-Net" = smp Unet(resnet34, in_channels=60): 24.62 M
    assert abs(m(slicing=False, lstm_positions=()) - 24.62e6) < 0.005e6
    # ConvLSTM part of SS-SISOM / SS-DIDOM: 32.21 M - 26.01 M (Tables 4, 1) = 6.20 M; ours 6,194,944 exactly
    sisom, ss = m(), m(lstm_positions=())
    assert sisom - ss == convlstm_parameters(64) + convlstm_parameters(128) + convlstm_parameters(256) == 6_194_944
    assert m(merge="didom") == sisom
    # Table 1 U-Net+SS totals carry an unexplained constant +1.57 M over smp's U-Net with a 3-channel stem
    # (documented in docs/papers/ss_convlstm.md); ours = paper - 1.57 M within 0.01 M for every backbone
    for backbone, paper in (("resnet18", 15.90), ("resnet34", 26.01), ("resnet50", 34.1), ("resnet101", 53.09)):
        assert abs(m(backbone=backbone, lstm_positions=()) / 1e6 - (paper - 1.57)) < 0.015, backbone


def test_macs_match_the_paper_at_256x320():
    shape = (1, 60, 256, 320)
    unet = count_macs(meta_net(slicing=False, lstm_positions=()), shape) / 1e9
    ss = count_macs(meta_net(lstm_positions=()), shape) / 1e9
    sisom = count_macs(meta_net(merge="sisom"), shape) / 1e9
    didom = count_macs(meta_net(merge="didom"), shape) / 1e9
    # paper (Tables 1, 4): 13.48, 123.96, 214.60, 305.24 GMACs; the flop counter skips BN/ReLU/pooling (< 0.6 %)
    for ours, paper in ((unet, 13.48), (ss, 123.96), (sisom, 214.60), (didom, 305.24)):
        assert abs(ours - paper) / paper < 0.006, (ours, paper)
    assert abs((sisom - ss) - 3 * 72 * 64 ** 2 * 64 * 80 * 20 / 1e9) < 0.01  # 3 cells x 30.2 G each


def test_forward_shapes_and_single_band_baseline():
    net = SSConvLSTM(backbone="resnet18", width=0.25, decoder_channels=(16, 8, 8, 8, 4), bands_per_slice=5,
                     lstm_positions=("L1", "L4"), merge="didom")
    assert net(torch.randn(2, 60, 32, 64)).shape == (2, 1, 32, 64)
    single = SSConvLSTM(in_channels=1, input_bands=[36], slicing=False, lstm_positions=(), backbone="resnet18",
                        width=0.25, decoder_channels=(16, 8, 8, 8, 4)).eval()
    cube = torch.randn(1, 60, 32, 32)
    out = single(cube)
    cube[:, 37:] = 0  # only band 36 matters
    cube[:, :36] = 0
    assert torch.allclose(single(cube), out)
    with pytest.raises(ValueError):
        SSConvLSTM(lstm_positions=("L5",))


def test_full_hausdorff_matches_scipy():
    from scipy.spatial.distance import directed_hausdorff

    pred = torch.zeros(2, 1, 20, 20)
    target = torch.zeros(2, 1, 20, 20)
    pred[0, 0, 2:6, 2:6] = 1
    target[0, 0, 3:9, 4:12] = 1
    pred[1, 0, 10:12, 1:3] = 1
    target[1, 0, 15:18, 15:19] = 1
    metric = HausdorffDistance()
    metric.update(pred, target)
    expected = []
    for i in range(2):
        a, b = np.argwhere(pred[i, 0].numpy()), np.argwhere(target[i, 0].numpy())
        expected.append(max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0]))
    assert metric.compute().item() == pytest.approx(np.mean(expected), rel=1e-5)
    # per-image Dice / IoU agree with torchmetrics' per-sample F1 / Jaccard
    from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

    from lightning_modules.metrics.segmentation import SegmentationMetrics
    seg = SegmentationMetrics(1, "per_image")
    seg.update(pred.long(), target.long())
    dice = seg.per_image_values()["dice"].flatten()
    for i in range(2):
        assert dice[i].item() == pytest.approx(binary_f1_score(pred[i], target[i]).item(), abs=1e-6)
    iou = seg.per_image_values()["iou"].flatten()
    assert iou[0].item() == pytest.approx(binary_jaccard_index(pred[0], target[0]).item(), abs=1e-6)


def test_mdc_reader_on_an_envi_fixture(tmp_path):
    from datamodules.base import DatasetError
    from datamodules.mdc import MDCDataModule, read_cube
    from datamodules.standins.synthetic_hyperspectral import write_mdc_tree

    root = write_mdc_tree(tmp_path / "mdc", counts=(3, 1, 2), size=(32, 40))
    names = json.loads((root / "train_val_test.json").read_text())
    assert (root / "MHSI" / names["train"][0]).is_file() and (root / "MHSI" / names["train"][0]).with_suffix(".img").is_file()
    assert read_cube(root / "MHSI" / names["test"][0]).shape == (32, 40, 60)
    dm = MDCDataModule(str(root), image_size=(64, 96), batch_size=2, num_workers=0, augment=True, augment_p=1.0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3, 1, 2)
    item = dm.test_set[0]
    assert item["image"].shape == (60, 64, 96) and item["mask"].shape == (1, 64, 96)
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and item["mask"].sum() > 0
    assert item["image"].mean((1, 2)).abs().max() < 1e-3  # per-band z-score
    assert next(iter(dm.train_dataloader()))["image"].shape == (2, 60, 64, 96)
    # without the split file: a seeded split grouped by the name prefix
    (root / "train_val_test.json").unlink()
    dm = MDCDataModule(str(root), image_size=None, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 6
    # errors name the missing file and the layout
    (root / "Mask" / (names["test"][1][:-4] + ".png")).unlink()
    (root / "train_val_test.json").write_text(json.dumps(names))
    dm = MDCDataModule(str(root), num_workers=0)
    dm.setup("test")
    with pytest.raises(DatasetError, match="without a mask"):
        dm.test_set[1]
    with pytest.raises(DatasetError, match="MHSI"):
        MDCDataModule(str(tmp_path / "nowhere")).setup("fit")
