"""INbreast (Moreira et al. 2012): full-field digital mammograms, DICOM + OsiriX XML ROIs.

Layout as distributed::

    <data_dir>/
      INbreast.csv                    ';'-separated: Patient ID;Patient age;Laterality;View;Acquisition date;
                                      File Name;ACR;Bi-Rads
      AllDICOMs/<File Name>_<patient hash>_MG_<L|R>_<CC|ML>_ANON.dcm
      AllXML/<File Name>.xml          OsiriX plist: Images[0].ROIs[] with Name and Point_px ["(x, y)", ...]

SwinCalc tests on it without retraining (Table 8): the cluster ROIs (Name "Cluster") are the targets, a box being
the bounding box of the ROI's points; images with a cluster are positive, images with a Bi-Rads in
``normal_birads`` (default 1) and no cluster are normal, the rest are left out. The paper counts 105 normal and
21 positive images (27 clusters) without saying how it chose them; this rule is the card's reading of it.
``role: test`` (default) puts every image in the test set (external evaluation); ``role: split`` splits by
patient (the hash in the file name) for training on INbreast.
"""
from __future__ import annotations

import csv
import plistlib
import re
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from datamodules.base import DatasetError
from datamodules.detection import DetectionDataModule, DetectionItem, read_dicom

LAYOUT = """\
<data_dir>/INbreast.csv            (';'-separated, columns 'File Name' and 'Bi-Rads')
<data_dir>/AllDICOMs/<File Name>_<patient>_MG_<L|R>_<view>_ANON.dcm
<data_dir>/AllXML/<File Name>.xml  (OsiriX plist; ROIs named 'Cluster' are the calcification clusters)"""

_POINT = re.compile(r"\(\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)")


def read_rois(path: Path) -> list[tuple[str, np.ndarray]]:
    """(name, (K, 2) pixel (x, y) points) of every ROI in an INbreast XML file."""
    with open(path, "rb") as file:
        plist = plistlib.load(file)
    rois = []
    for image in plist.get("Images", []):
        for roi in image.get("ROIs", []):
            points = [tuple(float(v) for v in _POINT.match(p).groups()) for p in roi.get("Point_px", [])
                      if _POINT.match(p)]
            rois.append((str(roi.get("Name", "")), np.asarray(points, dtype=np.float32).reshape(-1, 2)))
    return rois


def roi_box(points: np.ndarray) -> np.ndarray:
    """Bounding box (x1, y1, x2, y2) of ROI points (a one-point ROI gets a 1-px box)."""
    x1, y1 = points.min(axis=0)
    x2, y2 = points.max(axis=0)
    return np.array([x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)], dtype=np.float32)


class INbreastDataModule(DetectionDataModule):
    """INbreast calcification clusters (see the module docstring).

    Args:
        data_dir: the folder holding INbreast.csv, AllDICOMs and AllXML.
        roi_names: ROI names that are targets (case-insensitive).
        normal_birads: Bi-Rads values of the images kept as normal when they have no target ROI.
        role: ``test`` (all images in the test set) or ``split`` (70/10/20 by patient).
        input_hw, crop_breast, aug_p, augment, split_fractions, split_seed, batch_size, ...: DetectionDataModule's.
    """

    def __init__(self, data_dir: str, roi_names: Sequence[str] = ("Cluster",), normal_birads: Sequence[str] = ("1",),
                 role: Literal["test", "split"] = "test", input_hw: Optional[Sequence[int]] = (1280, 800),
                 crop_breast: bool = True, aug_p: float = 0.5, augment: bool = True,
                 split_fractions: Sequence[float] = (0.7, 0.1, 0.2), split_seed: int = 0, batch_size: int = 2,
                 num_workers: int = 2, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(input_hw=input_hw, crop_breast=crop_breast, aug_p=aug_p, augment=augment,
                         split_fractions=split_fractions, split_seed=split_seed, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        if role not in ("test", "split"):
            raise ValueError(f"role must be 'test' or 'split', got {role!r}")
        self.data_dir = Path(data_dir)
        self.roi_names = {name.lower() for name in roi_names}
        self.normal_birads = {str(v).strip().lower() for v in normal_birads}
        self.role = role

    def _error(self, problem: str, path: Path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=self.standin_config)

    def read(self, path: str) -> np.ndarray:
        try:
            return read_dicom(path)
        except Exception as error:  # noqa: BLE001 - any decoding failure is a data error
            raise self._error(f"Unreadable DICOM ({error})", Path(path)) from error

    def prepare_data(self) -> None:
        self.list_items()

    def list_items(self) -> list[DetectionItem]:
        table = self.data_dir / "INbreast.csv"
        dicoms = self.data_dir / "AllDICOMs"
        xmls = self.data_dir / "AllXML"
        for path in (table, dicoms):
            if not path.exists():
                raise self._error("INbreast file or folder missing", path)
        with open(table, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.DictReader(file, delimiter=";"))
        if not rows or "File Name" not in rows[0] or "Bi-Rads" not in rows[0]:
            raise self._error("INbreast.csv lacks the 'File Name' or 'Bi-Rads' column", table)
        by_id = {path.name.split("_")[0]: path for path in dicoms.glob("*.dcm")}
        items = []
        for row in rows:
            file_id = str(row["File Name"]).strip()
            if not file_id:
                continue
            if file_id not in by_id:
                raise self._error(f"No DICOM for File Name {file_id} listed in INbreast.csv", dicoms)
            path = by_id[file_id]
            xml = xmls / f"{file_id}.xml"
            boxes = []
            if xml.exists():
                try:
                    rois = read_rois(xml)
                except Exception as error:  # noqa: BLE001
                    raise self._error(f"Unreadable ROI file ({error})", xml) from error
                boxes = [roi_box(points) for name, points in rois if name.lower() in self.roi_names and len(points)]
            birads = str(row["Bi-Rads"]).strip().lower()
            if not boxes and birads not in self.normal_birads:
                continue
            parts = path.stem.split("_")
            patient = parts[1] if len(parts) > 1 else file_id
            items.append(DetectionItem(str(path), np.asarray(boxes, dtype=np.float32).reshape(-1, 4), patient,
                                       file_id))
        if not items:
            raise self._error("No INbreast image with a cluster ROI or a normal Bi-Rads", table)
        return items

    def split_items(self, items):
        if self.role == "test":
            return [], [], list(range(len(items)))
        return super().split_items(items)
