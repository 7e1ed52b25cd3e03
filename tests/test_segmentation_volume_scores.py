"""The segmentation family's per-volume scores of slice datasets: slices carrying ``volume`` / ``slice_index`` are
restacked in slice order (whatever the batch order) and scored in 3-D against a numpy Dice and MONAI's HD95."""

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_modules.tasks.segmentation import SegmentationTask, SliceVolumes, volume_scores


class OneHotSlices(Dataset):
    """Slices of two 3-class volumes whose image is a noisy one-hot of a prediction (the network's argmax)."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.items = []
        self.volumes = {}
        for v, depth in (("a", 5), ("b", 4)):
            target = np.zeros((12, 12, depth), dtype=np.int64)
            target[2:8, 2:8] = 1
            target[6:11, 5:11] = 2
            prediction = np.where(rng.random(target.shape) < 0.85, target, rng.integers(0, 3, target.shape))
            self.volumes[v] = (prediction, target)
            for z in range(depth):
                image = np.eye(3, dtype=np.float32)[prediction[..., z]].transpose(2, 0, 1)
                self.items.append({"image": torch.from_numpy(image), "mask": torch.from_numpy(target[None, ..., z]),
                                   "volume": v, "slice_index": z,
                                   "spacing": torch.tensor([1.0, 2.0, 5.0])})
        order = rng.permutation(len(self.items))  # slices out of order across batches
        self.items = [self.items[i] for i in order]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_volume_scores_match_numpy_dice_and_skip_absent_classes():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (16, 16, 4))
    prediction = np.where(rng.random(target.shape) < 0.8, target, 0)
    dice, hd95 = volume_scores(prediction, target, 4, spacing=np.array([1.0, 1.0, 2.0]))
    for k in (1, 2):
        expected = 2 * ((prediction == k) & (target == k)).sum() / ((prediction == k).sum() + (target == k).sum())
        assert dice[k - 1] == pytest.approx(expected)
    assert np.isnan(dice[2]) and np.isnan(hd95[2]) and np.all(hd95[:2] >= 0)


def test_task_restacks_shuffled_slices_per_volume(tmp_path):
    L.seed_everything(0)
    data = OneHotSlices()
    task = SegmentationTask(nn.Identity(), num_classes=3, class_names=["background", "one", "two"],
                            figure_every_n_epochs=0, hd95_3d=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    results = trainer.test(task, DataLoader(data, batch_size=4), verbose=False)[0]
    expected = {v: volume_scores(p, t, 3, spacing=np.array([1.0, 2.0, 5.0])) for v, (p, t) in data.volumes.items()}
    dice = np.stack([expected[v][0] for v in ("a", "b")])
    hd95 = np.stack([expected[v][1] for v in ("a", "b")])
    assert results["test/num_volumes"] == 2.0
    assert results["test/dice_3d"] == pytest.approx(dice.mean(), rel=1e-5)
    assert results["test/dice_3d/two"] == pytest.approx(dice[:, 1].mean(), rel=1e-5)
    assert results["test/hd95_3d/one"] == pytest.approx(hd95[:, 0].mean(), rel=1e-5)
    # a 3-D Dice, not the mean of per-slice Dice: recompute volume a's class 1 by hand
    p, t = data.volumes["a"]
    assert dice[0, 0] == pytest.approx(2 * ((p == 1) & (t == 1)).sum() / ((p == 1).sum() + (t == 1).sum()))
    assert 0.6 < results["test/dice_3d"] < 0.95 and results["test/dice_all_background"] == 0.0


def test_no_volume_keys_no_volume_scores_and_monitor_check():
    volumes = SliceVolumes()
    assert not volumes.applies({"image": None}, torch.zeros(2, 1, 4, 4))
    assert not volumes.applies({"volume": ["a"], "slice_index": [0]}, torch.zeros(2, 1, 4, 4, 4))  # 3-D inputs
    with pytest.raises(ValueError, match="val/dice_3d needs volume_metrics"):
        SegmentationTask(nn.Identity(), num_classes=3, monitor_metric="val/dice_3d", volume_metrics=False)
