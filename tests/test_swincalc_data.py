"""SwinCalc datasets: INbreast (DICOM + XML), CBIS-DDSM (DICOM + CSV + mask DICOMs), OMI-DB export (PNG + CSV) in
tiny fixture trees of the public layouts, and the synthetic stand-in."""
from __future__ import annotations

import plistlib

import cv2
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.cbis_ddsm import CBISDDSMDataModule
from datamodules.inbreast import INbreastDataModule
from datamodules.omidb import OMIDBDataModule
from datamodules.standins.synthetic_mammo import SyntheticMammoDataModule, synthetic_mammogram
from lightning_modules import batch as keys


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    from pydicom.dataset import FileMetaDataset, FileDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def mammogram(height=120, width=80, spots=()):
    """A bright breast on the left with bright spots at (row, col)."""
    image = np.zeros((height, width), dtype=np.uint16)
    image[10:height - 10, : width - 20] = 1000
    for r, c in spots:
        image[r - 2:r + 3, c - 2:c + 3] = 3000
    return image


# -- INbreast ----------------------------------------------------------------------------------------------------
def make_inbreast(root):
    (root / "AllDICOMs").mkdir(parents=True)
    (root / "AllXML").mkdir()
    rows = ["Patient ID;Patient age;Laterality;View;Acquisition date;File Name;ACR;Bi-Rads"]
    specs = [("101", "aaa", "4", [(40, 30)]), ("102", "aaa", "1", []), ("103", "bbb", "2", []),
             ("104", "ccc", "5", [(60, 20), (90, 40)])]
    for file_id, patient, birads, spots in specs:
        write_dicom(root / "AllDICOMs" / f"{file_id}_{patient}_MG_L_CC_ANON.dcm", mammogram(spots=spots))
        rows.append(f"removed;;L;CC;2010;{file_id};1;{birads}")
        if spots or file_id == "103":
            rois = [{"Name": "Cluster", "Point_px": [f"({c - 3}.0, {r - 3}.0)", f"({c + 3}.5, {r + 3}.5)",
                                                     f"({c}, {r + 1})"]} for r, c in spots]
            if file_id == "103":  # a mass only: not a target, Bi-Rads 2: left out
                rois = [{"Name": "Mass", "Point_px": ["(10, 10)", "(20, 20)"]}]
            with open(root / "AllXML" / f"{file_id}.xml", "wb") as file:
                plistlib.dump({"Images": [{"ImageIndex": 0, "NumberOfROIs": len(rois), "ROIs": rois}]}, file)
    (root / "INbreast.csv").write_text("\n".join(rows) + "\n")


def test_inbreast_reads_clusters_and_normals(tmp_path):
    make_inbreast(tmp_path)
    dm = INbreastDataModule(str(tmp_path), input_hw=None, crop_breast=False, batch_size=2, num_workers=0)
    dm.setup()
    assert dm.train_set is None and len(dm.test_set) == 3  # 101, 102 (normal, Bi-Rads 1), 104; 103 left out
    names = [item.name for item in dm.test_set.items]
    assert names == ["101", "102", "104"]
    boxes = {item.name: item.boxes for item in dm.test_set.items}
    np.testing.assert_allclose(boxes["101"], [[27, 37, 33.5, 43.5]])
    assert boxes["102"].shape == (0, 4) and boxes["104"].shape == (2, 4)
    assert dm.test_set.items[0].patient == "aaa"
    batch = next(iter(dm.test_dataloader()))
    assert batch[keys.IMAGE].shape == (2, 3, 120, 80)
    box = batch[keys.BOXES][0][0].long()
    assert batch[keys.IMAGE][0, 0, box[1]:box[3], box[0]:box[2]].mean() > batch[keys.IMAGE][0, 0].mean() + 1


def test_inbreast_resizes_boxes_with_the_image(tmp_path):
    make_inbreast(tmp_path)
    dm = INbreastDataModule(str(tmp_path), input_hw=(60, 40), crop_breast=True, num_workers=0)
    dm.setup()
    sample = dm.test_set[0]
    assert sample[keys.IMAGE].shape == (3, 60, 40)
    x1, y1, x2, y2 = sample[keys.BOXES][0].round().long().tolist()
    assert sample[keys.IMAGE][0, y1:y2 + 1, x1:x2 + 1].max() > sample[keys.IMAGE][0].mean() + 1


def test_inbreast_errors_name_the_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="INbreast.csv") as info:
        INbreastDataModule(str(tmp_path)).prepare_data()
    assert "swincalc_demo.yaml" in str(info.value) and "AllXML" in str(info.value)
    make_inbreast(tmp_path)
    next((tmp_path / "AllDICOMs").glob("104_*.dcm")).unlink()
    with pytest.raises(DatasetError, match="File Name 104"):
        INbreastDataModule(str(tmp_path)).setup()


# -- CBIS-DDSM ---------------------------------------------------------------------------------------------------
CBIS_HEADER = ("patient_id,breast density,left or right breast,image view,abnormality id,abnormality type,calc type,"
               "calc distribution,assessment,pathology,subtlety,image file path,cropped image file path,"
               "ROI mask file path")


def make_cbis(root):
    base = root / "CBIS-DDSM"
    cases = {"train": [("P_00001", "Calc-Training_P_00001_LEFT_CC", [("MALIGNANT", (30, 20)), ("MALIGNANT", (80, 40))]),
                       ("P_00002", "Calc-Training_P_00002_RIGHT_MLO", [("BENIGN", (50, 30))]),
                       ("P_00003", "Calc-Training_P_00003_LEFT_MLO", [("MALIGNANT", (60, 25))]),
                       ("P_00004", "Calc-Training_P_00004_LEFT_CC", [("MALIGNANT", (40, 35))])],
             "test": [("P_00005", "Calc-Test_P_00005_RIGHT_CC", [("MALIGNANT", (70, 30))])]}
    for split, rows in cases.items():
        lines = [CBIS_HEADER]
        for patient, folder, abnormalities in rows:
            # downloaded names (1-1.dcm) differ from the CSV's (000000.dcm), as on TCIA
            write_dicom(base / folder / "1.2.3" / "1.2.4" / "1-1.dcm", mammogram(spots=[a[1] for a in abnormalities]))
            for k, (pathology, (r, c)) in enumerate(abnormalities, start=1):
                mask = np.zeros((120, 80), dtype=np.uint16)
                mask[r - 3:r + 4, c - 4:c + 5] = 255
                roi = base / f"{folder}_{k}" / "1.2.5" / "1.2.6"
                write_dicom(roi / "1-1.dcm", np.full((10, 12), 500, dtype=np.uint16))  # the cropped patch
                write_dicom(roi / "1-2.dcm", mask)
                lines.append(f"{patient},2,LEFT,CC,{k},calcification,PLEOMORPHIC,CLUSTERED,4,{pathology},3,"
                             f"{folder}/1.2.3/1.2.4/000000.dcm,{folder}_{k}/1.2.5/1.2.6/000000.dcm,"
                             f"{folder}_{k}/1.2.5/1.2.6/000001.dcm\n")
        name = f"calc_case_description_{split}_set.csv"
        (root / name).write_text("\n".join(lines) + "\n")


def test_cbis_ddsm_reads_mask_boxes_and_keeps_the_official_split(tmp_path):
    make_cbis(tmp_path)
    dm = CBISDDSMDataModule(str(tmp_path), input_hw=None, crop_breast=False, val_fraction=0.34, num_workers=0)
    dm.setup()
    assert len(dm.test_set) == 1 and dm.test_set.items[0].patient == "P_00005"
    assert len(dm.train_set) + len(dm.val_set) == 3  # the benign-only image is dropped
    items = {item.name: item for item in dm.train_set.items + dm.val_set.items}
    np.testing.assert_allclose(items["Calc-Training_P_00001_LEFT_CC"].boxes, [[16, 27, 25, 34], [36, 77, 45, 84]])
    sample = dm.test_set[0]
    x1, y1, x2, y2 = sample[keys.BOXES][0].long().tolist()
    assert sample[keys.IMAGE][0, y1:y2, x1:x2].mean() > sample[keys.IMAGE][0].mean() + 1


def test_cbis_ddsm_missing_csv(tmp_path):
    with pytest.raises(DatasetError, match="calc_case_description_train_set.csv"):
        CBISDDSMDataModule(str(tmp_path)).setup()


# -- OMI-DB export -----------------------------------------------------------------------------------------------
def make_omidb(root, with_split=False):
    (root / "images").mkdir(parents=True)
    rows = ["image_id,patient_id,x1,y1,x2,y2"]
    for i in range(10):
        spots = [(40 + i, 30)] if i % 2 == 0 else []
        cv2.imwrite(str(root / "images" / f"img{i}.png"), mammogram(spots=spots))
        if spots:
            rows.append(f"img{i},pat{i // 2},{30 - 4},{40 + i - 4},{30 + 5},{40 + i + 5}")
        elif i < 8:
            rows.append(f"img{i},pat{i // 2},,,,")  # a normal image of a known patient; img9 has no row at all
    (root / "annotations.csv").write_text("\n".join(rows) + "\n")
    if with_split:
        lines = ["image_id,split"] + [f"img{i},{'train' if i < 6 else 'val' if i < 8 else 'test'}" for i in range(10)]
        (root / "split.csv").write_text("\n".join(lines) + "\n")


def test_omidb_export_split_by_patient(tmp_path):
    make_omidb(tmp_path)
    dm = OMIDBDataModule(str(tmp_path), input_hw=(64, 48), num_workers=0)
    dm.setup()
    splits = [dm.train_set.items, dm.val_set.items, dm.test_set.items]
    assert sum(len(s) for s in splits) == 10
    patients = [{item.patient for item in s} for s in splits]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2])
    item = next(i for s in splits for i in s if i.name == "img0")
    assert item.patient == "pat0"
    np.testing.assert_allclose(item.boxes, [[26, 36, 35, 45]])
    assert next(i for s in splits for i in s if i.name == "img9").patient == "img9"
    batch = next(iter(dm.val_dataloader()))
    assert batch[keys.IMAGE].shape[1:] == (3, 64, 48)


def test_omidb_split_file_and_errors(tmp_path):
    make_omidb(tmp_path, with_split=True)
    dm = OMIDBDataModule(str(tmp_path), input_hw=None, crop_breast=False, num_workers=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (6, 2, 2)
    (tmp_path / "images" / "img0.png").unlink()
    with pytest.raises(DatasetError, match="img0"):
        OMIDBDataModule(str(tmp_path)).setup()
    with pytest.raises(DatasetError, match="annotations.csv"):
        OMIDBDataModule(str(tmp_path / "nothing")).setup()


# -- the stand-in ------------------------------------------------------------------------------------------------
def test_synthetic_mammogram_boxes_hold_the_bright_dots():
    image, boxes = synthetic_mammogram(np.random.default_rng(3), (256, 160), positive=True, max_distractors=0)
    assert image.shape == (256, 160) and 1 <= len(boxes) <= 2
    for x1, y1, x2, y2 in boxes.round().astype(int):
        assert 10 <= x2 - x1 <= 40 and 10 <= y2 - y1 <= 40
        assert image[y1:y2, x1:x2].max() > np.median(image[image > 0]) + 0.25
    image, boxes = synthetic_mammogram(np.random.default_rng(4), (256, 160), positive=False)
    assert boxes.shape == (0, 4)


def test_synthetic_datamodule_is_deterministic_and_batches(tmp_path):
    dm = SyntheticMammoDataModule(num_train=4, num_val=2, num_test=2, augment=False)
    dm.setup()
    again = SyntheticMammoDataModule(num_train=4, num_val=2, num_test=2, augment=False)
    again.setup()
    assert torch.equal(dm.val_set[0][keys.IMAGE], again.val_set[0][keys.IMAGE])
    batch = next(iter(dm.train_dataloader()))
    assert batch[keys.IMAGE].shape == (4, 3, 256, 160) and len(batch[keys.BOXES]) == 4
    assert sum(len(item.boxes) > 0 for item in dm.train_set.items) == 2
