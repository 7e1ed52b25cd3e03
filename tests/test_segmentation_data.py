"""The shared segmentation data pieces: reading, checks, transforms, splits, sampler, stand-in."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import DatasetError
from datamodules.segmentation import ImageMaskFolderDataModule, StratifiedBatchSampler, resolve_augmentation
from datamodules.splits import holdout_split, kfold_split
from datamodules.standins.synthetic_lesions import SyntheticLesionDataModule, generate


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_unext_tree(root: Path, n: int = 10, size=(30, 40), ext=".png") -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(root / "images" / f"img{i:02d}{ext}", rng.integers(0, 255, (*size, 3), dtype=np.uint8))
        mask = np.zeros(size, dtype=np.uint8)
        mask[5:15, 10:25] = 255
        write_png(root / "masks" / "0" / f"img{i:02d}.png", mask)
    return root


def test_folder_layout_reads_resizes_and_binarises(tmp_path):
    root = write_unext_tree(tmp_path / "inputs" / "busi")
    dm = ImageMaskFolderDataModule(str(root), image_size=32, val_fraction=0.0, num_workers=0, augmentation="none")
    dm.setup()
    assert len(dm.train_set) + len(dm.test_set) == 10 and len(dm.test_set) == 2  # train_test_split 0.2
    item = dm.train_set[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["name"].startswith("img") and item["label"] == -1
    # nearest-neighbour mask resize: rows 5:15 of 30 -> about 5.3:16 of 32 (columns 10:25 of 40 -> 8:20)
    assert item["mask"][0, :, 14].sum().item() == pytest.approx(10 * 32 / 30, abs=1.5)
    # ImageNet normalisation of uint8 in [0, 255]
    assert -2.2 < item["image"].min() < -1.5 and 2.0 < item["image"].max() < 2.7


def test_unit_normalisation_and_grayscale(tmp_path):
    root = write_unext_tree(tmp_path / "ds")
    dm = ImageMaskFolderDataModule(str(root), image_size=[16, 24], channels=1, normalization="unit",
                                   augmentation="none", num_workers=0)
    dm.setup()
    image = dm.test_set[0]["image"]
    assert image.shape == (1, 16, 24) and 0.0 <= image.min() and image.max() <= 1.0


def test_image_without_mask_names_the_file(tmp_path):
    root = write_unext_tree(tmp_path / "ds")
    (root / "masks" / "0" / "img03.png").unlink()
    with pytest.raises(DatasetError, match="img03") as info:
        ImageMaskFolderDataModule(str(root), num_workers=0).setup()
    assert "masks/0/<id>.png" in str(info.value) and "saca_unet_demo.yaml" in str(info.value)


def test_mask_of_another_size_names_the_file(tmp_path):
    root = write_unext_tree(tmp_path / "ds")
    write_png(root / "masks" / "0" / "img04.png", np.zeros((31, 40), dtype=np.uint8))
    dm = ImageMaskFolderDataModule(str(root), val_fraction=0.0, num_workers=0, preload=True)
    with pytest.raises(DatasetError, match=r"img04\.png") as info:
        dm.setup()
    assert "40x31" in str(info.value)


def test_unreadable_file_names_the_file(tmp_path):
    root = write_unext_tree(tmp_path / "ds")
    (root / "images" / "img05.png").write_bytes(b"not a png")
    dm = ImageMaskFolderDataModule(str(root), val_fraction=0.0, num_workers=0)
    dm.setup()
    everything = [*dm.train_set.items, *dm.test_set.items]
    with pytest.raises(DatasetError, match="cannot read image.*img05.png"):
        for dataset in (dm.train_set, dm.test_set):
            for i in range(len(dataset)):
                dataset[i]
    assert len(everything) == 10


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        ImageMaskFolderDataModule(str(tmp_path / "nowhere")).prepare_data()


def test_augmentation_is_applied_to_image_and_mask_together(tmp_path):
    root = write_unext_tree(tmp_path / "ds", n=4)
    dm = ImageMaskFolderDataModule(str(root), image_size=32, augmentation="unext", val_fraction=0.0,
                                   normalization="unit", num_workers=0)
    dm.setup()
    masks = {tuple(dm.train_set[0]["mask"][0].nonzero().min(0).values.tolist()) for _ in range(40)}
    assert len(masks) > 1  # the rectangle moves with rotations/flips
    with pytest.raises(ValueError, match="unknown augmentation"):
        resolve_augmentation("nope")
    assert len(resolve_augmentation("datamodules.segmentation:hflip_augmentation")) == 1


def test_splits_follow_sklearn_conventions():
    train, test = holdout_split(100)
    assert len(test) == 20 and not set(train) & set(test)
    assert (train, test) == holdout_split(100)  # deterministic (random_state 41)
    labels = ["a"] * 30 + ["b"] * 10
    folds = [kfold_split(labels, 4, k)[1] for k in range(4)]
    assert sorted(i for fold in folds for i in fold) == list(range(40))
    assert all(sum(labels[i] == "b" for i in fold) in (2, 3) for fold in folds)  # stratified


def test_stratified_sampler_balances_every_batch():
    strata = ["normal"] * 10 + ["lesion"] * 50
    sampler = StratifiedBatchSampler(strata, batch_size=8, seed=0)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 56
    for start in range(0, len(indices), 8):
        batch = indices[start:start + 8]
        assert sum(strata[i] == "normal" for i in batch) == 4
    sampler.set_epoch(1)
    assert list(sampler) != indices
    with pytest.raises(ValueError, match="divisible"):
        StratifiedBatchSampler(strata, batch_size=7)


def test_standin_is_deterministic_and_has_the_batch_keys():
    a = generate("skin", 3, "train", 5, (32, 32), 0.0)
    b = generate("skin", 3, "train", 5, (32, 32), 0.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], generate("skin", 3, "test", 5, (32, 32), 0.0)[0])
    dm = SyntheticLesionDataModule(kind="ultrasound", image_size=32, num_train=40, num_val=8, num_test=8,
                                   stratified_batches=True, batch_size=8)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32) and batch["mask"].shape == (8, 1, 32, 32)
    assert (batch["label"] == 1).sum() == 4  # 4 normal + 4 lesion images per batch
    normal = batch["label"] == 1
    assert batch["mask"][normal].sum() == 0 and (batch["mask"][~normal].flatten(1).sum(1) > 0).all()


def test_skin_standin_lesions_are_darker_than_skin():
    image, mask, _ = generate("skin", 0, "train", 0, (64, 64), 0.0)
    assert 0.01 < mask.mean() < 0.5
    assert image[mask > 0].mean() < 0.7 * image[mask == 0].mean()


def test_random_augmentation_is_reproducible_under_the_torch_seed():
    import albumentations as A
    import torch

    from datamodules.segmentation import TransformedSegmentationDataset, build_transform

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    mask = (rng.random((16, 16)) > 0.5).astype(np.uint8)

    class Fixed(TransformedSegmentationDataset):
        def __len__(self):
            return 8

        def load(self, index):
            return image, mask, f"i{index}", 0

    def draw(seed):
        torch.manual_seed(seed)
        transform = build_transform((16, 16), 3, "unit", [A.HorizontalFlip(p=0.5), A.RandomRotate90(p=1.0)])
        dataset = Fixed(transform)
        return torch.stack([dataset[i]["image"] for i in range(len(dataset))])

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
