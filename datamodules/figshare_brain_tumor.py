"""The figshare brain tumour dataset (Cheng et al. 2017, figshare article 1512427): 3,064 T1-weighted
contrast-enhanced slices of 233 patients, glioma 1,426 / meningioma 708 / pituitary 930 (EdgeHier-BT).

Two layouts, detected from the folder:

- the official release: ``1.mat ... 3064.mat`` (anywhere below ``data_dir``, e.g. the four unzipped
  ``brainTumorDataPublic_*`` folders), MATLAB v7.3 (HDF5, read with h5py; arrays transposed) each holding the
  struct ``cjdata`` with ``label`` (1 = meningioma, 2 = glioma, 3 = pituitary), ``PID`` (uint16 characters),
  ``image`` (int16, 512x512 or 256x256), ``tumorBorder``, ``tumorMask``; plus ``cvind.mat`` (the official
  patient-wise 5-fold indices, 1..5 per image) for ``split: cvind``;
- the common re-export ``data_dir/{glioma,meningioma,pituitary}/*.png|jpg`` (no patient ids).

Images are read as grey uint8 (the int16 min-max scaled to 0-255) and, with ``edges: true``, turned once into
the paper's Canny edge maps (``datamodules.edge_pipeline.EdgePipeline`` at ``image_size``), cached with
``preload``. Splits: ``stratified`` (the paper's random 70/30 by ``split_seed``), ``patient`` (the same hold-out
grouped by PID), ``cvind`` (fold ``fold`` of cvind.mat as the test set), or the base's ``kfold``/``group_kfold``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import albumentations as A
import cv2
import numpy as np

from datamodules.edge_pipeline import EdgePipeline, to_uint8
from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule

CLASSES = ("glioma", "meningioma", "pituitary")
#: cjdata.label (1 meningioma, 2 glioma, 3 pituitary) -> index in CLASSES
MAT_LABELS = {1: 1, 2: 0, 3: 2}


def edge_augmentation() -> list:
    """The paper's Keras ImageDataGenerator (shear, zoom, flip; magnitudes not given): shear +-11 degrees
    (~ shear_range 0.2 rad), zoom 0.8-1.2, horizontal flip; nearest interpolation keeps edge maps binary."""
    return [A.Affine(shear=(-11, 11), scale=(0.8, 1.2), interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                     fill=0, p=1.0),
            A.HorizontalFlip(p=0.5)]


def read_cjdata(path: Path) -> dict:
    """One release file's ``cjdata``: label (int), PID (str), image (int16 H x W), tumorMask (uint8 H x W)."""
    import h5py

    with h5py.File(path, "r") as f:
        data = f["cjdata"]
        label = int(np.asarray(data["label"]).ravel()[0])
        pid = "".join(chr(int(c)) for c in np.asarray(data["PID"]).ravel() if int(c))
        image = np.asarray(data["image"]).T
        mask = np.asarray(data["tumorMask"]).T.astype(np.uint8) if "tumorMask" in data else None
    return {"label": label, "PID": pid, "image": image, "tumorMask": mask}


def read_cvind(path: Path) -> np.ndarray:
    """cvind.mat's fold index (1..5) of each of the images, in file-number order."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return np.asarray(f["cvind"]).ravel().astype(int)
    except OSError:  # a pre-v7.3 MAT file
        from scipy.io import loadmat

        return np.asarray(loadmat(path)["cvind"]).ravel().astype(int)


class FigshareBrainTumorDataModule(ImageClassificationDataModule):
    """The figshare brain tumour slices (see the module docstring).

    Args:
        edges: the paper's edge maps (True) or the raw slices (False: the raw-slice baselines).
        blur_ksize, bcet_E, kmeans_k, kmeans_keep, morph_ksize, canny_low, canny_high: the edge pipeline.
        split: ``stratified`` | ``patient`` | ``cvind`` | ``kfold`` | ``group_kfold``; ``test_size`` 0.3 and
            ``val_fraction`` 0 (the paper has no validation set: validation runs on the test split).
    """

    layout = """<data_dir>/ either the official release
  1.mat ... 3064.mat      MATLAB v7.3 (HDF5), struct cjdata: label (1 meningioma, 2 glioma, 3 pituitary), PID,
                          image (int16), tumorBorder, tumorMask; may sit in brainTumorDataPublic_* subfolders
  cvind.mat               patient-wise 5-fold indices (split: cvind)
or the PNG/JPG re-export
  glioma/*.png  meningioma/*.png  pituitary/*.png"""
    standin_config = "experiments/edgehier_bt_demo.yaml"
    classes = CLASSES

    def __init__(self, data_dir: str = "", edges: bool = True, blur_ksize: int = 5, bcet_E: float = 110.0,
                 kmeans_k: int = 4, kmeans_keep: Literal["all", "brightest"] = "all", morph_ksize: int = 3,
                 canny_low: int = 100, canny_high: int = 200, image_size: int = 256,
                 split: Literal["stratified", "patient", "cvind", "kfold", "group_kfold"] = "stratified",
                 test_size: float = 0.3, val_fraction: float = 0.0, **kwargs):
        if split not in ("stratified", "patient", "cvind", "kfold", "group_kfold"):
            raise ValueError(f"split must be stratified, patient, cvind, kfold or group_kfold, got {split!r}")
        self.split_name = split
        base_split = {"patient": "group", "cvind": "predefined"}.get(split, split)
        super().__init__(data_dir, image_size=image_size, split=base_split, test_size=test_size,
                         val_fraction=val_fraction, **kwargs)
        self.edges = edges
        self.pipeline = EdgePipeline(size=None, blur_ksize=blur_ksize, bcet_E=bcet_E, kmeans_k=kmeans_k,
                                     kmeans_keep=kmeans_keep, morph_ksize=morph_ksize,
                                     canny=(canny_low, canny_high), channels=self.channels)
        self.file_numbers: list[int] = []

    # ---- items ----
    def mat_files(self) -> list[Path]:
        files = [p for p in self.data_dir.rglob("*.mat") if p.stem.isdigit()]
        return sorted(files, key=lambda p: int(p.stem))

    def list_items(self) -> list[ClassificationItem]:
        if self.data_dir is None:
            raise self.error("data_dir is not set")
        files = self.mat_files()
        if not files:
            if self.split_name in ("patient", "cvind", "group_kfold"):
                raise self.error(f"split: {self.split_name} needs the .mat release (patient ids); found no "
                                 "<n>.mat files", self.data_dir)
            self.file_numbers = []
            return self.folder_items(self.data_dir, CLASSES)
        items = []
        for path in files:
            try:
                data = read_cjdata(path)
            except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/ValueError on bad files
                raise self.error(f"cannot read cjdata ({type(exc).__name__}: {exc})", path) from exc
            if data["label"] not in MAT_LABELS:
                raise self.error(f"cjdata.label must be 1, 2 or 3, got {data['label']}", path)
            items.append(ClassificationItem(path, MAT_LABELS[data["label"]], group=data["PID"], name=path.stem))
        self.file_numbers = [int(p.stem) for p in files]
        return items

    def read_image(self, item: ClassificationItem) -> np.ndarray:
        if isinstance(item.source, Path) and item.source.suffix == ".mat":
            try:
                grey = to_uint8(read_cjdata(item.source)["image"])
            except Exception as exc:  # noqa: BLE001
                raise self.error(f"cannot read cjdata.image ({type(exc).__name__}: {exc})", item.source) from exc
            return np.repeat(grey[..., None], self.channels, axis=-1)
        return super().read_image(item)

    def preprocess(self, image: np.ndarray, item: ClassificationItem) -> np.ndarray:
        """Resize the grey slice to ``image_size`` (area), then the edge pipeline when ``edges``."""
        height, width = self.image_size
        grey = to_uint8(image)
        if grey.shape != (height, width):
            grey = cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)
        out = self.pipeline(grey)[..., 0] if self.edges else grey
        return np.repeat(out[..., None], self.channels, axis=-1)

    # ---- splits ----
    def make_splits(self) -> dict[str, list[int]]:
        if self.split_name != "cvind":
            return super().make_splits()
        path = self.require_file(self.data_dir / "cvind.mat", "cvind.mat (split: cvind)")
        try:
            folds = read_cvind(path)
        except Exception as exc:  # noqa: BLE001
            raise self.error(f"cannot read cvind ({type(exc).__name__}: {exc})", path) from exc
        if len(folds) < max(self.file_numbers):
            raise self.error(f"cvind has {len(folds)} entries, the images go up to {max(self.file_numbers)}.mat", path)
        fold_of = folds[np.asarray(self.file_numbers) - 1]
        if not 0 <= self.fold < len(np.unique(folds)):
            raise ValueError(f"fold must be in 0..{len(np.unique(folds)) - 1}, got {self.fold}")
        test = [i for i, f in enumerate(fold_of) if f == self.fold + 1]
        train = [i for i, f in enumerate(fold_of) if f != self.fold + 1]
        if self.val_fraction > 0:
            fit, val = self._holdout(train, self.val_fraction, grouped=True)
            return {"train": sorted(fit), "val": sorted(val), "test": test}
        return {"train": train, "val": test, "test": test}
