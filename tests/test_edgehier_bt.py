"""EdgeHier-BT: edge pipeline (BCET, K-means, Canny), hierarchy composition and gradients, parameter counts,
the figshare reader on fixture trees in both layouts, the stand-in, and a short fit on it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.base import DatasetError
from datamodules.edge_pipeline import EdgePipeline, bcet, kmeans_quantize, to_uint8
from datamodules.figshare_brain_tumor import FigshareBrainTumorDataModule, edge_augmentation
from datamodules.standins.synthetic_brain_mri import SyntheticBrainMRIDataModule, synthetic_brain_slice
from lightning_modules.edgehier_bt import (HierarchicalClassificationTask, HierarchicalClassifier,
                                           compose_log_probs)


def _slice(seed=0, label=0, size=96):
    return synthetic_brain_slice(label, np.random.default_rng(seed), size)


# ---- edge pipeline ----
def test_bcet_covers_range_and_hits_target_mean():
    rng = np.random.default_rng(1)
    image = np.clip(rng.normal(90, 30, (64, 64)), 0, 255).astype(np.uint8)
    out = bcet(image, 0, 255, 110)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert abs(out.mean() - 110) < 1.5
    # the parabola's coefficients from the card's formulas, evaluated independently
    x = image.astype(np.float64)
    l, h, e, s = x.min(), x.max(), x.mean(), (x ** 2).mean()
    b = (h**2 * 110 - s * 255 + l**2 * (255 - 110)) / (2 * (h * 110 - e * 255 + l * (255 - 110)))
    a = 255 / ((h - l) * (h + l - 2 * b))
    c = -a * (l - b) ** 2
    np.testing.assert_allclose(out, np.clip(np.round(a * (x - b) ** 2 + c), 0, 255), atol=1)
    # a mean that no monotone parabola reaches (vertex inside [l, h]): the linear stretch, still 0..255
    dark = np.clip(rng.gamma(2.0, 20.0, (64, 64)) + 30, 0, 200).astype(np.uint8)
    out = bcet(dark)
    assert out.min() == 0 and out.max() == 255
    order = np.argsort(dark.ravel(), kind="stable")
    assert (np.diff(out.ravel()[order].astype(int)) >= 0).all()


def test_to_uint8_min_max_scales_int16():
    image = np.array([[-100, 0], [50, 900]], np.int16)
    out = to_uint8(image)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255 and out[0, 1] == 26


def test_kmeans_levels_and_brightest():
    image = _slice(2)
    quantized = kmeans_quantize(image, 4, "all", seed=0)
    assert len(np.unique(quantized)) <= 4
    bright = kmeans_quantize(image, 4, "brightest", seed=0)
    assert len(np.unique(bright)) == 2 and bright.max() == quantized.max()
    np.testing.assert_array_equal(quantized, kmeans_quantize(image, 4, "all", seed=0))


def test_pipeline_binary_deterministic_three_channels():
    image = _slice(3, label=1).astype(np.int16) * 7 - 300  # int16 like the .mat slices
    pipeline = EdgePipeline(size=64)
    out = pipeline(image)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 255} and (out > 0).mean() > 0.01
    assert (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(out, EdgePipeline(size=64)(image))
    stages = pipeline.stages(image)
    assert list(stages) == ["grey", "blur", "bcet", "kmeans", "morphology", "edges"]
    assert len(np.unique(stages["kmeans"])) <= 4


def test_edge_augmentation_keeps_edges_binary():
    import albumentations as A

    edges = EdgePipeline(size=64)(_slice(4))
    out = A.Compose(edge_augmentation(), seed=0)(image=edges)["image"]
    assert set(np.unique(out)) <= {0, 255}


# ---- hierarchy ----
def test_composition_on_mocked_stage_outputs():
    p1 = torch.tensor([0.9, 0.2, 0.5])
    p2 = torch.tensor([0.3, 0.8, 0.5])
    logits1 = torch.stack([torch.log(1 - p1), torch.log(p1)], 1)  # [rest, pituitary]
    logits2 = torch.stack([torch.log(p2), torch.log(1 - p2)], 1)  # [glioma, meningioma]
    probs = compose_log_probs(logits1, logits2).exp()
    expected = torch.stack([(1 - p1) * p2, (1 - p1) * (1 - p2), p1], 1)  # glioma, meningioma, pituitary
    torch.testing.assert_close(probs, expected)
    torch.testing.assert_close(probs.sum(1), torch.ones(3))
    torch.testing.assert_close(F.softmax(compose_log_probs(logits1, logits2), 1), expected)  # the task's scores


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        return self.net(x)


def _tiny_hierarchy():
    net = HierarchicalClassifier("resnet18")
    net.stage1, net.stage2 = _Tiny(), _Tiny()
    return net


def test_stage2_gets_no_gradient_from_pituitary_samples():
    torch.manual_seed(0)
    task = HierarchicalClassificationTask(_tiny_hierarchy())
    x = torch.randn(4, 3, 16, 16)
    y = torch.tensor([2, 2, 2, 2])  # pituitary only
    loss1, loss2 = task.stage_losses(x, y)
    (loss1 + loss2).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in task.network.stage2.parameters())
    assert any(p.grad.abs().sum() > 0 for p in task.network.stage1.parameters())
    # mixed batch: stage 2's gradient equals that of its CE on the non-pituitary samples alone
    task.zero_grad()
    y = torch.tensor([0, 2, 1, 2])
    _, loss2 = task.stage_losses(x, y)
    loss2.backward()
    grads = [p.grad.clone() for p in task.network.stage2.parameters()]
    task.zero_grad()
    F.cross_entropy(task.network.stage2(x[[0, 2]]), torch.tensor([0, 1])).backward()
    for g, p in zip(grads, task.network.stage2.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_cascade():
    net = _tiny_hierarchy()
    logits1 = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    logits2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert net.cascade(logits1, logits2).tolist() == [2, 0, 1]


def test_resnet50_parameter_count():
    with torch.device("meta"):
        net = HierarchicalClassifier("resnet50")
    per_network = sum(p.numel() for p in net.stage1.parameters())
    assert per_network == 23_512_130  # the card's ~23.5M: torchvision resnet50 trunk + Linear(2048, 2)
    assert sum(p.numel() for p in net.parameters()) == 2 * per_network
    out = HierarchicalClassifier("resnet18")(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))


# ---- the reader ----
def _write_mat(path, label, pid, image):
    import h5py

    with h5py.File(path, "w") as f:
        g = f.create_group("cjdata")
        g["label"] = np.array([[float(label)]])
        g["PID"] = np.array([[ord(c)] for c in pid], np.uint16)
        g["image"] = image.T.astype(np.int16)  # MATLAB stores column-major: h5py sees the transpose
        g["tumorMask"] = (image.T > image.mean()).astype(np.uint8)
        g["tumorBorder"] = np.zeros((1, 4))


@pytest.fixture
def mat_tree(tmp_path):
    rng = np.random.default_rng(0)
    labels = [1, 2, 3] * 4
    for i, label in enumerate(labels, start=1):
        image = synthetic_brain_slice({1: 1, 2: 0, 3: 2}[label], rng, 48).astype(np.int16) * 4 - 100
        image[0, :5] = 900  # an asymmetric mark to check the transpose
        _write_mat(tmp_path / f"{i}.mat", label, f"P{i % 4}", image)
    import h5py

    with h5py.File(tmp_path / "cvind.mat", "w") as f:
        f["cvind"] = np.array([[(i % 2) + 1 for i in range(len(labels))]], float)
    return tmp_path


def test_mat_layout_labels_groups_transpose_and_splits(mat_tree):
    dm = FigshareBrainTumorDataModule(str(mat_tree), edges=False, image_size=48, split="patient", test_size=0.25,
                                      num_workers=0, batch_size=4)
    dm.setup()
    assert [it.label for it in dm.items[:3]] == [1, 0, 2]  # 1 meningioma, 2 glioma, 3 pituitary
    assert [it.group for it in dm.items[:4]] == ["P1", "P2", "P3", "P0"]
    image = dm.read_image(dm.items[0])
    assert image.shape == (48, 48, 3) and image[0, :5, 0].tolist() == [255] * 5
    train_groups = {dm.items[i].group for i in dm.split_indices["train"]}
    assert not train_groups & {dm.items[i].group for i in dm.split_indices["test"]}
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 48, 48)

    cv = FigshareBrainTumorDataModule(str(mat_tree), image_size=32, split="cvind", fold=1, num_workers=0)
    cv.setup()
    assert cv.split_indices["test"] == [i for i in range(12) if i % 2 == 1]
    edges = cv.test_set[0]["image"]
    assert edges.shape == (3, 32, 32) and all(len(torch.unique(ch)) <= 2 for ch in edges)


def test_folder_layout_and_errors(tmp_path):
    from PIL import Image

    for c, name in enumerate(["glioma", "meningioma", "pituitary"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(_slice(i, c, 40)).save(tmp_path / name / f"{i}.png")
    dm = FigshareBrainTumorDataModule(str(tmp_path), image_size=40, num_workers=0)
    dm.setup()
    assert len(dm.items) == 9 and sorted({it.label for it in dm.items}) == [0, 1, 2]
    with pytest.raises(DatasetError, match="needs the .mat release"):
        FigshareBrainTumorDataModule(str(tmp_path), split="patient").setup()
    with pytest.raises(DatasetError, match="not found"):
        FigshareBrainTumorDataModule(str(tmp_path / "missing")).setup()
    (tmp_path / "1.mat").write_bytes(b"not hdf5")
    with pytest.raises(DatasetError, match="1.mat"):
        FigshareBrainTumorDataModule(str(tmp_path)).setup()


def test_paper_split_sizes_stratified():
    dm = SyntheticBrainMRIDataModule(per_class=20, source_size=48, image_size=32, num_workers=0)
    dm.setup()
    assert len(dm.split_indices["test"]) == 18 and dm.split_indices["val"] == dm.split_indices["test"]
    assert dm.class_counts == [14, 14, 14]


# ---- a short fit on the stand-in ----
def test_short_fit_lowers_loss_and_beats_prior(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    dm = SyntheticBrainMRIDataModule(per_class=40, source_size=96, image_size=48, batch_size=16, num_workers=0,
                                     augmentation="none")
    net = HierarchicalClassifier("resnet18")
    task = HierarchicalClassificationTask(net, class_names=["glioma", "meningioma", "pituitary"],
                                          optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    dm.setup()
    x = torch.stack([dm.train_set[i]["image"] for i in range(len(dm.train_set))])
    y = torch.stack([dm.train_set[i]["label"] for i in range(len(dm.train_set))])
    task.eval()
    with torch.no_grad():
        before = sum(task.stage_losses(x, y)).item()
    task.train()
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    task.eval()
    with torch.no_grad():
        after = sum(task.stage_losses(x, y)).item()
    assert after < before
    metrics = trainer.test(task, datamodule=dm, verbose=False)[0]
    assert metrics["test/acc"] > metrics["test/acc_prior"] + 0.1
