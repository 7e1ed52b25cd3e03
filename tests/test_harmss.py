"""HarmonizedSS: the SCC loss against a numpy FFT reference and the squared-Dice identity, calibration against
torchmetrics, the test-time noise, the networks (TransUNet's parameter count), and the dataset readers on
fixture trees in the public layouts."""

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

from datamodules.acdc_slices import ACDCSliceDataModule
from datamodules.base import DatasetError
from datamodules.isic2017 import ISIC2018To2017DataModule
from datamodules.kvasir_seg import KvasirSEGDataModule
from datamodules.synapse import SynapseDataModule
from lightning_modules.harmss import (BinnedCalibrationError, HarmonizedLoss, SpectralCorrelationLoss, TransUNet,
                                      UNetR50, add_noise, spectral_correlation_coefficient)
from lightning_modules.losses.segmentation import SegmentationLoss


def numpy_scc(p, y, real=False):
    f = np.fft.rfft2 if real else np.fft.fft2
    P, Y = f(p, axes=(-2, -1)), f(y, axes=(-2, -1))
    return 2 * np.sum(Y.real * P.real + Y.imag * P.imag) / np.sum(np.abs(Y) ** 2 + np.abs(P) ** 2)


# --------------------------------------------------------------------------------------------- the loss
def test_scc_matches_numpy_eq2_and_equals_squared_dice_with_fft2():
    g = torch.Generator().manual_seed(0)
    p, y = torch.rand(3, 2, 12, 10, generator=g), (torch.rand(3, 2, 12, 10, generator=g) > 0.6).float()
    scc = spectral_correlation_coefficient(p, y)
    assert scc.item() == pytest.approx(numpy_scc(p.numpy().astype(np.float64), y.numpy()), rel=1e-5)
    squared_dice = 2 * (p * y).sum() / ((p ** 2).sum() + (y ** 2).sum())  # Parseval
    assert scc.item() == pytest.approx(squared_dice.item(), rel=1e-5)
    real = spectral_correlation_coefficient(p, y, fft="rfft2")
    assert real.item() == pytest.approx(numpy_scc(p.numpy().astype(np.float64), y.numpy(), real=True), rel=1e-5)
    assert abs(real.item() - scc.item()) > 1e-3  # half spectrum: another weighting
    assert spectral_correlation_coefficient(y, y).item() == pytest.approx(1.0, abs=1e-6)
    assert spectral_correlation_coefficient(1 - y, y).item() < scc.item()


def test_harmonized_loss_is_spatial_plus_lambda_one_minus_scc_with_finite_gradients():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 16, 16, generator=g, requires_grad=True)
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    loss = HarmonizedLoss(spectral_weight=0.2)
    terms = loss.terms(logits, mask)
    spatial = SegmentationLoss(1.0, 1.0)(logits, mask)
    scc = spectral_correlation_coefficient(torch.sigmoid(logits), mask)
    assert terms["loss"].item() == pytest.approx((spatial + 0.2 * (1 - scc)).item(), rel=1e-6)
    assert HarmonizedLoss(spectral_weight=0.0)(logits, mask).item() == pytest.approx(spatial.item(), rel=1e-6)
    terms["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # multi-class: softmax vs one-hot over the foreground channels
    logits = torch.randn(2, 4, 8, 8, generator=g)
    labels = torch.randint(0, 4, (2, 1, 8, 8), generator=g)
    onehot = np.eye(4)[labels[:, 0].numpy()].transpose(0, 3, 1, 2)
    prob = torch.softmax(logits, 1).numpy().astype(np.float64)
    expected = 1 - numpy_scc(prob[:, 1:], onehot[:, 1:])
    assert SpectralCorrelationLoss(4)(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    with_bg = 1 - numpy_scc(prob, onehot)
    assert SpectralCorrelationLoss(4, include_background=True)(logits, labels).item() == pytest.approx(with_bg, rel=1e-5)
    assert torch.isfinite(HarmonizedLoss(num_classes=4)(logits, labels))


# --------------------------------------------------------------------------------------------- calibration, noise
def test_binned_calibration_error_equals_torchmetrics_in_chunks():
    g = torch.Generator().manual_seed(2)
    p = torch.rand(6, 1, 9, 9, generator=g)
    y = (torch.rand(6, 1, 9, 9, generator=g) < p ** 2).float()
    metric = BinnedCalibrationError(1, 15)
    metric.update(p[:3], y[:3])
    metric.update(p[3:], y[3:])  # streaming: sums per bin
    out = metric.compute()
    assert out["ece"].item() == pytest.approx(BinaryCalibrationError(15)(p.flatten(), y.flatten().long()).item(), abs=1e-6)
    assert out["mce"].item() == pytest.approx(
        BinaryCalibrationError(15, norm="max")(p.flatten(), y.flatten().long()).item(), abs=1e-6)
    probs = torch.softmax(torch.randn(4, 3, 7, 7, generator=g) * 2, 1)
    labels = torch.randint(0, 3, (4, 1, 7, 7), generator=g)
    metric = BinnedCalibrationError(3, 10)
    metric.update(probs, labels)
    flat = probs.movedim(1, -1).reshape(-1, 3)
    for key, norm in (("ece", "l1"), ("mce", "max")):
        reference = MulticlassCalibrationError(3, n_bins=10, norm=norm)(flat, labels.flatten())
        assert metric.compute()[key].item() == pytest.approx(reference.item(), abs=1e-6)


def test_noise_in_unit_intensity_space_like_skimage():
    from skimage.util import random_noise

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x01 = torch.full((2, 3, 64, 64), 0.5)
    image = (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    g = torch.Generator().manual_seed(0)
    noisy = add_noise(image, "gaussian", 0.01, mean, std, g) * torch.tensor(std).view(1, 3, 1, 1) + \
        torch.tensor(mean).view(1, 3, 1, 1)
    reference = random_noise(np.full((2, 3, 64, 64), 0.5), mode="gaussian", var=0.01, rng=0)
    assert noisy.std().item() == pytest.approx(reference.std(), rel=0.05)  # both ~0.1
    assert noisy.min() >= -1e-6 and noisy.max() <= 1 + 1e-6
    sp = add_noise(x01, "bernoulli", 0.01, generator=g)
    changed = (sp != 0.5).float().mean().item()
    reference = (random_noise(np.full((2, 3, 64, 64), 0.5), mode="s&p", amount=0.01, rng=0) != 0.5).mean()
    assert changed == pytest.approx(reference, abs=0.004) and set(sp[sp != 0.5].unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError):
        add_noise(x01, "poisson", 0.01)


# --------------------------------------------------------------------------------------------- networks
def test_transunet_r50_vit_b16_parameter_count_and_shapes():
    # Chen et al. 2021's R50-ViT-B/16 TransUNet: 105.28M parameters (literature value; the HarmonizedSS paper gives
    # none). The paper's 8 heads instead of 12 leave the count unchanged. Tolerance 0.1 %: the rounding of "105.28M".
    with torch.device("meta"):
        eight, twelve = TransUNet(3, 9, heads=8), TransUNet(3, 9, heads=12)
    count = sum(p.numel() for p in eight.parameters())
    assert count == pytest.approx(105.28e6, rel=1e-3)
    assert count == sum(p.numel() for p in twelve.parameters())
    tiny = TransUNet(1, 4, img_size=64, width=8, units=(1, 1, 1), hidden=32, layers=2, heads=8, mlp_dim=64,
                     head_channels=32, decoder_channels=(16, 16, 8, 8), gn_groups=4).eval()
    assert tiny(torch.rand(2, 1, 64, 64)).shape == (2, 4, 64, 64)
    assert tiny(torch.rand(1, 1, 96, 96)).shape == (1, 4, 96, 96)  # interpolated position embedding


def _fake_r50_vit_npz(path, width=32, units=(1, 2, 1), hidden=32, layers=2, heads=4, mlp=64, tokens=10):
    """Random arrays under the key names and layouts of Google's R50+ViT-B_16.npz (12 heads there, ``heads`` here;
    ``tokens`` position embeddings including the class token)."""
    rng = np.random.default_rng(0)
    arrays = {"embedding/kernel": (1, 1, 16 * width, hidden), "embedding/bias": (hidden,),
              "Transformer/encoder_norm/scale": (hidden,), "Transformer/encoder_norm/bias": (hidden,),
              "Transformer/posembed_input/pos_embedding": (1, tokens, hidden),
              "conv_root/kernel": (7, 7, 3, width), "gn_root/scale": (width,), "gn_root/bias": (width,)}
    for i in range(layers):
        root = f"Transformer/encoderblock_{i}"
        for n in ("query", "key", "value"):
            arrays[f"{root}/MultiHeadDotProductAttention_1/{n}/kernel"] = (hidden, heads, hidden // heads)
            arrays[f"{root}/MultiHeadDotProductAttention_1/{n}/bias"] = (heads, hidden // heads)
        arrays[f"{root}/MultiHeadDotProductAttention_1/out/kernel"] = (heads, hidden // heads, hidden)
        arrays[f"{root}/MultiHeadDotProductAttention_1/out/bias"] = (hidden,)
        arrays.update({f"{root}/MlpBlock_3/Dense_0/kernel": (hidden, mlp), f"{root}/MlpBlock_3/Dense_0/bias": (mlp,),
                       f"{root}/MlpBlock_3/Dense_1/kernel": (mlp, hidden), f"{root}/MlpBlock_3/Dense_1/bias": (hidden,)})
        for norm in ("LayerNorm_0", "LayerNorm_2"):
            arrays.update({f"{root}/{norm}/scale": (hidden,), f"{root}/{norm}/bias": (hidden,)})
    cin = width
    for b, n in enumerate(units):
        cout, cmid = width * 4 * 2 ** b, width * 2 ** b
        for u in range(n):
            unit = f"block{b + 1}/unit{u + 1}"
            arrays.update({f"{unit}/conv1/kernel": (1, 1, cin if u == 0 else cout, cmid),
                           f"{unit}/conv2/kernel": (3, 3, cmid, cmid), f"{unit}/conv3/kernel": (1, 1, cmid, cout)})
            for g, c in (("gn1", cmid), ("gn2", cmid), ("gn3", cout)):
                arrays.update({f"{unit}/{g}/scale": (c,), f"{unit}/{g}/bias": (c,)})
            if u == 0:
                arrays.update({f"{unit}/conv_proj/kernel": (1, 1, cin, cout), f"{unit}/gn_proj/scale": (cout,),
                               f"{unit}/gn_proj/bias": (cout,)})
        cin = cout
    arrays = {key: rng.standard_normal(shape).astype(np.float32) for key, shape in arrays.items()}
    np.savez(path, **arrays)
    return arrays


def test_transunet_loads_the_official_r50_vit_npz_layout(tmp_path):
    arrays = _fake_r50_vit_npz(tmp_path / "R50+ViT-B_16.npz")
    small = dict(img_size=48, width=32, units=(1, 2, 1), hidden=32, layers=2, heads=8, mlp_dim=64, head_channels=16,
                 decoder_channels=(16, 8, 8, 8))
    net = TransUNet(3, 4, pretrained=str(tmp_path / "R50+ViT-B_16.npz"), **small)
    kq = arrays["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel"].reshape(32, 32)
    x = torch.randn(5, 32)
    block = net.encoder[1].attn
    assert torch.allclose(x @ block.in_proj_weight[:32].T + block.in_proj_bias[:32],
                          x @ torch.from_numpy(kq) + torch.from_numpy(arrays["Transformer/encoderblock_1/"
                          "MultiHeadDotProductAttention_1/query/bias"].reshape(-1)), atol=1e-5)
    fc2 = arrays["Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel"]
    assert torch.equal(net.encoder[0].ffn[3].weight, torch.from_numpy(fc2.T))
    assert torch.equal(net.patch_embeddings.weight[:, :, 0, 0], torch.from_numpy(arrays["embedding/kernel"][0, 0].T))
    root = arrays["conv_root/kernel"]
    assert torch.equal(net.resnet.root[0].weight, torch.from_numpy(root.transpose(3, 2, 0, 1)))
    assert torch.equal(net.resnet.stages[1][0].gn_proj.bias, torch.from_numpy(arrays["block2/unit1/gn_proj/bias"]))
    # 3 x 3 token grid (+ class token) zoomed to this network's 48 / 16 = 3: the class token dropped, grid kept
    positions = arrays["Transformer/posembed_input/pos_embedding"]
    assert torch.equal(net.position_embeddings[0], torch.from_numpy(positions[0, 1:]))
    assert net(torch.randn(1, 1, 48, 48)).shape == (1, 4, 48, 48)
    grey = TransUNet(1, 4, pretrained=str(tmp_path / "R50+ViT-B_16.npz"), **small)  # RGB root kernels summed
    assert torch.allclose(grey.resnet.root[0].weight[:, 0], torch.from_numpy(root.transpose(3, 2, 0, 1)).sum(1))
    zoomed = TransUNet(3, 4, pretrained=str(tmp_path / "R50+ViT-B_16.npz"), **{**small, "img_size": 96})
    assert zoomed.position_embeddings.shape == (1, 36, 32)  # 3 x 3 -> 6 x 6 (linear zoom, as load_from)
    with pytest.raises(KeyError, match="encoderblock_2"):
        TransUNet(3, 4, pretrained=str(tmp_path / "R50+ViT-B_16.npz"), **{**small, "layers": 3})


def test_unet_r50_decoder_and_local_encoder_weights(tmp_path):
    net = UNetR50(3, 2, backbone="resnet18", decoder_channels=(32, 16, 16, 8, 8))
    assert net(torch.rand(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in net.net.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # a torchvision checkpoint's head is skipped
    torch.save(state, tmp_path / "resnet18.pth")
    loaded = UNetR50(3, 2, backbone="resnet18", decoder_channels=(32, 16, 16, 8, 8), pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(loaded.net.encoder.conv1.weight, state["conv1.weight"])
    with pytest.raises(RuntimeError, match="not a torchvision ResNet"):
        UNetR50(3, 2, backbone="resnet34", pretrained=str(tmp_path / "resnet18.pth"))
    with torch.device("meta"):
        full = UNetR50(3, 1)
    assert sum(p.numel() for p in full.parameters()) == pytest.approx(32.1e6, rel=0.01)  # smp's Unet-resnet50: 32.5M


# --------------------------------------------------------------------------------------------- readers
def _rgb(path, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)


def _mask(path, size=(40, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size[::-1], np.uint8)
    m[8:20, 10:30] = 255
    Image.fromarray(m).save(path)


def test_kvasir_official_split_and_polypgen_test_sets(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    ids = [f"cju{i:04d}" for i in range(10)]
    for i in ids:
        _rgb(root / "images" / f"{i}.jpg")
        _mask(root / "masks" / f"{i}.jpg")
    (root / "train.txt").write_text("\n".join(ids[:8]))
    (root / "val.txt").write_text("\n".join(ids[8:]))
    pg = tmp_path / "PolypGen"
    for k in range(1, 7):
        _rgb(pg / f"data_C{k}" / f"images_C{k}" / f"{k}00.jpg")
        _mask(pg / f"data_C{k}" / f"masks_C{k}" / f"{k}00_mask.jpg")
    dm = KvasirSEGDataModule(str(tmp_path), polypgen_dir=str(pg), image_size=32, val_fraction=0.25, num_workers=0,
                             batch_size=2)
    dm.setup()
    assert [dm.test_set.items[i].name for i in range(2)] == ids[8:]
    assert len(dm.train_set) == 6 and len(dm.val_set) == 2
    assert dm.test_loader_names == ["test", "polypgen"] and len(dm.test_sets["polypgen"]) == 6
    sample = dm.test_sets["polypgen"][0]
    assert sample["image"].shape == (3, 32, 32) and set(sample["mask"].unique().tolist()) == {0.0, 1.0}
    per_centre = KvasirSEGDataModule(str(root), polypgen_dir=str(pg), polypgen_per_centre=True, image_size=32,
                                     num_workers=0)
    per_centre.setup()
    assert per_centre.test_loader_names[1:] == [f"polypgen_C{k}" for k in range(1, 7)]
    (pg / "data_C3" / "masks_C3" / "300_mask.jpg").unlink()
    with pytest.raises(DatasetError, match="without a mask"):
        KvasirSEGDataModule(str(root), polypgen_dir=str(pg), num_workers=0).setup()
    with pytest.raises(DatasetError, match="images folder not found"):
        KvasirSEGDataModule(str(tmp_path / "PolypGen"), num_workers=0).setup()


def test_isic2018_with_isic2017_test(tmp_path):
    for i in range(6):
        _rgb(tmp_path / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg")
        _mask(tmp_path / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png")
    t17 = tmp_path / "isic17"
    for i in range(3):
        _rgb(t17 / "ISIC-2017_Test_v2_Data" / f"ISIC_{i + 12000:07d}.jpg")
        _mask(t17 / "ISIC-2017_Test_v2_Data" / f"ISIC_{i + 12000:07d}_superpixels.png")  # skipped
        _mask(t17 / "ISIC-2017_Test_v2_Part1_GroundTruth" / f"ISIC_{i + 12000:07d}_segmentation.png")
    dm = ISIC2018To2017DataModule(str(tmp_path), isic2017_dir=str(t17), image_size=32, num_workers=0)
    dm.setup()
    assert len(dm.test_sets["isic2017"]) == 3
    with pytest.raises(DatasetError, match="ISIC 2017 folder not found"):
        ISIC2018To2017DataModule(str(tmp_path), isic2017_dir=str(tmp_path / "none"), num_workers=0).setup()


def test_synapse_npz_slices_and_h5_volumes(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "train_npz").mkdir()
    (tmp_path / "test_vol_h5").mkdir()
    for case in ("case0005", "case0006", "case0007"):
        for z in range(2):
            np.savez(tmp_path / "train_npz" / f"{case}_slice{z:03d}.npz", image=rng.random((48, 48), dtype=np.float32),
                     label=rng.integers(0, 9, (48, 48)).astype(np.uint8))
    with h5py.File(tmp_path / "test_vol_h5" / "case0001.npy.h5", "w") as f:
        f["image"] = rng.random((3, 48, 48), dtype=np.float32)
        f["label"] = rng.integers(0, 9, (3, 48, 48)).astype(np.uint8)
    dm = SynapseDataModule(str(tmp_path), image_size=32, val_cases=1, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 4 and len(dm.val_set) == 2 and len(dm.test_set) == 3
    sample = dm.test_set[1]
    assert sample["image"].shape == (1, 32, 32) and sample["mask"].dtype == torch.long
    assert sample["name"] == "case0001_slice001" and sample["mask"].max() <= 8
    # slices of volumes: restacked per case by the task; spacing in 48-px voxels of the resized 32-px grid
    assert (sample["volume"], sample["slice_index"]) == ("case0001", 1)
    assert sample["spacing"].tolist() == pytest.approx([1.5, 1.5, 1.0])
    assert (dm.val_set[1]["volume"], dm.val_set[1]["slice_index"]) == (dm.val_set.names[1].split("_slice")[0], 1)
    lists = tmp_path / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("case0005_slice000\ncase0099_slice000\n")
    (lists / "test_vol.txt").write_text("case0001\n")
    with pytest.raises(DatasetError, match="training slice not found"):
        SynapseDataModule(str(tmp_path), num_workers=0).setup()


def test_acdc_frames_split_by_patient(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    for p in range(1, 11):
        folder = tmp_path / "training" / f"patient{p:03d}"
        folder.mkdir(parents=True)
        for frame in (1, 12):
            stem = f"patient{p:03d}_frame{frame:02d}"
            affine = np.diag([1.5, 1.25, 10.0, 1.0])
            image, labels = rng.random((40, 36, 3)) * 500, rng.integers(0, 4, (40, 36, 3))
            nib.save(nib.Nifti1Image(image.astype(np.float32), affine), folder / f"{stem}.nii.gz")
            nib.save(nib.Nifti1Image(labels.astype(np.uint8), affine), folder / f"{stem}_gt.nii.gz")
        (folder / f"patient{p:03d}_4d.nii.gz").touch()  # the cine 4-D file is not read
    dm = ACDCSliceDataModule(str(tmp_path), image_size=32, num_workers=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (7 * 6, 1 * 6, 2 * 6)
    patients = lambda ds: {n.split("_")[0] for n in ds.names}  # noqa: E731
    assert not patients(dm.train_set) & patients(dm.test_set)
    sample = dm.train_set[0]
    assert sample["image"].shape == (1, 32, 32) and 0 <= sample["image"].min() and sample["image"].max() <= 1
    # each frame is a volume; spacing in mm of the resized grid (1.5 mm x 40 / 32, 1.25 mm x 36 / 32, 10 mm)
    test_item = dm.test_set[4]
    assert test_item["volume"] == dm.test_set.names[4].rsplit("_slice", 1)[0] and test_item["slice_index"] == 1
    assert test_item["spacing"].tolist() == pytest.approx([1.875, 1.40625, 10.0])
    (tmp_path / "training" / "patient003" / "patient003_frame12.nii.gz").unlink()
    with pytest.raises(DatasetError, match="missing frame or ground truth"):
        ACDCSliceDataModule(str(tmp_path), num_workers=0).setup()


def test_monuseg_xml_polygons_rasterised(tmp_path):
    from datamodules.monuseg import MoNuSegDataModule, rasterise_xml

    xml = ('<Annotations><Annotation><Regions><Region><Vertices><Vertex X="2" Y="2"/><Vertex X="10" Y="2"/>'
           '<Vertex X="10" Y="8"/><Vertex X="2" Y="8"/></Vertices></Region><Region><Vertices><Vertex X="20" Y="20"/>'
           '<Vertex X="28" Y="20"/><Vertex X="24" Y="28"/></Vertices></Region></Regions></Annotation></Annotations>')
    train, test = tmp_path / "MoNuSeg 2018 Training Data", tmp_path / "MoNuSegTestData"
    for i in range(4):
        _rgb(train / "Tissue Images" / f"TCGA-{i}.tif", (32, 32))
        (train / "Annotations").mkdir(parents=True, exist_ok=True)
        (train / "Annotations" / f"TCGA-{i}.xml").write_text(xml)
    _rgb(test / "TCGA-T.tif", (32, 32))
    (test / "TCGA-T.xml").write_text(xml)
    mask = rasterise_xml(test / "TCGA-T.xml", (32, 32))
    assert mask[5, 5] == 1 and mask[2:9, 2:11].all() and mask[22, 24] == 1 and mask[15, 15] == 0
    dm = MoNuSegDataModule(str(tmp_path), image_size=32, val_images=1, num_workers=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3, 1, 1)
    sample = dm.test_set[0]
    assert sample["image"].shape == (3, 32, 32) and torch.equal(sample["mask"][0], torch.from_numpy(mask).long())
    (train / "Annotations" / "TCGA-2.xml").unlink()
    with pytest.raises(DatasetError, match="without its annotation"):
        MoNuSegDataModule(str(tmp_path), num_workers=0).setup()


def test_btseg_mat_release_split_by_patient(tmp_path):
    from datamodules.btseg import BTSegDataModule

    rng = np.random.default_rng(0)
    for n in range(1, 11):
        folder = tmp_path / ("brainTumorDataPublic_1-766" if n < 6 else "brainTumorDataPublic_767-1532")
        folder.mkdir(exist_ok=True)
        mask = np.zeros((40, 36), np.uint8)
        mask[5:15, 8:20] = 1
        with h5py.File(folder / f"{n}.mat", "w") as f:
            f["cjdata/label"] = np.array([[1.0 + n % 3]])
            f["cjdata/PID"] = np.array([[ord(c)] for c in f"P{n // 2}"], dtype=np.uint16)
            f["cjdata/image"] = (rng.random((40, 36)) * 1000).astype(np.int16).T  # MATLAB: stored transposed
            f["cjdata/tumorMask"] = mask.T
    dm = BTSegDataModule(str(tmp_path), image_size=32, num_workers=0)
    dm.setup()
    assert len(dm.train_set) + len(dm.test_set) == 10 and len(dm.test_set) >= 1  # 6 patients: no val patient
    assert dm.val_set is dm.test_set
    with_val = BTSegDataModule(str(tmp_path), image_size=32, val_fraction=0.4, num_workers=0)
    with_val.setup()
    assert len(with_val.train_set) + len(with_val.val_set) + len(with_val.test_set) == 10
    patient = lambda s: {int(n) // 2 for n in s.names}  # noqa: E731
    assert not patient(dm.train_set) & patient(dm.test_set)
    sample = dm.train_set[0]
    assert sample["image"].shape == (1, 32, 32) and sample["mask"].sum() > 0
    with pytest.raises(DatasetError, match="found 0"):
        (tmp_path / "empty").mkdir()
        BTSegDataModule(str(tmp_path / "empty"), num_workers=0).setup()
