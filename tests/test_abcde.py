"""ABCDE analysis: the val-ROC threshold policy and its metrics (scikit-learn), the area baselines, Grad-CAM
(MONAI against hand-written hooks), the paper's networks' sizes, and short runs through run.py: a classifier that
learns on the stand-in (and reloads from its checkpoint), and an area baseline whose AUROC is scikit-learn's."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.metrics import roc_curve

import run
from datamodules.debasing import bbox_ratio, foreground_ratio
from datamodules.standins.synthetic_lesions import SyntheticDermoscopyDataModule
from lightning_modules.abcde import ABCDETask, AreaScoreNetwork, area_scores, metrics_at_threshold, roc_threshold
from lightning_modules.backbones import ImageClassifier
from lightning_modules.utils import count_parameters

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "abcde_demo.yaml"


def _scores(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = np.clip(0.35 * y + rng.normal(0.35, 0.2, n), 0, 1)
    return torch.tensor(s), torch.tensor(y)


def test_roc_threshold_is_the_point_nearest_to_top_left():
    for seed in range(3):
        s, y = _scores(seed=seed)
        fpr, tpr, thresholds = roc_curve(y.numpy(), s.numpy())
        expected = thresholds[np.argmin(fpr ** 2 + (1 - tpr) ** 2)]
        assert float(roc_threshold(s, y)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="positive and negative"):
        roc_threshold(torch.rand(5), torch.zeros(5))


def test_metrics_at_threshold_match_sklearn():
    s, y = _scores()
    t = float(roc_threshold(s, y))
    pred = (s.numpy() >= t).astype(int)  # the ROC's convention: scores at the threshold are positive
    tn, fp, fn, tp = confusion_matrix(y.numpy(), pred).ravel()
    values = metrics_at_threshold(s, y, t)
    expected = {"precision": precision_score(y, pred), "recall": recall_score(y, pred), "specificity": tn / (tn + fp),
                "f1": f1_score(y, pred), "acc": accuracy_score(y, pred)}
    for key, value in expected.items():
        assert float(values[key]) == pytest.approx(value, abs=1e-6), key


def test_area_scores_and_baseline_network():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 1, 20, 30), np.uint8)
    for i in range(5):
        y0, x0 = rng.integers(0, 10, 2)
        masks[i, 0, y0:y0 + rng.integers(2, 10), x0:x0 + rng.integers(2, 20)] = 1
        masks[i, 0, rng.integers(0, 20), rng.integers(0, 30)] = 1  # a stray pixel widens the box
    masks[5, 0, 1:19, 1:29] = 1
    tensor = torch.from_numpy(masks).float()
    fg = np.array([foreground_ratio(m[0]) for m in masks])
    box = np.array([bbox_ratio(m[0]) for m in masks])
    assert np.allclose(area_scores(tensor, "mask").numpy(), fg)
    assert np.allclose(area_scores(tensor, "bbox").numpy(), box)
    assert np.allclose(area_scores(tensor, "bbox70").numpy(), box * (box >= 0.7))
    assert np.allclose(area_scores(tensor, "bbox70", indicator=True).numpy(), box >= 0.7)
    assert area_scores(torch.zeros(1, 1, 4, 4), "bbox").item() == 0
    network = AreaScoreNetwork("bbox", num_classes=9, positive_class=0)
    probs = network(tensor).softmax(-1)
    assert torch.allclose(probs[:, 0], torch.from_numpy(box).float().clamp(1e-6, 1 - 1e-6), atol=1e-5)
    assert torch.allclose(probs[:, 1:], ((1 - probs[:, :1]) / 8).expand(-1, 8), atol=1e-5)
    assert count_parameters(network) == 0


def _manual_gradcam(model, x, layer, class_idx):
    acts, grads = {}, {}

    def keep(module, inputs, output):
        acts["a"] = output
        output.register_hook(lambda grad: grads.__setitem__("g", grad))

    handle = layer.register_forward_hook(keep)
    logits = model(x)
    logits[:, class_idx].sum().backward()
    handle.remove()
    model.zero_grad(set_to_none=True)
    weights = grads["g"].mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts["a"]).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    low = cam.flatten(1).min(1).values[:, None, None, None]
    high = cam.flatten(1).max(1).values[:, None, None, None]
    return torch.where(high > low, (cam - low) / (high - low).clamp_min(1e-12), torch.zeros_like(cam)).detach()


def test_gradcam_is_monai_on_the_last_conv_stage():
    torch.manual_seed(0)
    network = ImageClassifier("resnet18", num_classes=3, width=0.25).eval()
    with torch.no_grad():  # a positive class-0 weight on every pooled channel: a nonzero layer4 CAM
        network.head.weight[0].abs_()
    task = ABCDETask(network, num_classes=3, positive_class=0)
    assert task.gradcam_layer_name() == "trunk.layer4"
    x = torch.randn(4, 3, 64, 64)
    maps = task.gradcam(x)
    assert maps.shape == (4, 1, 64, 64) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    reference = _manual_gradcam(network, x, network.trunk.layer4, 0)
    assert torch.allclose(maps, reference, atol=1e-4) and reference.amax() > 0.99
    assert all(p.grad is None for p in network.parameters())  # no gradients left behind
    task.gradcam_layer = "trunk.layer3"  # a finer map (4x4 here), chosen by name
    maps = task.gradcam(x)
    reference = _manual_gradcam(network, x, network.trunk.layer3, 0)
    assert torch.allclose(maps, reference, atol=1e-4)
    with torch.inference_mode():  # as inside trainer.test
        assert torch.allclose(task.gradcam(x), maps, atol=1e-5)
    with torch.device("meta"):
        effnet = ABCDETask(ImageClassifier("efficientnet_b0", num_classes=3), num_classes=3)
    assert effnet.gradcam_layer_name() == "trunk.head_act"
    assert ABCDETask(AreaScoreNetwork(num_classes=3), num_classes=3, input_key="mask").gradcam_layer_name() is None


def test_paper_networks_sizes():
    """9-class heads; the paper gives no counts: these equal the reference libraries' (torchvision resnet152
    60,192,808 and lukemelas efficientnet-b3 12,233,232 with 1000 classes) with the 1000-way head swapped."""
    with torch.device("meta"):
        assert count_parameters(ImageClassifier("efficientnet_b3", 9)) == 12_233_232 - 1536 * 1000 - 1000 + 1536 * 9 + 9
        assert count_parameters(ImageClassifier("resnet152", 9)) == 60_192_808 - 2048 * 1000 - 1000 + 2048 * 9 + 9


SMALL = ["--data.init_args.num_images", "150", "--data.init_args.source_size", "48", "--data.init_args.image_size",
         "32", "--data.init_args.batch_size", "16", "--model.init_args.network.init_args.width", "0.25",
         "--model.init_args.gradcam_images", "4", "--trainer.max_epochs", "5", "--trainer.logger", "false",
         "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]


def test_standin_classifier_learns_and_reloads(tmp_path):
    cli = run.main(["--config", str(DEMO), *SMALL, "--runs_dir", str(tmp_path), "--run_id", "r"])
    run_dir = Path(cli.run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    metrics = results["metrics"]
    assert metrics["test/pos/auroc"] > 0.75  # chance: 0.5
    for key in ("precision", "recall", "specificity", "f1", "acc"):
        assert 0 <= metrics[f"test/pos_valroc/{key}"] <= 1
    assert 0 < metrics["test/val_roc_threshold"] < 1 and "test/val/pos/auroc" in metrics
    assert (run_dir / "figures" / "test_gradcam.png").is_file()
    with np.load(run_dir / "figures" / "test_gradcam.npz") as cams:
        assert cams["maps"].shape == (4, 32, 32) and cams["images"].shape == (4, 32, 32, 3)
    assert cli.model.monitor == "val/pos/auroc"
    # the loss fell: the trained network's test cross-entropy against an untrained one's
    batch = next(iter(cli.datamodule.test_dataloader()[0]))
    torch.manual_seed(0)
    untrained = ImageClassifier("resnet18", num_classes=3, width=0.25).eval()
    with torch.no_grad():
        trained_loss = F.cross_entropy(cli.model.eval()(batch["image"]), batch["label"])
        assert trained_loss < 0.8 * F.cross_entropy(untrained(batch["image"]), batch["label"])
    reloaded = ABCDETask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt")
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(reloaded.eval()(x), cli.model.eval()(x), atol=1e-5)  # the tested (best) weights
    assert reloaded.positive_class == 0 and reloaded.hparams["gradcam_images"] == 4


def test_area_baseline_run_is_sklearns_auroc(tmp_path):
    args = ["test", "--config", str(DEMO), *SMALL, "--runs_dir", str(tmp_path), "--run_id", "area",
            "--model.init_args.network", "lightning_modules.abcde.AreaScoreNetwork",
            "--model.init_args.network.init_args.rule", "mask", "--model.init_args.network.init_args.num_classes", "3",
            "--model.init_args.input_key", "mask", "--data.init_args.with_mask", "true"]
    cli = run.main(args)
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    dm = SyntheticDermoscopyDataModule(num_images=150, source_size=48, image_size=32, with_mask=True,
                                       test_size=120 / 420, val_fraction=0.2, num_workers=0, batch_size=200)
    dm.setup()
    batch = next(iter(dm.test_dataloader()[0]))
    fg = batch["mask"].flatten(1).mean(1).numpy()
    assert metrics["test/pos/auroc"] == pytest.approx(roc_auc_score(batch["label"].numpy() == 0, fg), abs=1e-5)
    assert metrics["test/pos/auroc"] > 0.6  # melanomas are larger: size alone beats chance
