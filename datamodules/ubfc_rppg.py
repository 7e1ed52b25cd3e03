"""UBFC-rPPG (Bobbia et al., Pattern Recognit. Lett. 2019), DATASET_2: 42 subjects, one ~2 min 640 x 480 video at
30 fps each, with the finger-oximeter PPG. HR-TRACK's split (67 % / 33 % of the subjects, no list given): subject
ids sorted numerically, the first ``num_train_subjects`` (28) train, the rest (14) test.

Layout (as distributed; ``data_dir`` is the DATASET_2 folder)::

    <data_dir>/subject1/vid.avi
    <data_dir>/subject1/ground_truth.txt   3 lines: PPG samples, HR (bpm), timestamps (s)
    <data_dir>/subject1/vid.csv           OpenFace FeatureExtraction output (landmarks, AUs); see datamodules/rppg.py
    <data_dir>/subject3/...

The clip pipeline, caching and batches are ``datamodules.rppg.RPPGDataModule``'s.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from datamodules.base import DatasetError
from datamodules.rppg import RPPGDataModule, VideoEntry, VideoRecord, _natural_key, decode_video_record

UBFC_LAYOUT = """\
<data_dir>/subject<N>/vid.avi             the face video (30 fps)
<data_dir>/subject<N>/ground_truth.txt    line 1 PPG, line 2 HR (bpm), line 3 timestamps (s), whitespace-separated
<data_dir>/subject<N>/vid.csv             OpenFace landmarks + AUs (FeatureExtraction -f vid.avi -out_dir subject<N>);
                                          without it: --data.landmark_source template (degraded, no AUs)"""


def read_ubfc_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``ground_truth.txt`` -> (timestamps s, PPG)."""
    try:
        rows = [np.array(line.split(), dtype=np.float64) for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as err:
        raise DatasetError(f"Unreadable UBFC ground truth ({err})", path=path, layout=UBFC_LAYOUT) from err
    if len(rows) < 3 or len(rows[0]) != len(rows[2]) or len(rows[0]) < 2:
        raise DatasetError("UBFC ground truth must have 3 lines (PPG, HR, timestamps) of equal length", path=path,
                           layout=UBFC_LAYOUT)
    return rows[2], rows[0]


class UBFCRPPGDataModule(RPPGDataModule):
    """UBFC-rPPG DATASET_2 as clip sequences (see ``RPPGDataModule`` for the pipeline arguments).

    Args:
        num_train_subjects: the first subjects (sorted by number) that train; the rest test (28 / 14).
    """

    layout = UBFC_LAYOUT

    def __init__(self, data_dir: str = "data/UBFC-rPPG/DATASET_2", num_train_subjects: int = 28, **kwargs):
        super().__init__(data_dir=data_dir, **kwargs)
        self.num_train_subjects = num_train_subjects

    def list_videos(self) -> list[VideoEntry]:
        if not self.data_dir.is_dir():
            raise self.error("UBFC-rPPG folder not found", path=self.data_dir)
        subjects = sorted((p for p in self.data_dir.iterdir() if p.is_dir() and re.fullmatch(r"subject\d+", p.name)),
                          key=lambda p: _natural_key(p.name))
        if not subjects:
            raise self.error("No subject<N> folders in the UBFC-rPPG folder", path=self.data_dir)
        entries = []
        for i, folder in enumerate(subjects):
            for name in ("vid.avi", "ground_truth.txt"):
                if not (folder / name).is_file():
                    raise self.error(f"Missing {name}", path=folder / name)
            split = "train" if i < self.num_train_subjects else "test"
            entries.append(VideoEntry(folder.name, folder.name, split, folder / "vid.avi",
                                      folder / "ground_truth.txt"))
        return entries

    def decode(self, entry: VideoEntry) -> VideoRecord:
        times, ppg = read_ubfc_ground_truth(entry.reference)
        return decode_video_record(self, entry.video, times, ppg, default_fps=30.0)
