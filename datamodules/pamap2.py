"""PAMAP2 (Reiss & Stricker 2012) in its released layout: 9 subjects, 3 IMUs (hand, chest, ankle) at 100 Hz.

``PAMAP2_Dataset/Protocol/subject10{1-9}.dat``: one sample per row, space separated, 54 columns: timestamp (s),
activityID, heart rate, then per IMU (hand 4-20, chest 21-37, ankle 38-54, 1-based) temperature, acc +-16 g
x/y/z, acc +-6 g x/y/z, gyroscope x/y/z, magnetometer x/y/z, orientation (4, invalid). Dropped packets are NaN:
linearly interpolated per channel within each subject's log. Activity 0 (transient) and the activities outside
the 12 of the protocol are unlabelled (windows dropped). PA-HAR (Table 1): window 171, no overlap, 12 classes, 7:3
split (a stratified random window split here; the paper does not say how). Channels: acc16g + gyro + mag per IMU
(``imus`` picks the IMUs, Fig. 4: 9 channels each; ``acc6g: true`` adds the +-6 g accelerometer).
"""
from __future__ import annotations

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule
from datamodules.uci_har import fill_gaps, read_matrix

ACTIVITY_IDS = (1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24)
ACTIVITIES = ("lying", "sitting", "standing", "walking", "running", "cycling", "nordic_walking", "ascending_stairs",
              "descending_stairs", "vacuum_cleaning", "ironing", "rope_jumping")
IMU_START = {"hand": 3, "chest": 20, "ankle": 37}  # 0-based column of each IMU's temperature
COLUMNS = 54

LAYOUT = """\
<data_dir>/PAMAP2_Dataset/           (or data_dir is this folder itself)
  Protocol/
    subject101.dat ... subject109.dat
                                    one sample per row, 54 space-separated columns: timestamp, activityID,
                                    heart rate, 17 columns for each of the hand, chest and ankle IMUs
                                    (NaN where a packet was dropped)"""


def imu_columns(imu: str, acc6g: bool) -> list[int]:
    start = IMU_START[imu]
    columns = list(range(start + 1, start + 4))  # acc 16 g
    if acc6g:
        columns += list(range(start + 4, start + 7))
    return columns + list(range(start + 7, start + 13))  # gyroscope, magnetometer


class PAMAP2DataModule(TimeSeriesDataModule):
    """PAMAP2's protocol logs, 12 activities, the chosen IMUs' channels.

    Args:
        data_dir: the ``PAMAP2_Dataset`` folder or its parent.
        imus: which IMUs (``hand``, ``chest``, ``ankle``; Fig. 4's sensor positions).
        acc6g: also the +-6 g accelerometer (12 channels per IMU instead of 9).
        Others: ``TimeSeriesDataModule`` (defaults: window 171, step 171, random 7:3 split).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    classes = ACTIVITIES
    default_sample_rate = 100.0

    def __init__(self, data_dir: str, imus: list[str] = ["hand", "chest", "ankle"], acc6g: bool = False,
                 window_length: float = 171, window_step: float = 171, split: str = "random", test_size: float = 0.3,
                 **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, split=split,
                         test_size=test_size, **kwargs)
        unknown = sorted(set(imus) - set(IMU_START))
        if not imus or unknown:
            raise ValueError(f"imus must be a non-empty subset of {list(IMU_START)}, got {imus}")
        self.imus, self.acc6g = list(imus), acc6g
        self.columns = [c for imu in self.imus for c in imu_columns(imu, acc6g)]

    def _read(self, path) -> tuple[np.ndarray, np.ndarray]:
        table = read_matrix(path, COLUMNS, self.layout, self.standin_config, allow_missing=True)
        signals, empty = fill_gaps(table[:, self.columns])
        if empty.any():
            raise self.error("a channel has no valid value at all", path)
        labels = table[:, 1]
        if np.isnan(labels).any():
            raise self.error("activityID (column 2) has missing values", path)
        return signals.astype(np.float32), labels.astype(np.int64)

    def list_recordings(self) -> list[Recording]:
        root = self.data_dir / "PAMAP2_Dataset" if (self.data_dir / "PAMAP2_Dataset").is_dir() else self.data_dir
        protocol = self.require_dir(root / "Protocol", "Protocol folder")
        files = sorted(protocol.glob("subject1*.dat"))
        if not files:
            raise self.error("no subject1*.dat files", protocol)
        lookup = np.full(max(ACTIVITY_IDS) + 1, -1, dtype=np.int64)
        lookup[list(ACTIVITY_IDS)] = np.arange(len(ACTIVITY_IDS))
        recordings = []
        for path in files:
            signals, ids = self._read(path)
            labels = np.where((ids >= 0) & (ids < len(lookup)), lookup[np.clip(ids, 0, len(lookup) - 1)], -1)
            recordings.append(Recording(signals, labels, subject=path.stem, name=path.stem))
        return recordings
