"""CutiViral models: the one-hot BCE loss against torch, WGAN and CAE shapes and parameter counts, WGAN training
(critic/generator update ratio, weight clipping, finite losses, samples in range), CAE generation, the generated
image writer feeding the generated regime, FID against SciPy and closed forms, and a short classifier fit on the
stand-in that lowers the loss and beats the class prior."""
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch import nn

from datamodules.cutiviral import CLASSES
from datamodules.standins.synthetic_skin import SyntheticSkinDataModule, synthetic_skin_image
from lightning_modules.cutiviral import (BCEOneHotLoss, ConvAutoencoder, CutiViralClassificationTask, FIDFeatures,
                                         GeneratedImageWriter, WGANCritic, WGANGenerator, WGANTask, fid,
                                         frechet_distance)


def count(module):
    return sum(p.numel() for p in module.parameters())


def quiet_trainer(**kwargs):
    # a root of its own: test-time figures (ROC, confusion matrix) are written under it, not in the checkout
    kwargs.setdefault("default_root_dir", tempfile.mkdtemp(prefix="cutiviral_test_"))
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, **kwargs)


def test_bce_onehot_is_bce_with_logits_on_one_hot_targets():
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    expected = nn.BCEWithLogitsLoss()(logits, F.one_hot(target, 4).float())
    loss = BCEOneHotLoss()
    assert torch.allclose(loss(logits, target), expected)
    assert torch.allclose(loss(logits, F.one_hot(target, 4).float()), expected)  # as ClassificationTask calls it
    manual = -(F.one_hot(target, 4) * F.logsigmoid(logits) + (1 - F.one_hot(target, 4)) * F.logsigmoid(-logits)).mean()
    assert torch.allclose(loss(logits, target), manual, atol=1e-6)


def test_wgan_networks_shapes_and_parameter_counts():
    generator, critic = WGANGenerator(), WGANCritic()
    z = torch.randn(2, 100)
    image = generator(z)
    assert image.shape == (2, 3, 128, 128) and image.abs().max() <= 1  # Tanh
    assert critic(image).shape == (2,)
    widths = [512, 256, 128, 64, 32]
    g = 100 * 512 * 16 + sum(a * b * 16 for a, b in zip(widths[:-1], widths[1:])) + 32 * 3 * 16 + 2 * sum(widths)
    c_widths = [3, 32, 64, 128, 256, 512]
    c = sum(a * b * 16 + b for a, b in zip(c_widths[:-1], c_widths[1:])) + 512 * 16 + 1
    assert count(generator) == g == 3_608_000 and count(critic) == c == 2_796_001
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())
    assert sum(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in critic.modules()) == 5
    assert WGANGenerator(channels=(64, 32, 16)).image_size == 32
    with pytest.raises(ValueError, match="px"):
        WGANTask(WGANGenerator(channels=(16, 8)), WGANCritic(channels=(8, 16, 32)))


def tiny_wgan(**kwargs):
    return WGANTask(WGANGenerator(latent_dim=8, channels=(16, 8)), WGANCritic(channels=(8, 16)),
                    optimizer=lambda p: torch.optim.RMSprop(p, lr=5e-5), **kwargs)


def test_wgan_trains_critic_n_critic_times_per_generator_step_with_clipped_weights():
    torch.manual_seed(0)
    task = tiny_wgan(n_critic=5, clip_value=0.01)
    dm = SyntheticSkinDataModule(class_index=0, val_per_class=0, image_size=16, normalization="unit",
                                 batch_size=5, num_workers=0)
    generator_before = [p.detach().clone() for p in task.generator.parameters()]
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)
    assert int(task.critic_updates) == 4
    assert all(torch.equal(a, b) for a, b in zip(generator_before, task.generator.parameters()))  # < 5 critic steps
    trainer = quiet_trainer(max_epochs=3, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(task, datamodule=dm)  # a fresh fit: 12 critic updates, 2 generator updates
    assert int(task.critic_updates) == 16
    assert not all(torch.equal(a, b) for a, b in zip(generator_before, task.generator.parameters()))
    assert all(p.abs().max() <= 0.01 + 1e-8 for p in task.critic.parameters())
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/critic"]) and torch.isfinite(metrics["train/loss"])
    assert torch.allclose(metrics["train/wasserstein"], -metrics["train/critic"])
    samples = task.sample(6, torch.Generator().manual_seed(0))
    assert samples.shape == (6, 3, 16, 16) and samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, task.sample(6, torch.Generator().manual_seed(0)))


def test_cae_architecture_and_generation():
    cae = ConvAutoencoder()
    x = torch.rand(2, 3, 64, 64)
    assert cae.encode(x).shape == (2, 128, 8, 8) and cae(x).shape == x.shape
    widths = [3, 32, 64, 128]
    expected = 2 * sum(a * b * 9 for a, b in zip(widths[:-1], widths[1:])) + sum(widths[1:]) + sum(widths[:-1])
    assert count(cae) == expected == 186_371
    assert isinstance(cae.decoder[-1], nn.Sigmoid)
    assert sum(isinstance(m, nn.ReLU) for m in cae.modules()) == 5
    cae.eval()
    with torch.no_grad():
        assert torch.allclose(cae.generate(x, noise_scale=0.0), cae(x))
        generated = cae.generate(x, 0.5, torch.Generator().manual_seed(0))
    assert generated.min() >= 0 and generated.max() <= 1 and not torch.allclose(generated, cae(x))


def test_cae_trains_with_the_autoencoder_task_and_generates():
    autoencoder = pytest.importorskip("lightning_modules.tasks.autoencoder")
    from lightning_modules.cutiviral import CAEGenerationTask

    torch.manual_seed(0)
    task = CAEGenerationTask(ConvAutoencoder(channels=(8, 16, 32)),
                             optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    assert isinstance(task, autoencoder.AutoencoderTask)
    dm = SyntheticSkinDataModule(class_index=3, val_per_class=0, image_size=16, normalization="unit",
                                 batch_size=8, num_workers=0, generate=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    before = F.mse_loss(task.network(batch["image"]), batch["image"]).item()
    quiet_trainer(max_epochs=4, limit_val_batches=0).fit(task, datamodule=dm)
    after = F.mse_loss(task.network(batch["image"]), batch["image"]).item()
    assert np.isfinite(after) and after < before
    out = task.predict_step(next(iter(dm.predict_dataloader())), 0)
    assert out["image"].shape == (5, 3, 16, 16) and out["image"].min() >= 0 and out["image"].max() <= 1
    assert out["label"].tolist() == [3] * 5


def test_writer_output_feeds_the_generated_regime(tmp_path):
    torch.manual_seed(0)
    task = tiny_wgan(output_size=24)
    trainer = quiet_trainer(callbacks=[GeneratedImageWriter()])  # root, method and N from the datamodule
    for index in range(4):
        dm = SyntheticSkinDataModule(class_index=index, val_per_class=0, image_size=16, normalization="unit",
                                     batch_size=4, num_workers=0, generate=6, generated_dir=str(tmp_path / "gen"),
                                     generation_method="wgan")
        trainer.predict(task, datamodule=dm, return_predictions=False)
    for name in CLASSES:
        files = sorted((tmp_path / "gen" / "wgan" / "6" / name).glob("*.png"))
        assert [f.stem for f in files] == [f"{name}_{i:04d}" for i in range(6)]
    from PIL import Image

    assert np.asarray(Image.open(files[0])).shape == (24, 24, 3)
    dm = SyntheticSkinDataModule(regime="generated", generated_dir=str(tmp_path / "gen"), generation_method="wgan",
                                 n_generated=6, image_size=16, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 120 + 24


class TinyFeatures(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2), nn.ReLU(), nn.Conv2d(8, 6, 3, 2), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten())

    def forward(self, x):
        return self.net(x)


def test_frechet_distance_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = rng.uniform(0.5, 2, 4), rng.uniform(0.5, 2, 4)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()  # commuting (diagonal) covariances
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-8)
    a = rng.normal(size=(4, 4))
    sigma = a @ a.T + np.eye(4)
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0, abs=1e-7)


def test_fid_is_zero_on_the_same_set_positive_when_shifted_and_matches_scipy():
    feature = FIDFeatures(TinyFeatures(), size=32)
    real = torch.from_numpy(np.stack([synthetic_skin_image(i % 4, 0, i, 32) for i in range(40)]))
    real = real.permute(0, 3, 1, 2).contiguous()
    shifted = (real.int() + 40).clamp(0, 255).to(torch.uint8)
    same = fid(real, real, feature, batch_size=16)
    assert abs(same) < 1e-3
    value = fid(real, shifted, feature)
    assert value > 0.01
    f1, f2 = feature(real).double().numpy(), feature(shifted).double().numpy()
    reference = frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    assert value == pytest.approx(reference, rel=1e-3, abs=1e-5)
    assert not any(p.requires_grad for p in feature.parameters()) and not feature.train().training


def test_short_fit_lowers_the_loss_and_beats_the_prior():
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(32, 4))
    task = CutiViralClassificationTask(network, 4, optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
                                       loss=BCEOneHotLoss())
    assert task.monitor == "val/loss" and task.monitor_mode == "min"
    dm = SyntheticSkinDataModule(regime="geometric", image_size=32, batch_size=32, num_workers=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        task.eval()
        before = task.loss(task(batch["image"]), task.soft_targets(batch["label"])).item()
    task.train()
    trainer = quiet_trainer(max_epochs=4, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    with torch.no_grad():
        task.eval()
        after = task.loss(task(batch["image"]), task.soft_targets(batch["label"])).item()
    result = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert after < before
    assert result["test/acc_prior"] == pytest.approx(0.25)
    assert result["test/acc"] > 0.5
