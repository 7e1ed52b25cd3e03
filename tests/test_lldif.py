"""LLDif (ICPR 2024): networks, losses against references, the prior diffusion against MONAI's DDPM scheduler, the
low-light emulation against the sRGB formulas, the LL-RAF-DB / FERPlus / KDEF readers on fixture trees in their
public layouts, and short learning runs of the three stages on the low-light synthetic faces."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from PIL import Image
from scipy.special import log_softmax
from scipy.stats import entropy

from datamodules.base import DatasetError
from datamodules.ferplus import FERPLUS_CLASSES, VOTE_COLUMNS, FERPlusDataModule, majority_label
from datamodules.fer2013 import EMOTIONS
from datamodules.kdef import KDEFDataModule
from datamodules.low_light import (LowLightFERPlusDataModule, LowLightKDEFDataModule, LowLightRAFDBDataModule,
                                   emulate_low_light, lightroom_parameters, low_light_version)
from datamodules.standins.synthetic_low_light_fer import SyntheticLowLightFERDataModule
from lightning_modules.lldif import (LANDMARKS, DMNet, LAClip, LLDifS1, LLDifS2, LLDifTask, LLformer, PriorDiffusion,
                                     WindowCrossAttention, label_aware_clip_loss, landmark_heatmaps, prior_kl_loss)

TINY = dict(img_size=32, num_classes=7, prior_dim=16, patch_size=4, dims=(8, 16, 32), depths=(1, 1, 1),
            heads=(1, 2, 4), dl_heads=(1, 2, 4), embed_dim=32, vit_depth=1, vit_heads=2)


def tiny_laclip(**kw):
    return LAClip(img_size=32, num_classes=7, widths=(8, 16, 32), text_dim=16, **kw)


# ---------------------------------------------------------------------------------------------------------- networks
def test_llformer_shapes_and_paper_scales():
    net = LLformer(img_size=112, landmark_input="heatmaps")  # the card's sizes: 28 / 14 / 7 maps, 3 x 49 tokens
    image, z, landmarks = torch.rand(2, 3, 112, 112), torch.randn(2, 256), torch.rand(2, 68, 2)
    f1, f2, f3 = net.dtnet(image, z)
    assert f1.shape == (2, 64, 28, 28) and f2.shape == (2, 128, 14, 14) and f3.shape == (2, 256, 7, 7)
    assert net.head.pos.shape == (1, 3 * 49, 768)
    assert net(image, z, landmarks).shape == (2, 7)
    with pytest.raises(KeyError, match="landmarks"):
        net(image, z, None)
    with pytest.raises(ValueError, match="divisible"):
        LLformer(img_size=100)


def test_prior_modulates_every_block():
    """Eq. 2: the prior enters the output (another Z, other logits), and its kernel gets gradients."""
    net = LLformer(landmark_input="image", **TINY).eval()
    image = torch.rand(2, 3, 32, 32)
    z = torch.randn(2, 16, requires_grad=True)
    out = net(image, z)
    assert not torch.allclose(out, net(image, torch.randn(2, 16)))
    out.sum().backward()
    assert z.grad.abs().sum() > 0
    assert all(block.mod1.kernel.weight.grad is not None for block in net.dtnet.enc1.blocks)


def test_dmnet_attends_across_channels():
    """Eq. 3: the attention map is C'' x C'' per head (transposed attention), whatever the image size."""
    attention = DMNet(8, heads=2)
    seen = {}
    original = torch.Tensor.softmax

    def spy(self, *args, **kwargs):
        seen["shape"] = tuple(self.shape)
        return original(self, *args, **kwargs)

    torch.Tensor.softmax = spy
    try:
        attention(torch.rand(1, 8, 5, 7))
    finally:
        torch.Tensor.softmax = original
    assert seen["shape"] == (1, 2, 4, 4)


def test_window_cross_attention_matches_a_reference():
    """Eq. 5-7 against torch's scaled_dot_product_attention with the relative bias as the additive mask."""
    torch.manual_seed(0)
    attention = WindowCrossAttention(8, heads=2, window=3)
    torch.nn.init.normal_(attention.bias_table)
    lm, img = torch.randn(2, 9, 8), torch.randn(2, 9, 8)
    q = attention.q(lm).reshape(2, 9, 2, 4).transpose(1, 2)
    k, v = attention.kv(img).reshape(2, 9, 2, 2, 4).permute(2, 0, 3, 1, 4)
    bias = attention.bias_table[attention.bias_index.reshape(-1)].reshape(9, 9, 2).permute(2, 0, 1)
    expected = attention.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(2, 9, 8))
    torch.testing.assert_close(attention(lm, img), expected)
    # the bias depends on the relative offset only: positions (0,0)->(1,1) and (1,1)->(2,2) share it
    assert attention.bias_index[0, 4] == attention.bias_index[4, 8]


def test_landmark_heatmaps_peak_at_the_landmarks():
    maps = landmark_heatmaps(torch.tensor([[[0.25, 0.75], [float("nan"), float("nan")]]]), size=8, sigma=1.0)
    assert maps.shape == (1, 2, 8, 8)
    assert divmod(int(maps[0, 0].argmax()), 8) in {(5, 1), (5, 2), (6, 1), (6, 2)}  # (row, col) around (6, 2)
    assert maps[0, 1].abs().sum() == 0  # absent


def test_stage_networks_freeze_their_teachers_and_need_the_right_inputs():
    la = tiny_laclip()
    s1 = LLDifS1(laclip=la, landmark_input="heatmaps", **TINY).train()
    assert not la.training and not any(p.requires_grad for p in s1.laclip.parameters())
    image, label, landmarks = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 2]), torch.rand(4, 68, 2)
    logits, aux = s1(image, label, landmarks)
    assert logits.shape == (4, 7) and aux == {}
    with pytest.raises(ValueError, match="label"):
        s1(image, None, landmarks)
    s2 = LLDifS2(s1=s1, img_size=32, num_classes=7, n_feats=4, pnet_res=1, loss="total").train()
    assert not any(p.requires_grad for p in s2.pnet_s1.parameters()) and not s2.pnet_s1.training
    assert s2.llformer is s1.llformer  # initialised from stage 1
    logits, aux = s2(image, label, landmarks)
    assert logits.shape == (4, 7) and set(aux) == {"kl"} and aux["kl"] >= 0
    s2.eval()
    assert s2(image, None, landmarks)[0].shape == (4, 7)  # inference needs no label
    with pytest.raises(ValueError, match="classes"):
        LLDifS2(s1=s1, img_size=32, num_classes=8)
    with pytest.raises(ValueError, match="laclip_checkpoint"):
        LLDifS1(**TINY)
    nodm = LLDifS2(s1=s1, img_size=32, num_classes=7, n_feats=4, pnet_res=1, diffusion=False)
    assert nodm.denoiser is None and nodm.train()(image, label, landmarks)[0].shape == (4, 7)


def test_laclip_logits_are_scaled_prompt_cosines():
    la = tiny_laclip().eval()
    image = torch.rand(3, 3, 32, 32)
    logits, aux = la(image)
    f_l = la.encode(image)["f_l"]
    cos = F.cosine_similarity(f_l[:, None], la.label_embeddings.weight[None], dim=-1)
    torch.testing.assert_close(logits, la.logit_scale.exp() * cos, rtol=1e-4, atol=1e-4)
    assert aux == {}
    assert set(la.train()(image, torch.tensor([0, 1, 1]))[1]) == {"clip"}


# ------------------------------------------------------------------------------------------------------------ losses
def test_clip_loss_is_clips_with_distinct_labels_and_multi_positive_otherwise():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    logits = 10.0 * norm(image) @ norm(text).T
    clip = -0.5 * (np.diag(log_softmax(logits, 1)).mean() + np.diag(log_softmax(logits.T, 1)).mean())
    got = label_aware_clip_loss(torch.tensor(image), torch.tensor(text), torch.arange(4), 10.0)
    assert float(got) == pytest.approx(clip, rel=1e-6)
    labels = np.array([0, 0, 1, 2])
    positives = (labels[:, None] == labels[None]).astype(float)
    targets = positives / positives.sum(1, keepdims=True)
    multi = -0.5 * ((targets * log_softmax(logits, 1)).sum(1).mean()
                    + (targets * log_softmax(logits.T, 1)).sum(1).mean())
    got = label_aware_clip_loss(torch.tensor(image), torch.tensor(text), torch.tensor(labels), 10.0)
    assert float(got) == pytest.approx(multi, rel=1e-6)


def test_prior_kl_is_scipys_kl_of_the_softmax_normalised_priors():
    rng = np.random.default_rng(1)
    z, z_hat = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    softmax = lambda a: np.exp(log_softmax(a, 1))  # noqa: E731
    expected = np.mean([entropy(p, q) for p, q in zip(softmax(z), softmax(z_hat))])
    assert float(prior_kl_loss(torch.tensor(z), torch.tensor(z_hat))) == pytest.approx(expected, rel=1e-5)
    assert float(prior_kl_loss(torch.tensor(z), torch.tensor(z))) == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------------- diffusion
def test_prior_diffusion_matches_monais_ddpm():
    from monai.networks.schedulers import DDPMScheduler

    for parameterization, prediction_type in (("eps", "epsilon"), ("x0", "sample")):
        ours = PriorDiffusion(4, 0.1, 0.99, parameterization)
        monai = DDPMScheduler(num_train_timesteps=4, schedule="linear_beta", beta_start=0.1, beta_end=0.99,
                              clip_sample=False, prediction_type=prediction_type)
        torch.testing.assert_close(ours.alphas_cumprod, monai.alphas_cumprod.float())
        z_t, output = torch.randn(3, 8), torch.randn(3, 8)
        for t in range(4):
            generator = torch.Generator().manual_seed(t)
            prev, _ = monai.step(output, t, z_t, generator=generator)
            if t > 0:  # MONAI adds the posterior noise; ours is deterministic (the paper's Eq. 16)
                noise = torch.randn(output.shape, generator=torch.Generator().manual_seed(t))
                prev = prev - monai._get_variance(t) ** 0.5 * noise
            torch.testing.assert_close(ours.step(output, t, z_t), prev, rtol=1e-4, atol=1e-4)
    # with the true noise, one eps step from q(Z_t | Z) equals the x0 step with the true Z (the posterior mean)
    eps, x0 = PriorDiffusion(4, parameterization="eps"), PriorDiffusion(4, parameterization="x0")
    z0, noise = torch.randn(2, 8), torch.randn(2, 8)
    for t in range(4):
        z_t = eps.q_sample(z0, t, noise)
        torch.testing.assert_close(eps.step(noise, t, z_t), x0.step(z0, t, z_t), rtol=1e-4, atol=1e-4)
    assert float(eps.alphas_cumprod[-1]) < 0.01  # Z_T is nearly pure noise after T = 4 steps


# --------------------------------------------------------------------------------------------------------- low light
def srgb_to_linear(v):
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v):
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def test_lightroom_parameters_follow_the_paper():
    rng = np.random.default_rng(0)
    draws = [lightroom_parameters(rng) for _ in range(500)]
    for p in draws:
        assert -5 <= p["exposure"] <= -4 and -5 <= p["highlights"] <= 5 and -10 <= p["shadows"] <= 0
        assert -100 <= p["white_balance"] <= 0
        a2 = p["exposure"] + 5
        assert p["white_balance"] == pytest.approx(-20 * (5 - 5 * a2))


def test_exposure_and_white_balance_against_the_srgb_formulas():
    grey = np.full((4, 4, 3), 200, np.uint8)
    out = emulate_low_light(grey, exposure=-4.0, highlights=0.0, shadows=0.0, white_balance=0.0)
    expected = np.round(255 * linear_to_srgb(srgb_to_linear(200 / 255) * 2 ** -4))
    assert np.all(np.abs(out.astype(int) - expected) <= 1)
    cool = emulate_low_light(grey, exposure=-4.0, highlights=0.0, shadows=0.0, white_balance=-100.0)
    assert cool[..., 0].mean() < out[..., 0].mean() and cool[..., 2].mean() > out[..., 2].mean()
    lifted = emulate_low_light(np.full((2, 2, 3), 60, np.uint8), 0.0, 0.0, -10.0, 0.0)  # shadows -10: darker
    base = emulate_low_light(np.full((2, 2, 3), 60, np.uint8), 0.0, 0.0, 0.0, 0.0)
    assert lifted.mean() < base.mean()


def test_low_light_version_is_deterministic_per_image_and_keeps_grey():
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    a, b = low_light_version(image, "x"), low_light_version(image, "x")
    assert np.array_equal(a, b) and not np.array_equal(a, low_light_version(image, "y"))
    assert a.mean() < image.mean() / 3
    grey = image[..., 0]
    assert low_light_version(grey, "x").shape == grey.shape


# ------------------------------------------------------------------------------------------------------ data layouts
def _rafdb(root, names_labels):
    (root / "basic" / "EmoLabel").mkdir(parents=True)
    (root / "basic" / "Image" / "aligned").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for name, code in names_labels:
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(
            root / "basic" / "Image" / "aligned" / f"{name}_aligned.jpg")
        lines.append(f"{name}.jpg {code}")
    (root / "basic" / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")


def test_ll_rafdb_official_split_darkened_and_clear_test(tmp_path):
    items = [(f"train_{i:05d}", i % 7 + 1) for i in range(1, 29)] + [(f"test_{i:04d}", i % 7 + 1) for i in range(1, 8)]
    _rafdb(tmp_path, items)
    dm = LowLightRAFDBDataModule(str(tmp_path), image_size=32, val_fraction=0.25, batch_size=4, num_workers=0,
                                 normalization="unit", standardize=False)
    dm.setup("fit")
    names = lambda split: {dm.items[i].name for i in dm.split_indices[split]}  # noqa: E731
    assert names("test") == {f"{n}_aligned" for n, _ in items[28:]}
    assert len(names("train")) == 21 and len(names("val")) == 7 and not names("val") & names("test")
    assert dm.test_loader_names == ["test", "normal_light"]
    dark, clear = dm.test_set[0]["image"], dm.test_sets["normal_light"][0]["image"]
    assert dark.mean() < clear.mean() / 3
    surprise = next(i for i, item in enumerate(dm.items) if item.name == "train_00007_aligned")  # code 1
    assert dm.items[surprise].label == EMOTIONS.index("surprise")


def test_ll_rafdb_missing_label_list_names_it(tmp_path):
    (tmp_path / "basic").mkdir()
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        LowLightRAFDBDataModule(str(tmp_path), num_workers=0).setup("fit")


def test_ferplus_majority_rule():
    def votes(**counts):
        return np.array([counts.get(c, 0) for c in VOTE_COLUMNS], float)
    assert majority_label(votes(happiness=8, neutral=2)) == FERPLUS_CLASSES.index("happiness")
    assert majority_label(votes(happiness=6, neutral=1, anger=1, sadness=1, fear=1)) == 1  # single votes dropped
    assert majority_label(votes(happiness=4, neutral=4, anger=2)) is None  # no majority
    assert majority_label(votes(unknown=7, neutral=3)) is None
    assert majority_label(votes(NF=10)) is None


def _ferplus(root, rows):
    rng = np.random.default_rng(0)
    with open(root / "fer2013.csv", "w", newline="") as a, open(root / "fer2013new.csv", "w", newline="") as b:
        pixels, votes = csv.writer(a), csv.writer(b)
        pixels.writerow(["emotion", "pixels", "Usage"])
        votes.writerow(["Usage", "Image name", *VOTE_COLUMNS])
        for i, (usage, counts) in enumerate(rows):
            pixels.writerow([0, " ".join(map(str, rng.integers(0, 256, 48 * 48))), usage])
            name = f"fer{i:07d}.png" if counts[-2:] == [0, 0] else ""
            votes.writerow([usage, name, *counts])


def test_ferplus_reads_both_tables_and_the_official_split(tmp_path):
    rows = []
    for i in range(24):
        counts = [0] * 10
        counts[i % 8] = 9
        counts[(i + 1) % 8] = 1
        rows.append(("Training" if i < 16 else ("PublicTest" if i < 20 else "PrivateTest"), counts))
    rows.append(("Training", [0] * 8 + [10, 0]))  # unknown: dropped
    _ferplus(tmp_path, rows)
    dm = LowLightFERPlusDataModule(str(tmp_path), image_size=32, val_fraction=0.5, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.items) == 24 and [item.label for item in dm.items[:3]] == [0, 1, 2]
    assert len(dm.split_indices["test"]) == 8 and len(dm.split_indices["train"]) == 8
    assert dm.test_set[0]["image"].shape == (3, 32, 32)
    plain = FERPlusDataModule(str(tmp_path), val_fraction=0, num_workers=0)
    plain.setup("fit")
    assert plain.split_indices["val"] == plain.split_indices["test"]
    (tmp_path / "fer2013new.csv").unlink()
    with pytest.raises(DatasetError, match="fer2013new.csv"):
        FERPlusDataModule(str(tmp_path), num_workers=0).setup("fit")


def test_kdef_layout_and_person_wise_split(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "KDEF"
    people = [f"{s}{i:02d}" for s in "FM" for i in range(1, 6)]
    for person in people:
        for session in "AB":
            folder = root / f"{session}{person}"
            folder.mkdir(parents=True)
            for expression in ("AF", "AN", "DI", "HA", "NE", "SA", "SU"):
                for angle in ("S", "HL"):
                    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(
                        folder / f"{session}{person}{expression}{angle}.JPG")
    (root / "AF01" / "notes.txt").write_text("ignored")
    dm = LowLightKDEFDataModule(str(tmp_path), image_size=32, val_fraction=0.25, batch_size=4, num_workers=0)
    dm.setup("fit")
    assert len(dm.items) == 10 * 2 * 7 * 2
    groups = {split: {dm.items[i].group for i in idx} for split, idx in dm.split_indices.items()}
    assert len(groups["test"]) == 2 and not groups["test"] & (groups["train"] | groups["val"])
    assert len(groups["train"] | groups["val"]) == 8
    afraid = next(item for item in dm.items if item.source.name == "AF01AFS.JPG")
    assert afraid.label == EMOTIONS.index("fear") and afraid.group == "F01"
    straight = KDEFDataModule(str(tmp_path), angles=("S",), num_workers=0)
    assert len(straight.list_items()) == 10 * 2 * 7
    with pytest.raises(DatasetError, match="person folders"):
        KDEFDataModule(str(tmp_path / "KDEF" / "AF01"), num_workers=0).setup("fit")


def test_standin_batches_carry_landmarks_and_a_clear_test_set():
    dm = SyntheticLowLightFERDataModule(num_per_class=6, size=32, image_size=32, batch_size=8, num_workers=0,
                                        standardize=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[LANDMARKS].shape == (8, 68, 2) and batch["image"].shape == (8, 3, 32, 32)
    assert -0.1 <= float(batch[LANDMARKS].min()) and float(batch[LANDMARKS].max()) <= 1.1  # a chin may leave the frame
    assert 0.3 < float(batch[LANDMARKS].mean()) < 0.7
    assert dm.test_sets["normal_light"][0]["image"].mean() > 2 * dm.test_set[0]["image"].mean()
    with pytest.raises(ValueError, match="augmentation"):
        SyntheticLowLightFERDataModule(augmentation="hflip")


def test_standardisation_uses_the_training_split_statistics():
    dm = SyntheticLowLightFERDataModule(num_per_class=6, size=32, image_size=32, batch_size=64, num_workers=0)
    dm.setup("fit")
    train = torch.stack([dm.train_set[i]["image"] for i in range(len(dm.train_set))])
    torch.testing.assert_close(train.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std((0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert dm.image_mean.flatten().max() < 0.2  # the low-light images' own statistics
    clear = dm.test_sets["normal_light"][0]["image"]
    assert clear.mean() > 2 and LANDMARKS in dm.test_set[0]  # the same numbers for the clear images


# ---------------------------------------------------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def standin_batch():
    """One batch of 56 low-light stand-in faces (8 per class) at 32 px, with landmarks."""
    dm = SyntheticLowLightFERDataModule(num_per_class=12, size=32, image_size=32, batch_size=56, num_workers=0,
                                        test_size=0.25, val_fraction=0.1, clear_test=False)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def _fit_batch(network, batch, steps, lr):
    """``steps`` Adam updates of ``LLDifTask`` 's training step on one batch; the losses and the evaluation-mode
    accuracy on the batch after training (a can-it-learn check; held-out learning: the slow tests)."""
    task = LLDifTask(network=network, num_classes=7, optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    task.log = lambda *args, **kwargs: None  # no trainer attached
    optimizer = task.configure_optimizers()
    losses = []
    task.train()
    for step in range(steps):
        loss = task.training_step(batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    task.eval()
    with torch.no_grad():
        logits, _ = task._network_outputs(batch)
    return task, losses, float((logits.argmax(1) == batch["label"]).float().mean())


def test_each_stage_learns_a_batch(standin_batch):
    torch.manual_seed(0)
    chance = 1 / 7
    laclip_task, losses, accuracy = _fit_batch(tiny_laclip(), standin_batch, 25, 3e-3)
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]) and accuracy > 2 * chance
    s1 = LLDifS1(laclip=laclip_task.network, landmark_input="heatmaps", **TINY)
    s1_task, losses, accuracy = _fit_batch(s1, standin_batch, 15, 1e-3)
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]) and accuracy > 2 * chance  # an oracle: reads the label
    s2 = LLDifS2(s1=s1_task.network, img_size=32, num_classes=7, n_feats=8, pnet_res=1, parameterization="x0")
    _, losses, accuracy = _fit_batch(s2, standin_batch, 25, 1e-3)  # inference from N(0, I), no label
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]) and accuracy > 2 * chance


def test_task_logs_confidence_per_test_loader(tmp_path):
    dm = SyntheticLowLightFERDataModule(num_per_class=4, size=32, image_size=32, batch_size=8, num_workers=0)
    network = LLDifS1(laclip=tiny_laclip(), landmark_input="heatmaps", **TINY)
    task = LLDifTask(network=network, num_classes=7)
    trainer = Trainer(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    result = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert {"test/acc", "test/confidence", "test/normal_light/acc", "test/normal_light/confidence"} <= set(result)
    assert 1 / 7 <= result["test/confidence"] <= 1


@pytest.mark.slow
def test_demo_stages_learn(tmp_path):
    """The three shipped demo configs one after another (2,100 low-light faces at 32 px; ~6 min on 2 cores):
    LA-CLIP's zero-shot read-out and stage 2 (no label at test) well above chance."""
    import json
    from pathlib import Path

    import run

    common = ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--runs_dir", str(tmp_path)]
    metrics = {}
    checkpoint = None
    for name, config, key in (("laclip", "experiments/lldif_demo_laclip.yaml", None),
                              ("s1", "experiments/lldif_demo_s1.yaml", "laclip_checkpoint"),
                              ("s2", "experiments/lldif_demo.yaml", "s1_checkpoint")):
        extra = [f"--model.init_args.network.init_args.{key}", checkpoint] if key else []
        cli = run.main(["--config", config, *common, "--run_id", name, *extra])
        run_dir = Path(cli.run_dir)
        metrics[name] = json.loads((run_dir / "results.json").read_text())["metrics"]
        checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
    assert metrics["laclip"]["test/acc"] > 0.5
    assert metrics["s2"]["test/acc"] > 0.4 and metrics["s2"]["test/acc"] > 2 * metrics["s2"]["test/acc_prior"]
