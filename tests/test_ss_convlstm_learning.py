"""SpecSlice-ConvLSTM learns on the synthetic hyperspectral stand-in (through the shared SegmentationTask)."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.standins.synthetic_hyperspectral import SyntheticHyperspectralDataModule
from lightning_modules.ss_convlstm import HausdorffDistance, SSConvLSTM
from lightning_modules.tasks.segmentation import SegmentationTask


DATA = dict(num_images=(24, 6, 6), image_size=(32, 64), depth=0.3, dip_width=0.15)
SMALL = dict(backbone="resnet18", width=0.25, decoder_channels=(32, 16, 16, 8, 8))


def _fit(tmp_path, network, epochs, data_kwargs):
    L.seed_everything(0)
    task = SegmentationTask(network, bce_weight=0.5, dice_weight=0.5, metric_aggregation="per_image",
                            figure_every_n_epochs=0, metrics={"hd": HausdorffDistance()},
                            optimizer=lambda p: torch.optim.Adam(p, lr=2e-3))
    dm = SyntheticHyperspectralDataModule(batch_size=2, num_workers=0, **data_kwargs)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    dm.setup("fit")
    first = [task.losses([task.network(b["image"])], b["mask"])["loss"].item() for b in dm.train_dataloader()]
    trainer.fit(task, dm)
    task.eval()
    last = [task.losses([task.network(b["image"])], b["mask"])["loss"].item() for b in dm.train_dataloader()]
    return trainer.test(task, dm, verbose=False)[0], sum(first) / len(first), sum(last) / len(last)


def test_spectral_slicing_unet_learns_on_the_stand_in(tmp_path):
    """U-Net + spectral slicing (slice features averaged): loss falls and Dice beats all-background."""
    result, first, last = _fit(tmp_path, SSConvLSTM(lstm_positions=(), **SMALL), 3, DATA)
    assert last < 0.9 * first
    assert result["test/dice"] > result["test/dice_all_background"] + 0.1


@pytest.mark.slow
def test_ss_sisom_learns_and_beats_a_single_band_unet(tmp_path):
    """SS-SISOM (ConvLSTM skips at L2+L3+L4) vs a U-Net on band 36 alone, same budget (slow: minutes)."""
    data = dict(DATA, num_images=(48, 12, 12))
    sisom, first, last = _fit(tmp_path / "sisom", SSConvLSTM(**SMALL), 10, data)
    single, _, _ = _fit(tmp_path / "single", SSConvLSTM(in_channels=1, input_bands=[36], slicing=False,
                                                         lstm_positions=(), **SMALL), 10, data)
    assert last < first
    assert sisom["test/dice"] > sisom["test/dice_all_background"] + 0.1
    assert sisom["test/dice"] > single["test/dice"]
