"""CT colon segmentation datasets for Guided-SET-DCL: colon masks on abdominal CT, read with nibabel (NIfTI) or pydicom
(DICOM series), served as sequential episodes or whole scans (``datamodules/episodic.py``).

The paper's CTC data (98 CT colonography scans, 49 patients prone + supine) are private; three public or generic
layouts:

``layout: totalsegmentator`` (TotalSegmentator dataset, Wasserthal et al. 2023; its ``meta.csv`` split is used when
present, ``image_id;...;split`` with train/val/test, else a seeded split)::

    <data_dir>/meta.csv                          (optional)
    <data_dir>/s0000/ct.nii.gz
    <data_dir>/s0000/segmentations/colon.nii.gz
    <data_dir>/s0000/segmentations/liver.nii.gz  (optional: organs for the negatives' masks, see ``organ_names``)

``layout: pairs`` (any image / colon-mask NIfTI pairs, e.g. a CTC cohort exported as NIfTI; the case's stem names
both)::

    <data_dir>/images/<case>.nii.gz
    <data_dir>/labels/<case>.nii.gz              (colon > 0; a multi-label map with ``colon_label``)

``layout: dicom`` (a DICOM series folder per case and its colon mask as NIfTI on the same grid)::

    <data_dir>/<case>/dicom/*.dcm
    <data_dir>/<case>/colon.nii.gz

Volumes are reoriented to the closest RAS axes and stored as (D, H, W) with axis 0 running from inferior to superior
(the rectum in the lowest slices) and the slices in radiological display (anterior up). Splits: ``split_file`` (a JSON
``{"train": [...], "val": [...], "test": [...]}`` of case names, e.g. the paper's CTC68 / CTC30), or TotalSegmentator's
meta.csv, or a seeded shuffle into ``val_fraction`` / ``test_fraction`` (scans of one patient, prone and supine, stay
together when ``patient_pattern`` names them). The preprocessed scans (MRF label, windowed and resized slices) are
cached as ``.npz`` under ``cache_dir`` (default ``<data_dir>/.cache_setdcl``).
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from datamodules.base import DatasetError
from datamodules.episodic import EpisodicVolumeDataModule, RawVolume

STANDIN_CONFIG = "experiments/setdcl_demo.yaml"

LAYOUTS = {
    "totalsegmentator": """<data_dir>/meta.csv                          (optional: image_id;...;split)
<data_dir>/s0000/ct.nii.gz
<data_dir>/s0000/segmentations/colon.nii.gz
<data_dir>/s0000/segmentations/<organ>.nii.gz (optional, organ_names)""",
    "pairs": """<data_dir>/images/<case>.nii.gz
<data_dir>/labels/<case>.nii.gz   (colon > 0, or == colon_label)""",
    "dicom": """<data_dir>/<case>/dicom/*.dcm    (one axial CT series)
<data_dir>/<case>/colon.nii.gz    (the colon mask on the series' grid)""",
}


def to_axial_stack(array: np.ndarray) -> np.ndarray:
    """RAS (x, y, z) -> (z, y, x) with anterior up: axis 0 inferior -> superior."""
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0))[:, ::-1, :])


class ColonCTDataModule(EpisodicVolumeDataModule):
    """Colon CT scans in one of the layouts of the module docstring.

    Args:
        data_dir: the dataset root.
        layout: ``totalsegmentator``, ``pairs`` or ``dicom``.
        colon_label: the colon's value in a multi-label map (``None``: every value > 0).
        organ_names: TotalSegmentator masks whose union is the negatives' unrelated structure (e.g. [liver, spleen]);
            empty: superpixels (or ``unrelated_source: superpixel``).
        split_file: JSON of case names per split; ``None``: meta.csv (TotalSegmentator) or a seeded split.
        val_fraction, test_fraction, split_seed: the seeded split.
        patient_pattern: a regex whose first group is the patient of a case name (prone/supine kept together).
        max_cases: use only the first cases (sorted), for quick runs.
        cache_dir: preprocessed-scan cache; ``None``: ``<data_dir>/.cache_setdcl``.
        (others: ``datamodules.episodic.EpisodicVolumeDataModule``)
    """

    standin_config = STANDIN_CONFIG

    def __init__(self, data_dir: str, layout: Literal["totalsegmentator", "pairs", "dicom"] = "totalsegmentator",
                 colon_label: Optional[int] = None, organ_names: Sequence[str] = (), split_file: Optional[str] = None,
                 val_fraction: float = 0.1, test_fraction: float = 0.3, split_seed: int = 42,
                 patient_pattern: Optional[str] = None, max_cases: Optional[int] = None,
                 cache_dir: Optional[str] = None,
                 image_size: int = 256, hu_window: Sequence[float] = (-1000.0, 1000.0),
                 mode: Literal["episodes", "slices"] = "episodes", episodes_per_epoch: int = 1000, neighbour: int = 1,
                 n_unrelated: int = 3, support_mode: Literal["neighbour", "random"] = "neighbour",
                 gamma_range: Optional[Sequence[float]] = None,
                 unrelated_source: Literal["auto", "organs", "superpixel"] = "auto", superpixel_rank: int = 2,
                 mrf_erosion: int = 4, mrf_dilation: int = 3, batch_size: int = 1, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, geometric: bool = False,
                 train_supervision: Literal["labels", "superpixel"] = "labels", superpixel_min_size: int = 400,
                 superpixel_sigma: float = 1.0, superpixel_neighbour: int = 0,
                 slice_context: int = 1) -> None:
        super().__init__(image_size, hu_window, mode, episodes_per_epoch, neighbour, n_unrelated, support_mode,
                         gamma_range, unrelated_source, superpixel_rank, mrf_erosion, mrf_dilation, batch_size,
                         num_workers, pin_memory, geometric,
                         train_supervision, superpixel_min_size, superpixel_sigma, superpixel_neighbour,
                         slice_context)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.layout, self.colon_label, self.organ_names = layout, colon_label, list(organ_names)
        self.split_file, self.val_fraction, self.test_fraction = split_file, val_fraction, test_fraction
        self.split_seed, self.patient_pattern, self.max_cases = split_seed, patient_pattern, max_cases
        self.cache_root = Path(os.path.expanduser(str(cache_dir))) if cache_dir else self.data_dir / ".cache_setdcl"
        self._splits: Optional[dict[str, list[str]]] = None

    # -- errors ------------------------------------------------------------------------------------
    def error(self, problem: str, path=None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(f"{type(self).__name__} ({self.layout}): {problem}", path=path,
                            layout=LAYOUTS[self.layout], standin_config=self.standin_config, hint=hint)

    # -- listing -----------------------------------------------------------------------------------
    def cases(self) -> list[str]:
        if not self.data_dir.is_dir():
            raise self.error("data_dir does not exist or is not a directory", self.data_dir)
        if self.layout == "totalsegmentator":
            names = sorted(p.name for p in self.data_dir.iterdir() if (p / "ct.nii.gz").is_file())
        elif self.layout == "pairs":
            folder = self.data_dir / "images"
            if not folder.is_dir():
                raise self.error("missing images folder", folder)
            names = sorted(p.name[:-7] for p in folder.glob("*.nii.gz"))
        else:
            names = sorted(p.name for p in self.data_dir.iterdir() if (p / "dicom").is_dir())
        if not names:
            raise self.error("no cases found", self.data_dir)
        return names[: self.max_cases] if self.max_cases else names

    def case_files(self, case: str) -> tuple[Path, Path]:
        """(image path: a NIfTI file or a DICOM folder, colon mask path); raises naming the missing file."""
        root = self.data_dir
        image, label = {"totalsegmentator": (root / case / "ct.nii.gz", root / case / "segmentations" / "colon.nii.gz"),
                        "pairs": (root / "images" / f"{case}.nii.gz", root / "labels" / f"{case}.nii.gz"),
                        "dicom": (root / case / "dicom", root / case / "colon.nii.gz")}[self.layout]
        for path in (image, label):
            if not path.exists():
                raise self.error("missing file", path)
        return image, label

    def splits(self) -> dict[str, list[str]]:
        if self._splits is not None:
            return self._splits
        cases = self.cases()
        if self.split_file:
            path = Path(os.path.expanduser(self.split_file))
            try:
                given = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise self.error(f"unreadable split file ({exc})", path) from exc
            unknown = sorted(set(sum((list(given.get(s, [])) for s in ("train", "val", "test")), [])) - set(cases))
            if unknown:
                raise self.error(f"split file names cases that are not in data_dir: {unknown[:5]}", path)
            self._splits = {s: list(given.get(s, [])) for s in ("train", "val", "test")}
            return self._splits
        meta = self.data_dir / "meta.csv"
        if self.layout == "totalsegmentator" and meta.is_file():
            with open(meta, newline="") as file:
                dialect = csv.Sniffer().sniff(file.read(4096), delimiters=";,")
                file.seek(0)
                rows = list(csv.DictReader(file, dialect=dialect))
            split_of = {row.get("image_id", ""): row.get("split", "") for row in rows}
            self._splits = {s: [c for c in cases if split_of.get(c) == s] for s in ("train", "val", "test")}
            if all(self._splits.values()):
                return self._splits
        groups = sorted({self._patient(c) for c in cases})
        order = np.random.default_rng(self.split_seed).permutation(len(groups))
        n_test = max(1, int(round(self.test_fraction * len(groups))))
        n_val = max(1, int(round(self.val_fraction * len(groups))))
        if n_test + n_val >= len(groups):
            raise self.error(f"{len(groups)} patients cannot fill train, val and test", self.data_dir)
        split_of = {}
        for rank, g in enumerate(order):
            split_of[groups[g]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        self._splits = {s: [c for c in cases if split_of[self._patient(c)] == s] for s in ("train", "val", "test")}
        return self._splits

    def _patient(self, case: str) -> str:
        if self.patient_pattern:
            match = re.match(self.patient_pattern, case)
            if match and match.groups():
                return match.group(1)
        return case

    # -- reading -----------------------------------------------------------------------------------
    def read_nifti(self, path: Path, error=None) -> np.ndarray:
        """A NIfTI volume as (D, H, W) (``to_axial_stack``); ``error(problem, path, hint=...)`` builds the exception
        (default: this layout's ``DatasetError``)."""
        import nibabel as nib

        error = error or self.error
        try:
            image = nib.as_closest_canonical(nib.load(str(path)))
            array = np.asarray(image.dataobj)
        except Exception as exc:  # nibabel, gzip and zlib raise many types for corrupt files
            raise error("corrupt or unreadable volume", path,
                        hint=f"nibabel: {type(exc).__name__}: {exc}") from exc
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3:
            raise error(f"expected a 3D volume, got shape {array.shape}", path)
        return to_axial_stack(array)

    def read_dicom_series(self, folder: Path) -> np.ndarray:
        """One axial series in HU (slope/intercept applied), ordered inferior -> superior, as (D, H, W) on the grid of
        ``to_axial_stack`` (rows anterior -> posterior, columns patient left -> right), assuming the usual axial
        orientation (ImageOrientationPatient 1,0,0,0,1,0: DICOM rows anterior first, columns patient right first)."""
        import pydicom

        files = sorted(p for p in folder.iterdir() if p.is_file())
        slices = []
        for path in files:
            try:
                ds = pydicom.dcmread(str(path))
                hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) \
                    + float(getattr(ds, "RescaleIntercept", 0))
                z = float(ds.ImagePositionPatient[2])
            except Exception as exc:  # pydicom raises many types for non-DICOM or pixel-less files
                raise self.error("unreadable DICOM slice", path, hint=f"pydicom: {type(exc).__name__}: {exc}") from exc
            slices.append((z, hu))
        if not slices:
            raise self.error("no DICOM slices", folder)
        slices.sort(key=lambda item: item[0])
        return np.ascontiguousarray(np.stack([hu for _, hu in slices])[:, :, ::-1])

    def volume_names(self, split: str) -> list[str]:
        return list(self.splits()[split])

    def read_volume(self, case: str) -> RawVolume:
        image_path, label_path = self.case_files(case)
        hu = self.read_dicom_series(image_path) if self.layout == "dicom" else self.read_nifti(image_path)
        labels = self.read_nifti(label_path)
        if labels.shape != hu.shape:
            raise self.error(f"colon mask has shape {labels.shape}, the image {hu.shape}", label_path)
        colon = labels == self.colon_label if self.colon_label is not None else labels > 0
        organs = None
        if self.organ_names and self.layout == "totalsegmentator":
            organs = np.zeros(hu.shape, bool)
            for name in self.organ_names:
                path = self.data_dir / case / "segmentations" / f"{name}.nii.gz"
                if not path.is_file():
                    raise self.error("missing organ mask (organ_names)", path)
                organs |= self.read_nifti(path) > 0
        return RawVolume(case, hu.astype(np.float32), colon.astype(np.uint8),
                         None if organs is None else organs.astype(np.uint8))

    def prepare_data(self) -> None:
        """Check the layout, then fill the cache (MRF labels, resized slices) once, one scan in memory at a time."""
        cases = [case for split in ("train", "val", "test") for case in self.splits()[split]]
        for case in cases:
            self.case_files(case)
        for case in cases:
            if self.cached(case) is None:
                self.preprocess(self.read_volume(case))
