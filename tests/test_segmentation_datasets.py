"""ISIC 2018, BUSI, CVC-ClinicDB and COVID-19 Radiography read from tiny trees in their public layouts."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.base import DatasetError
from datamodules.busi import BUSIDataModule
from datamodules.covid19_radiography import COVID19RadiographyDataModule
from datamodules.cvc_clinicdb import CVCClinicDBDataModule
from datamodules.isic2018 import ISIC2018DataModule


RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def rgb(h, w):
    return RNG.integers(0, 255, (h, w, 3), dtype=np.uint8)


def box_mask(h, w, top, left, size, value=255):
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[top:top + size, left:left + size] = value
    return mask


def write_isic(root: Path, n: int = 6) -> Path:
    for i in range(n):
        save(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{i:07d}.jpg", rgb(45, 60))
        save(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{i:07d}_segmentation.png", box_mask(45, 60, 10, 10, 20))
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC-BY-NC")
    return root


def write_busi(root: Path, per_class=(5, 3, 2)) -> Path:
    base = root / "Dataset_BUSI_with_GT"
    for label, n in zip(("benign", "malignant", "normal"), per_class):
        for i in range(1, n + 1):
            save(base / label / f"{label} ({i}).png", RNG.integers(0, 255, (40, 52), dtype=np.uint8))
            mask = np.zeros((40, 52), np.uint8) if label == "normal" else box_mask(40, 52, 5, 5, 10)
            save(base / label / f"{label} ({i})_mask.png", mask)
    # a second lesion of benign (1) in a second mask file, stored as RGB as some BUSI masks are
    second = np.repeat(box_mask(40, 52, 25, 30, 8)[..., None], 3, axis=-1)
    save(base / "benign" / "benign (1)_mask_1.png", second)
    return root


def write_cvc(root: Path, n: int = 6, ext=".tif") -> Path:
    for i in range(1, n + 1):
        save(root / "Original" / f"{i}{ext}", rgb(288, 384))
        save(root / "Ground Truth" / f"{i}{ext}", box_mask(288, 384, 100, 100, 60))
    return root


def write_covid(root: Path, n: int = 6) -> Path:
    base = root / "COVID-19_Radiography_Dataset"
    for label in ("COVID", "Normal"):
        for i in range(1, n + 1):
            save(base / label / "images" / f"{label}-{i}.png", RNG.integers(0, 255, (299, 299), dtype=np.uint8))
            save(base / label / "masks" / f"{label}-{i}.png", box_mask(256, 256, 64, 32, 128))
    return root


def _setup(dm):
    dm.setup()
    return dm


def test_isic2018_layout(tmp_path):
    dm = _setup(ISIC2018DataModule(str(write_isic(tmp_path)), image_size=64, num_workers=0, val_fraction=0.0))
    assert len(dm.items) == 6 and all(item.masks[0].name == f"{item.image.stem}_segmentation.png" for item in dm.items)
    sample = dm.test_set[0]
    assert sample["image"].shape == (3, 64, 64) and sample["mask"].sum() > 0
    assert sample["name"].startswith("ISIC_")


def test_isic2018_missing_mask_names_the_image(tmp_path):
    root = write_isic(tmp_path)
    (root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(DatasetError, match="ISIC_0000002.jpg") as info:
        ISIC2018DataModule(str(root), num_workers=0).setup()
    assert "ISIC2018_Task1_Training_GroundTruth" in str(info.value)


def test_busi_layout_merges_masks_and_selects_classes(tmp_path):
    root = write_busi(tmp_path)
    dm = _setup(BUSIDataModule(str(root), image_size=[40, 52], num_workers=0, val_fraction=0.0, augmentation="none"))
    assert len(dm.items) == 8 and {item.label for item in dm.items} == {"benign", "malignant"}  # SACA: no normals
    first = next(item for item in dm.items if item.image.name == "benign (1).png")
    assert [m.name for m in first.masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    dataset = dm.train_set if first in dm.train_set.items else dm.test_set
    _, mask = dataset.read(dataset.items.index(first))
    assert mask.sum() == 100 + 64  # both lesions, OR-merged
    everything = _setup(BUSIDataModule(str(root / "Dataset_BUSI_with_GT"), use_classes=["benign", "malignant", "normal"],
                                       split="kfold", folds=2, fold=1, val_fraction=0.0, num_workers=0))
    assert len(everything.items) == 10
    test_labels = sorted(item.label for item in everything.test_set.items)
    assert test_labels.count("normal") == 1  # stratified folds: one of the two normals per fold
    assert {everything.test_set[i]["label"] for i in range(len(everything.test_set))} <= {0, 1, 2}


def test_busi_stratified_batches_balance_lesion_and_normal(tmp_path):
    root = write_busi(tmp_path, per_class=(6, 6, 4))
    dm = _setup(BUSIDataModule(str(root), use_classes=["benign", "malignant", "normal"], stratified_batches=True,
                               batch_size=4, image_size=32, val_fraction=0.0, num_workers=0))
    batch = next(iter(dm.train_dataloader()))
    assert (batch["label"] == 2).sum() == 2  # 2 normal + 2 lesion images


def test_busi_image_without_mask(tmp_path):
    root = write_busi(tmp_path)
    (root / "Dataset_BUSI_with_GT" / "malignant" / "malignant (2)_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"malignant \(2\)\.png"):
        BUSIDataModule(str(root), num_workers=0).setup()


def test_busi_mask_of_another_size(tmp_path):
    root = write_busi(tmp_path)
    save(root / "Dataset_BUSI_with_GT" / "benign" / "benign (3)_mask.png", np.zeros((41, 52), np.uint8))
    dm = BUSIDataModule(str(root), num_workers=0, preload=True)
    with pytest.raises(DatasetError, match=r"benign \(3\)_mask\.png"):
        dm.setup()


@pytest.mark.parametrize("layout", ["official_tif", "kaggle_png"])
def test_cvc_clinicdb_layouts(tmp_path, layout):
    root = tmp_path / "CVC-ClinicDB"
    write_cvc(root if layout == "official_tif" else root / "PNG", ext=".tif" if layout == "official_tif" else ".png")
    dm = _setup(CVCClinicDBDataModule(str(root), num_workers=0, val_fraction=0.0, augmentation="none"))
    assert len(dm.items) == 6
    sample = dm.train_set[0]
    assert sample["image"].shape == (3, 256, 256)
    # 60x60 of 288x384 -> about 53x40 pixels at 256x256
    assert sample["mask"].sum().item() == pytest.approx(60 * 60 * 256 * 256 / (288 * 384), rel=0.1)


def test_cvc_clinicdb_missing_ground_truth(tmp_path):
    write_cvc(tmp_path)
    (tmp_path / "Ground Truth" / "3.tif").unlink()
    with pytest.raises(DatasetError, match=r"Original/3\.tif"):
        CVCClinicDBDataModule(str(tmp_path), num_workers=0).setup()


def test_covid19_radiography_layout_with_smaller_masks(tmp_path):
    root = write_covid(tmp_path)
    dm = _setup(COVID19RadiographyDataModule(str(root), num_workers=0, val_fraction=0.0, augmentation="none"))
    assert len(dm.items) == 6 and {item.label for item in dm.items} == {"COVID"}
    image, mask = dm.train_set.read(0)
    assert image.shape == (299, 299, 3) and mask.shape == (299, 299)  # the 256x256 mask resized to its image
    assert dm.train_set[0]["mask"].mean().item() == pytest.approx(0.25, abs=0.02)  # 128x128 of 256x256
    both = _setup(COVID19RadiographyDataModule(str(root / "COVID-19_Radiography_Dataset"),
                                               use_classes=["COVID", "Normal"], num_workers=0))
    assert len(both.items) == 12


def test_covid19_other_mask_sizes_still_fail(tmp_path):
    root = write_covid(tmp_path)
    save(root / "COVID-19_Radiography_Dataset" / "COVID" / "masks" / "COVID-2.png", np.zeros((200, 200), np.uint8))
    dm = COVID19RadiographyDataModule(str(root), num_workers=0, preload=True)
    with pytest.raises(DatasetError, match=r"COVID-2\.png"):
        dm.setup()


def test_missing_dataset_folder_points_to_the_standin(tmp_path):
    with pytest.raises(DatasetError) as info:
        BUSIDataModule(str(tmp_path / "nowhere"), num_workers=0).setup()
    message = str(info.value)
    assert "nowhere" in message and "benign (1)_mask.png" in message and "saca_unet_demo.yaml" in message


def test_a_config_names_its_own_paper_demo_in_data_errors(tmp_path):
    from datamodules.base import DatasetError
    from datamodules.busi import BUSIDataModule

    module = BUSIDataModule(str(tmp_path / "nowhere"), standin_config="experiments/unet_gcn_demo.yaml")
    with pytest.raises(DatasetError, match="run.py --config experiments/unet_gcn_demo.yaml"):
        module.setup("fit")
    with pytest.raises(DatasetError, match="saca_unet_demo.yaml"):  # the class default
        BUSIDataModule(str(tmp_path / "nowhere")).setup("fit")
