"""SegmentationTask pieces without a Trainer: several outputs, multi-class, scheduler interval, figure."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.tasks.segmentation import SegmentationTask, overlay_figure


class TwoOutputs(nn.Module):
    """Main logits at full size and a side output at half size (deep supervision)."""

    def __init__(self, num_classes=1):
        super().__init__()
        self.main = nn.Conv2d(3, num_classes, 3, padding=1)
        self.side = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return [self.main(x), self.side(F.avg_pool2d(x, 2))]


def test_side_outputs_are_upsampled_and_weighted():
    torch.manual_seed(0)
    task = SegmentationTask(TwoOutputs(), output_weights=[1.0, 0.4])
    image, mask = torch.randn(2, 3, 16, 16), (torch.rand(2, 1, 16, 16) > 0.5).float()
    main, side = task.network(image)
    loss = SegmentationLoss(0.5, 1.0)
    side_up = F.interpolate(side, size=(16, 16), mode="bilinear", align_corners=False)
    expected = loss(main, mask) + 0.4 * loss(side_up, mask)
    assert task.losses([main, side], mask)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(task(image), main)  # forward returns the main output
    with pytest.raises(ValueError, match="2 outputs"):
        SegmentationTask(TwoOutputs(), output_weights=[1.0]).losses([main, side], mask)
    equal = SegmentationTask(TwoOutputs()).losses([main, side], mask)["loss"]
    assert equal.item() == pytest.approx((loss(main, mask) + loss(side_up, mask)).item() / 2, rel=1e-6)


def test_multiclass_task_losses_and_metrics():
    """Multi-class: argmax prediction, a finite loss, and micro Dice/IoU equal to torchmetrics' per-class
    F1/Jaccard over the whole set, averaged over the foreground classes 1..K-1."""
    from torchmetrics.functional.classification import multiclass_f1_score, multiclass_jaccard_index

    torch.manual_seed(0)
    task = SegmentationTask(nn.Conv2d(3, 4, 1), num_classes=4, bce_weight=1.0, dice_weight=1.0)
    image, labels = torch.randn(2, 3, 8, 8), torch.randint(0, 4, (2, 1, 8, 8))
    outputs, prediction = task._predict(image)
    assert torch.equal(prediction, task.network(image).argmax(dim=1, keepdim=True))
    assert len(prediction.unique()) > 1  # a random conv spreads its argmax over several classes
    assert torch.isfinite(task.losses(outputs, labels)["loss"])
    task.test_metrics.update(prediction, labels)
    values = task.test_metrics.compute()
    assert set(values) == {"dice", "iou", "sensitivity", "precision", "specificity"}
    f1 = multiclass_f1_score(prediction.flatten(), labels.flatten(), num_classes=4, average=None)
    jaccard = multiclass_jaccard_index(prediction.flatten(), labels.flatten(), num_classes=4, average=None)
    assert values["dice"].item() == pytest.approx(f1[1:].mean().item(), abs=1e-6)
    assert values["iou"].item() == pytest.approx(jaccard[1:].mean().item(), abs=1e-6)


def test_scheduler_interval_and_monitor():
    task = SegmentationTask(nn.Conv2d(3, 1, 1), monitor_metric="val/iou", scheduler_interval="step",
                            optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
                            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 / (1 + 0.005 * i)))
    config = task.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step" and task.monitor == "val/iou" and task.monitor_mode == "max"
    assert SegmentationTask(nn.Conv2d(3, 1, 1), monitor_metric="val/loss").monitor_mode == "min"
    with pytest.raises(ValueError, match="monitor_metric"):
        SegmentationTask(nn.Conv2d(3, 1, 1), monitor_metric="val/accuracy")


def test_overlay_figure_draws_both_contours():
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:10, 4:10] = 1
    figure = overlay_figure(torch.randn(2, 3, 16, 16), mask, mask.long(), ["a", "b"], num_samples=2)
    assert len(figure.axes) == 2 and len(figure.axes[0].collections) >= 2
