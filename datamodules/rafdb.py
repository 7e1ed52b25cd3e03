"""RAF-DB basic (Li et al. 2017; 15,339 aligned RGB 100 x 100 faces, 7 emotions) for FER Grad-CAM: train and test
pooled, labels remapped to the unified order (``datamodules.fer2013.EMOTIONS``), resized to 48 x 48, re-split
56 / 24 / 20 (``FacialExpressionDataModule``).

Layout as distributed: ``basic/EmoLabel/list_patition_label.txt`` (sic), one ``<name>.jpg <code>`` line per image
(code 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral), images at
``basic/Image/aligned/<name>_aligned.jpg``.
"""
from __future__ import annotations

from pathlib import Path

from datamodules.fer2013 import EMOTIONS, FacialExpressionDataModule
from datamodules.image_classification import ClassificationItem

#: RAF-DB code -> unified index.
RAF_TO_UNIFIED = {1: EMOTIONS.index("surprise"), 2: EMOTIONS.index("fear"), 3: EMOTIONS.index("disgust"),
                  4: EMOTIONS.index("happy"), 5: EMOTIONS.index("sad"), 6: EMOTIONS.index("angry"),
                  7: EMOTIONS.index("neutral")}


class RAFDBDataModule(FacialExpressionDataModule):
    """RAF-DB basic, aligned images (module docstring). ``data_dir``: the folder holding ``basic/`` (or ``basic``
    itself)."""

    layout = """<data_dir>/basic/
  EmoLabel/list_patition_label.txt   "train_00001.jpg 5" per line (1 Surprise, 2 Fear, 3 Disgust, 4 Happiness,
                                     5 Sadness, 6 Anger, 7 Neutral)
  Image/aligned/train_00001_aligned.jpg ...   (train and test pooled, then re-split 56/24/20)"""

    def list_items(self) -> list[ClassificationItem]:
        root = self.data_dir / "basic" if (self.data_dir / "basic").is_dir() else self.data_dir
        labels = self.require_file(root / "EmoLabel" / "list_patition_label.txt", "label list")
        images = self.require_dir(root / "Image" / "aligned", "aligned image folder")
        items = []
        for number, line in enumerate(labels.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in RAF_TO_UNIFIED:
                raise self.error(f"line {number} is not '<name>.jpg <code 1-7>': {line.strip()!r}", labels)
            path = images / f"{Path(parts[0]).stem}_aligned{Path(parts[0]).suffix or '.jpg'}"
            if not path.is_file():
                raise self.error(f"image of line {number} not found", path)
            items.append(ClassificationItem(path, RAF_TO_UNIFIED[int(parts[1])]))
        if not items:
            raise self.error("the label list is empty", labels)
        return items
