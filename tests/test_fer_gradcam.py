"""FER Grad-CAM: Table 2's parameter counts, Grad-CAM / guided backprop against hand computations, the in-region
mass and per-class map statistics against NumPy, the stand-in's masks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.fer2013 import EMOTIONS
from datamodules.standins.synthetic_fer import CLASSES, render_expressions
from lightning_modules.fer_gradcam import FERNet, class_map_stats
from lightning_modules.gradcam import gradcam_maps, guided_backprop, guided_gradcam, region_mass
from lightning_modules.utils import count_parameters


def test_table2_parameter_counts():
    """Table 2 gives conv1 2,432, conv2 25,632, dense 295,040 / 8,256 / 455: exact (no tolerance; the other layers'
    widths are the card's choices, their total 3,558,311 is derived, not the paper's)."""
    net = FERNet()
    unit1 = net.features.unit1
    dense = [m for m in net.classifier if isinstance(m, nn.Linear)]
    assert [count_parameters(unit1.conv1), count_parameters(unit1.conv2)] == [2_432, 25_632]
    assert [count_parameters(m) for m in dense] == [295_040, 8_256, 455]
    assert dense[0].in_features == 2_304  # Flatten 3 x 3 x 256
    assert count_parameters(net) == 3_558_311
    assert net.target_layer is net.features.unit4.conv2
    # Keras init: Glorot-uniform bounds, zero biases
    bound = np.sqrt(6 / (3 * 25 + 32 * 25))
    assert float(unit1.conv1.weight.detach().abs().max()) <= bound and not unit1.conv1.bias.detach().any()
    activations = {}
    net.features.unit4.conv2.register_forward_hook(lambda m, i, o: activations.setdefault("a", o))
    assert net(torch.rand(2, 3, 48, 48)).shape == (2, 7) and activations["a"].shape == (2, 256, 6, 6)


def _manual_gradcam(net: FERNet, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    stored = {}
    handle = net.features.unit4.conv2.register_forward_hook(lambda m, i, o: stored.__setitem__("a", o))
    logits = net(x)
    handle.remove()
    a = stored["a"]
    (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), a)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    low, high = cam.amin((1, 2, 3), keepdim=True), cam.amax((1, 2, 3), keepdim=True)
    return ((cam - low) / (high - low)).detach()


def test_gradcam_of_each_images_own_class_matches_the_formula():
    """MONAI's GradCAM, one call per class present, equals ReLU(sum_k mean(dy^c/dA^k) A^k), bilinear upsampling,
    min-max scaling, with a different target class per image."""
    torch.manual_seed(0)
    net = FERNet(channels=(4, 8, 8, 16), dense=(16, 8), dropout=0.0).eval()
    x, targets = torch.rand(5, 3, 48, 48), torch.tensor([0, 3, 3, 6, 1])
    maps = gradcam_maps(net, "features.unit4.conv2", x, targets)
    assert maps.shape == (5, 1, 48, 48)
    torch.testing.assert_close(maps, _manual_gradcam(net, x, targets), atol=1e-5, rtol=1e-4)
    assert all(p.grad is None for p in net.parameters())
    with torch.inference_mode():  # as in Lightning's test loop
        torch.testing.assert_close(gradcam_maps(net, "features.unit4.conv2", x, targets), maps)


def test_guided_backprop_passes_only_positive_gradients():
    """y = w2 . ReLU(W1 x): guided backprop is W1^T (1[W1 x > 0] * max(w2, 0)) (plain backprop keeps negative w2)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(3, 1, 3, 4)
    target = torch.tensor([1, 0, 1])
    guided = guided_backprop(net, x, target)
    w1, w2 = net[1].weight, net[3].weight
    active = (x.flatten(1) @ w1.T + net[1].bias > 0).float()
    expected = (active * w2[target].clamp_min(0)) @ w1
    torch.testing.assert_close(guided.flatten(1), expected.detach())
    plain = (active * w2[target]) @ w1
    assert not torch.allclose(plain, expected)
    with pytest.raises(ValueError, match="inplace"):
        guided_backprop(nn.Sequential(nn.Flatten(), nn.Linear(12, 2), nn.ReLU(inplace=True)), x, target)
    cams = torch.rand(3, 1, 3, 4)
    torch.testing.assert_close(guided_gradcam(guided, cams), guided * cams)


def test_region_mass_and_class_map_stats():
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, :2] = 1.0  # all mass in the top half
    maps[1, 0] = 1.0  # uniform
    masks = torch.zeros(3, 1, 4, 4)
    masks[:, 0, :2] = 1
    mass = region_mass(maps, masks)
    assert mass[0] == pytest.approx(1.0) and mass[1] == pytest.approx(0.5) and torch.isnan(mass[2])
    rng = np.random.default_rng(0)
    values, labels = rng.random((10, 5, 5)), np.array([0, 1, 1, 2, 2, 2, 0, 1, 2, 2])
    total, total_sq, count = np.zeros((4, 5, 5)), np.zeros((4, 5, 5)), np.zeros(4)
    np.add.at(total, labels, values)
    np.add.at(total_sq, labels, values ** 2)
    np.add.at(count, labels, 1)
    mean, std = class_map_stats(torch.from_numpy(total), torch.from_numpy(total_sq), torch.from_numpy(count))
    for c in range(3):
        np.testing.assert_allclose(mean[c], values[labels == c].mean(0))
        np.testing.assert_allclose(std[c], values[labels == c].std(0), atol=1e-7)
    assert np.isnan(mean[3]).all()


def test_standin_classes_and_regions():
    """The paper's label order; each class's region mask covers its cue (brows for angry, nose for disgust, ...)
    and neutral's is the face; images differ between classes where the cue is."""
    assert CLASSES == EMOTIONS
    labels = np.repeat(np.arange(7), 3)
    images, masks = render_expressions(labels, seed=0)
    assert images.shape == (21, 48, 48, 3) and images.dtype == np.uint8 and masks.shape == (21, 48, 48)
    area = masks.reshape(7, 3, -1).mean(2)
    assert (area > 0.03).all() and (area[:6] < 0.4).all() and (area[6] > 0.4).all()
    # angry (brows + eyes) lies above disgust (nose + mouth): compare the masks' centres of mass
    rows = np.arange(48)[None, :, None]
    centre = (masks * rows).sum((1, 2)) / masks.sum((1, 2))
    assert centre[:3].mean() < centre[3:6].mean() - 3


DEMO = "experiments/fer_gradcam_demo.yaml"
SMALL = ["--data.init_args.num_per_class", "80", "--data.init_args.image_size", "32", "--data.init_args.batch_size",
         "16", "--data.init_args.augmentation", "none",
         "--model.init_args.network.init_args.channels", "[8, 16, 16, 32]",
         "--model.init_args.network.init_args.dense", "[64, 32]", "--model.init_args.network.init_args.dropout", "0.0",
         "--model.init_args.optimizer.init_args.lr", "0.001", "--model.init_args.n_vis_per_class", "2",
         "--trainer.max_epochs", "12", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.log_every_n_steps", "1"]


def test_standin_learns_and_explains(tmp_path):
    """The demo, smaller (560 images at 32 px, 12 epochs): accuracy beats chance (1/7), the loss falls, the
    per-class Grad-CAM maps, panels and in-region mass are written."""
    import json
    from pathlib import Path

    import run

    cli = run.main(["--config", DEMO, *SMALL, "--runs_dir", str(tmp_path), "--run_id", "r"])
    run_dir = Path(cli.run_dir)
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert metrics["test/acc"] > 0.25 and metrics["test/acc_prior"] < 0.16
    for name in EMOTIONS:
        assert 0 <= metrics[f"test/f1/{name}"] <= 1
        assert (run_dir / "figures" / f"test_gradcam_{name}.png").is_file()
    assert 0 < metrics["test/cam_area"] < 1 and 0 <= metrics["test/cam_mass"] <= 1
    with np.load(run_dir / "figures" / "test_gradcam_class_maps.npz") as maps:
        assert maps["sum"].shape == (7, 32, 32) and maps["count"].sum() == len(cli.datamodule.split_indices["test"])
    batch = next(iter(cli.datamodule.test_dataloader()))
    torch.manual_seed(0)
    untrained = FERNet(channels=(8, 16, 16, 32), dense=(64, 32), dropout=0.0, img_size=32, init="he").eval()
    with torch.no_grad():
        trained_loss = F.cross_entropy(cli.model.eval()(batch["image"]), batch["label"])
        assert trained_loss < 0.9 * F.cross_entropy(untrained(batch["image"]), batch["label"])


@pytest.mark.slow
def test_demo_learns(tmp_path):
    """The demo as shipped (2,100 images at 48 px, 15 epochs, ~4 min on 2 cores): well above chance (1/7)."""
    import json
    from pathlib import Path

    import run

    cli = run.main(["--config", DEMO, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--runs_dir", str(tmp_path), "--run_id", "r"])
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    assert metrics["test/acc"] > 0.6 and metrics["test/macro_f1"] > 0.6
    assert 0 < metrics["test/cam_area"] < 1 and 0 <= metrics["test/cam_mass"] <= 1
