"""MIT1003 / "WherePeopleLook" (Judd, Ehinger, Durand & Torralba, ICCV 2009) in its released layout: 1,003 images
free-viewed for 3 s by 15 subjects, ETL-400 ISCAN tracker at 240 Hz.

``DATA/<user>/<image stem>.mat`` holds one MATLAB variable named after the stem (MATLAB cuts names to 63
characters), a struct whose ``DATA(1).eyeData`` is the N x 2 raw (x, y) in pixels; negative values are blinks /
track loss (invalid here), as the dataset's ``checkFixations.m`` treats them. ``ALLSTIMULI/<stem>.jpeg`` holds the
images (not needed for scanpath classification). The subject is ``<user>``, the stimulus the file stem.
"""
from __future__ import annotations

import numpy as np

from datamodules.scanpath import Scanpath, ScanpathDataModule

LAYOUT = """\
<data_dir>/                     (MIT1003 as released: DATA.zip and ALLSTIMULI.zip unpacked)
  ALLSTIMULI/<stem>.jpeg        1,003 images (optional here)
  DATA/<user>/<stem>.mat        15 users (CNG, ajs, emb, ...); variable <stem> (struct): DATA(1).eyeData N x 2
                                raw x, y in pixels, 240 Hz, negative = blink"""


def read_mit1003_file(path) -> np.ndarray:
    """(T, 2) raw gaze of one ``DATA/<user>/<stem>.mat``, NaN where x or y is negative (blinks)."""
    from scipy.io import loadmat

    mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    names = [k for k in mat if not k.startswith("__")]
    if len(names) != 1:
        raise ValueError(f"expected one variable (the image stem), found {names}")
    record = mat[names[0]]
    data = getattr(record, "DATA", None)
    if data is None:
        raise ValueError(f"variable {names[0]!r} has no field DATA")
    if isinstance(data, np.ndarray):  # a struct array: DATA(1)
        data = data.flat[0]
    eye = getattr(data, "eyeData", None)
    if eye is None:
        raise ValueError("DATA(1) has no field eyeData")
    eye = np.asarray(eye, dtype=np.float64)
    if eye.ndim != 2 or eye.shape[1] < 2:
        raise ValueError(f"eyeData must be N x 2, got shape {eye.shape}")
    xy = eye[:, :2].astype(np.float32)
    xy[(xy < 0).any(axis=1)] = np.nan
    return xy


class MIT1003DataModule(ScanpathDataModule):
    """MIT1003 raw gaze (240 Hz); ``task`` subject (15 classes) or stimulus (1,003).

    Args:
        data_dir: the folder holding ``DATA/`` (or ``DATA`` itself).
        Others: ``ScanpathDataModule``.
    """

    layout = LAYOUT
    standin_config = "experiments/scanpath_fern_demo.yaml"
    default_sample_rate = 240.0

    def __init__(self, data_dir: str, **kwargs):
        super().__init__(data_dir=data_dir, **kwargs)

    def read_scanpaths(self) -> list[Scanpath]:
        root = self.data_dir / "DATA" if (self.data_dir / "DATA").is_dir() else self.data_dir
        users = sorted(p for p in root.iterdir() if p.is_dir())
        if not users:
            raise self.error("no DATA/<user> folders", root)
        scanpaths = []
        for user in users:
            files = sorted(user.glob("*.mat"))
            if not files:
                raise self.error("no <stem>.mat files", user)
            for path in files:
                try:
                    xy = read_mit1003_file(path)
                except Exception as error:  # noqa: BLE001 - scipy raises several types for corrupt files
                    raise self.error(f"unreadable eye-tracking file ({type(error).__name__}: {error})", path) from error
                scanpaths.append(Scanpath(xy, user.name, path.stem, name=f"{user.name}/{path.stem}"))
        return scanpaths
