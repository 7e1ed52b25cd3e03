"""FER Grad-CAM's readers on tiny fixture trees in the public layouts: FER-2013 (csv and image folders), RAF-DB
(aligned images + list_patition_label.txt, label remap), AffectNet (official csv with face-box crop, npy
annotations, class folders; codes 7-10 dropped); the 56/24/20 stratified split; errors name the file."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.affectnet import AffectNetDataModule
from datamodules.base import DatasetError
from datamodules.fer2013 import EMOTIONS, FER2013DataModule
from datamodules.rafdb import RAFDBDataModule

PER_CLASS = 10


def _png(path, size=(20, 20), value=None, rgb=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    shape = (size[1], size[0], 3) if rgb else (size[1], size[0])
    array = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(array).save(path)


def _fer_csv(path, rows):
    lines = ["emotion,pixels,Usage"] + [f"{label},{' '.join(map(str, pixels))},Training" for label, pixels in rows]
    path.write_text("\n".join(lines) + "\n")


def _check_split(dm, total):
    dm.setup()
    sizes = {k: len(v) for k, v in dm.split_indices.items()}
    assert sum(sizes.values()) == total
    assert sizes["test"] == pytest.approx(0.2 * total, abs=1) and sizes["val"] == pytest.approx(0.24 * total, abs=2)
    test_labels = [dm.items[i].label for i in dm.split_indices["test"]]
    assert np.bincount(test_labels, minlength=7).tolist() == [PER_CLASS // 5] * 7  # stratified


def test_fer2013_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(c, rng.integers(0, 256, 2304)) for c in range(7) for _ in range(PER_CLASS)]
    _fer_csv(tmp_path / "fer2013.csv", rows)
    dm = FER2013DataModule(str(tmp_path), num_workers=0)
    _check_split(dm, 7 * PER_CLASS)
    batch = dm.test_set[0]
    item = dm.items[dm.split_indices["test"][0]]
    assert batch["image"].shape == (3, 48, 48) and 0 <= float(batch["image"].min()) <= float(batch["image"].max()) <= 1
    np.testing.assert_allclose(batch["image"][0].numpy() * 255, item.source, atol=1e-3)  # grey replicated, /255
    assert int(batch["label"]) == item.label


def test_fer2013_folders_and_errors(tmp_path):
    for split in ("train", "test"):
        for name in EMOTIONS:
            for k in range(PER_CLASS // 2):
                _png(tmp_path / split / name / f"{k}.png", (48, 48), rgb=False)
    dm = FER2013DataModule(str(tmp_path), num_workers=0)
    _check_split(dm, 7 * PER_CLASS)
    with pytest.raises(DatasetError, match="fer2013.csv"):
        FER2013DataModule(str(tmp_path / "train" / "angry"), num_workers=0).setup()
    bad = tmp_path / "bad"
    bad.mkdir()
    _fer_csv(bad / "fer2013.csv", [(0, [1, 2, 3])])
    with pytest.raises(DatasetError, match="2304") as error:
        FER2013DataModule(str(bad), num_workers=0).setup()
    assert "fer2013.csv" in str(error.value) and "fer_gradcam_demo.yaml" in str(error.value)


def test_rafdb_layout_and_remap(tmp_path):
    root = tmp_path / "basic"
    lines, codes = [], {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}
    for code in codes:
        for k in range(PER_CLASS):
            name = f"{'train' if k % 2 else 'test'}_{code}{k:04d}"
            _png(root / "Image" / "aligned" / f"{name}_aligned.jpg", (100, 100), value=code * 30)
            lines.append(f"{name}.jpg {code}")
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    dm = RAFDBDataModule(str(tmp_path), num_workers=0)
    _check_split(dm, 7 * PER_CLASS)
    for item in dm.items:
        code = int(item.name.split("_")[1][0])
        assert EMOTIONS[item.label] == codes[code]
    assert dm.test_set[0]["image"].shape == (3, 48, 48)
    (root / "Image" / "aligned" / "train_10001_aligned.jpg").unlink()
    dm = RAFDBDataModule(str(tmp_path), num_workers=0)
    with pytest.raises(DatasetError, match="train_10001_aligned.jpg"):
        dm.setup()


AFFECT_CODES = {0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry"}


def test_affectnet_official_layout_crops_the_face_box(tmp_path):
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
              "arousal")
    rows = []
    for code in [*AFFECT_CODES, 7, 8, 10]:
        for k in range(PER_CLASS):
            image = np.zeros((120, 120, 3), np.uint8)
            image[20:80, 30:90] = 200  # the face box
            path = tmp_path / "Manually_Annotated_Images" / str(code) / f"{k}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            rows.append(f"{code}/{k}.jpg,30,20,60,60,\"1;2\",{code},0.1,0.2")
    half = len(rows) // 2
    (tmp_path / "training.csv").write_text("\n".join([header, *rows[:half]]) + "\n")
    (tmp_path / "validation.csv").write_text("\n".join([header, *rows[half:]]) + "\n")
    dm = AffectNetDataModule(str(tmp_path), num_workers=0)
    _check_split(dm, 7 * PER_CLASS)  # contempt, none, non-face dropped
    assert {EMOTIONS[i.label] for i in dm.items if i.name.startswith("1_")} == {"happy"}
    image = dm.test_set[0]["image"]
    assert float(image.min()) > 0.7  # only the face box (the black border is cropped away)


def test_affectnet_npy_and_folder_layouts(tmp_path):
    npy = tmp_path / "npy"
    for split in ("train_set", "val_set"):
        for code in [*AFFECT_CODES, 7]:
            for k in range(PER_CLASS // 2):
                _png(npy / split / "images" / f"{code}{k}.jpg", (30, 30))
                (npy / split / "annotations").mkdir(parents=True, exist_ok=True)
                np.save(npy / split / "annotations" / f"{code}{k}_exp.npy", np.array(str(code)))
    dm = AffectNetDataModule(str(npy), num_workers=0)
    _check_split(dm, 7 * PER_CLASS)
    assert all(EMOTIONS[i.label] == AFFECT_CODES[int(i.name.split("_")[-1][0])] for i in dm.items)
    folders = tmp_path / "folders"
    names = {"anger": "angry", "disgust": "disgust", "fear": "fear", "happy": "happy", "sad": "sad",
             "surprise": "surprise", "neutral": "neutral", "contempt": None}
    for split in ("train", "val"):
        for folder in names:
            for k in range(PER_CLASS // 2):
                _png(folders / split / folder / f"{k}.png", (30, 30))
    dm = AffectNetDataModule(str(folders), num_workers=0)
    _check_split(dm, 7 * PER_CLASS)
    (npy / "val_set" / "annotations" / "00_exp.npy").unlink()
    with pytest.raises(DatasetError, match="00_exp.npy"):
        AffectNetDataModule(str(npy), num_workers=0).setup()
