"""UniMiB-SHAR (Micucci et al. 2017) in its released layout: 11,771 accelerometer windows from 30 subjects.

``data/acc_data.mat`` holds ``acc_data`` (N x 453: 151 x-samples | 151 y | 151 z, 50 Hz, about 3 s, already
windowed) and ``data/acc_labels.mat`` ``acc_labels`` (N x 3: activity 1-17, subject 1-30, trial). 17 classes: 9
activities of daily living and 8 falls. Each row is one window, taken whole (``window_length: null``), reshaped
to (151, 3). PA-HAR's Table 1 splits 7:3 without saying how: a stratified random window split here
(``split: random, test_size: 0.3``); ``subject`` / ``loso`` give subject-independent protocols.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule

ACTIVITIES = ("StandingUpFS", "StandingUpFL", "Walking", "Running", "GoingUpS", "Jumping", "GoingDownS",
              "LyingDownFS", "SittingDown", "FallingForw", "FallingRight", "FallingBack", "HittingObstacle",
              "FallingWithPS", "FallingBackSC", "Syncope", "FallingLeft")
WINDOW = 151

LAYOUT = """\
<data_dir>/                         the UniMiB-SHAR folder (or its parent holding UniMiB-SHAR/)
  data/
    acc_data.mat                    variable acc_data, N x 453 (151 x | 151 y | 151 z samples per window)
    acc_labels.mat                  variable acc_labels, N x 3 (activity 1-17, subject 1-30, trial)"""


def load_mat_variable(path: Path, key: str) -> np.ndarray:
    """A variable of a MATLAB file: scipy for v5/v7 files, h5py for v7.3 (HDF5, stored transposed)."""
    from scipy.io import loadmat

    try:
        return np.asarray(loadmat(path, variable_names=[key])[key])
    except NotImplementedError:  # v7.3
        import h5py

        with h5py.File(path, "r") as file:
            return np.asarray(file[key]).T


class UniMiBSHARDataModule(TimeSeriesDataModule):
    """UniMiB-SHAR's 17-class acceleration windows (151 x 3), subjects as groups.

    Args:
        data_dir: the ``UniMiB-SHAR`` folder or its parent.
        Others: ``TimeSeriesDataModule`` (default split random 7:3 over windows, stratified).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    classes = ACTIVITIES
    default_sample_rate = 50.0

    def __init__(self, data_dir: str, split: str = "random", test_size: float = 0.3, **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, split=split, test_size=test_size, **kwargs)

    def _read(self, path: Path, key: str, columns: int) -> np.ndarray:
        self.require_file(path)
        try:
            values = load_mat_variable(path, key)
        except KeyError as error:
            raise self.error(f"variable {key!r} missing", path) from error
        except Exception as error:  # noqa: BLE001 (scipy/h5py raise many types on corrupt files)
            raise self.error(f"unreadable .mat file ({type(error).__name__}: {error})", path) from error
        if values.ndim != 2 or values.shape[1] != columns or not np.isfinite(values).all():
            raise self.error(f"{key} must be a finite N x {columns} array, got shape {values.shape}", path)
        return values

    def list_recordings(self) -> list[Recording]:
        root = self.data_dir / "UniMiB-SHAR" if (self.data_dir / "UniMiB-SHAR").is_dir() else self.data_dir
        data = self._read(root / "data" / "acc_data.mat", "acc_data", 3 * WINDOW)
        labels = self._read(root / "data" / "acc_labels.mat", "acc_labels", 3).astype(np.int64)
        if len(data) != len(labels):
            raise self.error(f"{len(data)} windows but {len(labels)} label rows", root / "data" / "acc_labels.mat")
        if labels[:, 0].min() < 1 or labels[:, 0].max() > len(ACTIVITIES):
            raise self.error(f"activity ids must be 1..{len(ACTIVITIES)}", root / "data" / "acc_labels.mat")
        windows = data.reshape(len(data), 3, WINDOW).transpose(0, 2, 1).astype(np.float32)  # (N, 151, 3)
        return [Recording(windows[i], int(labels[i, 0]) - 1, subject=f"subject{labels[i, 1]:02d}",
                          trial=str(labels[i, 2]), name=f"window{i:05d}") for i in range(len(data))]
