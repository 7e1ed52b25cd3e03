"""FERPlus (Barsoum et al., ICMI 2016): the FER2013 faces (48 x 48 grey) relabelled by 10 annotators each.

Layout as distributed: Kaggle's ``fer2013.csv`` (``emotion,pixels,Usage``; the pixels are what is read) and
Microsoft's ``fer2013new.csv`` (github.com/microsoft/FERPlus; ``Usage,Image name,neutral,happiness,surprise,
sadness,anger,disgust,fear,contempt,unknown,NF``: the 10 votes per image), one row per FER2013 row, same order.

Labels: FERPlus's ``majority`` mode: votes of 1 are dropped as outliers, the winning class needs more than half of the
remaining votes, and images whose winner is ``unknown`` or ``NF`` (not a face), or without a majority, are left out.
8 classes in the file's order (``FERPLUS_CLASSES``). Split: the official ``Usage``: Training -> train, PublicTest +
PrivateTest -> test (LLDif's 28,709 / 7,178 before dropping), validation a stratified ``val_fraction`` of the
training rows (0: the test rows).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule

FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
VOTE_COLUMNS = (*FERPLUS_CLASSES, "unknown", "NF")
USAGES = ("Training", "PublicTest", "PrivateTest")


def majority_label(votes: np.ndarray) -> Optional[int]:
    """FERPlus's majority rule over the 10 vote counts (``VOTE_COLUMNS`` order): the class index (0-7), or None
    where the image is dropped (no majority, unknown or not a face)."""
    votes = np.asarray(votes, dtype=np.float64).copy()
    votes[votes <= 1] = 0  # a single vote is an outlier
    total = votes.sum()
    if total <= 0:
        return None
    winner = int(np.argmax(votes))
    if votes[winner] <= 0.5 * total or winner >= len(FERPLUS_CLASSES):
        return None
    return winner


class FERPlusDataModule(ImageClassificationDataModule):
    """FERPlus from ``fer2013.csv`` + ``fer2013new.csv`` (module docstring); RGB (grey replicated) by default.

    Args:
        data_dir: the folder holding both csv files.
        **kwargs: ``ImageClassificationDataModule`` 's (``split`` is always the official one).
    """

    layout = """<data_dir>/
  fer2013.csv        Kaggle's FER2013: emotion,pixels,Usage (pixels: 2304 space-separated grey levels, 48x48)
  fer2013new.csv     FERPlus votes: Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,
                     unknown,NF (one row per fer2013.csv row, same order)"""
    classes = FERPLUS_CLASSES

    def __init__(self, data_dir: str, image_size: int = 48, val_fraction: float = 0.1, **kwargs):
        kwargs.pop("split", None)
        super().__init__(data_dir, image_size=image_size, val_fraction=val_fraction, split="predefined", **kwargs)
        self.usage: list[str] = []

    def list_items(self) -> list[ClassificationItem]:
        pixels_file = self.require_file(self.data_dir / "fer2013.csv", "FER2013 pixel table")
        votes_file = self.require_file(self.data_dir / "fer2013new.csv", "FERPlus vote table")
        with open(pixels_file, newline="") as a, open(votes_file, newline="") as b:
            pixels_rows, vote_rows = csv.DictReader(a), csv.DictReader(b)
            if "pixels" not in (pixels_rows.fieldnames or []):
                raise self.error("fer2013.csv lacks the column 'pixels'", pixels_file)
            missing = {"Usage", *VOTE_COLUMNS} - set(vote_rows.fieldnames or [])
            if missing:
                raise self.error(f"fer2013new.csv lacks the column(s) {sorted(missing)}", votes_file)
            items, usage = [], []
            for number, (row, votes) in enumerate(zip(pixels_rows, vote_rows), start=2):
                if votes["Usage"] not in USAGES:
                    raise self.error(f"line {number}: Usage {votes['Usage']!r} is not one of {USAGES}", votes_file)
                try:
                    counts = np.array([float(votes[c] or 0) for c in VOTE_COLUMNS])
                    grey = np.array(row["pixels"].split(), dtype=np.int64)
                except ValueError:
                    raise self.error(f"line {number}: unreadable votes or pixels", votes_file) from None
                if grey.size != 48 * 48 or grey.min(initial=0) < 0 or grey.max(initial=0) > 255:
                    raise self.error(f"line {number}: pixels must be 2304 values in 0-255, got {grey.size}",
                                     pixels_file)
                label = majority_label(counts)
                if label is None:
                    continue
                name = Path(votes.get("Image name") or "").stem or f"fer{number - 2:07d}"
                items.append(ClassificationItem(grey.astype(np.uint8).reshape(48, 48), label, name=name))
                usage.append(votes["Usage"])
        if not items:
            raise self.error("no image has a FERPlus majority label", votes_file)
        self.usage = usage
        return items

    def make_splits(self) -> dict[str, list[int]]:
        train = [i for i, u in enumerate(self.usage) if u == "Training"]
        test = [i for i, u in enumerate(self.usage) if u != "Training"]
        val = test
        if self.val_fraction > 0:
            train, val = self._holdout(train, self.val_fraction, grouped=False)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
