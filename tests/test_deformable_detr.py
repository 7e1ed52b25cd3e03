"""Deformable DETR head of SwinCalc: deformable attention against an explicit loop, the matcher against brute force,
GIoU against a hand-written reference, sizes against the published model, gradients, a one-image overfit, the
head option of the SwinCalc network and the detection task's lr groups."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_modules.deformable_detr import (DeformableDETRCalcDetector, HungarianMatcher,
                                               MultiScaleDeformableAttention, SetCriterion, box_cxcywh_to_xyxy,
                                               box_xyxy_to_cxcywh, multi_scale_deformable_attention,
                                               sine_position_encoding)
from lightning_modules.swincalc import SwinCalcDetector
from lightning_modules.utils import count_parameters
from tests.detection_demo import overfit_one_standin_batch, restore_best_and_compare

TINY = dict(backbone="resnet10", backbone_args={"widen_factor": 0.25}, embed_dim=32, num_heads=4,
            num_encoder_layers=1, num_decoder_layers=2, feedforward_dim=64, num_queries=10, num_points=2,
            neck_groups=8)


def tiny_detector(**overrides) -> DeformableDETRCalcDetector:
    return DeformableDETRCalcDetector(**{**TINY, **overrides})


# -- multi-scale deformable attention ----------------------------------------------------------------------------
def bilinear_loop(image: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """(D, H, W) sampled at (x, y) in [0, 1] (pixel i spans [i / W, (i + 1) / W]); zeros outside."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(image.shape[0], dtype=image.dtype)
    for xi, yi in itertools.product((x0, x0 + 1), (y0, y0 + 1)):
        weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
        if 0 <= xi < width and 0 <= yi < height:
            out += weight * image[:, yi, xi]
    return out


def test_deformable_attention_matches_an_explicit_loop():
    torch.manual_seed(0)
    shapes = [(5, 4), (3, 2)]
    batch, heads, dim, queries, points = 2, 2, 3, 4, 3
    value = torch.randn(batch, sum(h * w for h, w in shapes), heads, dim, dtype=torch.float64)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(shapes), points, dtype=torch.float64)
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    starts = [0, shapes[0][0] * shapes[0][1]]
    expected = torch.zeros(batch, queries, heads, dim, dtype=torch.float64)
    for b, q, h, lv, p in itertools.product(range(batch), range(queries), range(heads), range(len(shapes)),
                                           range(points)):
        height, width = shapes[lv]
        level = value[b, starts[lv]:starts[lv] + height * width, h].T.reshape(dim, height, width)
        x, y = locations[b, q, h, lv, p].tolist()
        expected[b, q, h] += weights[b, q, h, lv, p] * bilinear_loop(level, x, y)
    torch.testing.assert_close(out, expected.reshape(batch, queries, heads * dim))


def test_deformable_attention_module_reads_the_pixel_at_its_reference_point():
    """Zero offsets and one sampling point: the output is the projected value at the reference pixel (x, y order)."""
    torch.manual_seed(0)
    attention = MultiScaleDeformableAttention(embed_dim=8, num_levels=1, num_heads=2, num_points=1)
    torch.nn.init.zeros_(attention.sampling_offsets.bias)
    for proj in (attention.value_proj, attention.output_proj):
        torch.nn.init.eye_(proj.weight)
    height, width = 4, 6
    value = torch.randn(1, height * width, 8)
    row, col = 1, 4
    reference = torch.tensor([[[[(col + 0.5) / width, (row + 0.5) / height]]]])
    out = attention(torch.randn(1, 1, 8), reference, value, [(height, width)])
    torch.testing.assert_close(out[0, 0], value[0, row * width + col])


def test_sampling_offsets_start_on_rays_around_the_reference():
    """The official initialisation: head h's point k sits k steps along direction 2 pi h / heads, each level."""
    attention = MultiScaleDeformableAttention(embed_dim=16, num_levels=2, num_heads=4, num_points=2)
    bias = attention.sampling_offsets.bias.view(4, 2, 2, 2)
    torch.testing.assert_close(bias[0, 1, 1], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(bias[1, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[2, 0, 1], torch.tensor([-2.0, 0.0]), atol=1e-6, rtol=0)
    assert attention.attention_weights.weight.abs().sum() == 0


def test_sine_position_encoding_follows_the_formula():
    height, width, feats = 3, 5, 8
    pos = sine_position_encoding(height, width, num_feats=feats)
    assert pos.shape == (2 * feats, height, width)
    row, col, k = 2, 3, 5  # k odd: a cosine channel
    y = (row + 0.5) / height * 2 * math.pi
    x = (col + 0.5) / width * 2 * math.pi
    assert pos[k, row, col].item() == pytest.approx(math.cos(y / 10000 ** (2 * (k // 2) / feats)), abs=1e-5)
    assert pos[feats + 4, row, col].item() == pytest.approx(math.sin(x / 10000 ** (2 * 2 / feats)), abs=1e-5)


# -- boxes, matching, losses ---------------------------------------------------------------------------------------
def giou_reference(a, b) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def random_cxcywh(generator, n):
    centre = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    return torch.cat([centre, torch.rand(n, 2, generator=generator) * 0.3 + 0.05], dim=1)


def test_box_formats_and_giou_cost_against_a_reference():
    generator = torch.Generator().manual_seed(1)
    a, b = random_cxcywh(generator, 4), random_cxcywh(generator, 3)
    torch.testing.assert_close(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(a)), a)
    matcher = HungarianMatcher(cls_weight=0.0, l1_weight=0.0, giou_weight=1.0)
    cost = matcher.cost(torch.zeros(4, 1), a, b, torch.zeros(3, dtype=torch.long))
    xa, xb = box_cxcywh_to_xyxy(a).tolist(), box_cxcywh_to_xyxy(b).tolist()
    expected = torch.tensor([[-giou_reference(p, q) for q in xb] for p in xa])
    torch.testing.assert_close(cost, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("queries,targets,seed", [(4, 2, 0), (5, 3, 1), (3, 3, 2), (6, 1, 3)])
def test_hungarian_matcher_finds_the_brute_force_optimum(queries, targets, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, queries, 2, generator=generator)
    boxes = random_cxcywh(generator, queries)[None]
    target = {"boxes": random_cxcywh(generator, targets),
              "labels": torch.randint(0, 2, (targets,), generator=generator)}
    matcher = HungarianMatcher()
    (rows, cols), = matcher(logits, boxes, [target])
    cost = matcher.cost(logits[0], boxes[0], target["boxes"], target["labels"])
    best = min(sum(cost[q, t] for t, q in enumerate(chosen))
               for chosen in itertools.permutations(range(queries), targets))
    assert len(rows) == targets and len(set(rows.tolist())) == targets
    assert float(cost[rows, cols].sum()) == pytest.approx(float(best), abs=1e-5)
    # the focal cost: alpha (1-p)^g (-log p) - (1-alpha) p^g (-log(1-p)) of the target's class, weight 2
    p = logits[0, 0].sigmoid()[target["labels"][0]]
    focal = 0.25 * (1 - p) ** 2 * -torch.log(p) - 0.75 * p ** 2 * -torch.log(1 - p)
    l1 = (boxes[0, 0] - target["boxes"][0]).abs().sum()
    giou = giou_reference(box_cxcywh_to_xyxy(boxes[0, 0]).tolist(), box_cxcywh_to_xyxy(target["boxes"][0]).tolist())
    assert float(cost[0, 0]) == pytest.approx(float(2 * focal + 5 * l1 - 2 * giou), abs=1e-4)


def test_set_criterion_by_hand_and_with_no_boxes():
    """Two queries, one true box matched to the query on it: L1 and GIoU of that pair, focal over both queries."""
    criterion = SetCriterion(HungarianMatcher())
    target_box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes = torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.52, 0.5, 0.2, 0.24]]])
    logits = torch.tensor([[[-1.0], [0.5]]])
    losses = criterion(logits, boxes, [{"boxes": target_box, "labels": torch.tensor([0])}])
    assert float(losses["box_l1"]) == pytest.approx(5 * (0.02 + 0.04), abs=1e-5)
    giou = giou_reference(box_cxcywh_to_xyxy(boxes[0, 1]).tolist(), box_cxcywh_to_xyxy(target_box[0]).tolist())
    assert float(losses["giou"]) == pytest.approx(2 * (1 - giou), abs=1e-5)
    p_neg, p_pos = torch.sigmoid(torch.tensor(-1.0)), torch.sigmoid(torch.tensor(0.5))
    focal = 0.75 * p_neg ** 2 * -torch.log(1 - p_neg) + 0.25 * (1 - p_pos) ** 2 * -torch.log(p_pos)
    assert float(losses["classification"]) == pytest.approx(float(2 * focal), abs=1e-5)
    empty = criterion(logits, boxes, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert float(empty["box_l1"]) == 0 and float(empty["giou"]) == 0 and float(empty["classification"]) > 0


# -- sizes ---------------------------------------------------------------------------------------------------------
def test_parameter_count_matches_the_published_model():
    """Deformable DETR / ResNet-50 (Zhu et al. Table 1: 40M; COCO's 91 classes as the official code): 40.13M here.
    The part on top of the backbone is counted exactly by hand: input projections 5,639,168 (three 1x1 convs + GN,
    one 3x3 stride-2 conv + GN), level embedding 1,024, 6 encoder layers x 756,864, 6 decoder layers x 1,020,544,
    reference-point linear 514, 300 query embeddings 153,600, classifier 23,387, box MLP 132,612. The MONAI
    ResNet-50 trunk has 3,840 parameters more than torchvision's 23,508,032 (tests/test_swincalc.py's note)."""
    with torch.device("meta"):
        model = DeformableDETRCalcDetector(backbone="resnet50", num_classes=91)
    head = count_parameters(model) - count_parameters(model.backbone)
    assert count_parameters(model.neck) == 5_639_168
    assert count_parameters(model.transformer) == 1_024 + 6 * 756_864 + 6 * 1_020_544 + 514 + 153_600
    assert head == 16_614_753
    assert abs(count_parameters(model) - 40.0e6) < 0.25e6  # the paper's 40M, rounded


def test_swin_b_detector_size():
    """The paper's DDETR / Swin-B with one class: Swin-B's stages (86.7M, no classifier) + a 13.8M head."""
    with torch.device("meta"):
        model = SwinCalcDetector(head="deformable_detr", backbone="swin_b")
    assert count_parameters(model) - count_parameters(model.detector.backbone) == 13_773_575
    assert model.detector.neck.convs[0][0].in_channels == 256  # C3 of Swin-B (C = 128)


# -- the detector --------------------------------------------------------------------------------------------------
def test_detector_losses_gradients_and_predictions():
    torch.manual_seed(0)
    detector = tiny_detector().train()
    images = torch.randn(2, 3, 96, 64)
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 20.0, 30.0], [30.0, 50.0, 60.0, 90.0]]),
                "labels": torch.tensor([0, 0])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    losses = detector(images, targets)
    assert set(losses) == {"classification", "box_l1", "giou", "aux_classification", "aux_box_l1", "aux_giou"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [name for name, p in detector.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    logits, boxes = detector.predict_layers(images)
    assert logits.shape == (2, 2, 10, 1) and boxes.shape == (2, 2, 10, 4)
    detector.eval()
    with torch.no_grad():
        out = detector(images)
    assert len(out) == 2 and out[0]["boxes"].shape == (10, 4) and out[0]["labels"].eq(0).all()
    assert (out[0]["scores"][:-1] >= out[0]["scores"][1:]).all()
    boxes = out[0]["boxes"]
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes[:, 0::2].max() <= 64 and boxes[:, 1::2].max() <= 96 and boxes.min() >= 0


def test_detector_trains_under_bf16_autocast():
    """The trainer's bf16-mixed: the attention samples in float32, the losses are float32 and finite."""
    torch.manual_seed(0)
    detector = tiny_detector().train()
    targets = [{"boxes": torch.tensor([[5.0, 6.0, 20.0, 30.0]]), "labels": torch.tensor([0])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = detector(torch.randn(1, 3, 96, 64), targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert torch.isfinite(detector.transformer.encoder[0].self_attn.sampling_offsets.weight.grad).all()


def test_detector_overfits_one_box_in_xy_order():
    """60 steps on one image: the loss falls tenfold and the top box lands on a target that an x/y swap would miss."""
    from monai.data.box_utils import box_iou

    torch.manual_seed(0)
    detector = tiny_detector(dropout=0.0).train()
    image = torch.zeros(1, 3, 64, 48)
    image[..., 8:24, 28:44] = 3.0  # rows 8-24, cols 28-44
    target = [{"boxes": torch.tensor([[28.0, 8.0, 44.0, 24.0]]), "labels": torch.tensor([0])}]
    optimizer = torch.optim.AdamW(detector.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        loss = sum(detector(image, target).values())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.1 * sum(losses[:5]) / 5
    detector.eval()
    with torch.no_grad():
        top = detector(image)[0]
    assert float(box_iou(top["boxes"][:1], target[0]["boxes"])[0, 0]) > 0.7
    assert top["scores"][0] > 0.5 > top["scores"][1]


def test_swincalc_head_option_and_task_lr_groups():
    """``SwinCalcDetector(head="deformable_detr")`` on a tiny Swin trains through the detection task, whose
    optimiser gives the backbone and the sampling offsets 0.1 x lr (MMDetection's paramwise config)."""
    from lightning_modules.tasks.detection import DetectionTask

    torch.manual_seed(0)
    swin_args = dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], stochastic_depth_prob=0.0)
    head_args = {k: v for k, v in TINY.items() if k not in ("backbone", "backbone_args")}
    network = SwinCalcDetector(head="deformable_detr", backbone="swin_t", backbone_args=swin_args,
                               head_args=head_args)
    task = DetectionTask(network, optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    optimizer = task.configure_optimizers()
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-3])
    counted = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert counted == count_parameters(network)
    offsets = network.detector.transformer.encoder[0].self_attn.sampling_offsets.weight
    assert any(offsets is p for group in optimizer.param_groups if group["lr"] == pytest.approx(1e-4)
               for p in group["params"])
    batch = {"image": torch.randn(2, 3, 96, 64), "boxes": [torch.tensor([[4.0, 4.0, 30.0, 40.0]]), torch.zeros(0, 4)],
             "box_labels": [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]}
    task.log = lambda *args, **kwargs: None  # no trainer attached
    task.train()
    loss = task.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and network.detector.backbone.features[0][0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown head"):
        SwinCalcDetector(head="yolo")


DEMO = "experiments/swincalc_demo_ddetr.yaml"


def test_demo_config_fits_one_standin_batch_and_restores(tmp_path):
    """The demo config overfitting one stand-in batch (4 images of 128 x 80, 16 epochs of one step) through run.py
    and the detection task: the training loss falls, the test reports the FROC next to the bright-spot baseline's,
    and the best checkpoint rebuilds the network from the saved config; seeded by the config."""
    cli, losses, metrics = overfit_one_standin_batch(DEMO, tmp_path)
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.75 * sum(losses[:4]) / 4  # 0.65 when written (14.2 -> 9.3, falling every step)
    assert "test/aufc@1" in metrics and "test/baseline_bright_spot/tpr@1" in metrics
    assert restore_best_and_compare(cli).network.head == "deformable_detr"
