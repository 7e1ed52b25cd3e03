"""SAPM (ICPR 2024): the amplitude perturbation against a numpy re-implementation of Eq. 1-5, the sensitivity,
guidance and consistency losses against hand values, the network's parameter counts and shapes, the two-stream
training step, the RIGA+ reader on a fixture in the public layout, and the stand-in's generator."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import DatasetError
from datamodules.riga_plus import RIGAPlusDataModule, od_oc_channels
from datamodules.standins.synthetic_fundus import (DOMAIN_STYLES, SyntheticFundusDataModule, synthetic_domain)
from lightning_modules.sapm import (SAPMSegmentationTask, SensitivityGuidedUNet, UnetBlock, amplitude_noise_variance,
                                    consistency_loss, guidance_loss, sensitivity_vector,
                                    spatial_amplitude_perturbation)
from lightning_modules.utils import count_parameters


# ---------------------------------------------------------------------------------------------------------- SAPM
def test_noise_variance_grows_from_beta_at_the_centre_to_alpha_plus_beta():
    variance = amplitude_noise_variance(8, 6, alpha=6.0, beta=0.5)
    assert variance[0, 0] == pytest.approx(0.5)  # fft2's DC term = the shifted map's centre (Eq. 1)
    shifted = torch.fft.fftshift(variance)
    assert shifted[4, 3] == pytest.approx(0.5)
    assert shifted[0, 0] == pytest.approx(6.5)  # the farthest frequency: D = 1
    i, j = 1 - 4, 5 - 3  # any point: alpha * (i^2 + j^2) / max + beta (Eq. 2-3), max = 4^2 + 3^2
    assert shifted[1, 5] == pytest.approx(6.0 * (i * i + j * j) / 25 + 0.5)


def test_sapm_matches_a_numpy_implementation_of_eq_1_to_5():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 12, 10, dtype=torch.float64)
    noise = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(3))
    ours = spatial_amplitude_perturbation(image.float(), 6.0, 0.5, per_channel=True, output_range="none",
                                          generator=torch.Generator().manual_seed(3))
    x = image.numpy()
    spectrum = np.fft.fftshift(np.fft.fft2(x), axes=(-2, -1))  # (0, 0) at the centre, as the paper writes
    i = np.arange(12)[:, None] - 6
    j = np.arange(10)[None, :] - 5
    d = (i ** 2 + j ** 2) / (i ** 2 + j ** 2).max()
    mu = 1 + np.sqrt(6.0 * d + 0.5) * np.fft.fftshift(noise.numpy(), axes=(-2, -1))
    perturbed = np.abs(spectrum) * mu * np.exp(1j * np.angle(spectrum))
    expected = np.fft.ifft2(np.fft.ifftshift(perturbed, axes=(-2, -1))).real
    assert np.allclose(ours.numpy(), expected, atol=1e-4)


def test_sapm_options_identity_shared_noise_and_output_range():
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16)
    identity = spatial_amplitude_perturbation(image, alpha=0.0, beta=0.0, output_range="none")
    assert torch.allclose(identity, image, atol=1e-5)  # mu == 1: the inverse FFT gives the image back
    grey = image[:, :1].repeat(1, 3, 1, 1)
    shared = spatial_amplitude_perturbation(grey, per_channel=False, output_range="none")
    assert torch.allclose(shared[:, 0], shared[:, 2], atol=1e-5)  # one draw for every channel
    apart = spatial_amplitude_perturbation(grey, per_channel=True, output_range="none")
    assert not torch.allclose(apart[:, 0], apart[:, 2], atol=1e-2)  # a colour shift per channel
    scaled = spatial_amplitude_perturbation(image, output_range="minmax")
    assert torch.allclose(scaled.amin(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-6)
    assert torch.allclose(scaled.amax(dim=(-2, -1)), torch.ones(2, 3), atol=1e-6)
    clipped = spatial_amplitude_perturbation(image)  # the default: clamp
    assert clipped.min() >= 0 and clipped.max() <= 1
    assert not torch.allclose(clipped.amin(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-3)  # not stretched
    assert not torch.allclose(scaled, image, atol=0.05)  # the default (alpha 6, beta 0.5) changes the image


# ---------------------------------------------------------------------------------------------------------- losses
def test_sensitivity_is_the_min_max_normalised_mean_absolute_feature_change():
    f_ori = torch.zeros(1, 3, 2, 2)
    f_aug = torch.stack([torch.full((2, 2), v) for v in (1.0, 3.0, -2.0)])[None]  # GAP|diff| = 1, 3, 2
    assert torch.allclose(sensitivity_vector(f_ori, f_aug), torch.tensor([[0.0, 1.0, 0.5]]))


def test_guidance_loss_is_eq_10_and_pushes_sensitive_channels_down():
    ca, s = torch.tensor([[0.3, 0.8]]), torch.tensor([[0.9, 0.2]])
    expected = ((np.log(0.3) * np.log(0.9) - 1) ** 2 + (np.log(0.8) * np.log(0.2) - 1) ** 2) / 2
    assert guidance_loss(ca, s).item() == pytest.approx(expected, rel=1e-5)
    optimum = torch.exp(1 / torch.log(s))  # minimiser: log CA * log S = 1
    assert guidance_loss(optimum, s).item() == pytest.approx(0.0, abs=1e-8)
    assert optimum[0, 0] < 1e-3 < 0.5 < optimum[0, 1]  # sensitive (S 0.9) -> ~0, insensitive (S 0.2) -> high
    logit = torch.zeros(1, 2, requires_grad=True)  # CA = 0.5 for both
    guidance_loss(torch.sigmoid(logit), s).backward()
    assert logit.grad[0, 0] > 0  # descent lowers the sensitive channel's attention ...
    assert logit.grad[0, 1] < 0  # ... and raises the insensitive one's


def test_consistency_is_the_mse_of_the_sigmoid_outputs():
    a, b = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    assert consistency_loss(a, b).item() == pytest.approx(((a.sigmoid() - b.sigmoid()) ** 2).mean().item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------- network
def test_parameter_counts_of_the_ccsdg_unet_with_se():
    """The paper gives no count; ResNet-34 without fc is torchvision's 21,284,672 exactly, the decoder follows
    CCSDG's UnetBlocks (checked by formula), the SE conv is 64 * 64 + 64: 22,014,850 in all (the card's ~22.0M)."""
    with torch.device("meta"):
        network = SensitivityGuidedUNet("resnet34")
        plain = SensitivityGuidedUNet("resnet34", sensitivity=False)

    def block(up_in, x_in, n_out):
        half = n_out // 2
        return (x_in * half + half) + (up_in * half * 4 + half) + 2 * n_out

    decoder = block(512, 256, 256) + block(256, 128, 256) + 2 * block(256, 64, 256) + (256 * 2 * 4 + 2)
    assert count_parameters(UnetBlock(512, 256, 256)) == block(512, 256, 256)
    assert count_parameters(network.encoder) == 21_284_672
    assert count_parameters(network.attention) == 4_160
    assert count_parameters(network) == 21_284_672 + decoder + 4_160 == 22_014_850
    assert count_parameters(network) - count_parameters(plain) == 4_160


def test_network_shapes_features_and_pretrained_encoder(tmp_path):
    torch.manual_seed(0)
    network = SensitivityGuidedUNet("resnet18", decoder_channels=32).eval()  # width 1: torchvision's layout
    image = torch.rand(2, 3, 64, 64)
    logits, features, attention = network(image, return_features=True)
    assert logits.shape == (2, 2, 64, 64) and features.shape == (2, 64, 32, 32) and attention.shape == (2, 64, 1, 1)
    assert torch.equal(network(image), logits)
    assert torch.allclose(features, network.encoder.conv1(image))  # f: conv1's output, before the attention
    state = {**network.encoder.state_dict(), "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet18.pth")  # torchvision's key layout
    loaded = SensitivityGuidedUNet("resnet18", decoder_channels=32, pretrained=str(tmp_path / "resnet18.pth"))
    assert torch.equal(loaded.encoder.layer4[1].conv2.weight, network.encoder.layer4[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="missing"):
        SensitivityGuidedUNet("resnet18", decoder_channels=16, pretrained=str(tmp_path / "bad.pth"))
    narrow = SensitivityGuidedUNet("resnet18", decoder_channels=16, width=0.25)
    logits, features, attention = narrow(image, return_features=True)
    assert logits.shape == (2, 2, 64, 64) and features.shape == (2, 16, 32, 32) and attention.shape == (2, 16, 1, 1)


# ---------------------------------------------------------------------------------------------------------- task
def _batch():
    masks = torch.from_numpy(np.stack([od_oc_channels(item.label) for item in synthetic_domain("source", 2, 0, 32)]))
    return torch.rand(2, 3, 32, 32), masks


def test_two_stream_step_sums_the_weighted_terms_and_trains_the_attention():
    torch.manual_seed(0)
    image, mask = _batch()
    task = SAPMSegmentationTask(SensitivityGuidedUNet("resnet18", decoder_channels=16, width=0.25), con_weight=0.5,
                                guidance_weight=0.5)
    out = task.two_stream_losses(image, mask)
    assert set(out) == {"loss", "seg", "con", "guidance"}
    assert out["loss"].item() == pytest.approx((out["seg"] + 0.5 * out["con"] + 0.5 * out["guidance"]).item(), rel=1e-6)
    out["loss"].backward()
    assert task.network.attention.conv.weight.grad.abs().sum() > 0
    plain = SAPMSegmentationTask(SensitivityGuidedUNet("resnet18", sensitivity=False, decoder_channels=16, width=0.25),
                                 augmentation="none", sensitivity=False)
    terms = plain.two_stream_losses(image, mask)
    expected = plain.loss_fn(plain.network(image), mask)  # BCE + Dice on OD and OC
    assert set(terms) == {"loss", "seg"} and terms["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert plain.loss_fn.multilabel and plain.monitor is None  # last epoch tested, no source-side selection
    with pytest.raises(ValueError, match="needs an augmentation"):
        SAPMSegmentationTask(SensitivityGuidedUNet("resnet18", width=0.25), augmentation="none", sensitivity=True)
    with pytest.raises(ValueError, match="channel attention"):
        SAPMSegmentationTask(SensitivityGuidedUNet("resnet18", sensitivity=False, width=0.25), sensitivity=True)


# ---------------------------------------------------------------------------------------------------------- data
DOMAINS = {"BinRushed": 3, "Magrabia": 2, "MESSIDOR_Base1": 2, "MESSIDOR_Base2": 1, "MESSIDOR_Base3": 2}


def _riga_fixture(root, sizes=(40, 48)):
    """RIGA+ as released: CSVs 'image,mask' relative to the root; 6 raters' masks <stem>-<r>.tif."""
    rng = np.random.default_rng(0)
    for domain, count in DOMAINS.items():
        folder = root / domain.split("_")[0] / domain
        folder.mkdir(parents=True)
        rows = [("image", "mask")]
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (*sizes, 3), dtype=np.uint8)).save(folder / f"image{i}.tif")
            for rater in range(1, 7):
                label = np.zeros(sizes, np.uint8)
                label[10:30, 12:34] = 255
                label[15:25, 18:28] = 128 if rater == 1 else 255
                Image.fromarray(label).save(folder / f"image{i}-{rater}.tif")
            rows.append((f"{folder.relative_to(root)}/image{i}.tif", f"{folder.relative_to(root)}/image{i}.tif"))
        with open(root / f"{domain}.csv", "w", newline="") as file:
            csv.writer(file).writerows(rows)
        with open(root / f"{domain}_unlabeled.csv", "w") as file:
            file.write("image\nx.tif\n")


def test_riga_plus_reads_the_public_layout(tmp_path):
    _riga_fixture(tmp_path)
    data = RIGAPlusDataModule(str(tmp_path), source="BinRushed", image_size=32, batch_size=2, num_workers=0)
    data.prepare_data()
    data.setup("fit")
    assert len(data.train_set) == len(data.val_set) == 3
    assert data.test_loader_names == ["test", "Base1", "Base2", "Base3"]
    assert [len(data.test_sets[n]) for n in ("Base1", "Base2", "Base3")] == [2, 1, 2] and len(data.test_set) == 5
    item = data.test_sets["Base1"][0]
    assert item["image"].shape == (3, 32, 32) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].shape == (2, 32, 32) and item["name"] == "MESSIDOR_Base1_image0"
    od, oc = item["mask"]
    assert oc.sum() > 0 and od.sum() > oc.sum() and torch.all(od >= oc)  # rater 1: the cup (128) inside the disc
    rater2 = RIGAPlusDataModule(str(tmp_path), rater=2, image_size=32, num_workers=0)
    rater2.setup("test")
    assert rater2.test_sets["Base1"][0]["mask"][1].sum() == 0  # rater 2's fixture mask has no cup value
    magrabia = RIGAPlusDataModule(str(tmp_path), source="Magrabia", image_size=32, val_fraction=0.5, num_workers=0)
    magrabia.setup("fit")
    assert len(magrabia.train_set) == len(magrabia.val_set) == 1
    loaders = data.test_dataloader()
    assert len(loaders) == 4 and next(iter(loaders[0]))["mask"].shape == (2, 2, 32, 32)


def test_riga_plus_errors_name_the_file_the_layout_and_the_standin(tmp_path):
    with pytest.raises(DatasetError, match="RIGA\\+ folder not found") as error:
        RIGAPlusDataModule(str(tmp_path / "none")).prepare_data()
    assert "sapm_demo.yaml" in str(error.value) and "-<r>.tif" in str(error.value)
    _riga_fixture(tmp_path)
    (tmp_path / "MESSIDOR" / "MESSIDOR_Base2" / "image0-1.tif").unlink()
    with pytest.raises(DatasetError, match="missing rater-1 mask.*image0-1.tif"):
        RIGAPlusDataModule(str(tmp_path)).prepare_data()
    with pytest.raises(DatasetError, match="without a mask column"):
        RIGAPlusDataModule(str(tmp_path), source="BinRushed_unlabeled", targets=["MESSIDOR_Base1"]).prepare_data()


def test_standin_domains_are_deterministic_and_shifted():
    first, again = synthetic_domain("source", 3, 0, 48), synthetic_domain("source", 3, 0, 48)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label) for a, b in zip(first, again))
    for item in first:
        assert set(np.unique(item.label)) == {0, 128, 255}  # RIGA+'s values, the cup inside the disc
        assert 0.02 < (item.label > 0).mean() < 0.2
    means = {d: np.mean([i.image.reshape(-1, 3).mean(0) for i in synthetic_domain(d, 4, 0, 48)], 0)
             for d in DOMAIN_STYLES}
    for target in ("cool_bright", "warm_dark", "low_contrast"):
        assert np.abs(means[target] - means["source"]).max() > 8  # a visible colour / exposure shift
    data = SyntheticFundusDataModule(num_train=4, num_val=2, num_test=3, source_size=48, image_size=32)
    data.setup("fit")
    assert data.test_loader_names == ["test", "cool_bright", "warm_dark", "low_contrast"] and len(data.test_set) == 9
    assert data.train_set[0]["mask"].shape == (2, 32, 32)
