"""MNI-HISUB25, the "KY" dataset of SMDGC (Kulaga-Yoskovitz et al., Sci Data 2015): 25 healthy adults, 3 T
submillimetric T1w (0.6 mm iso) and T2w (0.4 x 0.4 x 2 mm) MRI with manual labels of three hippocampal subfields
(CA1-3, CA4/DG, subiculum) in both hemispheres.

Download: Dryad doi:10.5061/dryad.gc72v (``mri_dataset.tar.gz``, 9.9 GB, with ``README.txt``) or NITRC
(``mni_hipposeg``). The archive's file names and label values are not verified here (the spec card could not read
them), so the reader takes per-subject path patterns relative to ``data_dir``, with ``{subject}`` where the subject
id goes and ``*`` as a wildcard, for the T1, the (optional) T2 and the label files, and a ``label_map`` from the
stored label values to the classes; check the archive's README.txt and set them in the experiment YAML. T1, T2 and
labels must lie on one grid (the archive's co-registered volumes); NIfTI or MINC, read with nibabel.

Samples, after SMDGC and its ref. [22] (Manjón et al. 2022): each subject gives two, its left and its right
hippocampus, each a fixed box (``crop_size`` voxels, default 96 x 96 x 100) centred on that hemisphere's labelled
voxels (left: RAS x below the volume's middle), the right one mirrored left-right so that both look alike; each
channel z-scored within its box. 25 subjects -> 50 samples; the 5-fold cross-validation keeps both hemispheres of a
subject in one fold. Decoded samples are cached as ``.npy`` (``datamodules.volume.NiftiVolumeDataModule``).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from datamodules.volume import NiftiVolumeDataModule, VolumeSubject

STANDIN_CONFIG = "experiments/smdgc_demo.yaml"
CLASS_NAMES = ("background", "ca1_3", "ca4_dg", "sub")


def pattern_regex(pattern: str) -> re.Pattern:
    """A path pattern with ``{subject}`` (and ``*`` wildcards) -> a regex capturing the subject id."""
    parts, seen = [], False
    for piece in re.split(r"(\{subject\}|\*)", pattern):
        if piece == "{subject}":
            parts.append("(?P=subject)" if seen else "(?P<subject>[^/]+?)")
            seen = True
        elif piece == "*":
            parts.append("[^/]*")
        else:
            parts.append(re.escape(piece))
    if not seen:
        raise ValueError(f"the pattern {pattern!r} has no {{subject}}")
    return re.compile("".join(parts))


def crop_box(array: np.ndarray, centre: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """The ``size`` box of the trailing axes centred on ``centre`` (voxels), filled with ``fill`` outside the array."""
    lead = array.ndim - len(size)
    starts = [int(c) - s // 2 for c, s in zip(centre, size)]
    pad = [(0, 0)] * lead + [(max(0, -st), max(0, st + s - n)) for st, s, n in zip(starts, size, array.shape[lead:])]
    padded = np.pad(array, pad, constant_values=fill)
    window = tuple(slice(st + p[0], st + p[0] + s) for st, s, p in zip(starts, size, pad[lead:]))
    return padded[(slice(None),) * lead + window]


class MNIHISUB25DataModule(NiftiVolumeDataModule):
    """MNI-HISUB25 / KY hippocampal subfields, two hemisphere samples per subject, grouped 5-fold CV.

    Args:
        data_dir: the extracted ``mri_dataset`` folder.
        t1_pattern, t2_pattern, label_pattern: paths under ``data_dir`` with ``{subject}``; the T1 pattern lists the
            subjects; the label pattern may match several files per subject (e.g. one per hemisphere), merged.
            ``t2_pattern: null`` uses T1 alone (1 channel).
        label_map: stored label value -> class (1 CA1-3, 2 CA4/DG, 3 SUB); values not in it (other than 0) are an error.
        crop_size: the box around each hippocampus (voxels).
        hemispheres: ``both`` (two samples per subject, the paper's 50), ``left`` or ``right``.
        folds, fold, val_groups, split_seed: grouped k-fold (the paper's 5-fold CV; ``val_groups`` training subjects
            validate, a choice: the paper names no validation set).
        patch_size, samples_per_volume, foreground_probability: training patches (``None``: whole crops).
        cache_dir: where decoded samples go (default ``<data_dir>/.cache_npy``).
    """

    num_labels = 4
    class_names = CLASS_NAMES
    standin_config = STANDIN_CONFIG

    def __init__(self, data_dir: str = "data/mni_hisub25",
                 t1_pattern: str = "{subject}/{subject}_t1w.nii.gz",
                 t2_pattern: Optional[str] = "{subject}/{subject}_t2w.nii.gz",
                 label_pattern: str = "{subject}/{subject}_labels*.nii.gz",
                 label_map: Optional[dict[int, int]] = None, crop_size: Sequence[int] = (96, 96, 100),
                 hemispheres: Literal["both", "left", "right"] = "both", folds: int = 5, fold: int = 0,
                 val_groups: int = 2, split_seed: int = 42, patch_size: Optional[Sequence[int]] = None,
                 samples_per_volume: int = 1, foreground_probability: float = 0.5, cache_dir: Optional[str] = None,
                 batch_size: int = 2, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = 1) -> None:
        super().__init__(data_dir, cache_dir, patch_size=patch_size, samples_per_volume=samples_per_volume,
                         foreground_probability=foreground_probability, split="kfold", folds=folds, fold=fold,
                         val_groups=val_groups, split_seed=split_seed, batch_size=batch_size,
                         num_workers=num_workers, pin_memory=pin_memory, eval_batch_size=eval_batch_size)
        self.save_hyperparameters()
        if hemispheres not in ("both", "left", "right"):
            raise ValueError(f"hemispheres must be both, left or right, got {hemispheres!r}")
        self.t1_pattern, self.t2_pattern, self.label_pattern = t1_pattern, t2_pattern, label_pattern
        self.label_map = {int(k): int(v) for k, v in (label_map or {1: 1, 2: 2, 3: 3}).items()}
        if not set(self.label_map.values()) <= {1, 2, 3}:
            raise ValueError(f"label_map must map to classes 1 (CA1-3), 2 (CA4/DG), 3 (SUB), got {self.label_map}")
        self.crop_size = tuple(int(c) for c in crop_size)
        self.hemispheres = hemispheres

    @property
    def in_channels(self) -> int:
        return 1 if self.t2_pattern is None else 2

    def expected_layout(self) -> str:
        lines = [f"{self.data_dir}/   (mri_dataset.tar.gz from Dryad doi:10.5061/dryad.gc72v; names per README.txt)",
                 f"  {self.t1_pattern:<40} T1w, one per subject (lists the subjects)"]
        if self.t2_pattern:
            lines.append(f"  {self.t2_pattern:<40} T2w on the T1w grid")
        lines.append(f"  {self.label_pattern:<40} labels on that grid, values {sorted(self.label_map)} "
                     "(--data.label_map maps them to 1 CA1-3, 2 CA4/DG, 3 SUB)")
        lines.append("  (set --data.t1_pattern/--data.t2_pattern/--data.label_pattern to the archive's file names)")
        return "\n".join(lines)

    def cache_settings(self) -> dict:
        return {"crop": self.crop_size, "hemispheres": self.hemispheres, "label_map": sorted(self.label_map.items()),
                "t2": self.t2_pattern is not None, "version": 1}

    def list_subjects(self) -> list[VolumeSubject]:
        regex = pattern_regex(self.t1_pattern)
        found = {}
        for path in sorted(self.data_dir.glob(self.t1_pattern.replace("{subject}", "*"))):
            match = regex.fullmatch(path.relative_to(self.data_dir).as_posix())
            if match:
                found[match.group("subject")] = path
        subjects = []
        for name, t1 in sorted(found.items()):
            channels = [t1]
            if self.t2_pattern is not None:
                channels.append(self._one(self.t2_pattern, name, "T2w"))
            labels = sorted(self.data_dir.glob(self.label_pattern.replace("{subject}", name)))
            if not labels:
                raise self.error(f"no label file for subject {name}", self.data_dir / self.label_pattern.format(subject=name))
            subjects.append(VolumeSubject(name, tuple(channels), tuple(labels)))
        return subjects

    def _one(self, pattern: str, subject: str, what: str) -> Path:
        matches = sorted(self.data_dir.glob(pattern.replace("{subject}", subject)))
        if len(matches) != 1:
            raise self.error(f"{'no' if not matches else len(matches)} {what} files for subject {subject} "
                             f"(expected one)", self.data_dir / pattern.replace("{subject}", subject))
        return matches[0]

    def map_labels(self, labels: np.ndarray, path: Path) -> np.ndarray:
        values = np.unique(labels)
        unknown = sorted(set(values.tolist()) - set(self.label_map) - {0})
        if unknown:
            raise self.error(f"label values {unknown} are not in label_map {self.label_map}", path,
                             hint="set --data.label_map to the archive's values (see its README.txt)")
        lookup = np.zeros(max(int(values.max()), max(self.label_map)) + 1, np.uint8)
        for raw, cls in self.label_map.items():
            lookup[raw] = cls
        return lookup[labels]

    def samples_from_subject(self, subject, channels, labels, spacing):
        image = np.stack(channels).astype(np.float32)
        if not (labels > 0).any():
            raise self.error(f"subject {subject.name} has no labelled voxels", subject.labels[0])
        middle = labels.shape[0] / 2
        samples = []
        for side in ("left", "right"):
            if self.hemispheres not in ("both", side):
                continue
            # the right hemisphere is mirrored (whole volume, before cropping) to look like a left one
            side_image, side_labels = (image, labels) if side == "left" else (image[:, ::-1], labels[::-1])
            voxels = np.argwhere(side_labels[: int(np.ceil(middle))] > 0)
            if voxels.size == 0:
                warnings.warn(f"MNI-HISUB25: subject {subject.name} has no {side} hippocampus labels; skipped",
                              stacklevel=2)
                continue
            centre = np.round(voxels.mean(0)).astype(int)
            box = crop_box(side_image, centre, self.crop_size, fill=0.0)
            box_labels = crop_box(side_labels, centre, self.crop_size, fill=0)
            mean = box.mean(axis=(1, 2, 3), keepdims=True)
            std = np.maximum(box.std(axis=(1, 2, 3), keepdims=True), 1e-6)
            samples.append((f"{subject.name}_{side[0].upper()}", ((box - mean) / std).astype(np.float32),
                            np.ascontiguousarray(box_labels).astype(np.uint8)))
        return samples


__all__ = ["MNIHISUB25DataModule", "crop_box", "pattern_regex"]
