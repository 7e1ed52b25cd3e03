"""Guided-SET-DCL data: the episodic sampler (adjacent support/query with colon, colon-free negatives with masks), the
whole-scan and slice datasets, the synthetic CT colon stand-in, and the colon CT readers on tiny fixtures in the
TotalSegmentator, NIfTI-pair and DICOM layouts (orientation, splits, cache, errors)."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.colon_ct import ColonCTDataModule, to_axial_stack
from datamodules.episodic import (EpisodeDataset, EpisodeVolume, EpisodeVolumeDataset, RawVolume, SliceDataset,
                                  preprocess_volume, superpixel_mask, window_hu)
from datamodules.standins.synthetic_ct_colon import SyntheticCTColonDataModule, synthetic_ct_colon
from lightning_modules import batch as keys


def toy_volume(name="v", depth=10, size=16):
    image = np.random.default_rng(0).random((depth, size, size)).astype(np.float32)
    mask = np.zeros((depth, size, size), np.uint8)
    mask[1:4, 4:8, 4:8] = 1  # colon in slices 1-3
    mask[6:8, 8:12, 8:12] = 1  # and 6-7 (slice 5 empty: no episode spans it with neighbour 1)
    unrelated = np.zeros_like(mask)
    unrelated[:, :5, :5] = 1
    return EpisodeVolume(name, image, mask, mask.copy(), np.where(mask.any((1, 2))[:, None, None], 0, unrelated), 2)


def test_episodes_pair_adjacent_colon_slices_with_colon_free_negatives():
    torch.manual_seed(0)
    volume = toy_volume()
    dataset = EpisodeDataset([volume], episodes_per_epoch=50, neighbour=1, n_unrelated=3)
    assert len(dataset) == 50
    for i in range(50):
        item = dataset[i]
        support, query = (int(s) for s in item[keys.NAME].split("_s")[1].split("_q"))
        assert abs(support - query) == 1 and volume.mask[support].any() and volume.mask[query].any()
        assert torch.equal(item[keys.IMAGE][0], torch.from_numpy(volume.image[query]))
        assert torch.equal(item[keys.SUPPORT_MASK][0], torch.from_numpy(volume.mask[support]).float())
        assert item[keys.NEGATIVE_IMAGE].shape == (3, 1, 16, 16) and item[keys.NEGATIVE_MASK].shape == (3, 1, 16, 16)
        for negative in item[keys.NEGATIVE_IMAGE][:, 0]:
            z = [k for k in range(10) if np.allclose(volume.image[k], negative.numpy())][0]
            assert not volume.mask[z].any()
        assert item[keys.NEGATIVE_MASK].sum() == 3 * 25  # the unrelated structure's mask
    wide = EpisodeDataset([volume], 200, neighbour=5)
    gaps = {abs(int(a) - int(b)) for a, b in (wide[i][keys.NAME].split("_s")[1].split("_q") for i in range(200))}
    assert max(gaps) > 1 and max(gaps) <= 5
    random_pairs = EpisodeDataset([volume], 10, support_mode="random")
    assert {len(q) for _, _, q in random_pairs.pairs} == {4}  # every other colon slice of the scan


def test_episodes_are_reproducible_under_the_torch_seed():
    dataset = EpisodeDataset([toy_volume()], 5)
    torch.manual_seed(3)
    first = [dataset[i][keys.NAME] for i in range(5)]
    torch.manual_seed(3)
    assert [dataset[i][keys.NAME] for i in range(5)] == first


def test_geometric_augmentation_warps_support_query_and_prior_alike():
    depth, size = 6, 64
    mask = np.zeros((depth, size, size), np.uint8)
    mask[:4, 20:40, 16:44] = 1
    volume = EpisodeVolume("v", mask.astype(np.float32), mask, mask.copy(), np.zeros_like(mask), 0)
    dataset = EpisodeDataset([volume], 12, neighbour=1, n_unrelated=1, geometric=True)
    torch.manual_seed(0)
    moved = 0

    def iou(a, b):
        return float((a * b).sum() / ((a + b) > 0).sum())

    for i in range(12):
        item = dataset[i]
        # every slice's image is its mask: image (bilinear) and mask (nearest) warped alike agree up to the edges
        assert iou((item[keys.IMAGE][0] > 0.5).float(), item[keys.MASK][0]) > 0.9
        assert iou((item[keys.SUPPORT_IMAGE][0] > 0.5).float(), item[keys.SUPPORT_MASK][0]) > 0.9
        assert torch.equal(item[keys.PRIOR], item[keys.MASK])  # the prior is warped with its query
        assert torch.equal(item[keys.SUPPORT_MASK], item[keys.MASK])  # identical slices: one shared warp
        assert set(item[keys.MASK].unique().tolist()) <= {0.0, 1.0}
        moved += iou(item[keys.MASK][0], torch.from_numpy(mask[0]).float()) < 0.95
    assert moved >= 9  # the warp moves the masks


def test_scan_and_slice_datasets():
    volume = toy_volume()
    item = EpisodeVolumeDataset([volume])[0]
    assert item[keys.IMAGE].shape == (1, 16, 16, 10) and item[keys.START_SLICE] == 2
    assert torch.equal(item[keys.MASK][0, ..., 3], torch.from_numpy(volume.mask[3]).float())
    slices = SliceDataset([volume])
    assert len(slices) == 10 and len(SliceDataset([volume], foreground_only=True)) == 5


def test_superpixel_and_window():
    image = np.zeros((32, 32), np.float32)
    image[8:24, 8:24] = 0.6
    mask = superpixel_mask(image, rank=2)
    assert mask.dtype == np.uint8 and 0 < mask.sum() < mask.size
    assert window_hu(np.array([-2000.0, -1000, 0, 1000, 3000])).tolist() == [0, 0, 0.5, 1, 1]


def test_stand_in_volumes_and_datamodule():
    hu, colon, organs = synthetic_ct_colon(np.random.default_rng(1))
    assert hu.shape == colon.shape == organs.shape == (24, 64, 64)
    per_slice = colon.reshape(24, -1).any(1)
    assert per_slice[0] and not per_slice[-3:].any()  # rectum in the lowest slice, colon-free top slices
    assert organs[-3:].any() and hu[colon > 0].mean() < -500 and hu.max() > 300
    module = SyntheticCTColonDataModule(num_train=1, num_val=1, num_test=1, episodes_per_epoch=6, batch_size=2)
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch[keys.SUPPORT_IMAGE].shape == (2, 1, 64, 64) and batch[keys.NEGATIVE_IMAGE].shape == (2, 3, 1, 64, 64)
    assert batch[keys.NEGATIVE_MASK].sum() > 0  # organ masks on the colon-free slices
    scan = next(iter(module.val_dataloader()))
    assert scan[keys.IMAGE].shape == (1, 1, 64, 64, 24) and scan[keys.PRIOR].sum() > 0
    slices = SyntheticCTColonDataModule(num_train=1, num_val=1, num_test=1, mode="slices", batch_size=4)
    slices.volumes = module.volumes  # the same scans, served as 2D slices
    slices.setup("fit")
    assert next(iter(slices.train_dataloader()))[keys.IMAGE].shape == (4, 1, 64, 64)


# -- the readers --------------------------------------------------------------------------------------------------
def phantom(depth=12, size=24):
    """HU (x, y, z) in RAS: fat body, an air tube at low z and the colon label; the first x columns are marked."""
    hu = np.full((size, size, depth), -100.0, np.float32)
    hu[:2] = -1000  # air at RAS x = 0, 1 (the patient's left side): the first two columns after reading
    colon = np.zeros(hu.shape, np.uint8)
    colon[10:14, 8:12, : depth // 2] = 1
    hu[colon > 0] = -1000
    return hu, colon


def write_nifti(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))


def totalseg_tree(root, n=5, meta=True):
    for i in range(n):
        hu, colon = phantom()
        write_nifti(root / f"s{i:04d}" / "ct.nii.gz", hu)
        write_nifti(root / f"s{i:04d}" / "segmentations" / "colon.nii.gz", colon)
        liver = np.zeros_like(colon)
        liver[2:6, 2:6, :] = 1
        write_nifti(root / f"s{i:04d}" / "segmentations" / "liver.nii.gz", liver)
    if meta:
        splits = ["train", "train", "train", "val", "test"]
        (root / "meta.csv").write_text("image_id;age;split\n" + "".join(f"s{i:04d};50;{splits[i]}\n" for i in range(n)))


def test_totalsegmentator_layout_orientation_split_and_cache(tmp_path):
    totalseg_tree(tmp_path)
    module = ColonCTDataModule(str(tmp_path), image_size=16, organ_names=["liver"], mrf_erosion=0, mrf_dilation=0,
                               episodes_per_epoch=4)
    module.prepare_data()
    assert module.splits() == {"train": ["s0000", "s0001", "s0002"], "val": ["s0003"], "test": ["s0004"]}
    raw = module.read_volume("s0004")
    assert raw.hu.shape == (12, 24, 24)  # (D, H, W): axis 0 = RAS z, inferior first
    assert raw.labels[:6].any() and not raw.labels[6:].any()
    assert raw.organs is not None and raw.organs[7:].any()
    assert (raw.hu[:, :, :2] == -1000).all() and (raw.hu[:, :, 2:4] == -100).all()  # columns follow RAS x
    assert raw.labels[0, 12:16, 10:14].all() and raw.labels[0].sum() == 16  # rows run against RAS y: anterior up
    cached = list((tmp_path / ".cache_setdcl").rglob("*.npz"))
    assert len(cached) == 5  # prepare_data preprocessed every scan once
    module.read_volume = None  # from here on the scans come from the cache, never read again
    module.setup("fit")
    episode = module.train_set[0]
    assert episode[keys.IMAGE].shape == (1, 16, 16)
    again = ColonCTDataModule(str(tmp_path), image_size=16, organ_names=["liver"], mrf_erosion=0, mrf_dilation=0)
    again.setup("validate")
    assert np.array_equal(again.val_set.volumes[0].prior, module.val_set.volumes[0].prior)


def test_pairs_layout_split_file_and_errors(tmp_path):
    for case in ("p1_prone", "p1_supine", "p2_prone", "p3_prone", "p4_prone"):
        hu, colon = phantom()
        write_nifti(tmp_path / "images" / f"{case}.nii.gz", hu)
        write_nifti(tmp_path / "labels" / f"{case}.nii.gz", colon * 14)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["p1_prone", "p1_supine", "p2_prone"], "val": ["p3_prone"],
                                 "test": ["p4_prone"]}))
    module = ColonCTDataModule(str(tmp_path), layout="pairs", colon_label=14, split_file=str(split), image_size=16)
    assert module.splits()["test"] == ["p4_prone"]
    assert module.read_volume("p4_prone").labels.sum() == 4 * 4 * 6
    grouped = ColonCTDataModule(str(tmp_path), layout="pairs", patient_pattern=r"(p\d+)_", test_fraction=0.25,
                                val_fraction=0.25)
    splits = grouped.splits()
    assert sum(c.startswith("p1_") for c in splits["train"]) in (0, 2)  # prone and supine stay together
    (tmp_path / "labels" / "p4_prone.nii.gz").unlink()
    with pytest.raises(DatasetError, match="missing file") as error:
        module.prepare_data()
    assert "labels/p4_prone.nii.gz" in str(error.value) and "setdcl_demo.yaml" in str(error.value)
    with pytest.raises(DatasetError, match="does not exist"):
        ColonCTDataModule(str(tmp_path / "nowhere")).prepare_data()


def test_dicom_layout_reads_hu_in_slice_order(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    hu, colon = phantom(depth=4, size=8)
    folder = tmp_path / "case1" / "dicom"
    folder.mkdir(parents=True)
    for k, z in enumerate([3, 1, 0, 2]):  # files out of order
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        # DICOM rows: anterior first, columns: patient right first (LPS) = RAS y and x reversed
        stored = np.ascontiguousarray(hu[::-1, ::-1, z].T) + 1024
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.ImagePositionPatient = [0, 0, float(z) * 2]
        ds.PixelData = stored.astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"{k}.dcm"), enforce_file_format=True)
    write_nifti(tmp_path / "case1" / "colon.nii.gz", colon)
    module = ColonCTDataModule(str(tmp_path), layout="dicom")
    image = module.read_dicom_series(folder)
    nifti = ColonCTDataModule(str(tmp_path), layout="pairs").read_nifti(tmp_path / "case1" / "colon.nii.gz")
    assert image.shape == nifti.shape == (4, 8, 8)
    assert np.allclose(image, to_axial_stack(hu)) and np.allclose(image[nifti > 0], -1000)  # the NIfTI mask's grid


def test_preprocess_runs_the_initial_label_on_the_native_grid():
    hu, colon, organs = synthetic_ct_colon(np.random.default_rng(2), stool_probability=0.0)
    calls = []

    def initial_label(volume):
        calls.append(volume.shape)
        return volume < -500, 3

    volume = preprocess_volume(RawVolume("x", hu, colon, organs), 32, (-1000, 1000), initial_label)
    assert calls == [(24, 64, 64)] and volume.image.shape == (24, 32, 32) and volume.start_slice == 3
    assert volume.image.min() >= 0 and volume.image.max() <= 1 and set(np.unique(volume.prior)) <= {0, 1}
