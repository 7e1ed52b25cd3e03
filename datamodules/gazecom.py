"""GazeCom (Dorr, Martinetz, Gegenfurtner & Barth, J. Vis. 2010) in its released gaze-file format: EyeLink II,
250 Hz; the scanpath angle-fern paper uses the static-image condition (frames of one video count as one image),
drops subject V01 (a single recording) and keeps 10 subjects x 9 images.

Each gaze file is text: comment lines start with ``#``; a ``gaze <horizontal resolution> <vertical resolution>``
line and a ``geometry distance <screen-subject> <width> <height>`` line; then one sample per line,
``<timestamp in microseconds> <x> <y> <confidence>``. Samples with confidence <= ``min_confidence`` (track loss)
are invalid. The recording's subject is the file name's part before the first ``_`` and its stimulus the folder
the file lies in (one folder per video / image), e.g. ``static/beach/V02_beach.coord``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.scanpath import Scanpath, ScanpathDataModule

LAYOUT = """\
<data_dir>/                              (the static-image condition of the GazeCom gaze data)
  <stimulus>/                            one folder per video (its frames count as one image)
    <SUBJECT>_<stimulus>[...].coord      '#' comments, 'gaze W H', 'geometry distance D W H', then lines
                                         '<time us> <x> <y> <confidence>' (250 Hz)"""


def read_gazecom_file(path: Path, min_confidence: float = 0.0) -> np.ndarray:
    """(T, 2) gaze samples of one GazeCom gaze file, NaN where confidence <= ``min_confidence``; ValueError if the
    file has no sample lines or a sample line is not four numbers."""
    rows = []
    with open(path) as file:
        for number, line in enumerate(file, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#") or fields[0] in ("gaze", "geometry"):
                continue
            if len(fields) < 4:
                raise ValueError(f"line {number}: expected '<time> <x> <y> <confidence>', got {line.strip()!r}")
            try:
                rows.append([float(v) for v in fields[:4]])
            except ValueError:
                raise ValueError(f"line {number}: non-numeric sample {line.strip()!r}") from None
    if not rows:
        raise ValueError("no gaze samples")
    samples = np.asarray(rows, dtype=np.float64)
    xy = samples[:, 1:3].astype(np.float32)
    xy[samples[:, 3] <= min_confidence] = np.nan
    return xy


class GazeComDataModule(ScanpathDataModule):
    """GazeCom static-image gaze recordings (250 Hz); ``task`` subject (10 classes) or stimulus (9).

    Args:
        data_dir: the folder holding one sub-folder per stimulus.
        pattern: the gaze files' glob within a stimulus folder.
        min_confidence: samples at or below it are invalid (dropped).
        exclude_subjects: default ["V01"] (the paper: a single recording).
        Others: ``ScanpathDataModule``.
    """

    layout = LAYOUT
    standin_config = "experiments/scanpath_fern_demo.yaml"
    default_sample_rate = 250.0

    def __init__(self, data_dir: str, pattern: str = "*.coord", min_confidence: float = 0.0,
                 exclude_subjects: Optional[list[str]] = None, **kwargs):
        kwargs.setdefault("exclude_subjects", ["V01"] if exclude_subjects is None else exclude_subjects)
        super().__init__(data_dir=data_dir, **kwargs)
        self.pattern, self.min_confidence = pattern, min_confidence

    def read_scanpaths(self) -> list[Scanpath]:
        folders = sorted(p for p in self.data_dir.iterdir() if p.is_dir())
        scanpaths = []
        for folder in folders:
            for path in sorted(folder.rglob(self.pattern)):
                try:
                    xy = read_gazecom_file(path, self.min_confidence)
                except (ValueError, OSError, UnicodeDecodeError) as error:
                    raise self.error(f"unreadable gaze file ({error})", path) from error
                subject = path.stem.split("_")[0]
                scanpaths.append(Scanpath(xy, subject, folder.name, name=f"{folder.name}/{path.stem}"))
        if not scanpaths:
            raise self.error(f"no gaze files ({self.pattern}) in stimulus sub-folders", self.data_dir)
        return scanpaths
