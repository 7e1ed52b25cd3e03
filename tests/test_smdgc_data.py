"""SMDGC data: the MNI-HISUB25 (KY) reader on a fixture tree (subject patterns, merged hemisphere label files, label
map, hemisphere crops with the right one mirrored, z-scoring, the .npy cache, grouped folds, errors), training
patches of the volume base, and the synthetic hippocampus stand-in."""
import os

import nibabel as nib
import numpy as np
import pytest

from datamodules.base import DatasetError
from datamodules.mni_hisub25 import MNIHISUB25DataModule, crop_box, pattern_regex
from datamodules.standins.synthetic_hippocampus import SyntheticHippocampusDataModule, hippocampus_phantom

SHAPE = (20, 12, 10)
CROP = (8, 8, 6)


def write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([0.6, 0.6, 0.6, 1.0])), str(path))


def left_blob(shape=SHAPE):
    """Labels (stored values 11, 12, 13) of a small left hippocampus."""
    labels = np.zeros(shape, np.int16)
    labels[3:7, 4:8, 3:6] = 11
    labels[4:6, 5:7, 4:5] = 12
    labels[3:7, 4:8, 6:7] = 13
    return labels


def make_tree(root, subjects=5, t2=True):
    rng = np.random.default_rng(0)
    for k in range(subjects):
        name = f"sub{k:02d}"
        left = left_blob()
        right = left[::-1].copy()  # the mirror image in the right hemisphere
        t1 = 100 + 10 * (left + right > 0) + rng.normal(size=SHAPE)
        write(root / name / f"{name}_t1w.nii.gz", t1.astype(np.float32))
        if t2:
            write(root / name / f"{name}_t2w.nii.gz", (50 - 5 * (left + right > 0)).astype(np.float32))
        write(root / name / f"{name}_labels_left.nii.gz", left)
        write(root / name / f"{name}_labels_right.nii.gz", right)
    return root


def module(root, **kwargs):
    kwargs.setdefault("label_map", {11: 1, 12: 2, 13: 3})
    kwargs.setdefault("crop_size", CROP)
    return MNIHISUB25DataModule(str(root), num_workers=0, val_groups=1, **kwargs)


def test_ky_fixture_samples_cache_and_folds(tmp_path):
    root = make_tree(tmp_path / "mri_dataset")
    dm = module(root)
    dm.prepare_data()
    dm.setup()
    names = dm.collection.names
    assert len(names) == 10 and names[:2] == ["sub00_L", "sub00_R"]  # two hemispheres per subject
    image, labels = dm.collection.store[0]
    assert image.shape == (2,) + CROP and labels.shape == CROP
    assert np.allclose(image.mean(axis=(1, 2, 3)), 0, atol=1e-5) and np.allclose(image.std(axis=(1, 2, 3)), 1, atol=1e-4)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    right_image, right_labels = dm.collection.store[1]
    assert np.array_equal(labels, right_labels)  # the right hippocampus, mirrored, looks like the left one
    # the cache: one folder per preprocessing setting, reused on the next run
    cached = sorted(p for p in (root / ".cache_npy").rglob("*.npy"))
    assert len(cached) == 20
    stamps = [os.stat(p).st_mtime_ns for p in cached]
    again = module(root)
    again.setup()
    assert [os.stat(p).st_mtime_ns for p in cached] == stamps
    other = module(root, crop_size=(6, 6, 6))
    other.setup()
    assert len(list((root / ".cache_npy").iterdir())) == 2 and other.collection.store[0][0].shape == (2, 6, 6, 6)
    # grouped 5-fold CV: both hemispheres of a subject in one fold; every sample tested once
    tested = []
    for fold in range(5):
        split = module(root, fold=fold)
        split.setup()
        groups = {part: {split.collection.groups[i] for i in idx} for part, idx in split.split_indices.items()}
        assert not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
        assert not (groups["train"] & groups["val"]) and len(groups["val"]) == 1
        tested += [split.collection.names[i] for i in split.split_indices["test"]]
        item = split.test_set[0]
        assert item["image"].shape == (2,) + CROP and item["mask"].shape == (1,) + CROP
    assert sorted(tested) == sorted(names)


def test_ky_patches_t1_only_and_one_hemisphere(tmp_path):
    root = make_tree(tmp_path / "mri_dataset", subjects=5, t2=False)
    dm = module(root, t2_pattern=None, hemispheres="left", patch_size=(4, 4, 4), samples_per_volume=3,
                foreground_probability=1.0)
    dm.setup()
    assert all(name.endswith("_L") for name in dm.collection.names) and len(dm.collection.names) == 5
    assert len(dm.train_set) == 3 * len(dm.split_indices["train"])
    for k in range(len(dm.train_set)):
        item = dm.train_set[k]
        assert item["image"].shape == (1, 4, 4, 4) and item["mask"].sum() > 0  # centred on the hippocampus


def expect_error(dm, *fragments):
    with pytest.raises(DatasetError) as info:
        dm.prepare_data()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert "experiments/smdgc_demo.yaml" in message


def test_ky_errors_name_the_file_layout_and_standin(tmp_path):
    expect_error(module(tmp_path / "missing"), "data_dir does not exist", "t1w")
    root = make_tree(tmp_path / "mri_dataset", subjects=2)
    (root / "sub01" / "sub01_t2w.nii.gz").unlink()
    expect_error(module(root), "no T2w files for subject sub01", "sub01_t2w.nii.gz")
    root = make_tree(tmp_path / "unmapped", subjects=2)
    expect_error(module(root, label_map={11: 1, 12: 2}), "label values [13]", "sub00_labels")
    root = make_tree(tmp_path / "corrupt", subjects=2)
    (root / "sub01" / "sub01_t1w.nii.gz").write_bytes(b"not a nifti")
    expect_error(module(root), "corrupt or unreadable volume", "sub01_t1w.nii.gz")
    root = make_tree(tmp_path / "empty", subjects=1)
    for path in (root / "sub00").glob("*labels*"):
        write(path, np.zeros(SHAPE, np.int16))
    expect_error(module(root), "no labelled voxels")
    (tmp_path / "nothing").mkdir()
    expect_error(module(tmp_path / "nothing"), "no subjects found")


def test_pattern_regex_and_crop_box():
    regex = pattern_regex("{subject}/{subject}_t1*.nii.gz")
    assert regex.fullmatch("s01/s01_t1w.nii.gz").group("subject") == "s01"
    assert regex.fullmatch("s01/s02_t1w.nii.gz") is None
    array = np.arange(5 * 5).reshape(1, 5, 5).astype(float)
    box = crop_box(array, (0, 4), (3, 3), fill=-1)
    assert box.shape == (1, 3, 3) and box[0, 0, 0] == -1 and box[0, 1, 1] == array[0, 0, 4]


def test_synthetic_hippocampus_standin():
    image, labels = hippocampus_phantom(np.random.default_rng(0))
    assert image.shape == (2, 32, 32, 32) and image.dtype == np.float32
    counts = np.bincount(labels.ravel(), minlength=4)
    assert counts.min() > 50 and counts[0] > 0.9 * labels.size
    # the stored class means order as the spec card's (T1: CA4/DG > CA1-3 > SUB > background)
    means = [image[0][labels == k].mean() for k in range(4)]
    assert means[2] > means[1] > means[3] > means[0]
    dm = SyntheticHippocampusDataModule(num_train=4, num_val=2, num_test=2, patch_size=(16, 16, 16))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 2, 2)
    assert dm.train_set[0]["image"].shape == (2, 16, 16, 16) and dm.test_set[0]["mask"].shape == (1, 32, 32, 32)
    again = SyntheticHippocampusDataModule(num_train=4, num_val=2, num_test=2)
    again.setup()
    assert np.array_equal(again.collection.store[5][1], dm.collection.store[5][1])  # seeded
    folds = SyntheticHippocampusDataModule(num_train=6, num_val=2, num_test=2, split="kfold", folds=5, val_groups=2)
    folds.setup()
    assert len(folds.split_indices["test"]) == 2 and len(folds.split_indices["val"]) == 2


def test_ky_paper_config_trains_a_step_and_tests_on_the_fixture_tree(tmp_path):
    import json

    import run

    root = make_tree(tmp_path / "mri_dataset")
    run.main(["--config", "experiments/smdgc/ky.yaml", "--config", "experiments/smdgc/ky/dgc_deep_swap.yaml",
              "--data.data_dir", str(root), "--data.label_map", "{11: 1, 12: 2, 13: 3}", "--data.crop_size", "[8, 8, 8]",
              "--data.patch_size", "[8, 8, 8]", "--data.val_groups", "1", "--data.num_workers", "0",
              "--model.init_args.roi_size", "[8, 8, 8]", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
              "--runs_dir", str(tmp_path / "runs"), "--run_id", "ky"])
    results = json.loads((tmp_path / "runs" / "smdgc_ky_dgc_deep_swap" / "ky" / "results.json").read_text())
    assert results["paper"]["test/dgc_deep_swap/seconds"] == 8
    assert 0 <= results["test/dgc_deep_swap/dice"] <= 1 and results["test/num_images"] == 2  # one subject's hemispheres
