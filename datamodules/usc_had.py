"""USC-HAD (Zhang & Sawchuk 2012) in its released layout: 14 subjects, 12 activities x 5 trials, 100 Hz.

``USC-HAD/Subject{1-14}/a{1-12}t{1-5}.mat``: each file one continuous trial of one activity, variable
``sensor_readings`` (N x 6: accelerometer x/y/z in g, gyroscope x/y/z in dps) of a hip-worn MotionNode. The
activity is the file's ``a<k>``, the trial its ``t<k>``. PA-HAR (Table 1): windows of 512 samples with 50 % overlap,
12 classes, 7:3 split (a stratified random window split here; the paper does not say how; ``split: subject`` /
``loso`` for subject-independent protocols).
"""
from __future__ import annotations

import re

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule
from datamodules.unimib_shar import load_mat_variable

ACTIVITIES = ("walking_forward", "walking_left", "walking_right", "walking_upstairs", "walking_downstairs",
              "running_forward", "jumping_up", "sitting", "standing", "sleeping", "elevator_up", "elevator_down")
FILE = re.compile(r"^a(\d+)t(\d+)\.mat$")

LAYOUT = """\
<data_dir>/USC-HAD/                  (or data_dir is this folder itself)
  Subject1/ ... Subject14/
    a1t1.mat ... a12t5.mat          variable sensor_readings, N x 6 (acc x/y/z g, gyro x/y/z dps)"""


class USCHADDataModule(TimeSeriesDataModule):
    """USC-HAD's per-trial recordings (6 channels), windowed 512 / 256 by default.

    Args:
        data_dir: the ``USC-HAD`` folder or its parent.
        Others: ``TimeSeriesDataModule`` (defaults: window 512, step 256, random 7:3 split).
    """

    layout = LAYOUT
    standin_config = "experiments/pa_har_demo.yaml"
    classes = ACTIVITIES
    default_sample_rate = 100.0

    def __init__(self, data_dir: str, window_length: float = 512, window_step: float = 256, split: str = "random",
                 test_size: float = 0.3, **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(data_dir=data_dir, window_length=window_length, window_step=window_step, split=split,
                         test_size=test_size, **kwargs)

    def list_recordings(self) -> list[Recording]:
        root = self.data_dir / "USC-HAD" if (self.data_dir / "USC-HAD").is_dir() else self.data_dir
        subjects = sorted((p for p in root.glob("Subject*") if p.is_dir()),
                          key=lambda p: int(p.name[7:]) if p.name[7:].isdigit() else 0)
        if not subjects:
            raise self.error("no Subject<k> folders", root)
        recordings = []
        for folder in subjects:
            for path in sorted(folder.glob("a*t*.mat")):
                match = FILE.match(path.name)
                if not match:
                    continue
                activity, trial = int(match.group(1)), int(match.group(2))
                if not 1 <= activity <= len(ACTIVITIES):
                    raise self.error(f"activity a{activity} outside a1..a{len(ACTIVITIES)}", path)
                try:
                    values = load_mat_variable(path, "sensor_readings")
                except KeyError as error:
                    raise self.error("variable 'sensor_readings' missing", path) from error
                except Exception as error:  # noqa: BLE001
                    raise self.error(f"unreadable .mat file ({type(error).__name__}: {error})", path) from error
                if values.ndim != 2 or values.shape[1] != 6 or not np.isfinite(values).all():
                    raise self.error(f"sensor_readings must be a finite N x 6 array, got shape {values.shape}", path)
                recordings.append(Recording(values.astype(np.float32), activity - 1, subject=folder.name,
                                            trial=str(trial), name=f"{folder.name}_{path.stem}"))
            if not any(r.subject == folder.name for r in recordings):
                raise self.error("no a<activity>t<trial>.mat files", folder)
        return recordings
