"""POEM-like whole-body fat/water MRI for PointBL's Table 3: a generic NIfTI reader, because POEM (Uppsala's
Prospective investigation of Obesity, ENergy production and Metabolism cohort) is not public and its on-disk layout is
not described in the paper. The layout read here is nnU-Net's raw layout (channels as ``_000c`` suffixes), so a user
with similar data (two co-registered channels and one label map per subject) can run the Table 3 configs:

    <data_dir>/imagesTr/<case>_0000.nii.gz   water channel
    <data_dir>/imagesTr/<case>_0001.nii.gz   fat channel
    <data_dir>/labelsTr/<case>.nii.gz        0 background, 1 bladder, 2 right kidney, 3 liver, 4 pancreas,
                                             5 spleen, 6 left kidney (Table 3's column order)

The paper's preprocessing: each volume reoriented to RAS (nibabel's closest canonical), every channel min-max to
0-255 (rounded, uint8), cut into **coronal** slices (left-right x foot-head, one per anterior-posterior position)
resized to ``image_size`` (images bilinear, labels nearest); the voxel size (scaled by the resize) is kept for HD95
in mm. Split: the cases (sorted) shuffled with ``split_seed`` into 35 train / 5 val / 10 test subjects. Distance maps
on the fat channel (``distance_channel: 1``), per slice (ones for an absent class) or on the whole volume
(``distance_dim: 3d``): ``datamodules.point_slices``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np

from datamodules.base import DatasetError
from datamodules.point_slices import PointSliceDataModule

STANDIN = "experiments/pointbl_demo_3d.yaml"
LAYOUT = """<data_dir>/imagesTr/<case>_0000.nii.gz   water (one 3D volume per channel, all on one grid)
<data_dir>/imagesTr/<case>_0001.nii.gz   fat
<data_dir>/labelsTr/<case>.nii.gz        labels 0-6: background, bladder, right kidney, liver, pancreas, spleen,
                                         left kidney
(POEM itself is private; any fat/water cohort in this layout works)"""
CLASS_NAMES = ("background", "bld", "kdr", "lvr", "pnc", "spl", "kdl")


def _error(problem: str, path: Optional[Path] = None, hint: Optional[str] = None) -> DatasetError:
    return DatasetError(problem, path=path, layout=LAYOUT, standin_config=STANDIN, hint=hint)


def _read(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A 3D NIfTI volume in the closest RAS orientation and its voxel size."""
    import nibabel as nib

    if not path.is_file():
        raise _error("missing file", path)
    try:
        image = nib.as_closest_canonical(nib.load(str(path)))
        array = np.asarray(image.dataobj)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
    except Exception as exc:  # nibabel, gzip and zlib raise many types for corrupt files
        raise _error("corrupt or unreadable volume", path, f"nibabel: {type(exc).__name__}: {exc}") from exc
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise _error(f"expected a 3D volume, got shape {array.shape}", path)
    return array, zooms


def coronal(array: np.ndarray) -> np.ndarray:
    """RAS (LR, PA, IS) -> (LR, IS, PA): coronal slices along the last axis."""
    return np.transpose(array, (0, 2, 1))


def load_poem_case(root: Path, case: str, image_size: int, num_channels: int = 2,
                   num_classes: int = len(CLASS_NAMES)) -> dict:
    """{name, image (C, S, S, D) uint8 0-255, mask (S, S, D) uint8, spacing (3,) mm} of one subject."""
    from skimage.transform import resize

    channels, spacing, shape = [], None, None
    for c in range(num_channels):
        path = root / "imagesTr" / f"{case}_{c:04d}.nii.gz"
        array, zooms = _read(path)
        if shape is not None and array.shape != shape:
            raise _error(f"channel shape {array.shape} differs from channel 0's {shape}", path)
        shape = array.shape
        array = coronal(array.astype(np.float64))
        low, high = array.min(), array.max()
        channels.append((array - low) / max(high - low, 1e-8) * 255.0)  # per channel, per volume
        spacing = spacing or zooms
    label_path = root / "labelsTr" / f"{case}.nii.gz"
    labels, _ = _read(label_path)
    if labels.shape != shape:
        raise _error(f"label shape {labels.shape} differs from the image's {shape}", label_path)
    labels = np.rint(coronal(labels)).astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise _error(f"labels must be 0..{num_classes - 1}, found {labels.min()}..{labels.max()}", label_path)
    height, width, depth = labels.shape
    shape = (image_size, image_size, depth)
    image = np.stack([np.round(resize(c, shape, order=1, preserve_range=True, anti_aliasing=False))
                      for c in channels]).astype(np.uint8)
    mask = resize(labels.astype(np.uint8), shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
    # coronal axes: (LR, IS, PA) voxel sizes, the in-plane ones scaled by the resize
    spacing = (spacing[0] * height / image_size, spacing[2] * width / image_size, spacing[1])
    return {"name": case, "image": image, "mask": mask, "spacing": spacing}


class POEMDataModule(PointSliceDataModule):
    """POEM-like fat/water volumes as coronal slices with point labels (see the module docstring and
    ``PointSliceDataModule`` for the point and distance-map arguments). ``cases``: explicit (train, val, test) case-id
    lists overriding the seeded 35/5/10 split; ``cache_dir`` defaults to ``<data_dir>/pointbl_cache``."""

    def __init__(self, data_dir: str = "data/poem", image_size: int = 256, split_sizes: Sequence[int] = (35, 5, 10),
                 split_seed: int = 0, cases: Optional[Sequence[Sequence[str]]] = None,
                 distance: Literal["euc", "geo", "int", "mbd", "none"] = "euc",
                 distance_dim: Literal["2d", "3d"] = "2d", distance_channel: int = 1, absent_value: float = 1.0,
                 point_width: int = 4, point_seed: int = 0, per_component: bool = False, mbd_step: int = 1,
                 cache_dir: Optional[str] = None, prepare_workers: int = 4, network_dims: Literal[2, 3] = 2,
                 patch_size: Optional[Sequence[int]] = None, samples_per_volume: int = 1,
                 foreground_probability: float = 0.5, batch_size: int = 8, num_workers: int = 2,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None) -> None:
        super().__init__(len(CLASS_NAMES), distance, point_width, point_seed, per_component, absent_value, mbd_step,
                         cache_dir if cache_dir is not None else str(Path(data_dir) / "pointbl_cache"),
                         prepare_workers, batch_size, num_workers, pin_memory, eval_batch_size,
                         distance_dim=distance_dim, distance_channel=distance_channel, network_dims=network_dims,
                         patch_size=patch_size, samples_per_volume=samples_per_volume,
                         foreground_probability=foreground_probability)
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.split_sizes = tuple(int(n) for n in split_sizes)
        self.split_seed = split_seed
        self.cases = None if cases is None else [list(c) for c in cases]

    def all_cases(self) -> list[str]:
        labels = self.data_dir / "labelsTr"
        if not labels.is_dir():
            raise _error("no labelsTr folder", labels)
        cases = sorted(p.name[:-len(".nii.gz")] for p in labels.glob("*.nii.gz"))
        if not cases:
            raise _error("no label maps (*.nii.gz)", labels)
        return cases

    def split(self) -> dict[str, list[str]]:
        if self.cases is not None:
            return dict(zip(("train", "val", "test"), self.cases))
        cases = self.all_cases()
        if len(cases) < sum(self.split_sizes):
            raise _error(f"{len(cases)} cases, the split needs {sum(self.split_sizes)}", self.data_dir / "labelsTr",
                         hint="set --data.init_args.split_sizes (train, val, test) for a smaller cohort")
        random.Random(self.split_seed).shuffle(cases)
        n_train, n_val, n_test = self.split_sizes
        return {"train": sorted(cases[:n_train]), "val": sorted(cases[n_train:n_train + n_val]),
                "test": sorted(cases[n_train + n_val:n_train + n_val + n_test])}

    def prepare_data(self) -> None:
        for case in self.split()["train"][:1]:  # fails early, naming the file, when a channel is missing
            for c in range(2):
                path = self.data_dir / "imagesTr" / f"{case}_{c:04d}.nii.gz"
                if not path.is_file():
                    raise _error("missing file", path)

    def load_volumes(self, split: str) -> list[dict]:
        return [load_poem_case(self.data_dir, case, self.image_size) for case in self.split()[split]]
