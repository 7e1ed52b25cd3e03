"""Guided-SET-DCL's SABS rows: SSL-ALPNet's superpixel pseudo-labels and self-supervised episodes, SABS organs as
binary episode classes with superpixel initial labels, and the SABS (BTCV) reader on a tiny fixture tree."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.episodic import (EpisodeVolume, SuperpixelEpisodeDataset, body_mask, class_volumes,
                                  superpixel_labels, superpixel_prior, superpixel_volume)
from datamodules.sabs_btcv import SABSColonDataModule
from datamodules.standins.synthetic_ct_colon import SyntheticCTColonDataModule
from lightning_modules import batch as keys


def disk_slice(size=32):
    """A bright body disk with a dark square inside, air around: three obvious regions."""
    yy, xx = np.mgrid[:size, :size]
    image = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2, 0.6, 0.0)
    image[12:18, 12:18] = 0.2
    return image.astype(np.float32)


def test_body_mask_and_superpixels_stay_inside_the_body():
    image = disk_slice()
    body = body_mask(image, 0.05)
    assert body[16, 16] and not body[0, 0] and body[14, 14]  # holes (the dark square) filled
    labels = superpixel_labels(image, min_size=4, sigma=0.5)
    assert labels.dtype == np.int32 and (labels[~body] == 0).all() and (labels[body] > 0).all()
    assert set(np.unique(labels)) == set(range(labels.max() + 1))  # renumbered 0..K
    assert labels[14, 14] != labels[8, 16]  # the dark square is its own superpixel
    volume = superpixel_volume(np.stack([image, image]), min_size=400)
    assert volume.shape == (2, 32, 32) and np.array_equal(volume[0], volume[1])


def test_superpixel_prior_keeps_superpixels_mostly_inside_the_mask():
    superpixels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 0, 0]])
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]])
    # superpixel 1: 3/4 inside (kept), 2: 1/4 (dropped), 3: 0, outside the body (0) never
    assert np.array_equal(superpixel_prior(superpixels, mask), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])


def superpixel_scan(depth=6, size=32):
    image = np.stack([disk_slice(size) for _ in range(depth)])
    image[:, 4:8, 12:20] = 0.9  # a second structure
    volume = EpisodeVolume("scan", image, np.zeros(image.shape, np.uint8), np.zeros(image.shape, np.uint8),
                           np.zeros(image.shape, np.uint8), 0)
    volume.superpixels = superpixel_volume(image, min_size=20 * 64, sigma=0.5)  # 20 px at 32 px
    return volume


def test_superpixel_episodes_pair_two_augmentations_of_one_pseudo_label():
    torch.manual_seed(0)
    volume = superpixel_scan()
    dataset = SuperpixelEpisodeDataset([volume], episodes_per_epoch=20, n_unrelated=2, gamma_range=(0.5, 1.5))
    for i in range(20):
        item = dataset[i]
        support, query = (int(s) for s in item[keys.NAME].split("_s")[1].split("_superpixel")[0].split("_q"))
        assert support == query  # SSL-ALPNet: the same slice, augmented twice
        assert item[keys.SUPPORT_MASK].sum() > 0 and item[keys.MASK].sum() > 0
        assert torch.equal(item[keys.PRIOR], item[keys.MASK])  # the pseudo-label is the guided model's prior
        assert not torch.equal(item[keys.SUPPORT_IMAGE], item[keys.IMAGE])  # two independent warps
        assert item[keys.NEGATIVE_IMAGE].shape == (2, 1, 32, 32) and item[keys.NEGATIVE_MASK].sum() > 0
    # one pseudo-label per episode: the support mask is one superpixel (before the warp: compare sizes loosely)
    sizes = {int(dataset[i][keys.SUPPORT_MASK].sum()) for i in range(10)}
    assert len(sizes) > 1  # different superpixels / warps across episodes
    torch.manual_seed(5)
    first = dataset[0][keys.NAME], dataset[0][keys.SUPPORT_MASK]
    torch.manual_seed(5)
    again = dataset[0][keys.NAME], dataset[0][keys.SUPPORT_MASK]
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_superpixel_neighbour_queries_track_the_overlapping_superpixel():
    torch.manual_seed(0)
    volume = superpixel_scan()
    dataset = SuperpixelEpisodeDataset([volume], 30, neighbour=2, n_unrelated=0)
    gaps = []
    for i in range(30):
        name = dataset[i][keys.NAME]
        support, query = (int(s) for s in name.split("_s")[1].split("_superpixel")[0].split("_q"))
        gaps.append(abs(support - query))
    assert max(gaps) <= 2 and max(gaps) >= 1  # identical slices: the overlap always passes
    segments = volume.superpixels[1]
    chosen = (volume.superpixels[0] == volume.superpixels[0][5, 16]).astype(np.uint8)
    rng = np.random.default_rng(0)
    query, label = dataset.query_pseudo_label(volume, 0, chosen, rng)
    assert query in (1, 2) and np.array_equal(label, (volume.superpixels[query] == segments[5, 16]).astype(np.uint8))


def test_class_volumes_split_organs_into_binary_episode_scans():
    volume = superpixel_scan()
    labels = np.zeros(volume.image.shape, np.uint8)
    labels[0:4, 12:18, 12:18] = 6  # "liver" in slices 0-3 (the dark square)
    labels[2:6, 4:8, 12:20] = 1  # "spleen" in slices 2-5 (the bright bar)
    labels[5, 0, 0] = 13  # one slice only: no episode, dropped
    volume.mask = labels
    organs = class_volumes(volume, range(1, 14))
    assert [o.name for o in organs] == ["scan_c1", "scan_c6"]
    liver = organs[1]
    assert liver.image is volume.image and liver.mask.sum() == 4 * 36
    assert liver.prior[0, 14, 14] == 1 and liver.prior[4:].sum() == 0  # its superpixel approximation
    assert liver.unrelated[4:5].sum() > 0 and liver.unrelated[:4].sum() == 0  # spleen on the liver-free slices
    assert liver.start_slice == 0 and organs[0].start_slice == 2


def write_nifti(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 3.0, 1.0])), str(path))


def sabs_and_colon_tree(root, cases=("0001", "0002", "0003")):
    """BTCV's RawData/Training/{img,label} with two organs, and a NIfTI-pair colon cohort of 5 scans."""
    for i, case in enumerate(cases):
        hu = np.full((24, 24, 8), -100.0, np.float32)
        hu[:2] = -1000
        labels = np.zeros(hu.shape, np.int16)
        labels[4:10, 4:10, 2:7] = 6  # liver
        labels[14:18, 14:18, 1:4] = 1  # spleen
        hu[labels == 6] = 60
        write_nifti(root / "sabs" / "RawData" / "Training" / "img" / f"img{case}.nii.gz", hu)
        write_nifti(root / "sabs" / "RawData" / "Training" / "label" / f"label{case}.nii.gz", labels)
    for case in ("c1", "c2", "c3", "c4", "c5"):
        hu = np.full((24, 24, 8), -100.0, np.float32)
        hu[:2] = -1000
        colon = np.zeros(hu.shape, np.uint8)
        colon[10:14, 8:12, :5] = 1
        hu[colon > 0] = -1000
        write_nifti(root / "colon" / "images" / f"{case}.nii.gz", hu)
        write_nifti(root / "colon" / "labels" / f"{case}.nii.gz", colon)
    split = root / "colon" / "split.json"
    split.write_text(json.dumps({"train": ["c1", "c2", "c3"], "val": ["c4"], "test": ["c5"]}))
    return root / "sabs", root / "colon", split


def sabs_module(sabs, colon, split, **kwargs):
    return SABSColonDataModule(sabs_dir=str(sabs), data_dir=str(colon), layout="pairs", split_file=str(split),
                               image_size=16, mrf_erosion=0, mrf_dilation=0, episodes_per_epoch=4,
                               superpixel_min_size=400, n_unrelated=1, **kwargs)


def test_sabs_layout_superpixel_training_and_colon_test(tmp_path):
    sabs, colon, split = sabs_and_colon_tree(tmp_path)
    module = sabs_module(sabs, colon, split, train_supervision="superpixel")
    assert module.sabs_cases() == ["0001", "0002", "0003"]
    module.prepare_data()
    assert len(list((colon / ".cache_setdcl" / "sabs").rglob("*.npz"))) == 3
    volume = module.sabs_volume("0001")
    assert volume.image.shape == (8, 16, 16) and set(np.unique(volume.mask)) == {0, 1, 6}
    assert volume.mask[:, 2:7].any() and volume.superpixels.max() > 0  # (D, H, W): axis 0 = RAS z
    module.setup("fit")
    assert [v.name for v in module.train_set.volumes] == ["sabs0001", "sabs0002", "sabs0003"]  # no colon scan
    assert isinstance(module.train_set, SuperpixelEpisodeDataset)
    assert module.train_set[0][keys.SUPPORT_IMAGE].shape == (1, 16, 16)
    assert [v.name for v in module.val_set.volumes] == ["c4"]  # validated and tested on colon scans
    module.setup("test")
    assert module.test_set[0][keys.IMAGE].shape == (1, 16, 16, 8) and module.test_set[0][keys.MASK].sum() > 0


def test_sabs_plus_colon_labelled_training_and_errors(tmp_path):
    sabs, colon, split = sabs_and_colon_tree(tmp_path)
    module = sabs_module(sabs, colon, split, train_supervision="labels", colon_train=True)
    module.setup("fit")
    names = [v.name for v in module.train_set.volumes]
    assert names == ["sabs0001_c1", "sabs0001_c6", "sabs0002_c1", "sabs0002_c6", "sabs0003_c1", "sabs0003_c6",
                     "c1", "c2", "c3"]  # 13 organ classes (two present) + the colon (D_tr2)
    item = module.train_set[0]
    assert item[keys.SUPPORT_MASK].sum() > 0 and item[keys.MASK].sum() > 0
    (sabs / "RawData" / "Training" / "label" / "label0002.nii.gz").unlink()
    with pytest.raises(DatasetError, match="missing file") as error:
        sabs_module(sabs, colon, split).prepare_data()
    assert "label0002.nii.gz" in str(error.value) and "setdcl_superpixel_demo.yaml" in str(error.value)
    assert "RawData/Training/img/img0001.nii.gz" in str(error.value)  # the expected layout
    with pytest.raises(DatasetError, match="no RawData/Training"):
        sabs_module(tmp_path / "nowhere", colon, split).sabs_cases()


def test_stand_in_trains_on_superpixels_without_reading_its_labels():
    module = SyntheticCTColonDataModule(num_train=1, num_val=1, num_test=1, episodes_per_epoch=4, batch_size=2,
                                        train_supervision="superpixel")
    module.setup("fit")
    assert isinstance(module.train_set, SuperpixelEpisodeDataset)
    module.train_set.volumes[0].mask[:] = 0  # the colon label is never read for training
    batch = next(iter(module.train_dataloader()))
    assert batch[keys.SUPPORT_MASK].shape == (2, 1, 64, 64) and batch[keys.MASK].sum() > 0
