"""AutoencoderTask: channel split of the target, weighted MSE, PSNR against torchmetrics, learning."""
import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional.image import peak_signal_noise_ratio

from lightning_modules.tasks.autoencoder import AutoencoderTask


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head_a = nn.Conv2d(8, 2, 3, padding=1)
        self.head_b = nn.Conv2d(8, 1, 3, padding=1)

    def forward(self, x):
        h = self.body(x)
        return self.head_a(h), self.head_b(h)


def test_weighted_loss_matches_hand_computation():
    task = AutoencoderTask(TwoHeads(), output_weights=[1.0, 0.05])
    x = torch.rand(2, 3, 8, 8)
    outputs, targets = task.outputs_and_targets({"image": x})
    assert [t.shape[1] for t in targets] == [2, 1]
    loss, _ = task.losses(outputs, targets)
    a, b = task.network(x)
    expected = ((a - x[:, :2]) ** 2).mean() + 0.05 * ((b - x[:, 2:]) ** 2).mean()
    assert torch.allclose(loss, expected)
    with pytest.raises(ValueError, match="output_weights"):
        AutoencoderTask(TwoHeads(), output_weights=[1.0]).outputs_and_targets({"image": x})


class _Loop(L.LightningDataModule):
    def __init__(self, x):
        super().__init__()
        self.x = x

    def _loader(self):
        return DataLoader(TensorDataset(self.x), batch_size=8, collate_fn=lambda b: {"image": torch.stack([s[0] for s in b])})

    train_dataloader = val_dataloader = test_dataloader = _loader


def test_learns_and_psnr_matches_torchmetrics(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8) * 0.5 + 0.25
    task = AutoencoderTask(TwoHeads(), figure_every_n_epochs=0,
                           optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    data = _Loop(x)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    before = trainer.validate(task, datamodule=data, verbose=False)[0]["val/loss"]
    trainer = L.Trainer(max_epochs=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, datamodule=data)
    after = trainer.validate(task, datamodule=data, verbose=False)[0]["val/loss"]
    assert after < 0.5 * before
    result = trainer.test(task, datamodule=data, verbose=False)[0]
    with torch.no_grad():
        recon = torch.cat(task.network(x), 1)
    per_image = torch.stack([peak_signal_noise_ratio(r, t, data_range=1.0) for r, t in zip(recon, x)])
    assert result["test/psnr"] == pytest.approx(per_image.mean().item(), rel=1e-4)
