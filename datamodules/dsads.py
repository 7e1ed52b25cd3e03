"""DSADS, "Daily and Sports Activities" (Altun, Barshan & Tuncel 2010), in its released layout.

``data/a{01-19}/p{1-8}/s{01-60}.txt``: 19 activities x 8 subjects x 60 segments of 5 s; each file one segment,
125 rows (25 Hz) x 45 comma-separated columns: 5 units (torso, right arm, left arm, right leg, left leg) x
accelerometer / gyroscope / magnetometer x/y/z. PA-HAR (Table 1): no windowing (one file = one window of 125),
9 of the 19 activities (the paper does not name them: ``activities`` defaults to a01-a09, a choice), 7:3 split (a
stratified random split over segments here; ``split: subject`` / ``loso`` for subject-independent protocols).
"""
from __future__ import annotations

import re
from typing import Optional

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule
from datamodules.uci_har import read_matrix

ACTIVITIES = ("sitting", "standing", "lying_on_back", "lying_on_right_side", "ascending_stairs",
              "descending_stairs", "standing_in_elevator", "moving_in_elevator", "walking_in_parking_lot",
              "walking_treadmill_flat", "walking_treadmill_inclined", "running_treadmill", "stepper",
              "cross_trainer", "cycling_horizontal", "cycling_vertical", "rowing", "jumping", "basketball")
UNITS = ("T", "RA", "LA", "RL", "LL")
CHANNELS = tuple(f"{unit}_{sensor}{axis}" for unit in UNITS for sensor in ("acc", "gyro", "mag") for axis in "xyz")
SEGMENT = 125
SUBJECT = re.compile(r"^p(\d+)$")
SEGMENT_FILE = re.compile(r"^s(\d+)\.txt$")

LAYOUT = """\
<data_dir>/data/                     (or data_dir is this folder itself)
  a01/ ... a19/                     one folder per activity
    p1/ ... p8/                     one folder per subject
      s01.txt ... s60.txt           one 5 s segment: 125 rows (25 Hz) x 45 comma-separated columns
                                    (torso, right arm, left arm, right leg, left leg x acc/gyro/mag x/y/z)"""


class DSADSDataModule(TimeSeriesDataModule):
    """DSADS segments (125 x 45, one window each) of the chosen activities.

    Args:
        data_dir: the ``data`` folder or its parent.
        activities: activity folders to use, in class order (default a01-a09: PA-HAR's 9 classes, unnamed in the
            paper); ``[a01, ..., a19]`` for all 19.
        units: sensor units to use (``T``, ``RA``, ``LA``, ``RL``, ``LL``; 9 channels each).
        Others: ``TimeSeriesDataModule`` (defaults: each segment one window, random 7:3 split).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    default_sample_rate = 25.0

    def __init__(self, data_dir: str, activities: list[str] = [f"a{i:02d}" for i in range(1, 10)],
                 units: list[str] = list(UNITS), window_length: Optional[float] = None,
                 window_step: Optional[float] = None, split: str = "random", test_size: float = 0.3, **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, split=split,
                         test_size=test_size, **kwargs)
        valid = [f"a{i:02d}" for i in range(1, len(ACTIVITIES) + 1)]
        unknown = sorted(set(activities) - set(valid))
        if not activities or unknown or len(set(activities)) != len(activities):
            raise ValueError(f"activities must be distinct folders of {valid}, got {activities}")
        unknown_units = sorted(set(units) - set(UNITS))
        if not units or unknown_units:
            raise ValueError(f"units must be a non-empty subset of {list(UNITS)}, got {units}")
        self.activities, self.units = list(activities), list(units)
        self.classes = tuple(ACTIVITIES[valid.index(a)] for a in self.activities)
        self.columns = [CHANNELS.index(f"{unit}_{sensor}{axis}") for unit in self.units
                        for sensor in ("acc", "gyro", "mag") for axis in "xyz"]

    def list_recordings(self) -> list[Recording]:
        root = self.data_dir / "data" if (self.data_dir / "data").is_dir() else self.data_dir
        recordings = []
        for label, activity in enumerate(self.activities):
            folder = self.require_dir(root / activity, f"activity folder {activity}")
            subjects = sorted((p for p in folder.iterdir() if p.is_dir() and SUBJECT.match(p.name)),
                              key=lambda p: int(p.name[1:]))
            if not subjects:
                raise self.error("no p<subject> folders", folder)
            for subject in subjects:
                segments = sorted(p for p in subject.glob("s*.txt") if SEGMENT_FILE.match(p.name))
                if not segments:
                    raise self.error("no s<segment>.txt files", subject)
                for path in segments:
                    values = read_matrix(path, len(CHANNELS), self.layout, self.standin_config, sep=",")
                    if len(values) != SEGMENT:
                        raise self.error(f"expected {SEGMENT} rows (5 s at 25 Hz), got {len(values)}", path)
                    recordings.append(Recording(values[:, self.columns].astype(np.float32), label,
                                                subject=subject.name, trial=path.stem,
                                                name=f"{activity}_{subject.name}_{path.stem}"))
        return recordings
