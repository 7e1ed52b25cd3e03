"""RepPoints (SwinCalc's best head): the pure-PyTorch deformable convolution against references, point-set
transform and assigners, head size and gradients, the detector protocol, and learning on one box and the stand-in."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_modules.reppoints import (IGNORE, RepPointsCalcDetector, RepPointsHead, deform_conv2d, max_iou_assign,
                                         moment_boxes, point_assign)
from lightning_modules.utils import count_parameters
from tests.detection_demo import overfit_one_standin_batch, restore_best_and_compare


# -- deformable convolution ----------------------------------------------------------------------------------------
def _bilinear_zero_outside(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """DCN's read of one (C, H, W) map at a fractional (y, x): the four neighbours, each zero outside the map."""
    height, width = image.shape[-2:]
    if y <= -1 or y >= height or x <= -1 or x >= width:
        return image.new_zeros(image.shape[0])
    y0, x0 = math.floor(y), math.floor(x)
    value = image.new_zeros(image.shape[0])
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < height and 0 <= xx < width:
                value = value + wy * wx * image[:, yy, xx]
    return value


def _deform_conv_loop(x, offset, weight, bias, stride, padding, dilation):
    """The definition, one output pixel and kernel point at a time (torchvision's / mmcv's semantics)."""
    batch, channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    out_h, out_w = offset.shape[-2:]
    groups = offset.shape[1] // (2 * kh * kw)
    per_group = channels // groups
    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=x.dtype)
    for b in range(batch):
        for h in range(out_h):
            for w in range(out_w):
                column = []
                for c_group in range(groups):
                    reads = []
                    for i in range(kh):
                        for j in range(kw):
                            k = c_group * kh * kw + i * kw + j
                            y = h * stride - padding + i * dilation + float(offset[b, 2 * k, h, w])
                            xx = w * stride - padding + j * dilation + float(offset[b, 2 * k + 1, h, w])
                            image = x[b, c_group * per_group:(c_group + 1) * per_group]
                            reads.append(_bilinear_zero_outside(image, y, xx))
                    column.append(torch.stack(reads, dim=1))  # (C / G, K)
                column = torch.cat(column, dim=0)  # (C, K)
                out[b, :, h, w] = (weight.reshape(out_channels, channels, kh * kw) * column).sum(dim=(1, 2))
                if bias is not None:
                    out[b, :, h, w] += bias
    return out


@pytest.mark.parametrize("stride,padding,dilation,kernel", [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3), (2, 0, 1, 1)])
def test_deform_conv_with_zero_offsets_is_conv2d(stride, padding, dilation, kernel):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 11, 8)
    conv = nn.Conv2d(4, 5, kernel, stride=stride, padding=padding, dilation=dilation)
    reference = conv(x)
    offset = torch.zeros(2, 2 * kernel * kernel, *reference.shape[-2:])
    out = deform_conv2d(x, offset, conv.weight, conv.bias, stride, padding, dilation)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 1), (2, 2, 1)])
def test_deform_conv_matches_the_explicit_loop(groups, stride, padding):
    """Fractional offsets up to +-3 px, so points fall between pixels and across the border (zeros outside)."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    weight = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    bias = torch.randn(3, dtype=torch.float64)
    out_h, out_w = (6 + 2 * padding - 3) // stride + 1, (5 + 2 * padding - 3) // stride + 1
    offset = 3 * (2 * torch.rand(2, 2 * 9 * groups, out_h, out_w, dtype=torch.float64) - 1)
    out = deform_conv2d(x, offset, weight, bias, stride, padding, 1)
    torch.testing.assert_close(out, _deform_conv_loop(x, offset, weight, bias, stride, padding, 1))


def test_deform_conv_integer_offset_shifts_the_sampling():
    """All nine points moved by (+1 row, -2 cols) = a plain conv of the input shifted the other way."""
    torch.manual_seed(2)
    x = torch.randn(1, 2, 9, 9)
    weight = torch.randn(3, 2, 3, 3)
    offset = torch.zeros(1, 18, 9, 9)
    offset[:, 0::2], offset[:, 1::2] = 1.0, -2.0
    shifted = torch.zeros_like(x)
    shifted[..., :-1, 2:] = x[..., 1:, :-2]  # shifted[h, w] = x[h + 1, w - 2]
    # compared where the conv's zero padding of ``shifted`` stands for zeros of x (not the first row, last column)
    torch.testing.assert_close(deform_conv2d(x, offset, weight, None, 1, 1, 1)[..., 1:, :-1],
                               nn.functional.conv2d(shifted, weight, padding=1)[..., 1:, :-1], atol=1e-5, rtol=1e-5)


def test_deform_conv_gradients_match_finite_differences():
    torch.manual_seed(3)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    offset = (0.8 * (2 * torch.rand(1, 18, 4, 4, dtype=torch.float64) - 1)).requires_grad_()  # away from integers
    offset.data += 0.05 * (offset.data.round() == offset.data)
    assert torch.autograd.gradcheck(lambda a, o, w: deform_conv2d(a, o, w, None, 1, 1, 1), (x, offset, weight))


# -- point sets and assigners --------------------------------------------------------------------------------------
def test_moment_transform_is_mean_plus_minus_std():
    y = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0])
    x = torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0, 3.0, 5.0, 5.0, 5.0])
    points = torch.stack((y, x), dim=1).flatten()  # (y, x) pairs
    box = moment_boxes(points, torch.zeros(2))
    torch.testing.assert_close(box, torch.stack((x.mean() - x.std(), y.mean() - y.std(),
                                                 x.mean() + x.std(), y.mean() + y.std())))
    wide = moment_boxes(points, torch.tensor([math.log(2.0), 0.0]))  # (width, height) factors
    assert float(wide[2] - wide[0]) == pytest.approx(4 * float(x.std()))
    assert float(wide[3] - wide[1]) == pytest.approx(2 * float(y.std()))


def test_point_assigner_picks_the_level_and_the_nearest_location():
    # two levels: stride 8 (4 x 4 locations) and 16 (2 x 2)
    centers = torch.cat([torch.cartesian_prod(torch.arange(4.0), torch.arange(4.0))[:, [1, 0]] * 8,
                         torch.cartesian_prod(torch.arange(2.0), torch.arange(2.0))[:, [1, 0]] * 16])
    strides = torch.cat([torch.full((16,), 8.0), torch.full((4,), 16.0)])
    # 36 x 36 box: log2(36 / 4) = 3.17 -> level 3 (stride 8); centre (21, 13) -> nearest location (24, 16)
    # 80 x 60 box: (log2(20) + log2(15)) / 2 = 4.1 -> level 4 (stride 16); centre (20, 20) -> (16, 16)
    gt = torch.tensor([[3.0, -5.0, 39.0, 31.0], [-20.0, -10.0, 60.0, 50.0]])
    assigned = point_assign(centers, strides, gt, scale=4, pos_num=1)
    assert assigned.tolist().count(0) == 1 and assigned.tolist().count(1) == 1
    assert centers[assigned == 0].tolist() == [[24.0, 16.0]] and strides[assigned == 0].item() == 8
    assert centers[assigned == 1].tolist() == [[16.0, 16.0]] and strides[assigned == 1].item() == 16
    assert (point_assign(centers, strides, torch.zeros(0, 4)) == -1).all()


def test_max_iou_assigner_thresholds_and_best_proposal():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 9.0],     # IoU 0.9 with box 0 -> 0
                              [0.0, 0.0, 10.0, 4.5],     # 0.45 -> ignored
                              [0.0, 0.0, 10.0, 2.0],     # 0.2 -> background
                              [55.0, 55.0, 65.0, 65.0],  # 0.14 with box 1, its best proposal -> 1
                              [100.0, 100.0, 110.0, 110.0]])
    assert max_iou_assign(proposals, gt, 0.5, 0.4).tolist() == [0, IGNORE, -1, 1, -1]
    # a box that nothing overlaps claims nothing (rather than every proposal)
    assert max_iou_assign(proposals[:3], gt[1:], 0.5, 0.4).tolist() == [-1, -1, -1]


# -- head and detector ---------------------------------------------------------------------------------------------
def test_head_parameter_count_matches_mmdetection_layout():
    """MMDetection's reppoints_moment_r50_fpn_gn-neck+head head (256 channels, 3 GN convs per tower, 9 points)
    counted layer by layer: towers 2 x 3 x (256 x 256 x 9 + GN 512), two deformable 3x3 convs without bias
    (256 x 256 x 9 each), the initial points' 3x3 conv (with bias), 1x1 outputs (classes, 18, 18) and the two moment
    factors. MMDetection publishes no head-only size; this is exact for 1 class (SwinCalc) and COCO's 80."""
    conv = 256 * 256 * 9
    for classes in (1, 80):
        expected = (2 * 3 * (conv + 2 * 256) + conv + (256 * classes + classes) + (conv + 256) + (256 * 18 + 18)
                    + conv + (256 * 18 + 18) + 2)
        with torch.device("meta"):
            head = RepPointsHead(num_classes=classes, in_channels=256)
        assert count_parameters(head) == expected
    assert expected == 5_341_558


def test_head_shapes_and_gradient_flow():
    torch.manual_seed(0)
    head = RepPointsHead(num_classes=2, in_channels=16, feat_channels=16, point_feat_channels=8, gn_groups=4)
    maps = [torch.randn(2, 16, 12, 10), torch.randn(2, 16, 6, 5)]
    cls, init, refine = head(maps)
    assert [tuple(c.shape) for c in cls] == [(2, 2, 12, 10), (2, 2, 6, 5)]
    assert [tuple(p.shape) for p in init] == [(2, 18, 12, 10), (2, 18, 6, 5)]
    assert [tuple(p.shape) for p in refine] == [(2, 18, 12, 10), (2, 18, 6, 5)]
    torch.testing.assert_close(torch.sigmoid(cls[0]).mean(), torch.tensor(0.01), atol=2e-3, rtol=0)  # the prior
    (sum(c.sum() for c in cls) + sum(p.square().sum() for p in refine)).backward()
    for name in ("reppoints_cls_conv.weight", "reppoints_pts_refine_conv.weight", "reppoints_pts_init_out.weight",
                 "cls_convs.0.0.weight", "reg_convs.2.1.weight"):
        grad = dict(head.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="odd square"):
        RepPointsHead(num_points=8)


def tiny_detector(**kwargs) -> RepPointsCalcDetector:
    return RepPointsCalcDetector(backbone="resnet10", backbone_args={"widen_factor": 0.25}, out_indices=(0, 1, 2),
                                 fpn_channels=32, extra_levels="none", gn_groups=8, **kwargs)


def test_detector_protocol_losses_in_training_boxes_in_eval():
    torch.manual_seed(0)
    detector = tiny_detector(score_thresh=0.0, detections_per_img=10)
    images = torch.randn(2, 3, 60, 45)  # not a multiple of the strides: padded inside
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 36.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    detector.train()
    losses = detector(images, targets)
    assert set(losses) == {"classification", "points_init", "points_refine"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert detector.backbone.conv1.weight.grad.abs().sum() > 0
    assert detector.head.moment_transfer.grad.abs().sum() > 0
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and all(len(o["boxes"]) == len(o["scores"]) == len(o["labels"]) <= 10 for o in out)
    boxes = torch.cat([o["boxes"] for o in out])
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() >= 0 and (boxes[:, [0, 2]] <= 45).all() and (boxes[:, [1, 3]] <= 60).all()


def test_detector_overfits_one_box_and_its_boxes_score_in_the_froc():
    """60 steps on one image: the top box lands on the (off-diagonal) target, the losses fall, and the decoded
    predictions go through the family's FROC metric (the same image also shows a false positive count)."""
    from monai.data.box_utils import box_iou

    from lightning_modules.metrics.detection import FROC
    from lightning_modules.swincalc import SwinCalcDetector

    torch.manual_seed(0)
    detector = SwinCalcDetector(head="reppoints", backbone="resnet10", backbone_args={"widen_factor": 0.25},
                                head_args=dict(out_indices=(0, 1, 2), fpn_channels=32, extra_levels="none",
                                               gn_groups=8, score_thresh=0.0, detections_per_img=5))
    image = torch.zeros(1, 3, 64, 48)
    image[..., 8:24, 28:44] = 3.0  # rows 8-24, cols 28-44
    target = [{"boxes": torch.tensor([[28.0, 8.0, 44.0, 24.0]]), "labels": torch.tensor([0])}]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3)
    detector.train()
    history = []
    for _ in range(60):
        optimizer.zero_grad()
        losses = detector(image, target)
        sum(losses.values()).backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    for name in history[0]:
        assert history[-1][name] < 0.3 * history[0][name], name
    detector.eval()
    with torch.no_grad():
        preds = detector(image)
    assert float(box_iou(preds[0]["boxes"][:1], target[0]["boxes"])[0, 0]) > 0.5
    froc = FROC(iou_threshold=0.1, fppi=(1.0, 4.0), aufc_limits=(4.0,))
    froc.update(preds, target)
    result = froc.compute()
    assert float(result["tpr@1"]) == 1.0 and float(result["num_targets"]) == 1.0


DEMO = "experiments/swincalc_demo_reppoints.yaml"


def test_standin_training_loss_falls(tmp_path):
    """The demo config overfitting one stand-in batch (4 images of 128 x 80, 16 epochs of one step) through the
    detection task: the training loss falls and validation / test report the FROC next to the baseline's; seeded
    by the config, so independent of earlier tests."""
    cli, losses, metrics = overfit_one_standin_batch(DEMO, tmp_path)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4  # 0.41 when written
    assert "test/aufc@1" in metrics and "test/baseline_bright_spot/tpr@1" in metrics
    restore_best_and_compare(cli)
