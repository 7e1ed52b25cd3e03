"""Segmentation loss and metrics against hand computations, scikit-learn and torchmetrics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, jaccard_score, precision_score, recall_score
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex

from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.metrics.segmentation import SegmentationMetrics, hard_prediction, ratios_from_counts


def unext_bce_dice(logits, target, smooth=1e-5):
    """The UNeXt code's BCEDiceLoss, verbatim in substance (losses.py)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits).view(logits.shape[0], -1)
    target = target.view(target.shape[0], -1)
    dice = (2.0 * (probs * target).sum(1) + smooth) / (probs.sum(1) + target.sum(1) + smooth)
    return 0.5 * bce + (1 - dice.sum() / logits.shape[0])


def test_saca_loss_is_unext_bce_dice():
    torch.manual_seed(0)
    logits = torch.randn(4, 1, 16, 16)
    target = (torch.rand(4, 1, 16, 16) > 0.7).float()
    target[3] = 0  # an empty mask: Dice term -> smooth / (sum p + smooth), as in UNeXt
    loss = SegmentationLoss(bce_weight=0.5, dice_weight=1.0, smooth=1e-5)
    assert loss(logits, target).item() == pytest.approx(unext_bce_dice(logits, target).item(), rel=1e-6)


def test_bce_only_and_dice_only():
    torch.manual_seed(1)
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce = SegmentationLoss(bce_weight=1.0, dice_weight=0.0)(logits, target)
    assert bce.item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, target).item(), rel=1e-6)
    dice = SegmentationLoss(bce_weight=0.0, dice_weight=1.0, smooth=1.0).terms(logits, target)
    probs = torch.sigmoid(logits).flatten(1)
    expected = 1 - ((2 * (probs * target.flatten(1)).sum(1) + 1) / (probs.sum(1) + target.flatten(1).sum(1) + 1)).mean()
    assert dice["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert dice["ce"].item() == 0.0


def test_multiclass_loss_is_cross_entropy_plus_softmax_dice():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 10, 10)
    labels = torch.randint(0, 4, (3, 1, 10, 10))
    loss = SegmentationLoss(bce_weight=1.0, dice_weight=1.0, num_classes=4, smooth=1e-5)
    probs = logits.softmax(1)
    onehot = F.one_hot(labels[:, 0], 4).permute(0, 3, 1, 2).float()
    inter = (probs * onehot).sum((2, 3))
    dice = (2 * inter + 1e-5) / (probs.sum((2, 3)) + onehot.sum((2, 3)) + 1e-5)
    expected = F.cross_entropy(logits, labels[:, 0]) + (1 - dice).mean()
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_gradients_reach_the_logits():
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    SegmentationLoss()(logits, (torch.rand(2, 1, 8, 8) > 0.5).float()).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def _random_masks(seed, n=6, size=12, empty=(4,), empty_pred=(5,)):
    rng = np.random.default_rng(seed)
    target = (rng.random((n, 1, size, size)) > 0.6).astype(np.int64)
    prediction = np.where(rng.random(target.shape) > 0.2, target, 1 - target)  # 20 % of pixels flipped
    for i in empty:
        target[i] = 0
        prediction[i] = 0  # both empty
    for i in empty_pred:
        prediction[i] = 0  # nothing predicted on a lesion
    return torch.from_numpy(prediction), torch.from_numpy(target)


def test_micro_metrics_match_scikit_learn_and_torchmetrics():
    prediction, target = _random_masks(0)
    metric = SegmentationMetrics(aggregation="micro")
    metric.update(prediction[:3], target[:3])
    metric.update(prediction[3:], target[3:])
    values = metric.compute()
    y_true, y_pred = target.flatten().numpy(), prediction.flatten().numpy()
    assert values["dice"].item() == pytest.approx(f1_score(y_true, y_pred), abs=1e-6)
    assert values["iou"].item() == pytest.approx(jaccard_score(y_true, y_pred), abs=1e-6)
    assert values["sensitivity"].item() == pytest.approx(recall_score(y_true, y_pred), abs=1e-6)
    assert values["precision"].item() == pytest.approx(precision_score(y_true, y_pred), abs=1e-6)
    assert values["specificity"].item() == pytest.approx(recall_score(1 - y_true, 1 - y_pred), abs=1e-6)
    assert values["dice"].item() == pytest.approx(BinaryF1Score()(prediction, target).item(), abs=1e-6)
    assert values["iou"].item() == pytest.approx(BinaryJaccardIndex()(prediction, target).item(), abs=1e-6)


def test_per_image_metrics_and_the_empty_mask_rule():
    prediction, target = _random_masks(1)
    metric = SegmentationMetrics(aggregation="per_image")
    metric.update(prediction, target)
    per_image = metric.per_image_values()
    for i in range(6):
        y_true, y_pred = target[i].flatten().numpy(), prediction[i].flatten().numpy()
        if i == 4:  # both empty: every ratio with a zero denominator is 1
            assert per_image["dice"][i] == 1 and per_image["iou"][i] == 1 and per_image["sensitivity"][i] == 1
            assert per_image["precision"][i] == 1 and per_image["specificity"][i] == 1
        elif i == 5:  # lesion missed entirely: Dice 0, precision (0/0) counts as 0
            assert per_image["dice"][i] == 0 and per_image["precision"][i] == 0 and per_image["sensitivity"][i] == 0
        else:
            assert per_image["dice"][i].item() == pytest.approx(f1_score(y_true, y_pred), abs=1e-6)
            assert per_image["iou"][i].item() == pytest.approx(jaccard_score(y_true, y_pred), abs=1e-6)
    assert metric.compute()["dice"].item() == pytest.approx(per_image["dice"].mean().item(), abs=1e-6)


def test_multiclass_macro_over_foreground_classes():
    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.integers(0, 3, (2, 1, 10, 10)))
    prediction = torch.where(torch.from_numpy(rng.random((2, 1, 10, 10)) > 0.3), target, (target + 1) % 3)
    values = SegmentationMetrics(num_classes=3, aggregation="micro")
    values.update(prediction, target)
    expected = f1_score(target.flatten(), prediction.flatten(), labels=[1, 2], average="macro")
    assert values.compute()["dice"].item() == pytest.approx(expected, abs=1e-6)


def test_states_merge_like_ddp_processes():
    """Sum and cat reductions: two 'processes' merged give the single-process values."""
    prediction, target = _random_masks(4)
    for aggregation in ("micro", "per_image"):
        whole = SegmentationMetrics(aggregation=aggregation)
        whole.update(prediction, target)
        rank0, rank1 = SegmentationMetrics(aggregation=aggregation), SegmentationMetrics(aggregation=aggregation)
        rank0.update(prediction[:2], target[:2])
        rank1.update(prediction[2:], target[2:])
        rank0.merge_state(rank1)
        for name, value in whole.compute().items():
            assert rank0.compute()[name].item() == pytest.approx(value.item(), abs=1e-6)


def test_hard_prediction_thresholds_the_sigmoid_and_takes_the_argmax():
    logits = torch.tensor([[[[-1.0, 0.1]]]])
    assert hard_prediction(logits).tolist() == [[[[0, 1]]]]
    assert hard_prediction(logits, threshold=0.6).tolist() == [[[[0, 0]]]]
    multi = torch.tensor([[[[0.0]], [[2.0]], [[1.0]]]])
    assert hard_prediction(multi, num_classes=3).item() == 1


def test_all_background_baseline_values():
    counts = torch.tensor([[0, 0, 90, 10], [0, 0, 100, 0]])  # a lesion missed; an empty image
    values = ratios_from_counts(counts)
    assert values["dice"].tolist() == [0.0, 1.0] and values["specificity"].tolist() == [1.0, 1.0]


def test_counts_match_torchmetrics_stat_scores_and_a_batch_of_one_works():
    from torchmetrics.functional.classification import binary_stat_scores

    prediction, target = _random_masks(5)
    ours = SegmentationMetrics()
    ours.update(prediction[:1], target[:1])  # a batch of one image
    reference = binary_stat_scores(prediction[:2].flatten(1), target[:2].flatten(1), multidim_average="samplewise")
    assert ours.counts[0].tolist() == reference[0, :4].tolist()
