"""DOVES (van der Linde, Rajashekar, Bovik & Cormack, Spatial Vision 2009) in its released layout: 29 observers on
101 calibrated natural images (van Hateren, central 1024 x 768), dual-Purkinje tracker at 200 Hz, 5 s per image.

``Fixations/<image>.iml.mat`` (one per image, e.g. ``imk00031.iml.mat``) holds ``subj_names_list`` (the observers'
initials), ``eye_data`` (one cell per observer: the raw eye trace, row 1 x and row 2 y in pixels) and ``fix_data``
(the computed fixations; not used), as the database's ``display_fixations.m`` reads them. The subject is the
observer's name, the stimulus the image name.
"""
from __future__ import annotations

import numpy as np

from datamodules.scanpath import Scanpath, ScanpathDataModule

LAYOUT = """\
<data_dir>/                          (DOVES as released)
  Images/<image>.iml                 101 images (optional here)
  Fixations/<image>.iml.mat          subj_names_list {observer initials}, eye_data {2 x N raw x; y per observer},
                                     fix_data {fixations}; 200 Hz"""


def _cells(value) -> list:
    array = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    return list(array.reshape(-1)) if array.dtype == object else [value]


def read_doves_file(path) -> list[tuple[str, np.ndarray]]:
    """[(observer, (T, 2) raw gaze)] of one ``Fixations/<image>.iml.mat``."""
    from scipy.io import loadmat

    mat = loadmat(path, squeeze_me=True)
    for key in ("subj_names_list", "eye_data"):
        if key not in mat:
            raise ValueError(f"variable {key!r} missing")
    names = [str(n).strip() for n in _cells(mat["subj_names_list"])]
    traces = _cells(mat["eye_data"])
    if len(names) != len(traces):
        raise ValueError(f"{len(names)} subject names for {len(traces)} eye_data cells")
    out = []
    for name, trace in zip(names, traces):
        trace = np.asarray(trace, dtype=np.float64)
        if trace.ndim != 2 or trace.shape[0] < 2:
            raise ValueError(f"eye_data of {name!r} must have rows x, y (2 x N), got shape {trace.shape}")
        out.append((name, trace[:2].T.astype(np.float32)))
    return out


class DOVESDataModule(ScanpathDataModule):
    """DOVES raw eye traces (200 Hz); ``task`` subject (29 classes) or stimulus (101).

    Args:
        data_dir: the DOVES folder (holding ``Fixations/``).
        Others: ``ScanpathDataModule``.
    """

    layout = LAYOUT
    standin_config = "experiments/scanpath_fern_demo.yaml"
    default_sample_rate = 200.0

    def __init__(self, data_dir: str, **kwargs):
        super().__init__(data_dir=data_dir, **kwargs)

    def read_scanpaths(self) -> list[Scanpath]:
        folder = self.require_dir(self.data_dir / "Fixations", "Fixations folder")
        files = sorted(folder.glob("*.mat"))
        if not files:
            raise self.error("no <image>.iml.mat files", folder)
        scanpaths = []
        for path in files:
            image = path.name[:-len(".mat")].removesuffix(".iml")
            try:
                traces = read_doves_file(path)
            except Exception as error:  # noqa: BLE001 - scipy raises several types for corrupt files
                raise self.error(f"unreadable fixation file ({type(error).__name__}: {error})", path) from error
            scanpaths += [Scanpath(xy, subject, image, name=f"{subject}/{image}") for subject, xy in traces]
        return scanpaths
