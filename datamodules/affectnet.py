"""AffectNet (Mollahosseini et al. 2017), the manually annotated images, for FER Grad-CAM: contempt and the
none / uncertain / non-face codes dropped (287,401 images), train and validation pooled, labels remapped to the
unified order (``datamodules.fer2013.EMOTIONS``), resized to 48 x 48 RGB, re-split 56 / 24 / 20.

Expression codes: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt, 8 None,
9 Uncertain, 10 Non-face (7-10 dropped). Three layouts are read (the first found):

(a) official: ``Manually_Annotated_Images/<dir>/<img>.jpg`` and ``training.csv`` / ``validation.csv`` (in the root or
    ``Manually_Annotated_file_lists/``) with ``subDirectory_filePath, face_x, face_y, face_width, face_height, ...,
    expression``; each image is cropped to its face box;
(b) the common re-export ``{train_set,val_set}/images/<id>.jpg`` + ``annotations/<id>_exp.npy`` (the code);
(c) ``<split>/<class>/*.jpg`` with class folders named by emotion (``angry``/``anger``, ``happy``/``happiness``, ...)
    or by code (``0``-``6``); contempt folders (``contempt``, ``7``) are ignored.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from datamodules.fer2013 import EMOTIONS, FacialExpressionDataModule
from datamodules.image_classification import ClassificationItem

#: AffectNet code -> unified index (codes 7-10 dropped).
AFFECTNET_TO_UNIFIED = {0: EMOTIONS.index("neutral"), 1: EMOTIONS.index("happy"), 2: EMOTIONS.index("sad"),
                        3: EMOTIONS.index("surprise"), 4: EMOTIONS.index("fear"), 5: EMOTIONS.index("disgust"),
                        6: EMOTIONS.index("angry")}
DROPPED_CODES = {7, 8, 9, 10}
FOLDER_ALIASES = {"anger": "angry", "happiness": "happy", "sadness": "sad", "surprised": "surprise",
                  **{str(code): EMOTIONS[index] for code, index in AFFECTNET_TO_UNIFIED.items()}}


class AffectNetDataModule(FacialExpressionDataModule):
    """AffectNet's manually annotated images in one of three layouts (module docstring)."""

    layout = """<data_dir>/  one of
 (a) Manually_Annotated_Images/<dir>/<img>.jpg
     training.csv, validation.csv        (or Manually_Annotated_file_lists/*.csv): subDirectory_filePath, face_x,
                                         face_y, face_width, face_height, facial_landmarks, expression, valence,
                                         arousal (expression 0 Neutral .. 6 Anger; 7-10 dropped)
 (b) train_set/images/<id>.jpg, train_set/annotations/<id>_exp.npy   (and val_set/ likewise)
 (c) <split>/<class>/*.jpg               class folders angry|anger, disgust, fear, happy|happiness, sad|sadness,
                                         surprise, neutral, or the codes 0-6"""

    def list_items(self) -> list[ClassificationItem]:
        self._boxes: dict[str, tuple[int, int, int, int]] = {}
        root = self.data_dir
        if (root / "Manually_Annotated_Images").is_dir():
            return self.official_items(root)
        if any((root / s / "images").is_dir() for s in ("train_set", "val_set")):
            return self.npy_items(root)
        splits = [p for p in sorted(root.iterdir()) if p.is_dir()]
        if not splits:
            raise self.error("no AffectNet layout found", root)
        return [item for split in splits for item in self.folder_items(split, EMOTIONS, FOLDER_ALIASES)]

    def official_items(self, root: Path) -> list[ClassificationItem]:
        images = root / "Manually_Annotated_Images"
        tables = [folder / name for name in ("training.csv", "validation.csv")
                  for folder in (root, root / "Manually_Annotated_file_lists") if (folder / name).is_file()]
        if not tables:
            raise self.error("training.csv / validation.csv not found", root)
        items = []
        for table in tables:
            with open(table, newline="") as handle:
                reader = csv.DictReader(handle)
                needed = {"subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression"}
                missing = sorted(needed - set(reader.fieldnames or []))
                if missing:
                    raise self.error(f"{table.name} lacks the column(s) {missing}", table)
                for number, row in enumerate(reader, start=2):
                    try:
                        code = int(row["expression"])
                        box = tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
                    except (TypeError, ValueError):
                        raise self.error(f"unreadable expression or face box at line {number}", table) from None
                    if code in DROPPED_CODES:
                        continue
                    if code not in AFFECTNET_TO_UNIFIED:
                        raise self.error(f"expression {code} at line {number} is not a code 0-10", table)
                    path = images / row["subDirectory_filePath"]
                    if not path.is_file():
                        raise self.error(f"image of {table.name} line {number} not found", path)
                    name = row["subDirectory_filePath"].replace("/", "_")
                    self._boxes[name] = box
                    items.append(ClassificationItem(path, AFFECTNET_TO_UNIFIED[code], name=name))
        if not items:
            raise self.error("no usable rows (codes 0-6) in the annotation tables", root)
        return items

    def npy_items(self, root: Path) -> list[ClassificationItem]:
        items = []
        for split in ("train_set", "val_set"):
            folder = root / split
            if not folder.is_dir():
                continue
            annotations = self.require_dir(folder / "annotations", "annotations folder")
            for path in sorted(self.require_dir(folder / "images", "images folder").glob("*.jpg")):
                label_file = annotations / f"{path.stem}_exp.npy"
                if not label_file.is_file():
                    raise self.error("expression annotation not found", label_file)
                try:
                    code = int(np.load(label_file).reshape(-1)[0].astype(float))
                except (ValueError, IndexError, OSError):
                    raise self.error("unreadable expression annotation", label_file) from None
                if code in DROPPED_CODES:
                    continue
                if code not in AFFECTNET_TO_UNIFIED:
                    raise self.error(f"expression {code} is not a code 0-10", label_file)
                items.append(ClassificationItem(path, AFFECTNET_TO_UNIFIED[code], name=f"{split}_{path.stem}"))
        if not items:
            raise self.error("no images with codes 0-6", root)
        return items

    def preprocess(self, image: np.ndarray, item: ClassificationItem) -> np.ndarray:
        """The official layout's face-box crop (clipped to the image); other layouts are already cropped."""
        box = getattr(self, "_boxes", {}).get(item.name)
        if box is None:
            return image
        x, y, w, h = box
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(image.shape[1], x + w), min(image.shape[0], y + h)
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise self.error(f"face box {box} lies outside the {image.shape[1]}x{image.shape[0]} image", item.source)
        return image[y0:y1, x0:x1]
