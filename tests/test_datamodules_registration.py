"""OASIS-1 (neurite-oasis layout) and MNI152 stand-in DataModules for registration."""

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.base import BaseDataModule, DatasetError, EpochSeededRandomSampler
from datamodules.oasis import OASIS2DDataModule, OASIS3DDataModule, oasis_pairs, resolve_split_sizes
from datamodules.standins.mni152 import MNI152RegistrationDataModule
from tests.conftest import write_oasis_tree

STANDIN = "experiments/fnoreg_demo.yaml"
NUM_SUBJECTS = 10
SHAPE_2D = (160, 192)  # the real slice size: tiny anyway
SHAPE_3D = (8, 10, 12)  # small volumes; the module takes the expected shape as an argument
KEYS = {"fixed", "moving", "fixed_seg", "moving_seg"}


# ---------------------------------------------------------------- fixture in the neurite-oasis layout


@pytest.fixture(scope="module")
def oasis_root(tmp_path_factory) -> tuple[Path, list[str], dict]:
    root = tmp_path_factory.mktemp("neurite-oasis")
    names, arrays = write_oasis_tree(root, NUM_SUBJECTS, SHAPE_2D, SHAPE_3D)
    return root, names, arrays


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".cache_npy"))
    return dst


def _assert_names(error: DatasetError, *fragments: str) -> None:
    message = str(error)
    for fragment in (*fragments, STANDIN, "Expected layout", "subjects.txt"):
        assert fragment in message, f"{fragment!r} missing from:\n{message}"


# ---------------------------------------------------------------- pairing (pure functions)


def test_paper_pair_counts_2d():
    pairs = oasis_pairs(414, spatial_dims=2)
    assert {k: len(v) for k, v in pairs.items()} == {"train": 40200, "val": 22, "test": 400}
    assert len(set(pairs["train"])) == 40200 and all(m != f for m, f in pairs["train"])
    subjects = {k: {i for p in v for i in p} for k, v in pairs.items()}
    assert subjects["train"] == set(range(0, 201))
    assert subjects["val"] == set(range(201, 213))
    assert subjects["test"] == set(range(213, 414))
    # consecutive pairs, forward then backward (official ValidationOasis2d order)
    assert pairs["val"][:2] == [(201, 202), (202, 203)] and pairs["val"][11] == (212, 211)
    assert pairs["val"][-1] == (202, 201)


def test_paper_pair_counts_3d():
    pairs = oasis_pairs(414, spatial_dims=3)
    assert {k: len(v) for k, v in pairs.items()} == {"train": 766, "val": 9, "test": 19}
    assert {i for p in pairs["train"] for i in p} == set(range(0, 384))
    assert pairs["val"] == [(i, i + 1) for i in range(384, 393)]
    assert pairs["test"] == [(i, i + 1) for i in range(394, 413)]
    assert (1, 0) in pairs["train"] and (383, 382) in pairs["train"]


def test_split_sizes_scale_down_and_refuse_too_few():
    assert resolve_split_sizes(414, 2) == (201, 12, 201)
    assert resolve_split_sizes(500, 3) == (384, 10, 20)  # extra subjects unused, as in the code
    assert resolve_split_sizes(10, 2) == (3, 2, 5)
    assert resolve_split_sizes(10, 3) == (6, 2, 2)
    with pytest.raises(ValueError):
        resolve_split_sizes(5, 2)
    with pytest.raises(ValueError):
        resolve_split_sizes(10, 2, (6, 3, 3))


# ---------------------------------------------------------------- OASIS 2D


def test_oasis2d_batches_match_files(oasis_root):
    root, names, arrays = oasis_root
    dm = OASIS2DDataModule(str(root), batch_size=2, num_workers=0, split_sizes=(4, 3, 3))
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.spatial_dims, dm.num_labels) == (2, 25)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 4, 4)
    batch = next(iter(dm.val_dataloader()))
    assert set(batch) == KEYS
    for key in KEYS:
        assert batch[key].shape == (2, 1, *SHAPE_2D)
    assert batch["moving"].dtype == batch["fixed"].dtype == torch.float32
    assert batch["moving_seg"].dtype == batch["fixed_seg"].dtype == torch.int64
    moving, fixed = dm.val_set.pairs[0]
    assert (moving, fixed) == (4, 5)
    np.testing.assert_array_equal(batch["moving"][0, 0].numpy(), arrays[names[4]][0])
    np.testing.assert_array_equal(batch["fixed_seg"][0, 0].numpy(), arrays[names[5]][1])
    train_batch = next(iter(dm.train_dataloader()))
    assert train_batch["fixed"].shape == (2, 1, *SHAPE_2D)


def test_oasis2d_default_splits_on_small_index(oasis_root):
    root, _, _ = oasis_root
    dm = OASIS2DDataModule(str(root), num_workers=0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 2, 8)


# ---------------------------------------------------------------- OASIS 3D and its .npy cache


def test_oasis3d_cache_created_and_used(oasis_root, tmp_path, monkeypatch):
    root, names, arrays = oasis_root
    cache = tmp_path / "cache"
    kwargs = dict(batch_size=1, num_workers=0, split_sizes=(4, 3, 3), image_shape=SHAPE_3D, cache_dir=str(cache))
    dm = OASIS3DDataModule(str(root), **kwargs)
    dm.prepare_data()
    image_cache, seg_cache = dm.cache_paths(names[0])
    assert np.load(image_cache).dtype == np.float32 and np.load(seg_cache).dtype == np.uint8
    dm.setup("fit")
    assert (dm.spatial_dims, dm.num_labels) == (3, 36)
    # train: consecutive pairs both directions; val/test: forward only (code's 3D loaders)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 2, 2)
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == KEYS and batch["moving"].shape == (1, 1, *SHAPE_3D)
    assert batch["fixed_seg"].dtype == torch.int64 and batch["fixed"].dtype == torch.float32
    np.testing.assert_array_equal(batch["moving"][0, 0].numpy(), arrays[names[7]][2])
    np.testing.assert_array_equal(batch["fixed_seg"][0, 0].numpy(), arrays[names[8]][3])

    # A second module decodes nothing: the cache is used.
    def no_decoding(*args, **kwargs):
        raise AssertionError("nibabel.load called although the cache is fresh")

    monkeypatch.setattr(nib, "load", no_decoding)
    dm2 = OASIS3DDataModule(str(root), **kwargs)
    dm2.prepare_data()
    dm2.setup("test")
    assert torch.equal(dm2.test_set[0]["moving"], batch["moving"][0])
    # memory-mapped samples reach loader workers (persistent) intact
    dm2.num_workers = 2
    worker_batch = next(iter(dm2.test_dataloader()))
    assert torch.equal(worker_batch["fixed_seg"], batch["fixed_seg"])

    # A source newer than its cache is decoded again (here: the patched nibabel.load fails).
    source = root / names[7] / "aligned_norm.nii.gz"
    stat = source.stat()
    os.utime(source, (stat.st_atime, stat.st_mtime + 10))
    try:
        with pytest.raises(DatasetError, match="aligned_norm.nii.gz"):
            OASIS3DDataModule(str(root), **kwargs).prepare_data()
    finally:
        os.utime(source, (stat.st_atime, stat.st_mtime))


def test_oasis3d_default_cache_dir(oasis_root, tmp_path):
    root = _copy_tree(oasis_root[0], tmp_path / "data")
    dm = OASIS3DDataModule(str(root), num_workers=0, image_shape=SHAPE_3D)
    dm.prepare_data()
    assert len(list((root / ".cache_npy").glob("*/aligned_norm.npy"))) == NUM_SUBJECTS


# ---------------------------------------------------------------- errors


def test_error_missing_data_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        OASIS2DDataModule(str(missing)).prepare_data()
    _assert_names(info.value, str(missing), "slice_norm.nii.gz")


def test_error_missing_subjects_txt(oasis_root, tmp_path):
    root = _copy_tree(oasis_root[0], tmp_path / "data")
    (root / "subjects.txt").unlink()
    with pytest.raises(DatasetError) as info:
        OASIS3DDataModule(str(root), image_shape=SHAPE_3D).setup("fit")
    _assert_names(info.value, str(root / "subjects.txt"), "aligned_seg35.nii.gz")


def test_error_missing_file(oasis_root, tmp_path):
    root, names, _ = oasis_root
    root = _copy_tree(root, tmp_path / "data")
    target = root / names[3] / "slice_seg24.nii.gz"
    target.unlink()
    with pytest.raises(DatasetError) as info:
        OASIS2DDataModule(str(root), num_workers=0).prepare_data()
    _assert_names(info.value, str(target))


@pytest.mark.parametrize("module,damage", [("2d", "garbage"), ("3d", "garbage"), ("3d", "truncated")])
def test_error_corrupt_file(oasis_root, tmp_path, module, damage):
    root, names, _ = oasis_root
    root = _copy_tree(root, tmp_path / "data")
    filename = "slice_norm.nii.gz" if module == "2d" else "aligned_norm.nii.gz"
    target = root / names[2] / filename
    content = target.read_bytes()
    target.write_bytes(b"this is not a NIfTI file" * 10 if damage == "garbage" else content[: len(content) // 2])
    if module == "2d":
        dm = OASIS2DDataModule(str(root), num_workers=0)
    else:
        dm = OASIS3DDataModule(str(root), num_workers=0, image_shape=SHAPE_3D)
    with pytest.raises(DatasetError) as info:
        dm.prepare_data()
        dm.setup("fit")
    _assert_names(info.value, str(target), "corrupt")


def test_error_wrong_shape(oasis_root, tmp_path):
    root = oasis_root[0]
    with pytest.raises(DatasetError) as info:
        OASIS3DDataModule(str(root), num_workers=0, cache_dir=str(tmp_path / "c")).prepare_data()  # 160x192x224
    _assert_names(info.value, "aligned_norm.nii.gz", "(8, 10, 12)", "(160, 192, 224)")


def test_error_too_few_subjects(oasis_root, tmp_path):
    root = _copy_tree(oasis_root[0], tmp_path / "data")
    names = (root / "subjects.txt").read_text().split()
    (root / "subjects.txt").write_text("\n".join(names[:5]))
    with pytest.raises(DatasetError) as info:
        OASIS2DDataModule(str(root), num_workers=0).setup("fit")
    _assert_names(info.value, "too few subjects")


# ---------------------------------------------------------------- loaders under DDP


class _Tiny(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, index):
        return index


def test_eval_loader_counts_each_sample_once_under_ddp(monkeypatch):
    import torch.distributed as dist

    seen = []
    for rank in range(3):
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 3)
        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        dm = BaseDataModule(batch_size=4, num_workers=0)
        dm.test_set = _Tiny()
        seen += [int(i) for batch in dm.test_dataloader() for i in batch]
    assert sorted(seen) == list(range(10))


def test_epoch_seeded_sampler():
    data = range(100)
    a, b = EpochSeededRandomSampler(data, 20, seed=3), EpochSeededRandomSampler(data, 20, seed=3)
    first = list(a)
    assert first == list(b) and len(set(first)) == 20
    assert list(a) != first  # the next epoch draws other pairs
    a.set_epoch(0)
    assert list(a) == first


# ---------------------------------------------------------------- MNI152 stand-in


def _identity_dice(labels: np.ndarray, pairs) -> float:
    """Mean over pairs of the Dice over foreground labels present in both maps."""
    scores = []
    for moving, fixed in pairs:
        a, b = labels[moving], labels[fixed]
        per_label = [
            2 * np.logical_and(a == k, b == k).sum() / ((a == k).sum() + (b == k).sum())
            for k in range(1, 4)
            if (a == k).any() and (b == k).any()
        ]
        scores.append(np.mean(per_label))
    return float(np.mean(scores))


@pytest.fixture(scope="module")
def standin_2d():
    dm = MNI152RegistrationDataModule(batch_size=8)
    dm.setup("fit")
    return dm


def test_standin_2d_batches(standin_2d):
    dm = standin_2d
    assert (dm.spatial_dims, dm.num_labels) == (2, 4)
    assert (len(dm.val_set), len(dm.test_set)) == (8, 56)
    loader = dm.train_dataloader()
    assert len(loader) == 256 // 8
    batch = next(iter(loader))
    assert set(batch) == KEYS
    for key in KEYS:
        assert batch[key].shape == (8, 1, 80, 96)
    assert batch["moving"].dtype == torch.float32 and batch["moving_seg"].dtype == torch.int64
    images, labels = dm.subjects.images, dm.subjects.labels
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    train_subjects = {i for pair in dm.pairs["train"] for i in pair}
    eval_subjects = {i for pair in dm.pairs["test"] + dm.pairs["val"] for i in pair}
    assert train_subjects == set(range(32)) and eval_subjects == set(range(32, 40))


def test_standin_2d_deterministic_and_not_identical(standin_2d):
    again = MNI152RegistrationDataModule(batch_size=8)
    again.setup("fit")
    np.testing.assert_array_equal(again.subjects.images, standin_2d.subjects.images)
    np.testing.assert_array_equal(again.subjects.labels, standin_2d.subjects.labels)
    other = MNI152RegistrationDataModule(seed=1)
    other.setup("fit")
    assert not np.array_equal(other.subjects.labels, standin_2d.subjects.labels)
    dice = _identity_dice(standin_2d.subjects.labels, standin_2d.pairs["test"])
    assert 0.4 < dice < 0.9, dice  # a learned warp has room to beat the identity


def test_standin_3d_small():
    dm = MNI152RegistrationDataModule(spatial_dims=3, image_size=(24, 28, 24), num_subjects=12, batch_size=2)
    dm.setup("fit")
    assert dm.spatial_dims == 3
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == KEYS and batch["fixed"].shape == (2, 1, 24, 28, 24)
    assert set(np.unique(dm.subjects.labels)) == {0, 1, 2, 3}
    assert _identity_dice(dm.subjects.labels, dm.pairs["test"]) < 0.9
