"""SpecSlice-ConvLSTM learns on the synthetic hyperspectral stand-in (through the shared SegmentationTask)."""
from __future__ import annotations

import lightning as L
import pytest
import torch

from datamodules.standins.synthetic_hyperspectral import SyntheticHyperspectralDataModule
from lightning_modules.ss_convlstm import HausdorffDistance, SSConvLSTM
from lightning_modules.tasks.segmentation import SegmentationTask


DATA = dict(num_images=(48, 8, 8), image_size=(32, 64), depth=0.3, dip_width=0.15)
SMALL = dict(backbone="resnet18", width=0.5, decoder_channels=(64, 32, 16, 16, 8))


def _fit(tmp_path, network, epochs, data_kwargs, weight_decay=0.0):
    L.seed_everything(0)
    task = SegmentationTask(network(), bce_weight=0.5, dice_weight=0.5, metric_aggregation="per_image",
                            figure_every_n_epochs=0, metrics={"hd": HausdorffDistance()},
                            optimizer=lambda p: torch.optim.Adam(p, lr=2e-3, weight_decay=weight_decay))
    dm = SyntheticHyperspectralDataModule(batch_size=2, num_workers=0, **data_kwargs)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    dm.setup("fit")
    first = [task.losses([task.network(b["image"])], b["mask"])["loss"].item() for b in dm.train_dataloader()]
    trainer.fit(task, dm)
    task.eval()
    last = [task.losses([task.network(b["image"])], b["mask"])["loss"].item() for b in dm.train_dataloader()]
    return trainer.test(task, dm, verbose=False)[0], sum(first) / len(first), sum(last) / len(last)


# Slow, not fast: whether 4 epochs leave the network predicting foreground depends on the process's history (it
# passed alone and gave Dice 0.0 inside the full xdist suite; bs 8 / 8 epochs gave 0.0 and 0.088 for seeds 0 / 1).
# The stand-in's learning is not reliable on a CPU budget yet (README row: partial).
@pytest.mark.slow
def test_spectral_slicing_unet_learns_on_the_stand_in(tmp_path):
    """U-Net + spectral slicing (slice features averaged): loss falls and Dice beats all-background."""
    result, first, last = _fit(tmp_path, lambda: SSConvLSTM(lstm_positions=(), **SMALL), 4, DATA)
    assert last < 0.9 * first
    assert result["test/dice"] > result["test/dice_all_background"] + 0.1
