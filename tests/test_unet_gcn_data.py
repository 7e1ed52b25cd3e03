"""UNet-GCN data: the ultrasound augmentation of Table 1, Dataset-B (UDIAT) and STU layouts and errors."""
import zipfile

import albumentations as A
import numpy as np
import pytest
from PIL import Image

from datamodules.base import DatasetError
from datamodules.stu import STUDataModule
from datamodules.udiat import UDIATDataModule, read_xlsx_rows
from datamodules.ultrasound_augment import (Equalize, TorchvisionBrightness, TorchvisionContrast,
                                            ultrasound_randaugment)


# -- augmentation ---------------------------------------------------------------------------------------
def test_contrast_and_brightness_follow_torchvision_semantics():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 1)).astype(np.uint8)
    as_float = image.astype(np.float32) / 255
    contrast = TorchvisionContrast((0.3, 0.3))
    brightness = TorchvisionBrightness((0.6, 0.6))
    # torchvision: adjust_contrast = blend(img, mean(grey), f); adjust_brightness = blend(img, 0, f); clamp.
    expected_contrast = np.clip(0.3 * as_float + 0.7 * as_float.mean(), 0, 1)
    np.testing.assert_allclose(contrast.apply(as_float, factor=0.3), expected_contrast, atol=1e-6)
    np.testing.assert_allclose(brightness.apply(as_float, factor=0.6), 0.6 * as_float, atol=1e-6)
    # uint8: computed in float, clamped, truncated to uint8 as torchvision's _blend.
    np.testing.assert_array_equal(brightness.apply(image, factor=0.6), (0.6 * image.astype(np.float32)).astype(np.uint8))
    # The factor range [0.05, 0.95] always reduces contrast / brightness.
    out = A.Compose([TorchvisionContrast()], seed=1)(image=as_float)["image"]
    assert out.std() < as_float.std()
    out = A.Compose([TorchvisionBrightness()], seed=1)(image=as_float)["image"]
    assert out.mean() < as_float.mean()


def test_equalize_flattens_the_histogram_for_uint8_and_float():
    rng = np.random.default_rng(1)
    image = (rng.beta(2, 8, (64, 64, 1)) * 255).astype(np.uint8)  # dark, skewed histogram
    equalised = Equalize().apply(image)
    assert equalised.dtype == np.uint8 and equalised.shape == image.shape
    assert equalised.mean() > image.mean() + 40
    from_float = Equalize().apply(image.astype(np.float32) / 255)
    np.testing.assert_allclose(from_float * 255, equalised, atol=1e-3)


def test_randaugment_applies_three_distinct_ops_and_flips_image_and_mask_together():
    transform = ultrasound_randaugment()
    assert isinstance(transform, A.SomeOf) and transform.n == 3 and len(transform.transforms) == 6
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (32, 32, 1)).astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 2:10] = 1  # asymmetric: a flip moves it
    pipeline = A.Compose([transform], seed=3)
    flipped = 0
    for _ in range(60):
        out = pipeline(image=image, mask=mask)
        assert out["image"].shape == image.shape and out["mask"].shape == mask.shape
        if not np.array_equal(out["mask"], mask):
            assert np.array_equal(out["mask"], mask[:, ::-1])
            flipped += 1
    # P(flip chosen) = 3/6, then p = 0.5: about a quarter of the draws flip.
    assert 5 <= flipped <= 30


# -- Dataset-B (UDIAT) ------------------------------------------------------------------------------------
def write_xlsx(path, rows):
    """A minimal .xlsx (first sheet, inline strings and numbers) in the Office Open XML layout."""
    def cell(ref, value):
        if isinstance(value, (int, float)):
            return f'<c r="{ref}"><v>{value}</v></c>'
        return f'<c r="{ref}" t="inlineStr"><is><t>{value}</t></is></c>'
    body = "".join(f'<row r="{r + 1}">' + "".join(cell(f"{chr(65 + c)}{r + 1}", v) for c, v in enumerate(row))
                   + "</row>" for r, row in enumerate(rows))
    sheet = ('<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns='
             f'"http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>{body}</sheetData></worksheet>')
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("xl/worksheets/sheet1.xml", sheet)


def write_udiat_tree(root, num_images=12, size=(40, 56), with_xlsx=True, seed=0):
    rng = np.random.default_rng(seed)
    (root / "original").mkdir(parents=True)
    (root / "GT").mkdir()
    rows = [["Image", "Type", "Diagnosis"]]
    for i in range(1, num_images + 1):
        image = rng.integers(60, 200, size, dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[10:25, 12:30] = 255
        image[mask > 0] = 30
        Image.fromarray(image).save(root / "original" / f"{i:06d}.png")
        Image.fromarray(mask).save(root / "GT" / f"{i:06d}.png")
        rows.append([i, "Malignant" if i % 3 == 0 else "Benign", "IDC" if i % 3 == 0 else "FIBROADENOMA"])
    if with_xlsx:
        write_xlsx(root / "DatasetB.xlsx", rows)
    return rows


def test_xlsx_reader_reads_the_first_sheet(tmp_path):
    write_xlsx(tmp_path / "x.xlsx", [["Image", "Type"], [1, "Benign"], [2, "Malignant"]])
    assert read_xlsx_rows(tmp_path / "x.xlsx") == [["Image", "Type"], ["1", "Benign"], ["2", "Malignant"]]


def test_udiat_layout_classes_and_stratified_folds(tmp_path):
    write_udiat_tree(tmp_path, 12)
    tests = []
    for fold in range(4):
        dm = UDIATDataModule(data_dir=str(tmp_path), image_size=32, fold=fold, num_workers=0, batch_size=2,
                             val_fraction=0.2)
        dm.setup()
        labels = {item.name: item.label for item in dm.items}
        assert sum(label == "malignant" for label in labels.values()) == 4
        test_names = [dm.items[i].name for i in dm.split_indices["test"]]
        assert sum(labels[n] == "malignant" for n in test_names) == 1  # stratified: 1 of 4 malignant per fold
        tests += test_names
        item = dm.train_set[0]
        assert item["image"].shape == (1, 32, 32) and 0 <= item["image"].min() and item["image"].max() <= 1
        assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert sorted(tests) == [f"{i:06d}" for i in range(1, 13)]  # the 4 test folds partition the set
    assert dm.stratified_batches is False


def test_udiat_without_class_list_uses_plain_kfold(tmp_path):
    write_udiat_tree(tmp_path, 8, with_xlsx=False)
    dm = UDIATDataModule(data_dir=str(tmp_path), image_size=32, num_workers=0)
    dm.setup()
    assert all(item.label is None for item in dm.items) and len(dm.split_indices["test"]) == 2


@pytest.mark.parametrize("problem", ["missing_gt", "missing_mask", "corrupt", "bad_type", "no_dir"])
def test_udiat_errors_name_the_file_and_layout(tmp_path, problem):
    write_udiat_tree(tmp_path, 16)
    expected = None
    if problem == "missing_gt":
        for p in (tmp_path / "GT").iterdir():
            p.unlink()
        (tmp_path / "GT").rmdir()
        expected = str(tmp_path / "GT")
    elif problem == "missing_mask":
        (tmp_path / "GT" / "000004.png").unlink()
        expected = "000004.png"
    elif problem == "corrupt":
        (tmp_path / "original" / "000002.png").write_bytes(b"\x89PNG broken")
        expected = str(tmp_path / "original" / "000002.png")
    elif problem == "bad_type":
        write_xlsx(tmp_path / "DatasetB.xlsx", [["Image", "Type"], [1, "Unknown"]])
        expected = "DatasetB.xlsx"
    dm = UDIATDataModule(data_dir=str(tmp_path / "absent") if problem == "no_dir" else str(tmp_path),
                         image_size=32, num_workers=0)
    with pytest.raises(DatasetError) as info:
        dm.setup()
        for split in (dm.train_set, dm.val_set, dm.test_set):
            for i in range(len(split)):
                split[i]
    message = str(info.value)
    assert "original/<nnnnnn>.png" in message and "unet_gcn_demo.yaml" in message
    if expected:
        assert expected in message


# -- STU ------------------------------------------------------------------------------------------------
def write_stu_tree(root, num_images=5, size=(48, 64), prefix="Test_Image"):
    rng = np.random.default_rng(0)
    folder = root / "Hospital"
    folder.mkdir(parents=True)
    for n in range(1, num_images + 1):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        mask = np.zeros(size, np.uint8)
        mask[5:20, 5:30] = 255
        Image.fromarray(image).save(folder / f"{prefix}_{n}.png")
        Image.fromarray(mask).save(folder / f"mask_{n}.png")


@pytest.mark.parametrize("prefix", ["Test_Image", "image"])
def test_stu_is_test_only_and_reads_both_namings(tmp_path, prefix):
    write_stu_tree(tmp_path, 5, prefix=prefix)
    for data_dir in (tmp_path, tmp_path / "Hospital"):
        dm = STUDataModule(data_dir=str(data_dir), image_size=32, num_workers=0, batch_size=4)
        dm.setup()
        assert len(dm.test_set) == 5 and len(dm.train_set) == 0
        batch = next(iter(dm.test_dataloader()))
        assert batch["image"].shape == (4, 1, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
        assert batch["name"][0] == "stu_001"


def test_stu_errors(tmp_path):
    write_stu_tree(tmp_path, 3)
    (tmp_path / "Hospital" / "mask_2.png").unlink()
    with pytest.raises(DatasetError, match="mask_2.png"):
        STUDataModule(data_dir=str(tmp_path), num_workers=0).setup()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="Test_Image_<n>.png"):
        STUDataModule(data_dir=str(empty), num_workers=0).setup()
