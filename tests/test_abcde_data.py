"""ABCDE analysis data: the five debasing transforms (+ occlusion), the area scores, the synthetic ABCD stand-in and
the ISIC 2019 / ISIC 2020 / ISIC19-20 (+ private) readers on fixture trees in the public layouts."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from datamodules.base import DatasetError
from datamodules.debasing import (DEBASINGS, border_band, border_kernel_size, bbox_ratio, centre_square, centroid,
                                  debase, debase_asymmetry, debase_borders, debase_diameter, debase_grayscale,
                                  debase_mask, debase_occlusion, foreground_ratio, item_rng, mirror_top_right)
from datamodules.isic19_20 import ISIC1920DataModule
from datamodules.isic2019 import ISIC_CLASSES, ISIC2019DataModule
from datamodules.isic2020 import ISIC2020DataModule, isic2020_class
from datamodules.standins.synthetic_lesions import ABCD_CLASSES, SyntheticDermoscopyDataModule, abcd_lesion_image


def ellipse(size=96, cy=30.0, cx=60.0, ry=12.0, rx=20.0):
    yy, xx = np.mgrid[:size, :size]
    mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
    rng = np.random.default_rng(0)
    image = rng.integers(150, 230, (size, size, 3), dtype=np.uint8)
    image[mask > 0] = (90, 50, 30)
    return image, mask


# ---- transforms ------------------------------------------------------------------------------------------------
def test_mirror_top_right_builds_from_the_top_right_quadrant():
    even = np.arange(16).reshape(4, 4)
    assert mirror_top_right(even).tolist() == [[3, 2, 2, 3], [7, 6, 6, 7], [7, 6, 6, 7], [3, 2, 2, 3]]
    odd = np.arange(25).reshape(5, 5)  # the middle row and column are the mirror axes
    assert mirror_top_right(odd)[:3, 2:].tolist() == odd[:3, 2:].tolist()
    assert np.array_equal(mirror_top_right(odd), mirror_top_right(odd)[::-1, ::-1])


def test_asymmetry_centres_rotates_and_symmetrises():
    image, mask = ellipse()
    out, out_mask = debase_asymmetry(image, mask, angle=30.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out, out[:, ::-1]) and np.array_equal(out, out[::-1])  # symmetric about both axes
    assert np.array_equal(out_mask, out_mask[::-1, ::-1])
    cy, cx = centroid(out_mask)
    assert abs(cy - 47.5) < 0.5 and abs(cx - 47.5) < 0.5  # the lesion is centred
    # a centred disc is unchanged by the rotation and the mirroring
    disc_image, disc = ellipse(cy=47.5, cx=47.5, ry=20, rx=20)
    _, disc_out = debase_asymmetry(disc_image, disc, angle=77.0)
    assert (disc_out != disc).mean() < 0.01
    # seeded per image name: the same angle every time
    a = debase("asymmetry", image, mask, item_rng(0, "ISIC_1"))[0]
    assert np.array_equal(a, debase("asymmetry", image, mask, item_rng(0, "ISIC_1"))[0])
    assert not np.array_equal(a, debase("asymmetry", image, mask, item_rng(0, "ISIC_2"))[0])


def test_borders_blackens_the_contour_band_only():
    image, mask = ellipse()
    k = border_kernel_size(mask, 0.08)
    assert k % 2 == 1 and k == max(3, int(round(0.08 * 96 * np.sqrt(mask.mean())))) | 1
    band = border_band(mask, 0.3)
    assert band.max() == pytest.approx(1.0) and band.min() >= 0
    out, _ = debase_borders(image, mask, 0.3)
    contour = mask.astype(bool) & ~cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)
    assert out[contour].mean() < 0.25 * image[contour].mean()  # the border is (nearly) black
    far = cv2.dilate(mask, np.ones((41, 41), np.uint8)) == 0
    assert np.array_equal(out[far], image[far])  # far from it nothing changes
    assert np.array_equal(debase_borders(image, np.zeros_like(mask))[0], image)


def test_grayscale_and_mask():
    image, mask = ellipse()
    grey, _ = debase_grayscale(image, mask)
    luma = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    assert np.abs(grey[..., 0].astype(float) - luma).max() <= 1.0
    assert np.array_equal(grey[..., 0], grey[..., 2])
    shown, _ = debase_mask(image, mask)
    assert np.array_equal(shown, np.repeat(mask[..., None] * 255, 3, axis=-1))


def test_diameter_sets_the_foreground_ratio():
    for radius in (10.0, 18.0):  # crops
        image, mask = ellipse(cy=40, cx=52, ry=radius, rx=radius)
        out, out_mask = debase_diameter(image, mask, 0.8)
        assert out.shape == image.shape and foreground_ratio(out_mask) == pytest.approx(0.8, abs=0.03)
        cy, cx = centroid(out_mask)
        assert abs(cy - 47.5) < 1 and abs(cx - 47.5) < 1
    image, mask = ellipse(cy=47.5, cx=47.5, ry=60, rx=60)  # 93 % lesion: padded (reflected), lesion shrinks
    out, out_mask = debase_diameter(image, mask, 0.8)
    centre = np.zeros_like(mask)
    centre[8:88, 8:88] = 1
    assert foreground_ratio(mask) > 0.9 and out_mask[centre > 0].mean() < mask[centre > 0].mean()


def test_occlusion_area_scores_and_centre_square():
    image, mask = ellipse()
    out, _ = debase_occlusion(image, mask)
    ys, xs = np.nonzero(mask)
    assert (out[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == 0).all()
    assert out[0, 0].tolist() == image[0, 0].tolist()
    assert foreground_ratio(mask) == mask.mean()
    assert bbox_ratio(mask) == (np.ptp(ys) + 1) * (np.ptp(xs) + 1) / mask.size and bbox_ratio(0 * mask) == 0
    wide = np.zeros((60, 100, 3), np.uint8)
    wide[:, 20:80] = 255
    square, square_mask = centre_square(wide, wide[..., 0], 30)
    assert square.shape == (30, 30, 3) and square.min() == 255 and square_mask.min() == 1
    for name in DEBASINGS:
        out, out_mask = debase(name, image, mask, np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8 and out_mask.shape == mask.shape
    with pytest.raises(ValueError, match="unknown debasing"):
        debase("evolution", image, mask)


# ---- stand-in ----------------------------------------------------------------------------------------------------
def test_abcd_lesions_carry_their_cues():
    size, n = 96, 40
    fg = {0: [], 1: []}
    for label in (0, 1):
        for i in range(n):
            image, mask, cues = abcd_lesion_image(np.random.default_rng([9, label, i]), label, size)
            assert image.shape == (size, size, 3) and set(np.unique(mask)) <= {0, 1}
            fg[label].append(mask.mean())
    assert np.mean(fg[0]) > 1.5 * np.mean(fg[1])  # melanomas are larger on average (diameter cue)
    _, _, cues = abcd_lesion_image(np.random.default_rng(1), 0, size, p_malignant_cue=1.0)
    assert all(cues.values())
    _, _, cues = abcd_lesion_image(np.random.default_rng(1), 1, size, p_benign_cue=0.0)
    assert not any(cues.values())


def test_standin_datamodule_splits_debases_and_returns_masks():
    dm = SyntheticDermoscopyDataModule(num_images=60, source_size=48, image_size=32, debase="mask", with_mask=True,
                                       test_size=0.25, val_fraction=0.2, normalization="unit", num_workers=0,
                                       batch_size=64)
    dm.setup()
    assert dm.classes == ABCD_CLASSES and dm.test_loader_names == ["test", "val"]
    sizes = [len(dm.split_indices[s]) for s in ("train", "val", "test")]
    assert sum(sizes) == 60 and sizes[2] == 15
    batch = next(iter(dm.test_dataloader()[0]))
    assert batch["image"].shape == (15, 3, 32, 32) and batch["mask"].shape == (15, 1, 32, 32)
    # the "mask" variant's input is the mask (bilinear vs nearest resizing differ on the outline only)
    assert ((batch["image"][:, :1] > 0.5).float() == batch["mask"]).float().mean() > 0.97
    again = SyntheticDermoscopyDataModule(num_images=60, source_size=48, image_size=32, test_size=0.25,
                                          val_fraction=0.2, num_workers=0)
    again.setup()
    assert again.split_indices == dm.split_indices and "mask" not in next(iter(again.val_dataloader()))


# ---- ISIC fixture trees in the public layouts ------------------------------------------------------------------
def _jpg(path: Path, seed: int, size=(40, 52)):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, quality=90)


def _mask(path: Path, size=(40, 52)):
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros(size, np.uint8)
    mask[10:30, 15:40] = 255
    Image.fromarray(mask).save(path)


def write_isic2019(root: Path, n=12, masks=True):
    lines = ["image," + ",".join(ISIC_CLASSES)]
    meta = ["image,age_approx,anatom_site_general,lesion_id,sex"]
    for i in range(n):
        name = f"ISIC_{i:07d}" + ("_downsampled" if i == 3 else "")
        hot = ["0.0"] * 9
        hot[[0, 1, 2, 4][i % 4]] = "1.0"
        lines.append(f"{name}," + ",".join(hot))
        meta.append(f"{name},45,anterior torso,{'BCN_%07d' % (i // 2) if i % 3 else ''},male")
        _jpg(root / "ISIC_2019_Training_Input" / f"{name}.jpg", i)
        if masks:
            _mask(root / "masks" / f"{name}.png")
    (root / "ISIC_2019_Training_Input" / "LICENSE.txt").write_text("CC-BY-NC")
    (root / "ISIC_2019_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    (root / "ISIC_2019_Training_Metadata.csv").write_text("\n".join(meta) + "\n")


def write_isic2020(root: Path, n=12):
    diagnoses = ["melanoma", "nevus", "unknown", "seborrheic keratosis", "lentigo NOS", "cafe-au-lait macule"]
    lines = ["image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"]
    for i in range(n):
        name = f"ISIC_{9000000 + i}"
        d = diagnoses[i % len(diagnoses)]
        lines.append(f"{name},IP_{i // 3:07d},female,50,torso,{d},{'malignant' if d == 'melanoma' else 'benign'},"
                     f"{int(d == 'melanoma')}")
        _jpg(root / "train" / f"{name}.jpg", 100 + i)
        _mask(root / "masks" / f"{name}.png")
    (root / "ISIC_2020_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    duplicates = f"image_name_1,image_name_2\nISIC_9000000,ISIC_{9000000 + n - 1}\n"
    (root / "ISIC_2020_Training_Duplicates.csv").write_text(duplicates)


def test_isic2019_reader(tmp_path):
    write_isic2019(tmp_path)
    dm = ISIC2019DataModule(str(tmp_path), debase="diameter", pre_size=32, image_size=24, with_mask=True,
                            split="group", test_size=0.3, val_fraction=0.25, num_workers=0, batch_size=16)
    dm.setup()
    assert len(dm.items) == 12 and dm.items[3].name == "ISIC_0000003_downsampled"
    assert [item.label for item in dm.items[:4]] == [0, 1, 2, 4]
    assert dm.items[1].group == "2019:BCN_0000000" and dm.items[0].group == "2019:ISIC_0000000"
    groups = {s: {dm.items[i].group for i in dm.split_indices[s]} for s in ("train", "val", "test")}
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"]  # lesions not split
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 24, 24) and batch["mask"].shape[1:] == (1, 24, 24)
    assert float(batch["mask"].mean()) == pytest.approx(0.8, abs=0.08)  # the diameter variant's fixed ratio


def test_isic2019_errors_name_file_layout_and_standin(tmp_path):
    write_isic2019(tmp_path, masks=False)
    dm = ISIC2019DataModule(str(tmp_path), debase="borders", num_workers=0, pre_size=32, image_size=24)
    with pytest.raises(DatasetError, match="lesion mask not found") as info:
        dm.setup()
    message = str(info.value)
    assert "masks" in message and "Expected layout" in message and "experiments/abcde_demo.yaml" in message
    ISIC2019DataModule(str(tmp_path), debase="grayscale", num_workers=0, pre_size=32, image_size=24).setup()
    (tmp_path / "ISIC_2019_Training_Input" / "ISIC_0000005.jpg").write_bytes(b"broken")
    with pytest.raises(DatasetError, match="cannot read image"):
        ISIC2019DataModule(str(tmp_path), num_workers=0, pre_size=32, image_size=24).setup()
    (tmp_path / "ISIC_2019_Training_Input" / "ISIC_0000005.jpg").unlink()
    with pytest.raises(DatasetError, match="image ISIC_0000005 not found"):
        ISIC2019DataModule(str(tmp_path), num_workers=0).setup()
    (tmp_path / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL\nISIC_0000000,1.0\n")
    with pytest.raises(DatasetError, match="lacks the columns"):
        ISIC2019DataModule(str(tmp_path), num_workers=0).setup()
    with pytest.raises(DatasetError, match="dataset folder not found"):
        ISIC2019DataModule(str(tmp_path / "nowhere"), num_workers=0).setup()


def test_isic2020_reader_maps_diagnoses_and_drops_duplicates(tmp_path):
    assert isic2020_class("Lentigo NOS") == ISIC_CLASSES.index("BKL") and isic2020_class("melanoma") == 0
    assert isic2020_class("atypical_melanocytic_proliferation") == 8 and isic2020_class("wart") is None
    write_isic2020(tmp_path)
    dm = ISIC2020DataModule(str(tmp_path), num_workers=0, pre_size=32, image_size=24, split="group",
                            test_size=0.3, val_fraction=0.3)
    dm.setup()
    assert len(dm.items) == 11 and "ISIC_9000011" not in {item.name for item in dm.items}
    assert [item.label for item in dm.items[:6]] == [0, 1, 8, 4, 4, 8]
    assert dm.items[4].group == "2020:IP_0000001"
    truth = tmp_path / "ISIC_2020_Training_GroundTruth.csv"
    truth.write_text(truth.read_text().replace("nevus", "wart", 1))
    with pytest.raises(DatasetError, match="diagnosis 'wart'"):
        ISIC2020DataModule(str(tmp_path), num_workers=0).setup()


def test_isic19_20_combines_and_tests_private_and_val(tmp_path):
    write_isic2019(tmp_path / "ISIC2019")
    write_isic2020(tmp_path / "ISIC2020")
    private = tmp_path / "private"
    rows = ["image,label"]
    for i, label in enumerate(["MEL", "nv", "BCC", "MEL", "UNK"]):
        _jpg(private / "images" / f"P{i}.png", 500 + i)
        _mask(private / "masks" / f"P{i}.png")
        rows.append(f"P{i}.png,{label}")
    (private / "labels.csv").write_text("\n".join(rows) + "\n")
    dm = ISIC1920DataModule(str(tmp_path), private_dir=str(private), debase="asymmetry", pre_size=32,
                            image_size=24, test_size=0.3, val_fraction=0.25, num_workers=0, batch_size=32)
    dm.setup()
    assert len(dm.items) == 23 and dm.split == "group"
    assert dm.test_loader_names == ["test", "private", "val"]
    loaders = dm.test_dataloader()
    assert [len(loader.dataset) for loader in loaders[1:]] == [5, len(dm.split_indices["val"])]
    assert next(iter(loaders[1]))["label"].tolist() == [0, 1, 2, 0, 8]
    (private / "labels.csv").write_text("image,label\nP0.png,melanoma\n")
    bad = ISIC1920DataModule(str(tmp_path), private_dir=str(private), num_workers=0, pre_size=32, image_size=24,
                             test_size=0.3, val_fraction=0.25)
    with pytest.raises(DatasetError, match="label 'melanoma' is not one of"):
        bad.setup()
