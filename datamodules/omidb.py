"""OMI-DB (OPTIMAM, access-controlled) as exported for SwinCalc: 16-bit PNGs and a box table.

The paper selects Hologic "for presentation" images (9,895 normal, 2,563 with malignant calcification clusters,
2,962 clusters), removes images with implants, clips or text by eye, and saves them as 16-bit PNG. That selection
is not reproducible from the raw OMI-DB JSON alone (visual inspection), so this reader takes the exported set::

    <data_dir>/
      images/<image_id>.png        16-bit grey mammograms, as saved by the export
      annotations.csv              image_id, patient_id, x1, y1, x2, y2   (one row per cluster, pixel coordinates;
                                   a row with empty coordinates lists a normal image and its patient; an image
                                   without rows is normal and its own patient)
      split.csv                    optional: image_id, split (train | val | test); default a random 70/10/20
                                   split by patient (the card's reading of the paper's random split)

Raw OMI-DB (``data/<client>/*.json`` + ``images/<client>/<study>/<sop>.dcm``) is not read here: export it with the
PyPI ``omidb`` parser to the layout above (docs/papers/swincalc.md).
"""
from __future__ import annotations

import csv
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from datamodules.base import DatasetError
from datamodules.detection import DetectionDataModule, DetectionItem, read_image

LAYOUT = """\
<data_dir>/images/<image_id>.png   (16-bit grey)
<data_dir>/annotations.csv         image_id,patient_id,x1,y1,x2,y2 (empty coordinates: a normal image)
<data_dir>/split.csv               optional: image_id,split (train|val|test)"""
SPLITS = ("train", "val", "test")


class OMIDBDataModule(DetectionDataModule):
    """OMI-DB exported as PNG + CSV (see the module docstring).

    Args:
        data_dir: the export folder.
        input_hw, crop_breast, aug_p, augment, split_fractions, split_seed, batch_size, ...: DetectionDataModule's.
    """

    def __init__(self, data_dir: str, input_hw: Optional[Sequence[int]] = (1280, 800), crop_breast: bool = True,
                 aug_p: float = 0.5, augment: bool = True, split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
                 split_seed: int = 0, batch_size: int = 2, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(input_hw=input_hw, crop_breast=crop_breast, aug_p=aug_p, augment=augment,
                         split_fractions=split_fractions, split_seed=split_seed, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        self.data_dir = Path(data_dir)
        self._split_of: dict[str, str] = {}

    def _error(self, problem: str, path: Path) -> DatasetError:
        return DatasetError(problem, path=path, layout=LAYOUT, standin_config=self.standin_config)

    def read(self, path: str) -> np.ndarray:
        try:
            return read_image(path)
        except OSError as error:
            raise self._error("Unreadable image", Path(path)) from error

    def prepare_data(self) -> None:
        for path in (self.data_dir / "images", self.data_dir / "annotations.csv"):
            if not path.exists():
                raise self._error("OMI-DB export file or folder missing", path)

    def list_items(self) -> list[DetectionItem]:
        self.prepare_data()
        table = self.data_dir / "annotations.csv"
        with open(table, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.DictReader(file))
        needed = {"image_id", "patient_id", "x1", "y1", "x2", "y2"}
        if rows and not needed <= set(rows[0]):
            raise self._error(f"annotations.csv lacks the columns {sorted(needed)}", table)
        entries: "OrderedDict[str, dict]" = OrderedDict()
        for path in sorted((self.data_dir / "images").glob("*.png")):
            entries[path.stem] = {"path": path, "patient": path.stem, "boxes": []}
        if not entries:
            raise self._error("No PNG images", self.data_dir / "images")
        for row in rows:
            image_id = row["image_id"].strip()
            if image_id not in entries:
                raise self._error(f"annotations.csv names image {image_id!r}, which is missing",
                                  self.data_dir / "images" / f"{image_id}.png")
            entries[image_id]["patient"] = row["patient_id"].strip() or image_id
            coords = [row[k].strip() for k in ("x1", "y1", "x2", "y2")]
            if all(coords):
                box = [float(v) for v in coords]
                if box[2] <= box[0] or box[3] <= box[1]:
                    raise self._error(f"Box {box} of image {image_id!r} is empty (x2 <= x1 or y2 <= y1)", table)
                entries[image_id]["boxes"].append(box)
            elif any(coords):
                raise self._error(f"Row of image {image_id!r} has some coordinates empty", table)
        split_file = self.data_dir / "split.csv"
        self._split_of = {}
        if split_file.exists():
            with open(split_file, newline="", encoding="utf-8-sig") as file:
                for row in csv.DictReader(file):
                    split = row.get("split", "").strip().lower()
                    if split not in SPLITS:
                        raise self._error(f"split.csv: split {split!r} of {row.get('image_id')!r} is not one of "
                                          f"{SPLITS}", split_file)
                    self._split_of[row["image_id"].strip()] = split
        return [DetectionItem(str(e["path"]), np.asarray(e["boxes"], dtype=np.float32).reshape(-1, 4), e["patient"],
                              image_id) for image_id, e in entries.items()]

    def split_items(self, items):
        if not self._split_of:
            return super().split_items(items)
        missing = [item.name for item in items if item.name not in self._split_of]
        if missing:
            raise self._error(f"split.csv lacks {len(missing)} images, e.g. {missing[:3]}", self.data_dir / "split.csv")
        return tuple([i for i, item in enumerate(items) if self._split_of[item.name] == split] for split in SPLITS)
