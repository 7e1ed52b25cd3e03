"""UCI-HAR (Anguita et al. 2013), "Human Activity Recognition Using Smartphones", in its released layout.

30 subjects, a waist-mounted smartphone at 50 Hz, 6 activities; the raw inertial signals are released already
cut into 128-sample windows (2.56 s) with 50 % overlap, one window per row, so each row is taken whole
(``window_length: null``). 9 channels in this order: body_acc x/y/z, body_gyro x/y/z, total_acc x/y/z.
Split: the dataset's own subject split (``split: predefined``: 21 training subjects, 7352 windows; 9 test
subjects, 2947 windows: the 7:3 of PA-HAR's Table 1); a random window split or a subject split is one setting
away (``split: random`` / ``subject`` / ``loso``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.base import DatasetError
from datamodules.timeseries import Recording, TimeSeriesDataModule

SIGNALS = ("body_acc_x", "body_acc_y", "body_acc_z", "body_gyro_x", "body_gyro_y", "body_gyro_z",
           "total_acc_x", "total_acc_y", "total_acc_z")
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
WINDOW = 128

LAYOUT = """\
<data_dir>/UCI HAR Dataset/          (or data_dir is this folder itself)
  activity_labels.txt               "1 WALKING" ... "6 LAYING"
  train/
    y_train.txt                     one activity id (1-6) per window
    subject_train.txt               one subject id (1-30) per window
    Inertial Signals/
      body_acc_x_train.txt ...      one 128-sample window per row (whitespace separated), for each of
                                    body_acc_{x,y,z}, body_gyro_{x,y,z}, total_acc_{x,y,z}
  test/                             the same with _test"""


def read_matrix(path: Path, columns: int | None, layout: str, standin: str, sep: str = r"\s+",
                allow_missing: bool = False) -> np.ndarray:
    """A numeric text file (whitespace-separated, or ``sep``) as a 2D float array (columns checked when given).

    ``allow_missing``: NaN cells (``NaN`` in the file, dropped sensor packets) are returned as NaN instead of
    raising; the caller fills them (``fill_gaps``).
    """
    if not path.is_file():
        raise DatasetError("file not found", path=path, layout=layout, standin_config=standin)
    try:
        import pandas as pd

        values = pd.read_csv(path, sep=sep, header=None, dtype=np.float64, engine="c").to_numpy()
    except Exception as error:  # noqa: BLE001 (pandas raises many types on corrupt text)
        raise DatasetError(f"unreadable numeric text file ({type(error).__name__}: {error})", path=path,
                           layout=layout, standin_config=standin) from error
    if values.size == 0 or (columns is not None and values.shape[1] != columns):
        raise DatasetError(f"expected {columns} columns per row, got array of shape {values.shape}", path=path,
                           layout=layout, standin_config=standin)
    bad = np.isinf(values) if allow_missing else ~np.isfinite(values)
    if bad.any():
        raise DatasetError("non-numeric or missing values", path=path, layout=layout, standin_config=standin)
    return values


def fill_gaps(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN samples of each column linearly interpolated in time (nearest value before the first / after the last
    valid sample); columns with no valid sample at all are set to 0. Returns (filled, all-missing column mask)."""
    import pandas as pd

    frame = pd.DataFrame(values).interpolate(limit_direction="both")
    empty = frame.isna().all(axis=0).to_numpy()
    return frame.fillna(0.0).to_numpy(values.dtype), empty


class UCIHARDataModule(TimeSeriesDataModule):
    """UCI-HAR's inertial signals (9 x 128 windows), its activity labels and its subject split.

    Args:
        data_dir: the ``UCI HAR Dataset`` folder or its parent.
        signals: the channels to use, names from ``SIGNALS`` (default all 9).
        split: "predefined" (the released train/test subjects, default) or any ``TimeSeriesDataModule`` split.
        Others: ``TimeSeriesDataModule`` (windows are the released rows: ``window_length`` stays null).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    classes = ACTIVITIES
    default_sample_rate = 50.0

    def __init__(self, data_dir: str, signals: list[str] = list(SIGNALS), split: str = "predefined", **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, split=split, **kwargs)
        unknown = sorted(set(signals) - set(SIGNALS))
        if unknown:
            raise ValueError(f"unknown UCI-HAR signals {unknown}; choose from {list(SIGNALS)}")
        self.signals = list(signals)

    @property
    def root(self) -> Path:
        nested = self.data_dir / "UCI HAR Dataset"
        return nested if nested.is_dir() else self.data_dir

    def _read(self, path: Path, columns: int | None) -> np.ndarray:
        return read_matrix(path, columns, self.layout, self.standin_config)

    def list_recordings(self) -> list[Recording]:
        root = self.root
        self.require_file(root / "activity_labels.txt", "activity_labels.txt")
        recordings = []
        for part in ("train", "test"):
            folder = self.require_dir(root / part, f"{part} folder")
            labels = self._read(folder / f"y_{part}.txt", 1)[:, 0].astype(np.int64)
            subjects = self._read(folder / f"subject_{part}.txt", 1)[:, 0].astype(np.int64)
            if labels.min() < 1 or labels.max() > len(ACTIVITIES):
                raise self.error(f"activity ids must be 1..{len(ACTIVITIES)}, found {labels.min()}..{labels.max()}",
                                 folder / f"y_{part}.txt")
            channels = []
            for name in self.signals:
                path = folder / "Inertial Signals" / f"{name}_{part}.txt"
                values = self._read(path, WINDOW)
                if len(values) != len(labels):
                    raise self.error(f"{len(values)} windows but {len(labels)} labels in y_{part}.txt", path)
                channels.append(values.astype(np.float32))
            if len(subjects) != len(labels):
                raise self.error(f"{len(subjects)} subject ids but {len(labels)} labels", folder / f"subject_{part}.txt")
            windows = np.stack(channels, axis=-1)  # (N, 128, C)
            for i in range(len(labels)):
                recordings.append(Recording(windows[i], int(labels[i]) - 1, subject=f"subject{subjects[i]:02d}",
                                            name=f"{part}{i:05d}", partition=part))
        return recordings
