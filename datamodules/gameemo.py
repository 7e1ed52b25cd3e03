"""GAMEEMO (Alakus et al. 2020): 28 subjects x 4 computer games (G1 boring, G2 calm, G3 horror, G4 funny), 5 min
each, 14-channel EMOTIV EPOC+ at 128 Hz (0.16-43 Hz), with Self-Assessment Manikin valence and arousal ratings
(1-9) per game. Coglier's tasks: ``label: valence`` or ``arousal``, 9 classes (rating - 1); 2-s windows of 256
samples every 128 (33,264 windows). Inputs and the Coglier stages: ``datamodules.eeg_emotion``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from datamodules.eeg_emotion import EEGEmotionWindowsDataModule
from datamodules.eeg_features import GAMEEMO_CHANNELS, GAMEEMO_GRID
from datamodules.timeseries import Recording

GAMES = ("G1", "G2", "G3", "G4")
_SUBJECT_DIR = re.compile(r"^\(S(\d+)\)$")
_SAM = re.compile(r"V\s*(\d)\D*A\s*(\d)", re.IGNORECASE)


def read_sam(path: Path) -> tuple[int, int]:
    """(valence, arousal) 1-9 from a ``SAM Ratings/G<k>.txt`` line such as ``V3A7``."""
    text = path.read_text(errors="replace").strip()
    match = _SAM.search(text)
    if not match:
        raise ValueError(f"expected a rating like 'V3A7', got {text[:40]!r}")
    return int(match.group(1)), int(match.group(2))


class GAMEEMODataModule(EEGEmotionWindowsDataModule):
    """GAMEEMO in its released layout (``layout``); ``label``: valence or arousal (9 classes, SAM rating - 1)."""

    layout = """GAMEEMO/
  (S01)/Preprocessed EEG Data/.csv format/S01G1AllChannels.csv   columns AF3 AF4 F3 F4 F7 F8 FC5 FC6 O1 O2 P7 P8
                                                                  T7 T8 (+ others, ignored), one row per sample at 128 Hz
  (S01)/SAM Ratings/G1.txt                                        one line 'V<valence>A<arousal>', ratings 1-9
  ... G2-G4, subjects (S01)..(S28)"""
    standin_config = "experiments/coglier_demo.yaml"
    classes = tuple(str(r) for r in range(1, 10))
    channels = GAMEEMO_CHANNELS
    grid = GAMEEMO_GRID
    default_sample_rate = 128.0

    def __init__(self, data_dir: str = "", label: Literal["valence", "arousal"] = "valence",
                 window_length: float = 256, window_step: float = 128, **kwargs: Any):
        if label not in ("valence", "arousal"):
            raise ValueError(f"label must be 'valence' or 'arousal', got {label!r}")
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, **kwargs)
        self.label = label

    def list_recordings(self) -> list[Recording]:
        root = self.require_dir(self.data_dir, "GAMEEMO folder")
        subjects = sorted((m.group(1), p) for p in root.iterdir() if (m := _SUBJECT_DIR.match(p.name)) and p.is_dir())
        if not subjects:
            raise self.error("no subject folders '(S01)' ... in the GAMEEMO folder", root)
        recordings = []
        for number, folder in subjects:
            if self.subjects is not None and number not in self.subjects:
                continue
            for game in GAMES:
                csv = self.require_file(folder / "Preprocessed EEG Data" / ".csv format" /
                                        f"S{number}{game}AllChannels.csv", "EEG CSV")
                sam = self.require_file(folder / "SAM Ratings" / f"{game}.txt", "SAM rating")
                try:
                    table = pd.read_csv(csv, usecols=list(self.channels))
                    signal = table.to_numpy(dtype=np.float32)
                except ValueError as error:  # missing columns, non-numeric cells
                    raise self.error(f"unreadable EEG CSV ({error})", csv) from error
                except pd.errors.EmptyDataError as error:
                    raise self.error("empty EEG CSV", csv) from error
                if len(signal) == 0 or not np.isfinite(signal).all():
                    raise self.error("EEG CSV has no rows or non-finite values", csv)
                try:
                    valence, arousal = read_sam(sam)
                except ValueError as error:
                    raise self.error(f"unreadable SAM rating ({error})", sam) from error
                rating = valence if self.label == "valence" else arousal
                if not 1 <= rating <= 9:
                    raise self.error(f"SAM {self.label} rating {rating} outside 1-9", sam)
                recordings.append(Recording(signal, rating - 1, subject=number, trial=game, name=f"S{number}{game}"))
        return recordings
