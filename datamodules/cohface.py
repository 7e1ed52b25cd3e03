"""COHFACE (Heusch et al., arXiv 1709.00962): 160 one-minute 640 x 480 videos at 20 fps, 40 subjects x 4 sessions,
with the contact PPG (256 Hz). HR-TRACK splits 60 % / 40 % of the subjects "as suggested in [16]": the bob.db.cohface
protocol ``all`` (train + dev = 24 subjects train, 16 test), checked against bioidiap/bob.db.cohface.

Layout (as distributed)::

    <data_dir>/<subject 1..40>/<session 0..3>/data.avi
    <data_dir>/<subject>/<session>/data.hdf5    datasets "pulse", "respiration", "time" (s), 256 Hz
    <data_dir>/<subject>/<session>/data.csv     OpenFace FeatureExtraction output (landmarks, AUs)

The clip pipeline, caching and batches are ``datamodules.rppg.RPPGDataModule``'s.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.base import DatasetError
from datamodules.rppg import RPPGDataModule, VideoEntry, VideoRecord, decode_video_record

#: bob.db.cohface protocol "all": subject ids of its train, dev and test groups.
COHFACE_TRAIN = (1, 4, 16, 21, 25, 27, 28, 29, 31, 33, 35, 38)
COHFACE_DEV = (2, 5, 6, 7, 9, 17, 18, 19, 24, 36, 37, 39)
COHFACE_TEST = (3, 8, 10, 11, 12, 13, 14, 15, 20, 22, 23, 26, 30, 32, 34, 40)

COHFACE_LAYOUT = """\
<data_dir>/<subject 1..40>/<session 0..3>/data.avi     the face video (20 fps)
<data_dir>/<subject>/<session>/data.hdf5               datasets pulse, respiration, time (256 Hz)
<data_dir>/<subject>/<session>/data.csv                OpenFace landmarks + AUs (FeatureExtraction -f data.avi);
                                                       without it: --data.landmark_source template (degraded)"""


def read_cohface_pulse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``data.hdf5`` -> (time s, pulse)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            pulse, time = np.asarray(f["pulse"], np.float64), np.asarray(f["time"], np.float64)
    except (OSError, KeyError) as err:
        raise DatasetError(f"Unreadable COHFACE physiology file ({err})", path=path, layout=COHFACE_LAYOUT) from err
    if len(pulse) != len(time) or len(pulse) < 2:
        raise DatasetError("COHFACE 'pulse' and 'time' must have the same length (> 1)", path=path,
                           layout=COHFACE_LAYOUT)
    return time, pulse


class COHFACEDataModule(RPPGDataModule):
    """COHFACE as clip sequences (see ``RPPGDataModule`` for the pipeline arguments).

    Args:
        dev_as_val: the protocol's dev subjects validate instead of training (the paper trains on train + dev).
        sessions: which of the four sessions (0-1 studio light, 2-3 natural light) are used.
    """

    layout = COHFACE_LAYOUT

    def __init__(self, data_dir: str = "data/cohface", dev_as_val: bool = False, sessions=(0, 1, 2, 3), **kwargs):
        super().__init__(data_dir=data_dir, **kwargs)
        self.dev_as_val, self.sessions = dev_as_val, tuple(sessions)

    def list_videos(self) -> list[VideoEntry]:
        if not self.data_dir.is_dir():
            raise self.error("COHFACE folder not found", path=self.data_dir)
        groups = {**{s: "train" for s in COHFACE_TRAIN}, **{s: "val" if self.dev_as_val else "train"
                                                             for s in COHFACE_DEV},
                  **{s: "test" for s in COHFACE_TEST}}
        entries = []
        for subject, split in sorted(groups.items()):
            for session in self.sessions:
                folder = self.data_dir / str(subject) / str(session)
                if not folder.is_dir():
                    continue
                for name in ("data.avi", "data.hdf5"):
                    if not (folder / name).is_file():
                        raise self.error(f"Missing {name}", path=folder / name)
                entries.append(VideoEntry(f"{subject}_{session}", str(subject), split, folder / "data.avi",
                                          folder / "data.hdf5"))
        if not entries:
            raise self.error("No <subject>/<session>/data.avi in the COHFACE folder", path=self.data_dir)
        return entries

    def decode(self, entry: VideoEntry) -> VideoRecord:
        time, pulse = read_cohface_pulse(entry.reference)
        return decode_video_record(self, entry.video, time, pulse, default_fps=20.0)
