"""TractoInferno (OpenNeuro ds003900) and the ISMRM 2015 tractography challenge phantom for the RL tractography
family: one bundle per run (``bundle``), tracked within a tract mask.

TractoInferno, as distributed (the paths Tract-RLFormer's code reads)::

    <data_dir>/derivatives/{trainset,validset,testset}/sub-<id>/
        fodf/sub-<id>__fodf.nii.gz        fODF SH coefficients, order 8 (45), descoteaux07 basis
        fodf/sub-<id>__peaks.nii.gz       fODF peaks (X, Y, Z, 3 x P); computed from the fODF with dipy if absent
        tractography/sub-<id>__<bundle>.trk   reference bundles (AF_L, CC_Fr_1, CG_L, OR_ML_L, PYT_L, ...)

``atlas_pattern`` (optional): the atlas bundle registered to the subject (.trk), the reference of the FSS-style
cleaning (the task's ``clean_mdf_mm``). The tract mask (tracking and seeding) is ``mask_pattern`` (e.g. MRM's
refined mask) when given, else the reference
bundle's voxels dilated by ``dilate_voxels`` (an oracle tract mask, as the paper's DET*/PROB* rows use
tract-specific masks); the scored bundle mask is the reference bundle's voxels (``density_map`` > 0).

HCP (``HCPDataModule``): ``<data_dir>/<subject>/T1w/Diffusion/{data.nii.gz,bvals,bvecs}`` and
``<data_dir>/<subject>/tracts/<bundle>.trk``; dipy CSD on the b = 1000 shell.

ISMRM 2015 (``ISMRM2015DataModule``)::

    <data_dir>/Diffusion.nii.gz, Diffusion.bvals, Diffusion.bvecs     the challenge's DWI (b 1000, 32 directions)
    <data_dir>/bundles/<bundle>.trk                                   ground-truth bundles (Cingulum_left, ...)
    <data_dir>/fodf.nii.gz (optional)                                 precomputed fODF SH; else dipy CSD (order 8)
                                                                      fitted once and cached as <cache_dir>/*.npz
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage

from datamodules.base import BaseDataModule, DatasetError, writable_dir
from datamodules.tractography import TractographyDataModule
from lightning_modules.tasks.tracking_env import TractographySubject

STANDIN = "experiments/tract_rlformer_demo.yaml"
TRACTOINFERNO_LAYOUT = """<data_dir>/derivatives/{trainset,validset,testset}/sub-<id>/
  fodf/sub-<id>__fodf.nii.gz            fODF SH (order 8, 45 coefficients)
  fodf/sub-<id>__peaks.nii.gz           fODF peaks (optional: computed from the fODF)
  tractography/sub-<id>__<bundle>.trk   reference bundles"""
ISMRM_LAYOUT = """<data_dir>/Diffusion.nii.gz, Diffusion.bvals, Diffusion.bvecs
<data_dir>/bundles/<bundle>.trk          ground-truth bundles
<data_dir>/fodf.nii.gz                   optional precomputed fODF SH (else dipy CSD, order 8)"""


def load_bundle_voxels(path: Path, reference, shape) -> tuple[np.ndarray, list]:
    """A .trk/.tck bundle in voxel space (voxel centres at integers) and its voxel mask."""
    from dipy.io.streamline import load_tractogram

    from lightning_modules.metrics.tractography import streamlines_to_mask

    sft = load_tractogram(str(path), reference, bbox_valid_check=False)
    sft.to_vox()
    sft.to_center()
    lines = [np.asarray(s, dtype=np.float32) for s in sft.streamlines]
    return streamlines_to_mask(lines, shape), lines


def peaks_from_sh(sh: np.ndarray, mask: np.ndarray, basis: str = "descoteaux07", legacy: bool = True,
                  npeaks: int = 5, relative_peak_threshold: float = 0.5,
                  min_separation_angle: float = 25) -> np.ndarray:
    """fODF peaks (X, Y, Z, npeaks, 3) in ``mask`` from SH coefficients (dipy ``sh_to_sf`` + ``peak_directions``)."""
    from dipy.data import get_sphere
    from dipy.direction import peak_directions
    from dipy.reconst.shm import order_from_ncoef, sh_to_sf

    sphere = get_sphere(name="repulsion724")
    order = order_from_ncoef(sh.shape[-1])
    peaks = np.zeros((*sh.shape[:3], npeaks, 3), np.float32)
    for index in np.argwhere(mask):
        odf = sh_to_sf(sh[tuple(index)], sphere, sh_order_max=order, basis_type=basis, legacy=legacy)
        directions, _, _ = peak_directions(odf, sphere, relative_peak_threshold=relative_peak_threshold,
                                           min_separation_angle=min_separation_angle)
        n = min(npeaks, len(directions))
        peaks[tuple(index)][:n] = directions[:n]
    return peaks


def csd_fodf(dwi: Path, bvals: Path, bvecs: Path, sh_order: int = 8, basis: str = "descoteaux07",
             legacy: bool = True, mask: Optional[np.ndarray] = None, shell: Optional[float] = None,
             cache: Optional[Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """fODF SH and peaks from a DWI with dipy's single-shell CSD (response ``auto_response_ssst``, order ``sh_order``,
    ``peaks_from_model`` on ``repulsion724``); ``shell``: keep the b0s and that b-value (+-100) of a multi-shell
    acquisition; ``mask``: fit only there (default: voxels with signal); cached as ``cache`` (.npz) when given."""
    import nibabel as nib
    from dipy.core.gradients import gradient_table
    from dipy.data import get_sphere
    from dipy.direction import peaks_from_model
    from dipy.io.gradients import read_bvals_bvecs
    from dipy.reconst.csdeconv import ConstrainedSphericalDeconvModel, auto_response_ssst

    if cache is not None and cache.is_file():
        with np.load(cache) as f:
            return f["sh"], f["peaks"]
    bval, bvec = read_bvals_bvecs(str(bvals), str(bvecs))
    data = np.asarray(nib.load(str(dwi)).dataobj, dtype=np.float32)
    if shell is not None:
        keep = (bval < 50) | (np.abs(bval - shell) <= 100)
        data, bval, bvec = data[..., keep], bval[keep], bvec[keep]
    gtab = gradient_table(bval, bvecs=bvec)
    response, _ = auto_response_ssst(gtab, data, roi_radii=10, fa_thr=0.7)
    model = ConstrainedSphericalDeconvModel(gtab, response, sh_order_max=sh_order)
    mask = data[..., gtab.b0s_mask].mean(-1) > 0 if mask is None else mask
    fit = peaks_from_model(model, data, get_sphere(name="repulsion724"), relative_peak_threshold=0.5,
                           min_separation_angle=25, mask=mask, return_sh=True, sh_order_max=sh_order,
                           sh_basis_type=basis, legacy=legacy, npeaks=5)
    sh, peaks = fit.shm_coeff.astype(np.float32), fit.peak_dirs.astype(np.float32)
    if cache is not None and writable_dir(cache.parent):
        np.savez(cache, sh=sh, peaks=peaks)
    return sh, peaks


class _BundleDataModule(TractographyDataModule):
    """What the two readers share: the bundle mask, the tract mask, peaks from SH when none are given."""

    def __init__(self, data_dir: str, bundle: Union[str, list[str]], mask_pattern: Optional[str] = None,
                 dilate_voxels: int = 1,
                 sh_basis: str = "descoteaux07", sh_legacy: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.bundle, self.mask_pattern, self.dilate_voxels = bundle, mask_pattern, dilate_voxels
        self.sh_basis, self.sh_legacy = sh_basis, sh_legacy

    layout = ""

    def _file(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise DatasetError(f"{what} not found", path=path, layout=self.layout, standin_config=STANDIN)
        return path

    def _subject(self, name: str, sh: np.ndarray, peaks: Optional[np.ndarray], image, bundle_path: Path,
                 mask_path: Optional[Path], bundle: Optional[str] = None,
                 atlas_path: Optional[Path] = None) -> TractographySubject:
        import nibabel as nib

        shape = sh.shape[:3]
        bundle_mask, _ = load_bundle_voxels(bundle_path, image, shape)
        atlas = load_bundle_voxels(atlas_path, image, shape)[1] if atlas_path is not None else None
        if mask_path is not None:
            tract_mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        else:
            tract_mask = bundle_mask if self.dilate_voxels < 1 else ndimage.binary_dilation(
                bundle_mask, iterations=self.dilate_voxels)
        if peaks is None:
            peaks = peaks_from_sh(sh, tract_mask, self.sh_basis, self.sh_legacy)
        return TractographySubject(name=name, sh=sh.astype(np.float32), peaks=peaks.astype(np.float32),
                                   tracking_mask=tract_mask, seed_mask=tract_mask, bundle_mask=bundle_mask,
                                   affine=image.affine, reference=atlas, bundle=bundle or self.bundle,
                                   sh_basis=self.sh_basis, sh_legacy=self.sh_legacy)


def _peaks_array(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z, 3P) or (X, Y, Z, P, 3) -> (X, Y, Z, P, 3)."""
    return data if data.ndim == 5 else data.reshape(*data.shape[:3], -1, 3)


class TractoInfernoDataModule(_BundleDataModule):
    """TractoInferno (see the module docstring). ``bundle``: one tract, or several (each subject then counts once per
    tract, ``<id>:<bundle>``: the mixed-tract pre-training set). ``train_subjects``/``val_subjects``/``test_subjects``:
    subject ids
    without ``sub-`` (the paper: train 1030 1079 1119 1180 1198; test 1160 1078 1159 1061 1171; Table 2: 1006).
    Without validation subjects, validation uses the training subjects (episodes) or their roll-outs."""

    layout = TRACTOINFERNO_LAYOUT

    def __init__(self, data_dir: str = "data/tractoinferno", bundle: Union[str, list[str]] = "PYT_L",
                 train_subjects: Sequence[str] = ("1030", "1079", "1119", "1180", "1198"),
                 val_subjects: Sequence[str] = (),
                 test_subjects: Sequence[str] = ("1160", "1078", "1159", "1061", "1171"),
                 fodf_pattern: str = "fodf/sub-{subject}__fodf.nii.gz",
                 peaks_pattern: Optional[str] = "fodf/sub-{subject}__peaks.nii.gz",
                 bundle_pattern: str = "tractography/sub-{subject}__{bundle}.trk",
                 mask_pattern: Optional[str] = None, atlas_pattern: Optional[str] = None, dilate_voxels: int = 1,
                 sh_basis: str = "descoteaux07", sh_legacy: bool = True, **kwargs):
        super().__init__(data_dir, bundle, mask_pattern, dilate_voxels, sh_basis, sh_legacy, **kwargs)
        self.atlas_pattern = atlas_pattern
        self.subject_lists = {"train": [str(s) for s in train_subjects], "val": [str(s) for s in val_subjects],
                              "test": [str(s) for s in test_subjects]}
        self.fodf_pattern, self.peaks_pattern, self.bundle_pattern = fodf_pattern, peaks_pattern, bundle_pattern

    @property
    def bundles(self) -> list[str]:
        return [self.bundle] if isinstance(self.bundle, str) else list(self.bundle)

    def subject_names(self, split: str) -> list[str]:
        """``<id>`` for one bundle; ``<id>:<bundle>`` per bundle for several (mixed-tract pre-training)."""
        if isinstance(self.bundle, str):
            return self.subject_lists[split]
        return [f"{s}:{b}" for s in self.subject_lists[split] for b in self.bundles]

    def subject_dir(self, subject: str) -> Path:
        derivatives = self.data_dir / "derivatives"
        if not derivatives.is_dir():
            raise DatasetError("TractoInferno derivatives folder not found", path=derivatives, layout=self.layout,
                               standin_config=STANDIN)
        for split in ("trainset", "validset", "testset"):
            folder = derivatives / split / f"sub-{subject}"
            if folder.is_dir():
                return folder
        raise DatasetError(f"subject sub-{subject} is in none of trainset/validset/testset", path=derivatives,
                           layout=self.layout, standin_config=STANDIN)

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            for subject in self.subject_lists[split]:
                folder = self.subject_dir(subject)
                self._file(folder / self.fodf_pattern.format(subject=subject), "fODF")
                for bundle in self.bundles:
                    self._file(folder / self.bundle_pattern.format(subject=subject, bundle=bundle),
                               f"reference bundle {bundle}")

    def load_subject(self, name: str) -> TractographySubject:
        import nibabel as nib

        name, _, bundle_name = name.partition(":")
        bundle_name = bundle_name or self.bundles[0]
        folder = self.subject_dir(name)
        fodf = self._file(folder / self.fodf_pattern.format(subject=name), "fODF")
        image = nib.load(str(fodf))
        sh = np.asarray(image.dataobj, dtype=np.float32)
        peaks = None
        if self.peaks_pattern and (folder / self.peaks_pattern.format(subject=name)).is_file():
            peaks = _peaks_array(np.asarray(nib.load(str(folder / self.peaks_pattern.format(subject=name))).dataobj,
                                            dtype=np.float32))
        bundle = self._file(folder / self.bundle_pattern.format(subject=name, bundle=bundle_name),
                            f"reference bundle {bundle_name}")
        mask = None
        if self.mask_pattern:
            mask = self._file(folder / self.mask_pattern.format(subject=name, bundle=bundle_name), "tract mask")
        atlas = None
        if self.atlas_pattern:
            atlas = self._file(folder / self.atlas_pattern.format(subject=name, bundle=bundle_name), "atlas bundle")
        label = f"sub-{name}" if isinstance(self.bundle, str) else f"sub-{name}_{bundle_name}"
        return self._subject(label, sh, peaks, image, bundle, mask, bundle_name, atlas)


class ISMRM2015DataModule(_BundleDataModule):
    """The ISMRM 2015 phantom (one subject; see the module docstring): it is the test subject (``role: test``) or
    the training one (``role: train``). The fODF comes from ``fodf.nii.gz`` when present, else from dipy's CSD
    (response ``auto_response_ssst``, SH order 8, peaks from ``peaks_from_model``), cached in ``cache_dir``."""

    layout = ISMRM_LAYOUT

    def __init__(self, data_dir: str = "data/ismrm2015", bundle: str = "Cingulum_left", role: str = "test",
                 bundle_pattern: str = "bundles/{bundle}.trk", mask_pattern: Optional[str] = None,
                 dilate_voxels: int = 1, sh_order: int = 8, cache_dir: Optional[str] = None,
                 sh_basis: str = "descoteaux07", sh_legacy: bool = True, **kwargs):
        super().__init__(data_dir, bundle, mask_pattern, dilate_voxels, sh_basis, sh_legacy, **kwargs)
        if role not in ("train", "test"):
            raise ValueError(f"role must be 'train' or 'test', got {role!r}")
        self.role, self.bundle_pattern, self.sh_order = role, bundle_pattern, sh_order
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "cache"

    def subject_names(self, split: str) -> list[str]:
        return ["ismrm2015"] if split == self.role else []

    def prepare_data(self) -> None:
        self._file(self.data_dir / self.bundle_pattern.format(bundle=self.bundle), f"ground-truth bundle {self.bundle}")
        if not (self.data_dir / "fodf.nii.gz").is_file():
            for name in ("Diffusion.nii.gz", "Diffusion.bvals", "Diffusion.bvecs"):
                self._file(self.data_dir / name, "DWI file")

    def fodf(self):
        """(SH (X, Y, Z, C), peaks (X, Y, Z, P, 3) or None, image)."""
        import nibabel as nib

        precomputed = self.data_dir / "fodf.nii.gz"
        if precomputed.is_file():
            image = nib.load(str(precomputed))
            return np.asarray(image.dataobj, dtype=np.float32), None, image
        dwi = self._file(self.data_dir / "Diffusion.nii.gz", "DWI file")
        sh, peaks = csd_fodf(dwi, self._file(self.data_dir / "Diffusion.bvals", "DWI file"),
                             self._file(self.data_dir / "Diffusion.bvecs", "DWI file"), self.sh_order, self.sh_basis,
                             self.sh_legacy, cache=self.cache_dir / f"csd_order{self.sh_order}.npz")
        return sh, peaks, nib.load(str(dwi))

    def load_subject(self, name: str) -> TractographySubject:
        sh, peaks, image = self.fodf()
        bundle = self._file(self.data_dir / self.bundle_pattern.format(bundle=self.bundle),
                               f"ground-truth bundle {self.bundle}")
        mask = None
        if self.mask_pattern:
            mask = self._file(self.data_dir / self.mask_pattern.format(bundle=self.bundle), "tract mask")
        return self._subject(name, sh, peaks, image, bundle, mask, self.bundle)


class HCPDataModule(_BundleDataModule):
    """HCP 1200 (minimally preprocessed, 1.25 mm, b 1000/2000/3000) with reference bundles, Table 3's HCP row (test
    subjects 930449, 992774, 959574, 987983; generalisation: test only, ``role: test``)::

        <data_dir>/<subject>/T1w/Diffusion/data.nii.gz, bvals, bvecs      the HCP release's layout
        <data_dir>/<subject>/tracts/<bundle>.trk                          reference bundles (TractSeg's HCP105
                                                                          reference tractograms: CG_left, AF_left, ...)

    The fODF is dipy's single-shell CSD on the b = ``shell`` shell (1000: the b-value TractoInferno has), fitted
    in the tract mask dilated by 2 voxels (the environment reads nothing farther) and cached per subject and
    bundle in ``cache_dir``."""

    layout = """<data_dir>/<subject>/T1w/Diffusion/data.nii.gz, bvals, bvecs
<data_dir>/<subject>/tracts/<bundle>.trk"""

    def __init__(self, data_dir: str = "data/hcp", bundle: str = "CG_left", role: str = "test",
                 subjects: Sequence[str] = ("930449", "992774", "959574", "987983"),
                 dwi_pattern: str = "{subject}/T1w/Diffusion/data.nii.gz",
                 bvals_pattern: str = "{subject}/T1w/Diffusion/bvals",
                 bvecs_pattern: str = "{subject}/T1w/Diffusion/bvecs",
                 bundle_pattern: str = "{subject}/tracts/{bundle}.trk", mask_pattern: Optional[str] = None,
                 dilate_voxels: int = 1, shell: Optional[float] = 1000.0, sh_order: int = 8,
                 cache_dir: Optional[str] = None, sh_basis: str = "descoteaux07", sh_legacy: bool = True, **kwargs):
        super().__init__(data_dir, bundle, mask_pattern, dilate_voxels, sh_basis, sh_legacy, **kwargs)
        if role not in ("train", "test"):
            raise ValueError(f"role must be 'train' or 'test', got {role!r}")
        self.role, self.subjects = role, [str(s) for s in subjects]
        self.patterns = dict(dwi=dwi_pattern, bvals=bvals_pattern, bvecs=bvecs_pattern, bundle=bundle_pattern)
        self.shell, self.sh_order = shell, sh_order
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "cache"

    def subject_names(self, split: str) -> list[str]:
        return self.subjects if split == self.role else []

    def path(self, kind: str, subject: str) -> Path:
        what = {"dwi": "DWI file", "bvals": "DWI file", "bvecs": "DWI file",
                "bundle": f"reference bundle {self.bundle}"}
        return self._file(self.data_dir / self.patterns[kind].format(subject=subject, bundle=self.bundle), what[kind])

    def prepare_data(self) -> None:
        for subject in self.subjects:
            for kind in ("dwi", "bvals", "bvecs", "bundle"):
                self.path(kind, subject)

    def load_subject(self, name: str) -> TractographySubject:
        import nibabel as nib

        dwi = self.path("dwi", name)
        image = nib.load(str(dwi))
        shape = image.shape[:3]
        bundle_mask, _ = load_bundle_voxels(self.path("bundle", name), image, shape)
        mask_path = None
        if self.mask_pattern:
            mask_path = self._file(self.data_dir / self.mask_pattern.format(subject=name, bundle=self.bundle),
                                   "tract mask")
            tract = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        else:
            tract = (ndimage.binary_dilation(bundle_mask, iterations=self.dilate_voxels) if self.dilate_voxels
                     else bundle_mask)
        fit_mask = ndimage.binary_dilation(tract, iterations=2)
        sh, peaks = csd_fodf(dwi, self.path("bvals", name), self.path("bvecs", name), self.sh_order, self.sh_basis,
                             self.sh_legacy, mask=fit_mask, shell=self.shell,
                             cache=self.cache_dir / f"{name}_{self.bundle}_csd_order{self.sh_order}.npz")
        return self._subject(name, sh, peaks, image, self.path("bundle", name), mask_path, self.bundle)


class VoxelDataset(torch.utils.data.Dataset):
    """MRM items: ``{"signal": features (F,), "label": int64 0/1}``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return {"signal": self.features[i], "label": self.labels[i]}


class TractoInfernoMRMDataModule(BaseDataModule):
    """Voxels for Tract-RLFormer's mask refinement module (MRM) on TractoInferno: every voxel of the tract's ROI
    (``roi_pattern``: the atlas bundle registered to the subject, e.g. HCP842 + RecobundlesX with ANTs, as a mask;
    dilated by ``roi_dilate_voxels``, the paper's 5 mm) gives ``lightning_modules.tract_rlformer.mrm_features``
    (7 x (45 SH + ROI value), 322 values) and the label "in the reference bundle". Without ``roi_pattern`` the ROI
    is the reference bundle itself, dilated (an oracle ROI: the registration step is not reproduced here).
    Batches ``{"signal": (B, 322), "label": (B,)}`` for ``ClassificationTask(num_classes 2)`` (``MaskRefinementNet``
    with ``out_features: 2``); the voxel-wise F1 of class 1 on the test subjects is the Dice of the refined mask
    within the ROI."""

    def __init__(self, data_dir: str = "data/tractoinferno", bundle: str = "PYT_L",
                 train_subjects: Sequence[str] = ("1030", "1079", "1119", "1180", "1198"),
                 val_subjects: Sequence[str] = (),
                 test_subjects: Sequence[str] = ("1160", "1078", "1159", "1061", "1171"),
                 fodf_pattern: str = "fodf/sub-{subject}__fodf.nii.gz",
                 bundle_pattern: str = "tractography/sub-{subject}__{bundle}.trk", roi_pattern: Optional[str] = None,
                 roi_dilate_voxels: int = 5, batch_size: int = 512, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        self.reader = TractoInfernoDataModule(data_dir, bundle, train_subjects, val_subjects, test_subjects,
                                              fodf_pattern, None, bundle_pattern)
        self.roi_pattern, self.roi_dilate_voxels = roi_pattern, roi_dilate_voxels

    def prepare_data(self) -> None:
        self.reader.prepare_data()

    def voxels(self, subject: str) -> tuple[np.ndarray, np.ndarray]:
        import nibabel as nib

        from lightning_modules.tract_rlformer import mrm_features

        reader = self.reader
        folder = reader.subject_dir(subject)
        image = nib.load(str(reader._file(folder / reader.fodf_pattern.format(subject=subject), "fODF")))
        sh = np.asarray(image.dataobj, dtype=np.float32)
        bundle_path = reader._file(folder / reader.bundle_pattern.format(subject=subject, bundle=reader.bundle),
                                   f"reference bundle {reader.bundle}")
        bundle, _ = load_bundle_voxels(bundle_path, image, sh.shape[:3])
        if self.roi_pattern:
            roi_path = reader._file(folder / self.roi_pattern.format(subject=subject, bundle=reader.bundle), "ROI mask")
            roi = np.asarray(nib.load(str(roi_path)).dataobj) > 0
        else:
            roi = bundle
        if self.roi_dilate_voxels:
            roi = ndimage.binary_dilation(roi, iterations=self.roi_dilate_voxels)
        voxels = np.argwhere(roi)
        return mrm_features(sh, roi, voxels), bundle[tuple(voxels.T)]

    def _split(self, split: str) -> Optional[VoxelDataset]:
        subjects = self.reader.subject_lists[split]
        if not subjects:
            return None
        parts = [self.voxels(s) for s in subjects]
        return VoxelDataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit", "validate") and self.train_set is None:
            self.train_set = self._split("train")
            self.val_set = self._split("val") or self._split("test")
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._split("test")
