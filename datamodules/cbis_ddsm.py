"""CBIS-DDSM (Lee et al. 2017, TCIA): scanned-film mammograms, DICOM + case-description CSVs + ROI-mask DICOMs.

Layout as downloaded from TCIA (NBIA Data Retriever, "Descriptive Directory Name" off)::

    <data_dir>/
      calc_case_description_train_set.csv     columns include patient_id, pathology, image file path,
      calc_case_description_test_set.csv      ROI mask file path (paths relative to <data_dir>/CBIS-DDSM)
      CBIS-DDSM/Calc-Training_P_00005_RIGHT_CC/<study UID>/<series UID>/1-1.dcm        the full mammogram
      CBIS-DDSM/Calc-Training_P_00005_RIGHT_CC_1/<study UID>/<series UID>/1-1.dcm      ROI mask or crop
      ...

Each CSV row is one abnormality (a calcification cluster); its box is the bounding box of its ROI mask. The CSV's
DICOM names (``000000.dcm``) differ from the downloaded ones (``1-1.dcm``), and a row's mask folder holds both the
mask and the cropped patch: the reader takes a listed path when it exists and otherwise the DICOM under the
row's top folder whose size is the full image's (the mask). Rows whose ``pathology`` is not in ``pathologies``
(default MALIGNANT, the paper's positives) are dropped; CBIS-DDSM has no normal images. The official train/test
split is kept; ``val_fraction`` of the training patients validate. Not a SwinCalc dataset (the paper uses the
access-controlled OMI-DB): a public mammography set with calcification ROIs in the same pipeline.
"""
from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from datamodules.base import DatasetError
from datamodules.detection import DetectionDataModule, DetectionItem, patient_split, read_dicom

CSV_FILES = {"train": "calc_case_description_train_set.csv", "test": "calc_case_description_test_set.csv"}
LAYOUT = """\
<data_dir>/calc_case_description_train_set.csv   (patient_id, pathology, image file path, ROI mask file path)
<data_dir>/calc_case_description_test_set.csv
<data_dir>/CBIS-DDSM/Calc-Training_P_00005_RIGHT_CC/<study>/<series>/1-1.dcm      (full mammogram)
<data_dir>/CBIS-DDSM/Calc-Training_P_00005_RIGHT_CC_1/<study>/<series>/1-*.dcm    (ROI mask, cropped patch)"""


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
    """(x1, y1, x2, y2) of the non-zero pixels; None for an empty mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)


def _dicom_shape(path: Path) -> tuple[int, int]:
    import pydicom

    header = pydicom.dcmread(str(path), stop_before_pixels=True)
    return int(header.Rows), int(header.Columns)


class CBISDDSMDataModule(DetectionDataModule):
    """CBIS-DDSM calcification clusters (see the module docstring).

    Args:
        data_dir: the folder holding the CSVs and the CBIS-DDSM image folder.
        image_folder: the image folder's name under ``data_dir``.
        pathologies: the ``pathology`` values kept (MALIGNANT; add BENIGN for all biopsied clusters).
        val_fraction: share of the training patients used for validation.
        input_hw, crop_breast, aug_p, augment, split_seed, batch_size, ...: DetectionDataModule's.
    """

    def __init__(self, data_dir: str, image_folder: str = "CBIS-DDSM", pathologies: Sequence[str] = ("MALIGNANT",),
                 val_fraction: float = 0.1, input_hw: Optional[Sequence[int]] = (1280, 800), crop_breast: bool = True,
                 aug_p: float = 0.5, augment: bool = True, split_seed: int = 0, batch_size: int = 2,
                 num_workers: int = 2, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(input_hw=input_hw, crop_breast=crop_breast, aug_p=aug_p, augment=augment,
                         split_seed=split_seed, batch_size=batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_dir = Path(data_dir)
        self.image_dir = self.data_dir / image_folder
        self.pathologies = {p.strip().upper() for p in pathologies}
        self.val_fraction = val_fraction
        self._official: dict[str, str] = {}

    def _error(self, problem: str, path: Path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=self.standin_config)

    def read(self, path: str) -> np.ndarray:
        try:
            return read_dicom(path)
        except Exception as error:  # noqa: BLE001
            raise self._error(f"Unreadable DICOM ({error})", Path(path)) from error

    def prepare_data(self) -> None:
        for name in CSV_FILES.values():
            if not (self.data_dir / name).exists():
                raise self._error("CBIS-DDSM case-description CSV missing", self.data_dir / name)
        if not self.image_dir.is_dir():
            raise self._error("CBIS-DDSM image folder missing", self.image_dir)

    def _resolve(self, listed: str, shape: Optional[tuple[int, int]] = None) -> Path:
        """The DICOM a CSV path names: itself when present, else the one under its top folder (of ``shape``)."""
        listed = listed.strip().strip('"')
        path = self.image_dir / listed
        if path.exists() and (shape is None or _dicom_shape(path) == shape):
            return path
        top = self.image_dir / Path(listed).parts[0]
        candidates = sorted(top.rglob("*.dcm")) if top.is_dir() else []
        if shape is not None:
            candidates = [c for c in candidates if _dicom_shape(c) == shape]
        if len(candidates) == 1 or (candidates and shape is not None):
            return candidates[0]
        raise self._error(f"No unique DICOM for the CSV path {listed!r} ({len(candidates)} candidates)", top)

    def list_items(self) -> list[DetectionItem]:
        self.prepare_data()
        grouped: "OrderedDict[str, dict]" = OrderedDict()
        for split, name in CSV_FILES.items():
            with open(self.data_dir / name, newline="", encoding="utf-8-sig") as file:
                rows = list(csv.DictReader(file))
            needed = {"patient_id", "pathology", "image file path", "ROI mask file path"}
            if not rows or not needed <= set(rows[0]):
                raise self._error(f"CSV lacks the columns {sorted(needed)}", self.data_dir / name)
            for row in rows:
                if row["pathology"].strip().upper() not in self.pathologies:
                    continue
                image = self._resolve(row["image file path"])
                entry = grouped.setdefault(str(image), {"patient": row["patient_id"].strip(), "split": split,
                                                        "masks": [], "name": Path(row["image file path"]).parts[0]})
                entry["masks"].append(row["ROI mask file path"])
        items = []
        for image, entry in grouped.items():
            shape = _dicom_shape(Path(image))
            boxes = []
            for listed in entry["masks"]:
                mask_path = self._resolve(listed, shape)
                box = mask_box(self.read(str(mask_path)) > 0)
                if box is not None:
                    boxes.append(box)
            self._official[entry["name"]] = entry["split"]
            items.append(DetectionItem(image, np.asarray(boxes, dtype=np.float32).reshape(-1, 4), entry["patient"],
                                       entry["name"]))
        if not items:
            raise self._error(f"No CBIS-DDSM calcification case with pathology in {sorted(self.pathologies)}",
                              self.data_dir)
        return items

    def split_items(self, items):
        train_pool = [i for i, item in enumerate(items) if self._official[item.name] == "train"]
        test = [i for i, item in enumerate(items) if self._official[item.name] == "test"]
        fractions = (1.0 - self.val_fraction, self.val_fraction, 0.0)
        inner_train, inner_val, _ = patient_split([items[i].patient for i in train_pool], fractions, self.split_seed)
        return [train_pool[i] for i in inner_train], [train_pool[i] for i in inner_val], test
