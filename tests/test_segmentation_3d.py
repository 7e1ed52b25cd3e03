"""SegmentationTask on volumes: multi-class 3D losses, per-class Dice (vs torchmetrics), HD95 (vs a hand value),
sliding-window inference (vs whole-volume inference), test-time post-processing with its timings, 3D figures."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from lightning_modules.metrics.segmentation import HausdorffDistance95, SegmentationMetrics
from lightning_modules.tasks.segmentation import SegmentationPostprocessor, SegmentationTask, central_slices


def test_per_class_dice_matches_torchmetrics_dice_score():
    from torchmetrics.segmentation import DiceScore

    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (3, 1, 6, 7, 5), generator=generator)
    prediction = torch.where(torch.rand(target.shape, generator=generator) < 0.7, target,
                             torch.randint(0, 4, target.shape, generator=generator))
    metrics = SegmentationMetrics(num_classes=4, aggregation="per_image")
    metrics.update(prediction, target)
    reference = DiceScore(num_classes=4, include_background=False, average="none", input_format="index")
    reference.update(prediction[:, 0], target[:, 0])
    per_class = metrics.compute_per_class()["dice"]
    assert torch.allclose(per_class, reference.compute().float(), atol=1e-6)
    assert metrics.compute()["dice"].item() == pytest.approx(per_class.mean().item(), abs=1e-6)
    assert metrics.per_image_class_values()["dice"].shape == (3, 3)


def test_hd95_of_shifted_cubes():
    target = torch.zeros(1, 1, 12, 12, 12, dtype=torch.long)
    prediction = torch.zeros_like(target)
    target[0, 0, 2:6, 2:6, 2:6] = 1
    prediction[0, 0, 4:8, 2:6, 2:6] = 1  # shifted by 2 voxels along the first axis
    metric = HausdorffDistance95(num_classes=2)
    metric.update(prediction, target)
    assert metric.compute().item() == pytest.approx(2.0)
    scaled = HausdorffDistance95(num_classes=2, spacing=(0.5, 1.0, 1.0))
    scaled.update(prediction, target)
    assert scaled.compute().item() == pytest.approx(1.0)
    empty = HausdorffDistance95(num_classes=3)
    empty.update(prediction, target)  # class 2 is absent from both: NaN, left out of the mean
    assert torch.isnan(empty.per_image_class_values()[0, 1])
    assert empty.compute().item() == pytest.approx(2.0)


class RecordingConv(nn.Module):
    """A pointwise (1x1x1) network, so window-wise and whole-volume inference agree exactly."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 1)
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape[2:]))
        return self.conv(x)


def test_sliding_window_inference_equals_whole_volume_inference():
    torch.manual_seed(0)
    network = RecordingConv()
    task = SegmentationTask(network, num_classes=4, roi_size=(8, 8, 8), sw_overlap=0.5, sw_batch_size=3)
    image = torch.randn(2, 2, 20, 12, 8)
    with torch.no_grad():
        stitched = task._outputs(image)
        whole = network.conv(image)
    assert len(stitched) == 1
    assert torch.allclose(stitched[0], whole, atol=1e-5)
    assert set(network.shapes) == {(8, 8, 8)}  # the network only saw windows of the patch size
    network.shapes.clear()
    task._outputs(torch.randn(1, 2, 8, 8, 8))  # an input of the patch size goes through whole
    assert network.shapes == [(8, 8, 8)]
    with pytest.raises(ValueError, match="roi_size"):
        task._outputs(torch.randn(1, 2, 16, 16))


class Deep3D(nn.Module):
    def __init__(self):
        super().__init__()
        self.main, self.side = nn.Conv3d(1, 3, 3, padding=1), nn.Conv3d(1, 3, 1)

    def forward(self, x):
        return [self.main(x), self.side(F.avg_pool3d(x, 2))]


def test_3d_side_outputs_are_upsampled_trilinearly_and_validation_uses_the_main_window_output():
    torch.manual_seed(0)
    task = SegmentationTask(Deep3D(), num_classes=3, output_weights=[1.0, 0.5], bce_weight=0.0)
    image, mask = torch.randn(2, 1, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    main, side = task.network(image)
    up = F.interpolate(side, size=(8, 8, 8), mode="trilinear", align_corners=False)
    expected = task.loss_fn(main, mask) + 0.5 * task.loss_fn(up, mask)
    assert task.losses([main, side], mask)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_central_slices_pick_the_slice_with_most_foreground():
    image = torch.randn(2, 1, 4, 4, 6)
    mask = torch.zeros(2, 1, 4, 4, 6, dtype=torch.long)
    mask[0, 0, :, :, 4] = 1
    image_2d, mask_2d, prediction_2d = central_slices(image, mask, mask.clone())
    assert image_2d.shape == (2, 1, 4, 4)
    assert torch.equal(image_2d[0], image[0, ..., 4]) and torch.equal(image_2d[1], image[1, ..., 3])  # empty: middle
    assert mask_2d[0].sum() == 16


class Volumes(torch.utils.data.Dataset):
    def __init__(self, n=3, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.masks = torch.randint(0, 3, (n, 1, 8, 8, 8), generator=generator)
        self.images = self.masks.float() + 0.1 * torch.randn(n, 1, 8, 8, 8, generator=generator)

    def __len__(self):
        return len(self.masks)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "name": f"v{i}"}


class VolumeData(LightningDataModule):
    def __init__(self):
        super().__init__()
        self.train_set = Volumes(seed=1)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=2)

    def test_dataloader(self):
        return DataLoader(Volumes(seed=2), batch_size=2)


class Argmax(SegmentationPostprocessor):
    stat_names = ("voxels",)

    def __call__(self, probabilities, image):
        return probabilities.argmax(0), {"voxels": float(probabilities[0].size)}


class FittedThreshold(SegmentationPostprocessor):
    """Labels = the nearest class mean of the image, with means fitted on the training set."""

    requires_fit = True

    def fit(self, loader):
        batches = list(loader)
        images = torch.cat([b["image"] for b in batches]).flatten()
        masks = torch.cat([b["mask"] for b in batches]).flatten()
        self.means = np.array([images[masks == k].mean().item() for k in range(3)])

    def __call__(self, probabilities, image):
        return np.abs(image[0][..., None] - self.means).argmin(-1)


def test_postprocessing_is_scored_and_timed_per_variant(tmp_path):
    torch.manual_seed(0)
    task = SegmentationTask(nn.Conv3d(1, 3, 1), num_classes=3, class_names=["bg", "a", "b"], hd95=True,
                            metric_aggregation="per_image",
                            postprocessing={"argmax": Argmax(), "fitted": FittedThreshold()})
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      default_root_dir=tmp_path, enable_model_summary=False)
    results = trainer.test(task, datamodule=VolumeData(), verbose=False)[0]
    assert results["test/argmax/dice"] == pytest.approx(results["test/dice"], abs=1e-6)  # argmax = the network's
    assert results["test/argmax/voxels"] == 512
    assert results["test/argmax/seconds"] >= 0 and "test/fitted/seconds_std" in results
    assert results["test/fitted/dice"] > 0.95  # the intensity means fitted on the training set separate the classes
    for key in ("test/dice/a", "test/dice/b", "test/dice_per_image/a_std", "test/hd95", "test/fitted/hd95/b",
                "test/fitted/dice/a"):
        assert key in results
    assert (tmp_path / "figures" / "test_overlay.png").is_file()
    with pytest.raises(TypeError, match="SegmentationPostprocessor"):
        SegmentationTask(nn.Conv3d(1, 3, 1), num_classes=3, postprocessing={"x": lambda p, i: p})
    with pytest.raises(ValueError, match="class_names"):
        SegmentationTask(nn.Conv3d(1, 3, 1), num_classes=3, class_names=["a", "b"])
