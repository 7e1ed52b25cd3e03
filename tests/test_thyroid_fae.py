"""ThyroidFAE: the Fusion AutoEncoder (sizes of Table 1, the size rule, parameter counts, flags, gradients), the
stage-2 input pipeline and classifiers, the paper's loss and metrics against torch/scikit-learn, the MPM dataset's
official layout (a tiny fixture tree) and errors, the section split, and the stand-in."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch import nn

from datamodules.base import DatasetError
from datamodules.standins.synthetic_thyroid_mpm import (SyntheticThyroidMPMDataModule, export_standin,
                                                        synthetic_items)
from datamodules.thyroid_mpm import (AVERAGED_POLARISATIONS, ThyroidMPMDataModule, normalise_intensity,
                                     section_split, write_roi)
from lightning_modules.metrics.thyroid_fae import ThyroidAUROC
from lightning_modules.thyroid_fae import (ClassifierInput, FusionAutoencoder, load_fae, minmax_per_image,
                                           random_resized_crop_boxes)

torch.set_num_threads(1)

PAPER_PARAMETERS = 5_682_011  # every layer the 3-modality FAE uses (the card derives ~5.68M)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _expected_parameters(m: int = 3, share: bool = False) -> int:
    """The count from the layer list of the card (Table 1), written out independently of the module."""
    conv = lambda i, o, k=3: i * o * k * k + o  # noqa: E731
    stems = conv(1, 1) + conv(1, 4)  # conv0, convD (shared by BSHG and FSHG; conv0 also TPEF's)
    stems += 2  # BN(1) of the BSHG stem
    stems += conv(1, 2) + conv(2, 3) + conv(3, 4)  # TPEF convA, convB, convC
    widths = [12, 14, 16, 20, 20, 32, 64, 128, 128, 256, 512, 512]
    encoder = sum(conv(a, b) for a, b in zip(widths[:-1], widths[1:])) + conv(512, 3)
    decoder_widths = [512, 256, 128, 64, 32, 24, 12]
    decoder = sum(conv(a, b) for a, b in zip(decoder_widths[:-1], decoder_widths[1:]))
    head = conv(4, 1) + 5 * conv(1, 1)  # tconv7 4->1, tconv8-11, tconv_out
    return stems + encoder + decoder + head * (1 if share else m)


def test_parameter_count_is_the_layer_list():
    assert _expected_parameters() == PAPER_PARAMETERS
    assert _count(FusionAutoencoder()) == PAPER_PARAMETERS
    assert round(PAPER_PARAMETERS / 1e6, 2) == 5.68
    assert _count(FusionAutoencoder(share_head_weights=True)) == _expected_parameters(share=True)
    assert _count(FusionAutoencoder(decoder_bn=True)) == PAPER_PARAMETERS + 24
    # latent on the path: tconv1 3->256 (5x5) replaces 512->256 (3x3)
    assert _count(FusionAutoencoder(latent_on_path=True)) == PAPER_PARAMETERS - (512 * 256 * 9) + 3 * 256 * 25


def test_table1_feature_map_sizes_at_512():
    fae = FusionAutoencoder()
    sizes = []
    hooks = [layer.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
             for layer in [*fae.encoder, fae.conv_latent, *fae.decoder, *fae.heads[0].children()]]
    x = torch.zeros(1, 3, 512, 512)
    with torch.no_grad():
        out = fae(x)
    for hook in hooks:
        hook.remove()
    # Table 1 rows 2-25 (row 1, 12 x 502, is the stems' concatenation; max pools halve after rows 2 and 7).
    table = [(14, 500), (16, 248), (20, 246), (20, 244), (32, 242), (64, 240), (128, 118), (128, 116), (256, 114),
             (512, 112), (512, 110), (3, 108), (256, 112), (128, 114), (64, 116), (32, 118), (24, 120), (12, 122),
             (1, 124), (1, 126), (1, 128), (1, 257), (1, 512), (1, 512)]
    assert [(c, h) for c, h, w in sizes] == table and all(h == w for _, h, w in sizes)
    assert len(out) == 3 and all(o.shape == (1, 1, 512, 512) for o in out)


@pytest.mark.parametrize("n", [84, 96, 128])
def test_size_rule_output_equals_input(n):
    fae = FusionAutoencoder(width_mult=0.25)
    x = torch.rand(2, 3, n, n)
    outputs = fae(x)
    assert all(o.shape == (2, 1, n, n) for o in outputs)
    assert fae.encode(x).shape == (2, 3, n // 4 - 20, n // 4 - 20)
    assert FusionAutoencoder.output_size(n) == n and FusionAutoencoder.latent_size(n) == n // 4 - 20
    assert all((o >= -0.17).all() for o in outputs)  # GELU on the output: >= min GELU = -0.17


def test_size_rule_breaks_off_the_grid():
    assert FusionAutoencoder.output_size(130) != 130  # not divisible by 4: the pools floor
    assert FusionAutoencoder.latent_size(80) < 1  # below 84 nothing is left


def test_wrong_channel_count_is_explained():
    with pytest.raises(ValueError, match="one channel per modality"):
        FusionAutoencoder()(torch.rand(1, 2, 96, 96))


def test_stems_share_conv0_and_convD_and_heads_follow_the_flag():
    fae = FusionAutoencoder(width_mult=0.25)
    names = {name.split(".")[0] for name, _ in fae.named_parameters()}
    assert {"conv0", "bn0", "convD", "convA", "convB", "convC"} <= names
    assert len(fae.heads) == 3 and len(FusionAutoencoder(share_head_weights=True).heads) == 1
    x = torch.rand(1, 3, 96, 96)
    # BSHG and FSHG stems differ only by the BN: with an identity BN (eval, fresh stats) they agree.
    fae.eval()
    fae.bn0.running_mean.zero_()
    fae.bn0.running_var.fill_(1 - fae.bn0.eps)
    with torch.no_grad():
        assert torch.allclose(fae.stem("bshg", x[:, :1]), fae.stem("fshg", x[:, :1]), atol=1e-6)
    assert fae.stem("tpef", x[:, :1]).shape == (1, 4, 86, 86)


def test_latent_off_the_path_gets_no_gradient_and_on_the_path_does():
    x = torch.rand(1, 3, 96, 96)
    for on_path in (False, True):
        fae = FusionAutoencoder(width_mult=0.25, latent_on_path=on_path)
        sum(o.mean() for o in fae(x)).backward()
        grad = fae.conv_latent.weight.grad
        if on_path:
            assert grad is not None and grad.abs().sum() > 0
        else:
            assert grad is None
        assert fae.encoder[0].weight.grad.abs().sum() > 0 and fae.conv0.weight.grad.abs().sum() > 0
        assert all(p.grad is not None for h in fae.heads for p in h.parameters())


@pytest.mark.parametrize("modalities", [["bshg", "fshg"], ["bshg", "tpef"], ["fshg", "tpef"]])
def test_two_modality_ablation(modalities):
    fae = FusionAutoencoder(modalities=modalities, width_mult=0.25)
    assert fae.encoder[0].in_channels == 8  # two stems of 4
    assert len(fae.heads) == 2
    assert (fae.heads[0].tconv7.in_channels, fae.heads[0].tconv7.out_channels, fae.heads[0].tconv8.in_channels) == (6, 4, 4)
    outputs = fae(torch.rand(1, 2, 96, 96))
    assert len(outputs) == 2 and all(o.shape == (1, 1, 96, 96) for o in outputs)
    assert ("tpef" in modalities) == hasattr(fae, "convA") and ("bshg" in modalities) == hasattr(fae, "bn0")


def test_decoder_bn_flag():
    fae = FusionAutoencoder(width_mult=0.25, decoder_bn=True)
    assert isinstance(fae.decoder_norm, nn.BatchNorm2d) and fae.decoder_norm.num_features == 12
    assert FusionAutoencoder().decoder_norm is None


# -- stage 2 pieces -------------------------------------------------------------------------------------
def test_minmax_per_channel_keeps_what_channel_offsets_hide_from_the_joint_scaling():
    """A latent whose channels sit at different offsets (the untrained conv_latent's biases) with a small spatial
    signal: scaling the image as a whole leaves the signal ~1e-6 wide, scaling each channel spreads it over [0, 1]."""
    from lightning_modules.thyroid_fae import minmax_per_channel

    torch.manual_seed(0)
    signal = torch.rand(2, 3, 6, 6) * 1e-6
    x = signal + torch.tensor([0.0, 1.0, 0.9]).view(1, 3, 1, 1)
    joint, own = minmax_per_image(x), minmax_per_channel(x)
    assert float((joint.amax((2, 3)) - joint.amin((2, 3))).max()) < 1e-5
    for b in range(2):
        for c in range(3):
            ref = (x[b, c] - x[b, c].min()) / (x[b, c].max() - x[b, c].min())
            assert torch.allclose(own[b, c], ref, atol=1e-4) and float(own[b, c].max()) == pytest.approx(1.0)
    assert torch.equal(minmax_per_channel(torch.ones(1, 2, 3, 3)), torch.zeros(1, 2, 3, 3))


def test_minmax_per_image():
    x = torch.randn(4, 3, 5, 5) * torch.tensor([1.0, 10, 100, 0]).view(4, 1, 1, 1)
    y = minmax_per_image(x)
    for i in range(3):
        assert torch.isclose(y[i].min(), torch.tensor(0.0)) and torch.isclose(y[i].max(), torch.tensor(1.0))
        ref = (x[i] - x[i].min()) / (x[i].max() - x[i].min())
        assert torch.allclose(y[i], ref, atol=1e-6)
    assert torch.equal(y[3], torch.zeros_like(y[3]))  # constant image


def test_classifier_input_resize_crop_and_imagenet_normalisation():
    prep = ClassifierInput(input_size=16, crop="train")
    x = torch.rand(3, 3, 12, 12)
    prep.eval()
    y = prep(x)
    resized = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(y, (resized - mean) / std, atol=1e-6)
    prep.train()
    torch.manual_seed(0)
    a = prep(x)
    assert a.shape == (3, 3, 16, 16) and not torch.allclose(a, y)
    assert ClassifierInput(8, crop="none").train()(torch.rand(1, 1, 8, 8)).shape == (1, 3, 8, 8)  # grey -> 3
    always = ClassifierInput(16, crop="always").eval()
    torch.manual_seed(1)
    assert not torch.allclose(always(x), y)  # the code's test-time random crops


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    generator = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(200, 64, 64, (0.08, 1.0), (3 / 4, 4 / 3), generator)
    for top, left, h, w in boxes:
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        assert 0.08 * 64 * 64 * 0.8 <= h * w <= 64 * 64
        assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
    areas = [h * w / 64 ** 2 for _, _, h, w in boxes]
    assert 0.3 < np.mean(areas) < 0.75  # U(0.08, 1) area, a few rejected near 1


def test_bce_on_sigmoid_with_one_hot_targets_is_the_codes_loss():
    logits = torch.randn(8, 2)
    target = torch.nn.functional.one_hot(torch.randint(0, 2, (8,)), 2).float()
    assert torch.allclose(nn.BCEWithLogitsLoss()(logits, target), nn.BCELoss()(torch.sigmoid(logits), target))


def test_metrics_against_scikit_learn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 60)
    scores = rng.uniform(size=(60, 2))
    scores[:, 1] += 0.3 * target
    metrics = ThyroidAUROC(positive_class=1)
    for chunk in np.array_split(np.arange(60), 4):
        metrics.update(torch.tensor(scores[chunk]), torch.tensor(target[chunk]))
    values = metrics.compute()
    predicted = scores.argmax(1)
    assert math.isclose(values["auroc_labels"].item(), roc_auc_score(target, predicted), abs_tol=1e-6)
    tpr = ((predicted == 1) & (target == 1)).sum() / (target == 1).sum()
    tnr = ((predicted == 0) & (target == 0)).sum() / (target == 0).sum()
    assert math.isclose(values["auroc_labels"].item(), (tpr + tnr) / 2, abs_tol=1e-6)
    assert math.isclose(values["auroc_probs"].item(), roc_auc_score(target, scores[:, 1]), abs_tol=1e-6)


def test_all_one_class_predictions_score_exactly_one_half():
    """Why the paper's all-FTC ResNet runs (Table 4) have AUROC 0.5 +- 0.00 under the code's metric."""
    metrics = ThyroidAUROC()
    target = torch.tensor([0, 1, 1, 0, 1, 1])
    metrics.update(torch.tensor([[0.1, 0.9]] * 6), target)
    values = metrics.compute()
    assert values["auroc_labels"].item() == 0.5


# -- stage-1 checkpoint loading -------------------------------------------------------------------------
def test_load_fae_from_a_lightning_style_checkpoint(tmp_path):
    fae = FusionAutoencoder(width_mult=0.25, share_head_weights=True)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": {f"network.{k}": v for k, v in fae.state_dict().items()},
                "hyper_parameters": {"network": {"class_path": "lightning_modules.thyroid_fae.FusionAutoencoder",
                                                 "init_args": {"width_mult": 0.25, "share_head_weights": True}}}},
               path)
    loaded = load_fae(str(path))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), fae.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit"):
        load_fae(str(path), FusionAutoencoder(width_mult=0.5))
    with pytest.raises(FileNotFoundError, match="Train stage 1 first: python run.py --config"):
        load_fae(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="thyroid_fae_demo_fae.yaml"):
        load_fae(None)


# -- data -----------------------------------------------------------------------------------------------
def _fixture_tree(root, sections=(("FA", "100", 3), ("FA", "101", 3), ("FA", "102", 2), ("FTC", "200", 3),
                                  ("FTC", "201", 2), ("FTC", "202", 3)), size=8):
    rng = np.random.default_rng(0)
    truth = {}
    for class_name, section, rois in sections:
        for roi in range(1, rois + 1):
            images = [rng.uniform(0, 100, (size, size)).astype(np.float32) for _ in range(3)]
            write_roi(root, class_name, f"{section}-{roi}", *images, polarisation_jitter=5.0, seed=roi)
            truth[f"{class_name}/{section}-{roi}"] = np.stack(images)
    return truth


def test_reads_the_official_layout_and_averages_polarisations_0_to_160(tmp_path):
    import tifffile

    truth = _fixture_tree(tmp_path)
    roi = tmp_path / "FA" / "100-1"
    assert len(list((roi / "BSHG").glob("BSHG_pol_lin_*.tif"))) == 10 and (roi / "TPEF.tif").is_file()
    # The mean of the 9 files 0-160 is the image; the 180 file is not read.
    tifffile.imwrite(roi / "BSHG" / "BSHG_pol_lin_180.tif", np.full((8, 8), 1e6, np.float32))
    dm = ThyroidMPMDataModule(str(tmp_path), intensity_norm="none", num_workers=0, val_fraction=0.2, test_size=0.34)
    dm.setup()
    assert len(dm.items) == 16 and {i.section for i in dm.items} == {"100", "101", "102", "200", "201", "202"}
    for item in dm.items:
        image = dm.read_item(item)
        assert np.allclose(image, truth[item.name], atol=1e-3), item.name
    manual = np.mean([tifffile.imread(roi / "FSHG" / f"FSHG_pol_lin_{a}.tif") for a in AVERAGED_POLARISATIONS], 0)
    assert np.allclose(dm.read_item(dm.items[0])[1], manual, atol=1e-5)
    sections = dm.split_sections
    assert sorted(sum(sections.values(), [])) == sorted({i.section for i in dm.items})
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (1, 3, 8, 8) and batch["image"].dtype == torch.float32
    single = ThyroidMPMDataModule(str(tmp_path), modalities=["tpef"], image_size=4, num_workers=0, preload=False)
    single.setup()
    image = single.test_set[0]["image"]
    assert image.shape == (1, 4, 4) and image.min() == 0 and image.max() == 1  # minmax


def test_excluded_roi_and_split_file(tmp_path):
    _fixture_tree(tmp_path)
    write_roi(tmp_path, "FTC", "494920-3", *[np.ones((8, 8), np.float32)] * 3)
    (tmp_path / "split.yaml").write_text(yaml.safe_dump(
        [{"train": ["100", "101", "200", "201"], "val": ["102"], "test": ["202"]},
         {"train": ["100", "102", "200", "202"], "val": ["201"], "test": ["101"]}]))
    dm = ThyroidMPMDataModule(str(tmp_path), split="file", split_setting=1, num_workers=0)
    dm.setup()
    assert "FTC/494920-3" not in {i.name for i in dm.items}
    assert dm.split_sections == {"train": ["100", "102", "200", "202"], "val": ["201"], "test": ["101"]}
    assert {dm.items[i].section for i in dm.split_indices["test"]} == {"101"}


def test_missing_and_corrupt_files_raise_dataset_errors(tmp_path):
    _fixture_tree(tmp_path)
    (tmp_path / "FA" / "101-2" / "FSHG" / "FSHG_pol_lin_140.tif").unlink()
    dm = ThyroidMPMDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(DatasetError, match="FSHG_pol_lin_140.tif") as info:
        dm.setup()
    message = str(info.value)
    assert "Expected layout" in message and "BSHG_pol_lin_0.tif" in message and "thyroid_fae_demo_fae.yaml" in message
    (tmp_path / "FA" / "101-2" / "FSHG" / "FSHG_pol_lin_140.tif").write_bytes(b"not a tiff")
    with pytest.raises(DatasetError, match="unreadable TIFF"):
        ThyroidMPMDataModule(str(tmp_path), num_workers=0).setup()
    with pytest.raises(DatasetError, match="dataset folder not found"):
        ThyroidMPMDataModule(str(tmp_path / "nowhere")).setup()
    empty = tmp_path / "empty"
    (empty / "FA").mkdir(parents=True)
    with pytest.raises(DatasetError, match="class folder 'FA' holds no RoI folders"):
        ThyroidMPMDataModule(str(empty)).setup()
    (empty / "FA" / "100-1").mkdir()
    with pytest.raises(DatasetError, match="class folder 'FTC' not found"):
        ThyroidMPMDataModule(str(empty)).setup()
    with pytest.raises(DatasetError, match="split file not found"):
        ThyroidMPMDataModule(str(tmp_path), split="file", split_file=str(tmp_path / "none.yaml"),
                             num_workers=0).setup()


def test_section_split_of_the_papers_dataset_is_balanced_and_disjoint():
    """28 sections: FA 115 RoIs on 8, FTC 181 on 20 (the paper's counts)."""
    rng = np.random.default_rng(1)
    fa = rng.multinomial(115 - 8, [1 / 8] * 8) + 1
    ftc = rng.multinomial(181 - 20, [1 / 20] * 20) + 1
    labels = {f"a{i}": 0 for i in range(8)} | {f"t{i}": 1 for i in range(20)}
    sizes = {f"a{i}": int(n) for i, n in enumerate(fa)} | {f"t{i}": int(n) for i, n in enumerate(ftc)}
    for seed in range(3):
        split = section_split(labels, sizes, 0.2, 0.1, seed)
        assert [len(split[k]) for k in ("train", "val", "test")] == [19, 3, 6]
        assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
        rois = [sum(sizes[s] for s in split["train"] if labels[s] == c) for c in (0, 1)]
        assert abs(rois[0] - rois[1]) <= 0.1 * sum(rois)
        assert {labels[s] for s in split["test"]} == {0, 1} and {labels[s] for s in split["val"]} == {0, 1}
        assert split == section_split(labels, sizes, 0.2, 0.1, seed)  # deterministic
    assert section_split(labels, sizes, seed=0) != section_split(labels, sizes, seed=1)


def test_intensity_normalisation_modes():
    image = np.random.default_rng(0).uniform(3, 50, (3, 6, 6)).astype(np.float32)
    assert normalise_intensity(image, "none") is image
    unit = normalise_intensity(image, "minmax")
    assert np.allclose(unit.min((1, 2)), 0) and np.allclose(unit.max((1, 2)), 1)
    z = normalise_intensity(image, "zscore")
    assert np.allclose(z.mean((1, 2)), 0, atol=1e-5) and np.allclose(z.std((1, 2)), 1, atol=1e-4)


def test_standin_layout_and_signal(tmp_path):
    items = synthetic_items(num_sections=4, rois_per_section=3, size=96, seed=0)
    assert [i.label for i in items] == [0] * 3 + [1] * 3 + [0] * 3 + [1] * 3
    assert all(i.source.shape == (3, 96, 96) and (i.source >= 0).all() for i in items)
    assert all(np.allclose(i.source, np.round(i.source)) for i in items)  # photon counts (Poisson)
    shg = [(i.source[0] > 12).mean() for i in items]  # capsule area: thick in FTC
    assert min(s for s, i in zip(shg, items) if i.label == 1) > max(s for s, i in zip(shg, items) if i.label == 0)
    dm = SyntheticThyroidMPMDataModule(num_sections=8, rois_per_section=2, size=96, num_workers=0)
    dm.setup()
    assert [len(dm.split_sections[k]) for k in ("train", "val", "test")] == [5, 1, 2]
    assert {dm.items[i].label for i in dm.split_indices["test"]} == {0, 1}
    root = export_standin(tmp_path, num_sections=6, rois_per_section=1, size=96)
    real = ThyroidMPMDataModule(str(root), intensity_norm="none", num_workers=0)
    real.setup()
    by_name = {i.name: i.source for i in synthetic_items(6, 1, 96, 0)}
    assert all(np.allclose(real.read_item(i), by_name[i.name], atol=1e-3) for i in real.items)
