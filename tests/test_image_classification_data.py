"""The shared image-classification DataModule: ImageFolder layout, splits, preprocessing, errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import DatasetError
from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule, ImageFolderDataModule


def write_folder_tree(root: Path, classes=("a", "b"), per_class=10, size=(20, 24)):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            array = np.full((*size, 3), 40 + 150 * c, np.uint8) + rng.integers(0, 20, (*size, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / name / f"{name}_{i:02d}.png")


def test_image_folder_reads_layout_and_splits(tmp_path):
    write_folder_tree(tmp_path)
    dm = ImageFolderDataModule(str(tmp_path), classes=["a", "b"], image_size=16, normalization="unit",
                               test_size=0.3, val_fraction=0.2, num_workers=0, batch_size=4)
    dm.setup()
    splits = dm.split_indices
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(20))
    assert not set(splits["train"]) & set(splits["test"])
    labels = [dm.items[i].label for i in splits["test"]]
    assert labels.count(0) == labels.count(1) == 3  # stratified
    assert dm.class_counts == [sum(dm.items[i].label == c for i in splits["train"]) for c in (0, 1)]
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["label"].dtype == torch.long and isinstance(batch["name"][0], str)
    # the same seed gives the same split; another seed another one
    again = ImageFolderDataModule(str(tmp_path), classes=["a", "b"], image_size=16, test_size=0.3,
                                  val_fraction=0.2, num_workers=0)
    again.setup()
    assert again.split_indices == splits


def test_aliases_and_missing_class_error(tmp_path):
    write_folder_tree(tmp_path, classes=("Herpes Zoster", "other"), per_class=3)
    dm = ImageFolderDataModule(str(tmp_path), classes=["zoster", "other"], aliases={"Herpes Zoster": "zoster"},
                               num_workers=0, val_fraction=0, test_size=0.34)
    dm.setup()
    assert {item.label for item in dm.items} == {0, 1}
    bad = ImageFolderDataModule(str(tmp_path), classes=["zoster", "missing"], aliases={"Herpes Zoster": "zoster"},
                                num_workers=0, standin_config="experiments/x_demo.yaml")
    with pytest.raises(DatasetError, match="class folder 'missing' not found") as info:
        bad.setup()
    assert "Expected layout" in str(info.value) and "experiments/x_demo.yaml" in str(info.value)


def test_corrupt_file_names_it(tmp_path):
    write_folder_tree(tmp_path, per_class=3)
    (tmp_path / "a" / "a_00.png").write_bytes(b"not a png")
    dm = ImageFolderDataModule(str(tmp_path), classes=["a", "b"], num_workers=0, val_fraction=0, test_size=0.34)
    with pytest.raises(DatasetError, match="a_00.png"):
        dm.setup()


class _Arrays(ImageClassificationDataModule):
    classes = ("x", "y")

    def list_items(self):
        rng = np.random.default_rng(1)
        return [ClassificationItem(rng.integers(0, 255, (8, 8), dtype=np.uint8), i % 2, group=f"p{i // 4}")
                for i in range(40)]

    def preprocess(self, image, item):
        return 255 - image  # applied once per item


def test_group_split_preprocess_and_multiplier():
    dm = _Arrays(image_size=8, channels=1, normalization="unit", split="group", test_size=0.3, val_fraction=0.2,
                 epoch_multiplier=3, num_workers=0)
    dm.setup()
    groups = {s: {dm.items[i].group for i in idx} for s, idx in dm.split_indices.items()}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]
    assert len(dm.train_set) == 3 * len(dm.split_indices["train"])
    first = dm.split_indices["test"][0]
    item = dm.test_set[0]
    expected = (255 - dm.items[first].source).astype(np.float32) / 255
    assert torch.allclose(item["image"][0], torch.from_numpy(expected), atol=1e-6)
    assert item["group"] == dm.group_index[dm.items[first].group]


@pytest.mark.parametrize("split", ["kfold", "group_kfold"])
def test_kfold_splits_cover_everything_once(split):
    tests = []
    for fold in range(5):
        dm = _Arrays(split=split, folds=5, fold=fold, val_fraction=0.1, num_workers=0, image_size=8, channels=1)
        dm.setup()
        tests += dm.split_indices["test"]
    assert sorted(tests) == list(range(40))


class _MaskedFolder(ImageFolderDataModule):
    """preprocess returns (image, mask): a mask of the left half, which must follow the flips."""

    def preprocess(self, image, item):
        mask = np.zeros(image.shape[:2], np.uint8)
        mask[:, : image.shape[1] // 2] = 1
        image = image.copy()
        image[mask > 0] = 255
        return image, mask


@pytest.mark.parametrize("preload", [True, False])
def test_preprocess_may_return_a_mask_that_follows_the_transforms(tmp_path, preload):
    write_folder_tree(tmp_path, per_class=4, size=(20, 20))
    dm = _MaskedFolder(str(tmp_path), classes=["a", "b"], image_size=16, normalization="unit", augmentation="hflip",
                       val_fraction=0, test_size=0.5, num_workers=0, batch_size=8, preload=preload)
    dm.setup()
    torch.manual_seed(0)
    train = next(iter(dm.train_dataloader()))
    assert (train["mask"][:, 0, 0, -1] == 1).any()  # some training images were flipped, with their masks
    for batch in (train, next(iter(dm.test_dataloader()))):
        mask = batch["mask"]
        assert mask.shape == (batch["image"].shape[0], 1, 16, 16) and mask.dtype == torch.float32
        assert set(mask.unique().tolist()) == {0.0, 1.0} and float(mask.mean()) == 0.5
        # the white pixels are exactly the mask's (flipped together in the training batch)
        assert torch.equal((batch["image"].min(dim=1, keepdim=True).values == 1.0).float(), mask)
