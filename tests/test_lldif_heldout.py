"""LLDif's three stages chained on a small low-light stand-in (32 px, 7 x 50 faces, stratified 60 / 15 / 25
split): stage 2 (the
prior from N(0, I) through the diffusion, no label at test) beats chance on the HELD-OUT test faces, in accuracy and
cross-entropy. A fast, smaller version of the shipped demo chain (experiments/lldif/synthetic_study.yaml). Seeds 0 / 1
gave stage-2 held-out accuracy 0.43 / 0.50 (threshold 0.29) and cross-entropy 1.50 / 1.51 (threshold 1.65)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from datamodules.standins.synthetic_low_light_fer import SyntheticLowLightFERDataModule
from lightning_modules.lldif import LAClip, LLDifS1, LLDifS2, LLDifTask

CHANCE = 1 / 7


def _fit(network, datamodule, root, epochs, lr):
    task = LLDifTask(network=network, num_classes=7, optimizer=lambda p: torch.optim.Adam(p, lr=lr,
                                                                                           weight_decay=1e-4))
    trainer = Trainer(default_root_dir=root, max_epochs=epochs, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, check_val_every_n_epoch=epochs)
    trainer.fit(task, datamodule=datamodule)
    result = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    task.eval()
    with torch.no_grad():  # the held-out cross-entropy (the uniform / prior predictor's is ln 7)
        losses = [F.cross_entropy(task._network_outputs(batch)[0], batch["label"], reduction="sum")
                  for batch in datamodule.test_dataloader()]
    result["test/ce"] = float(sum(losses)) / len(datamodule.test_dataloader().dataset)
    return task, result


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    seed_everything(0)
    root = tmp_path_factory.mktemp("lldif_chain")
    dm = SyntheticLowLightFERDataModule(num_per_class=50, size=32, image_size=32, batch_size=32, num_workers=0,
                                        clear_test=False)
    laclip = LAClip(img_size=32, num_classes=7, widths=(16, 32, 64, 64), text_dim=32)
    laclip_task, laclip_result = _fit(laclip, dm, root / "laclip", 20, 2e-3)
    s1 = LLDifS1(laclip=laclip_task.network, img_size=32, num_classes=7, prior_dim=32, patch_size=4,
                 dims=(16, 32, 64), depths=(1, 1, 1), heads=(1, 2, 4), dl_heads=(2, 4, 8), embed_dim=64, vit_depth=1,
                 vit_heads=4, landmark_input="heatmaps", landmark_sigma=1.0)
    s1_task, s1_result = _fit(s1, dm, root / "s1", 2, 3.5e-4)
    s2 = LLDifS2(s1=s1_task.network, img_size=32, num_classes=7, n_feats=16, pnet_res=2, parameterization="x0")
    _, s2_result = _fit(s2, dm, root / "s2", 12, 2e-3)
    return laclip_result, s1_result, s2_result


def test_laclip_zero_shot_readout_beats_chance_on_held_out_faces(chain):
    assert chain[0]["test/acc"] > 2 * CHANCE


def test_stage2_beats_chance_on_held_out_faces_without_the_label(chain):
    """Stage 2 sees no label at test (the prior is sampled from N(0, I) through the 4-step reverse diffusion)."""
    result = chain[2]
    assert result["test/acc"] > 2 * CHANCE and result["test/acc"] > 2 * result["test/acc_prior"]
    assert result["test/ce"] < 0.85 * math.log(7)
