"""OPPORTUNITY (Roggen et al. 2010; the UCI release of Chavarriaga et al. 2013) in its released layout.

``OpportunityUCIDataset/dataset/S{1-4}-ADL{1-5}.dat`` and ``S{1-4}-Drill.dat``: one sample per row, space
separated, 250 columns (``column_names.txt``): 1 time (ms), 2-243 sensors (body-worn IMUs and accelerometers,
object and ambient sensors; ``NaN`` where a packet was lost), 244-250 the label tracks Locomotion, HL_Activity,
LL_Left_Arm, LL_Left_Arm_Object, LL_Right_Arm, LL_Right_Arm_Object, ML_Both_Arms (codes in
``label_legend.txt``). Sampled at 30 Hz. Each file is one continuous recording (subject ``S<k>``, trial the file
name) with per-sample labels, cut by the time-series base.

PA-HAR (Table 1): the 17 mid-level gestures of ML_Both_Arms (Null dropped: windows whose majority label is Null
are unlabelled), window 64 with 50 % overlap (step 32, the best of Fig. 8d), 8:2 split (a stratified random
window split here; the paper does not say how; ``split: trial`` with ``test_trials`` gives the challenge's
file split, e.g. S2/S3 ADL4-5). Channels: the 113 body-worn sensor columns of the OPPORTUNITY challenge
(DeepConvLSTM's selection: the 7 IMUs without quaternions, the 12 bluetooth accelerometers and both shoes).
Lost samples are linearly interpolated per channel within a file; a channel with no valid sample in a file is
set to 0 (as DeepConvLSTM does after interpolation) with a warning naming the file. ``task: locomotion`` gives
the 4 locomotion modes (Stand, Walk, Sit, Lie) instead.
"""
from __future__ import annotations

import re
import warnings
from typing import Literal, Optional

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule
from datamodules.uci_har import fill_gaps, read_matrix

COLUMNS = 250
#: the 113 sensor columns of the OPPORTUNITY challenge (1-based, as in column_names.txt): columns 2-46 (12
#: bluetooth accelerometers and the back IMU's acc/gyro/mag), then acc/gyro/mag of RUA, RLA, LUA, LLA (quaternions
#: dropped) and both shoes (columns 103-134).
CHALLENGE_113 = tuple(list(range(2, 47)) + list(range(51, 60)) + list(range(64, 73)) + list(range(77, 86))
                      + list(range(90, 99)) + list(range(103, 135)))
LABEL_COLUMN = {"gestures": 250, "locomotion": 244}  # ML_Both_Arms, Locomotion (1-based)
GESTURE_CODES = (406516, 406517, 404516, 404517, 406520, 404520, 406505, 404505, 406519, 404519, 406511, 404511,
                 406508, 404508, 408512, 407521, 405506)
GESTURES = ("open_door_1", "open_door_2", "close_door_1", "close_door_2", "open_fridge", "close_fridge",
            "open_dishwasher", "close_dishwasher", "open_drawer_1", "close_drawer_1", "open_drawer_2",
            "close_drawer_2", "open_drawer_3", "close_drawer_3", "clean_table", "drink_from_cup", "toggle_switch")
LOCOMOTION_CODES = (1, 2, 4, 5)
LOCOMOTION = ("stand", "walk", "sit", "lie")
FILE = re.compile(r"^S(\d+)-(ADL\d+|Drill)\.dat$")

LAYOUT = """\
<data_dir>/OpportunityUCIDataset/    (or data_dir is that folder, or its dataset/ folder)
  dataset/
    S1-ADL1.dat ... S4-ADL5.dat, S1-Drill.dat ... S4-Drill.dat
                                    one sample per row (30 Hz), 250 space-separated columns: time (ms),
                                    242 sensor columns (NaN where lost), 7 label tracks (column 250:
                                    ML_Both_Arms, 0 = Null, codes as in label_legend.txt)"""


class OpportunityDataModule(TimeSeriesDataModule):
    """OPPORTUNITY's per-run recordings: the challenge's 113 channels, the 17 gestures (Null dropped).

    Args:
        data_dir: the ``OpportunityUCIDataset`` folder, its parent, or its ``dataset`` folder.
        task: "gestures" (ML_Both_Arms, 17 classes; PA-HAR) or "locomotion" (4 classes).
        sensor_columns: 1-based columns of the 250 to use as channels (default: the challenge's 113).
        include_drill: also read the Drill runs (S<k>-Drill.dat).
        Others: ``TimeSeriesDataModule`` (defaults: window 64, step 32, random 8:2 split).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    default_sample_rate = 30.0

    def __init__(self, data_dir: str, task: Literal["gestures", "locomotion"] = "gestures",
                 sensor_columns: Optional[list[int]] = None, include_drill: bool = True,
                 window_length: float = 64, window_step: float = 32, split: str = "random", test_size: float = 0.2,
                 **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, split=split,
                         test_size=test_size, **kwargs)
        if task not in LABEL_COLUMN:
            raise ValueError(f"task must be one of {list(LABEL_COLUMN)}, got {task!r}")
        columns = list(CHALLENGE_113 if sensor_columns is None else sensor_columns)
        if not columns or not all(2 <= c <= 243 for c in columns):
            raise ValueError(f"sensor_columns must be 1-based sensor columns in 2..243, got {sensor_columns}")
        self.task, self.include_drill = task, include_drill
        self.sensor_columns = [c - 1 for c in columns]
        self.classes = GESTURES if task == "gestures" else LOCOMOTION
        codes = GESTURE_CODES if task == "gestures" else LOCOMOTION_CODES
        self.codes = np.asarray(codes, dtype=np.int64)

    @property
    def root(self):
        for candidate in (self.data_dir / "OpportunityUCIDataset" / "dataset", self.data_dir / "dataset"):
            if candidate.is_dir():
                return candidate
        return self.data_dir

    def _labels(self, codes: np.ndarray, path) -> np.ndarray:
        """Label codes -> class indices; Null (0) -> -1 (unlabelled); an unknown code is an error."""
        order = np.argsort(self.codes)
        position = np.searchsorted(self.codes[order], codes)
        found = self.codes[order][np.clip(position, 0, len(self.codes) - 1)] == codes
        unknown = sorted(set(codes[~found & (codes != 0)].tolist()))
        if unknown:
            raise self.error(f"unknown {self.task} label codes {unknown[:5]} in column "
                             f"{LABEL_COLUMN[self.task]} (expected 0 or {self.codes.tolist()})", path)
        return np.where(found, order[np.clip(position, 0, len(self.codes) - 1)], -1).astype(np.int64)

    def list_recordings(self) -> list[Recording]:
        root = self.root
        files = []
        for path in sorted(root.glob("S*.dat")):
            match = FILE.match(path.name)
            if match and (self.include_drill or match.group(2) != "Drill"):
                files.append((int(match.group(1)), path))
        if not files:
            raise self.error("no S<subject>-ADL<run>.dat / S<subject>-Drill.dat files", root)
        recordings = []
        for subject, path in sorted(files, key=lambda item: (item[0], item[1].name)):
            values = read_matrix(path, COLUMNS, self.layout, self.standin_config, allow_missing=True)
            raw_labels = values[:, LABEL_COLUMN[self.task] - 1]
            if np.isnan(raw_labels).any():
                raise self.error(f"label column {LABEL_COLUMN[self.task]} has missing values", path)
            signals, empty = fill_gaps(values[:, self.sensor_columns])
            if empty.any():
                columns = [self.sensor_columns[i] + 1 for i in np.flatnonzero(empty)]
                warnings.warn(f"{path.name}: sensor columns {columns} have no valid sample; set to 0", stacklevel=2)
            recordings.append(Recording(signals.astype(np.float32), self._labels(raw_labels.astype(np.int64), path),
                                        subject=f"S{subject}", trial=path.stem, name=path.stem))
        return recordings
