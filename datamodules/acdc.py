"""The ACDC release layout (Automated Cardiac Diagnosis Challenge, MICCAI 2017; Bernard et al. 2018), read in one
place for every paper that uses it (PointBL's point-label slices: ``datamodules.acdc_points``; HarmonizedSS's
fully labelled slices: ``datamodules.acdc_slices``):

    <data_dir>/training/patient001/patient001_frame01.nii.gz      (ED or ES frame, H x W x D)
    <data_dir>/training/patient001/patient001_frame01_gt.nii.gz   (0 background, 1 RV, 2 Myo, 3 LV)
    <data_dir>/training/patient001/patient001_frame12.nii.gz (+ _gt), Info.cfg, patient001_4d.nii.gz (unused)
    ... patient100
"""
from __future__ import annotations

import re
from pathlib import Path

from datamodules.base import DatasetError

LAYOUT = """<data_dir>/training/patient001/patient001_frame01.nii.gz
<data_dir>/training/patient001/patient001_frame01_gt.nii.gz
<data_dir>/training/patient001/patient001_frame12.nii.gz
<data_dir>/training/patient001/patient001_frame12_gt.nii.gz
<data_dir>/training/patient001/Info.cfg
... (patient001 - patient100)"""
CLASS_NAMES = ("background", "rv", "myo", "lv")


def training_root(data_dir: Path) -> Path:
    """``<data_dir>/training``, or ``data_dir`` itself when it is the training folder."""
    return data_dir / "training" if (data_dir / "training").is_dir() else data_dir


def patient_dirs(data_dir: Path, standin_config: str) -> list[Path]:
    """The ``patientXXX`` folders, sorted; a clear error when there are none."""
    root = training_root(Path(data_dir))
    if not root.is_dir():
        raise DatasetError("ACDC training folder not found", path=root, layout=LAYOUT, standin_config=standin_config)
    patients = sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"patient\d{3}", p.name))
    if not patients:
        raise DatasetError("no patientXXX folder", path=root, layout=LAYOUT, standin_config=standin_config)
    return patients


def labelled_frames(patient: Path, standin_config: str) -> list[tuple[Path, Path]]:
    """The annotated frames of one patient as (image, label) paths (ED and ES), each checked to exist."""
    images = sorted(patient.glob(f"{patient.name}_frame[0-9][0-9].nii.gz"))
    labels = sorted(patient.glob(f"{patient.name}_frame[0-9][0-9]_gt.nii.gz"))
    if not images and not labels:
        raise DatasetError("no labelled frame (patientXXX_frameYY.nii.gz + _gt.nii.gz)", path=patient,
                           layout=LAYOUT, standin_config=standin_config)
    pairs = []
    for image in sorted({*images, *(p.with_name(p.name.replace("_gt.nii.gz", ".nii.gz")) for p in labels)}):
        label = image.with_name(image.name.replace(".nii.gz", "_gt.nii.gz"))
        for path in (image, label):
            if not path.is_file():
                raise DatasetError("missing frame or ground truth", path=path, layout=LAYOUT,
                                   standin_config=standin_config)
        pairs.append((image, label))
    return pairs


def read_info(path: Path) -> dict[str, str]:
    """Info.cfg (``key: value`` lines: ED, ES, Group, Height, NbFrame, Weight)."""
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in path.read_text().splitlines() if ":" in line)}
