"""MHEALTH (Banos et al. 2014) in its released layout: 10 subjects, 50 Hz, chest / left-ankle / right-arm sensors.

``MHEALTHDATASET/mHealth_subject{1-10}.log``: one row per sample, whitespace (tab) separated, 24 columns: chest
acceleration x/y/z, ECG lead 1 and 2, ankle acceleration/gyroscope/magnetometer x/y/z, arm acceleration/gyroscope/
magnetometer x/y/z (23 signals) and the label (0 = null, 1-12 activities). Each subject's log is one continuous
recording with per-sample labels, cut by the time-series base. PA-HAR (Table 1): window 100 (2 s), 50 % overlap,
13 classes (the 12 activities and the null class, kept), 8:2 split (a stratified random window split here; the
paper does not say how; ``split: subject`` / ``loso`` for subject-independent protocols). A window's label is its
majority sample label (``label_mode``).
"""
from __future__ import annotations

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule
from datamodules.uci_har import read_matrix

CHANNELS = ("chest_acc_x", "chest_acc_y", "chest_acc_z", "ecg_1", "ecg_2",
            "ankle_acc_x", "ankle_acc_y", "ankle_acc_z", "ankle_gyro_x", "ankle_gyro_y", "ankle_gyro_z",
            "ankle_mag_x", "ankle_mag_y", "ankle_mag_z", "arm_acc_x", "arm_acc_y", "arm_acc_z",
            "arm_gyro_x", "arm_gyro_y", "arm_gyro_z", "arm_mag_x", "arm_mag_y", "arm_mag_z")
ACTIVITIES = ("null", "standing", "sitting", "lying", "walking", "climbing_stairs", "waist_bends", "arm_elevation",
              "knees_bending", "cycling", "jogging", "running", "jump_front_back")

LAYOUT = """\
<data_dir>/MHEALTHDATASET/           (or data_dir is this folder itself)
  mHealth_subject1.log ... mHealth_subject10.log
                                    one sample per row, 24 tab-separated columns: 23 signals, then the
                                    label (0 null, 1-12)"""


class MHEALTHDataModule(TimeSeriesDataModule):
    """MHEALTH's continuous per-subject logs, 23 channels (or ``channels``), 13 classes with null.

    Args:
        data_dir: the ``MHEALTHDATASET`` folder or its parent.
        channels: the signals to use, names from ``CHANNELS`` (default all 23).
        keep_null: keep the null class 0 (PA-HAR's 13 classes); False drops null windows and shifts labels to 0-11.
        Others: ``TimeSeriesDataModule`` (defaults: window 100, step 50, random 8:2 split).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    default_sample_rate = 50.0

    def __init__(self, data_dir: str, channels: list[str] = list(CHANNELS), keep_null: bool = True,
                 window_length: float = 100, window_step: float = 50, split: str = "random", test_size: float = 0.2,
                 **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, split=split,
                         test_size=test_size, **kwargs)
        unknown = sorted(set(channels) - set(CHANNELS))
        if unknown:
            raise ValueError(f"unknown MHEALTH channels {unknown}; choose from {list(CHANNELS)}")
        self.channels = [CHANNELS.index(c) for c in channels]
        self.keep_null = keep_null
        self.classes = ACTIVITIES if keep_null else ACTIVITIES[1:]

    def list_recordings(self) -> list[Recording]:
        root = self.data_dir / "MHEALTHDATASET" if (self.data_dir / "MHEALTHDATASET").is_dir() else self.data_dir
        files = sorted(root.glob("mHealth_subject*.log"), key=lambda p: int(p.stem.replace("mHealth_subject", "") or 0))
        if not files:
            raise self.error("no mHealth_subject*.log files", root)
        recordings = []
        for path in files:
            values = read_matrix(path, len(CHANNELS) + 1, self.layout, self.standin_config)
            labels = values[:, -1].astype(np.int64)
            if labels.min() < 0 or labels.max() > 12:
                raise self.error(f"labels must be 0-12, found {labels.min()}..{labels.max()}", path)
            if not self.keep_null:
                labels = labels - 1  # null -> -1: windows labelled null are dropped
            subject = path.stem.replace("mHealth_", "")
            recordings.append(Recording(values[:, self.channels].astype(np.float32), labels, subject=subject,
                                        name=subject))
        return recordings
