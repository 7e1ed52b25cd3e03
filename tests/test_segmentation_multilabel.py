"""Multi-label segmentation in the segmentation family (K independent sigmoid channels, e.g. optic disc and cup,
which overlap), and several named test sets (one per unseen domain): metrics against torchmetrics/MONAI, the loss
against a hand computation, a Trainer test run over two test loaders, per-channel PNG predictions."""
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule
from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.metrics.segmentation import (HausdorffDistance95, SegmentationMetrics, hard_prediction,
                                                    stat_scores_per_image)
from lightning_modules.tasks.segmentation import SegmentationTask, overlay_figure


def _nested_masks(batch=3, size=16, seed=0):
    """(B, 2, H, W) multi-hot: a disc and a cup inside it."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for _ in range(batch):
        cy, cx = torch.randint(5, size - 5, (2,), generator=generator).tolist()
        r = float(torch.randint(3, 5, (1,), generator=generator))
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        masks.append(torch.stack([(d2 <= r ** 2), (d2 <= (0.5 * r) ** 2)]).float())
    return torch.stack(masks)


def test_multilabel_hard_prediction_and_counts_match_torchmetrics():
    from torchmetrics.functional.classification import binary_f1_score, binary_jaccard_index

    torch.manual_seed(0)
    logits = torch.randn(3, 2, 16, 16)
    target = _nested_masks()
    prediction = hard_prediction(logits, num_classes=2, multilabel=True)
    assert prediction.shape == (3, 2, 16, 16) and torch.equal(prediction, (logits.sigmoid() > 0.5).long())
    counts = stat_scores_per_image(prediction, target, 2, multilabel=True)
    assert counts.shape == (3, 2, 4) and torch.all(counts.sum(-1) == 256)
    micro = SegmentationMetrics(2, "micro", multilabel=True)
    per_image = SegmentationMetrics(2, "per_image", multilabel=True)
    for metric in (micro, per_image):
        metric.update(prediction, target)
    per_class = micro.compute_per_class()
    for k in range(2):
        f1 = binary_f1_score(prediction[:, k].flatten(), target[:, k].long().flatten())
        iou = binary_jaccard_index(prediction[:, k].flatten(), target[:, k].long().flatten())
        assert per_class["dice"][k].item() == pytest.approx(f1.item(), abs=1e-6)
        assert per_class["iou"][k].item() == pytest.approx(iou.item(), abs=1e-6)
        image_dice = torch.stack([binary_f1_score(p.flatten(), t.long().flatten())
                                  for p, t in zip(prediction[:, k], target[:, k])])
        assert per_image.per_image_class_values()["dice"][:, k] == pytest.approx(image_dice, abs=1e-6)
    assert micro.compute()["dice"].item() == pytest.approx(per_class["dice"].mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match="2 channels"):
        stat_scores_per_image(prediction[:, :1], target, 2, multilabel=True)


def test_multilabel_loss_is_bce_plus_per_channel_soft_dice():
    torch.manual_seed(0)
    logits, target = torch.randn(3, 2, 16, 16), _nested_masks()
    terms = SegmentationLoss(1.0, 1.0, num_classes=2, multilabel=True, smooth=1e-5).terms(logits, target)
    p = logits.sigmoid()
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).mean()
    inter, total = (p * target).sum((2, 3)), p.sum((2, 3)) + target.sum((2, 3))
    dice = (1 - (2 * inter + 1e-5) / (total + 1e-5)).mean()  # per sample and channel, then the mean
    assert terms["ce"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert terms["dice"].item() == pytest.approx(dice.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx((bce + dice).item(), rel=1e-5)


def test_multilabel_hd95_matches_monai_per_channel():
    from monai.metrics import compute_hausdorff_distance

    target = _nested_masks()
    prediction = torch.roll(target, 1, dims=-1).long()
    metric = HausdorffDistance95(2, multilabel=True)
    metric.update(prediction, target)
    expected = compute_hausdorff_distance(prediction, target.long(), include_background=True, percentile=95)
    assert metric.per_image_class_values().shape == (3, 2)
    assert torch.allclose(metric.per_image_class_values(), expected.float())


class _Items(Dataset):
    def __init__(self, masks, names, noise=0.0, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.masks, self.names = masks, names
        self.images = masks.sum(1, keepdim=True).repeat(1, 3, 1, 1) + noise * torch.randn(
            len(masks), 3, *masks.shape[2:], generator=generator)

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "name": self.names[i]}


class _TwoSets(BaseDataModule):
    def __init__(self):
        super().__init__(batch_size=2, num_workers=0)

    def setup(self, stage=None):
        self.test_set = _Items(_nested_masks(4, seed=1), [f"a{i}" for i in range(4)])
        self.test_sets = {"shifted": _Items(_nested_masks(3, seed=2), [f"s{i}" for i in range(3)], noise=2.0)}
        self.predict_set = self.test_set


class _Thresholds(nn.Module):
    """Channel k = image above k + 0.5: recovers nested masks from the summed image exactly."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        grey = x.mean(1, keepdim=True)
        return self.scale * torch.cat([grey - 0.5, grey - 1.5], dim=1)


def test_multilabel_task_scores_each_test_set_and_channel(tmp_path):
    task = SegmentationTask(_Thresholds(), num_classes=2, multilabel=True, class_names=["OD", "OC"],
                            metric_aggregation="per_image", hd95=True)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=str(tmp_path),
                      enable_model_summary=False)
    results = trainer.test(task, datamodule=_TwoSets(), verbose=False)
    metrics = {k: v for result in results for k, v in result.items()}
    assert metrics["test/dice/OD"] == pytest.approx(1.0) and metrics["test/dice/OC"] == pytest.approx(1.0)
    assert metrics["test/dice_per_image/OC"] == pytest.approx(1.0) and metrics["test/hd95/OD"] == pytest.approx(0.0)
    assert metrics["test/num_images"] == 4 and metrics["test/shifted/num_images"] == 3
    assert metrics["test/shifted/dice/OD"] < 0.95  # the noisy set is scored apart from the first
    assert metrics["test/dice_all_background"] == 0.0 and metrics["test/shifted/dice_all_background"] == 0.0
    assert (tmp_path / "figures" / "test_shifted_overlay.png").is_file()
    assert (tmp_path / "figures" / "test_overlay.png").is_file()

    predictions = trainer.predict(task, datamodule=_TwoSets())
    assert predictions[0]["mask"].shape == (2, 2, 16, 16)
    written = np.asarray(Image.open(tmp_path / "predictions" / "a0_OC.png"))
    assert set(np.unique(written)) == {0, 255}
    assert np.array_equal(written > 0, _nested_masks(4, seed=1)[0, 1].numpy() > 0)
    assert len(list((tmp_path / "predictions").iterdir())) == 8  # 4 images x 2 channels


def test_multilabel_arguments_are_checked_and_overlay_draws_every_channel():
    with pytest.raises(ValueError, match="one per channel"):
        SegmentationTask(nn.Conv2d(3, 2, 1), num_classes=2, multilabel=True, class_names=["bg", "OD", "OC"])
    task = SegmentationTask(nn.Conv2d(3, 2, 1), num_classes=2, multilabel=True)
    assert task.foreground_names() == ["label0", "label1"]
    assert torch.allclose(task.probabilities(torch.zeros(1, 2, 2, 2)), torch.full((1, 2, 2, 2), 0.5))
    masks = _nested_masks(2)
    figure = overlay_figure(torch.randn(2, 3, 16, 16), masks, masks.long(), ["a", "b"], num_samples=2)
    assert len(figure.axes[0].collections) >= 4  # disc and cup contours, ground truth and prediction
