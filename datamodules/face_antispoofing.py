"""What the face anti-spoofing video datasets share (OULU-NPU, CASIA-FASD, Replay-Attack, MSU-MFSD): decode every
``frame_step``-th frame once in ``prepare_data`` (OpenCV), crop the face, resize, compute its MSRCR image and cache
both as one (S, S, 6) uint8 ``.npy`` per frame; the loaders then only read small arrays.

A dataset subclass says which videos form each split (``list_split``) with their presentation class (0 bona fide,
k >= 1 attack type k), subject and a relative path (the cache's and the depth maps' key), and where the face is
(``face_box``; default: a detector, else the centred square).

Batches (``lightning_modules/batch.py``): ``image`` float (6, S, S) RGB then MSRCR in [0, 1] (3 channels with
``use_msrcr: false``), ``target`` float (1, d, d) the pseudo-depth map (zeros for attacks), ``label`` int64 the
presentation class, ``group`` int64 the video's index (video-level scores), ``name`` "<relative>/<frame>".

Depth ground truth for live frames (the paper's PRNet maps, which cannot be computed offline here):
``depth_root/<relative>/<frame:05d>.npy`` (or ``.png``, 0-255), any size (resized to ``depth_size``); or, opted in
with ``depth_fallback: ellipsoid``, an ellipsoid bump over the face crop (documented as not faithful).

Face crops: the face box enlarged ``face_margin`` times (1.2) around its centre, as a square, cut from the frame
(edge-replicated beyond the border). Boxes come from the dataset's own annotations where a subclass reads them
(OULU-NPU eye positions, Replay-Attack face locations), else from an OpenCV Haar cascade (``haar_cascade``: an
XML path; OpenCV's own when its build ships them; the paper's Viola-Jones, without its MTCNN fallback), else the
centred square of the frame.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError, writable_dir
from lightning_modules import batch as keys
from lightning_modules.blocks.retinex import MSRCRParams, msrcr

Split = Literal["train", "val", "test"]
_DONE = "_complete"


@dataclass(frozen=True)
class VideoItem:
    """One presentation video: its file, class (0 bona fide, k >= 1 attack type k), subject and cache key."""

    path: Path
    label: int
    subject: int
    relative: str  # e.g. "Train_files/1_1_01_1": the cache's and the depth maps' sub-path


class FrameDataset(Dataset):
    """Frames as the batch dicts above, from a ``load(i) -> (frame (S, S, 6) uint8, depth (d, d) float32)``."""

    def __init__(self, load, labels: Sequence[int], groups: Sequence[int], names: Sequence[str], hflip: bool = False,
                 channels: int = 6, seed: int = 0):
        self.load, self.labels, self.groups, self.names = load, list(labels), list(groups), list(names)
        self.hflip, self.channels, self.seed = hflip, channels, seed
        self._calls = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        frame, depth = self.load(index)
        frame = np.ascontiguousarray(frame[..., :self.channels])
        if self.hflip and np.random.random() < 0.5:
            frame, depth = frame[:, ::-1], depth[:, ::-1]
        return {keys.IMAGE: torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() / 255.0,
                keys.TARGET: torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None],
                keys.LABEL: torch.tensor(self.labels[index], dtype=torch.long),
                keys.GROUP: torch.tensor(self.groups[index], dtype=torch.long), keys.NAME: self.names[index]}


def ellipsoid_depth(size: int, margin: float = 1.2) -> np.ndarray:
    """(size, size) float32 in [0, 1]: a half-ellipsoid filling the face box inside a crop ``margin`` times the
    box (the non-faithful fallback for missing PRNet maps)."""
    grid = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # -1..1 over the crop
    u = grid[None, :] * margin / 0.9
    v = grid[:, None] * margin / 1.1
    return np.sqrt(np.clip(1.0 - u ** 2 - v ** 2, 0.0, None)).astype(np.float32)


def square_crop(frame: np.ndarray, box: Optional[Sequence[float]], margin: float, size: int) -> np.ndarray:
    """The square of side ``margin * max(w, h)`` around the box (x, y, w, h) centre (None: the frame's centred
    square), edge-replicated beyond the frame, resized to ``size`` (area interpolation)."""
    height, width = frame.shape[:2]
    if box is None:
        side = min(height, width)
        cx, cy = width / 2.0, height / 2.0
    else:
        x, y, w, h = box
        side = margin * max(w, h)
        cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    x1, y1 = x0 + int(round(side)), y0 + int(round(side))
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = frame[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


class HaarFaceDetector:
    """OpenCV's Viola-Jones frontal-face cascade: the largest face (x, y, w, h), or None."""

    def __init__(self, cascade: Optional[str] = None):
        path = cascade or os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                                       "haarcascade_frontalface_default.xml")
        self.classifier = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
        if cascade is not None and (self.classifier is None or self.classifier.empty()):
            raise DatasetError("cannot load the Haar cascade", path=cascade,
                               hint="give haar_cascade: the path of haarcascade_frontalface_default.xml")

    @property
    def available(self) -> bool:
        return self.classifier is not None and not self.classifier.empty()

    def __call__(self, frame: np.ndarray) -> Optional[tuple[float, float, float, float]]:
        if not self.available:
            return None
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        faces = self.classifier.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                                 minSize=(max(24, grey.shape[0] // 10),) * 2)
        if len(faces) == 0:
            return None
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        return float(x), float(y), float(w), float(h)


class FaceAntiSpoofingDataModule(BaseDataModule):
    """Base of the video PAD datasets (see the module docstring).

    Args:
        data_dir: the dataset's root, in its public layout.
        cache_dir: where the decoded crops go (default ``<data_dir>/cache_fas_<image_size>``; falls back to
            ``~/.cache/paperbench/...`` when the data is read-only).
        image_size: side of the face crops (256).
        depth_size: side of the depth maps (32).
        frame_step: keep every ``frame_step``-th frame (10), starting at frame 0; ``max_frames``: at most this
            many per video (None: all).
        face_margin: crop side / face box side (1.2).
        haar_cascade: a Haar cascade XML for videos without annotations (None: OpenCV's, if it ships one).
        depth_root: precomputed live depth maps (``<depth_root>/<relative>/<frame:05d>.npy|png``).
        depth_fallback: "ellipsoid" to use a face-box ellipsoid where ``depth_root`` has no map; None: missing
            maps are an error.
        use_msrcr: 6 input channels (RGB + MSRCR) or 3 (RGB only).
        msrcr_sigmas, msrcr_alpha, msrcr_beta, msrcr_gain, msrcr_offset, msrcr_clip: the MSRCR constants.
        hflip: random horizontal flips of training frames (the paper's).
        val_fraction, split_seed: subjects held out of the training set for validation, where the dataset has no
            dev split (CASIA-FASD, MSU-MFSD).
    """

    #: attack-type names by label (1, 2, ...), for docs and logs.
    attack_types: tuple[str, ...] = ()
    layout: str = ""
    standin_config = "experiments/fas_msrcr_cbam_demo.yaml"

    def __init__(self, data_dir: str, cache_dir: Optional[str] = None, image_size: int = 256, depth_size: int = 32,
                 frame_step: int = 10, max_frames: Optional[int] = None, face_margin: float = 1.2,
                 haar_cascade: Optional[str] = None, depth_root: Optional[str] = None,
                 depth_fallback: Optional[Literal["ellipsoid"]] = None, use_msrcr: bool = True,
                 msrcr_sigmas: Sequence[float] = (15.0, 80.0, 250.0), msrcr_alpha: float = 125.0,
                 msrcr_beta: float = 46.0, msrcr_gain: float = 5.0, msrcr_offset: float = 25.0,
                 msrcr_clip: tuple[float, float] = (0.01, 0.99), hflip: bool = True, val_fraction: float = 0.2,
                 split_seed: int = 0, batch_size: int = 16, num_workers: int = 4, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if frame_step < 1:
            raise ValueError(f"frame_step must be >= 1, got {frame_step}")
        if depth_fallback not in (None, "ellipsoid"):
            raise ValueError(f"depth_fallback must be None or 'ellipsoid', got {depth_fallback!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.image_size, self.depth_size = image_size, depth_size
        self.frame_step, self.max_frames, self.face_margin = frame_step, max_frames, face_margin
        self.haar_cascade = haar_cascade
        self.depth_root = Path(depth_root) if depth_root else None
        self.depth_fallback = depth_fallback
        self.use_msrcr, self.hflip = use_msrcr, hflip
        self.msrcr_params = MSRCRParams(tuple(msrcr_sigmas), msrcr_alpha, msrcr_beta, msrcr_gain, msrcr_offset,
                                        tuple(msrcr_clip))
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self._detector: Optional[HaarFaceDetector] = None

    # -- what a dataset provides -------------------------------------------------------------------------
    def list_split(self, split: Split) -> list[VideoItem]:
        raise NotImplementedError

    def face_box(self, item: VideoItem, frame_index: int, frame: np.ndarray
                 ) -> Optional[tuple[float, float, float, float]]:
        """The face (x, y, w, h) in ``frame`` (RGB); None: no face found (the previous box, else the centre)."""
        if self._detector is None:
            self._detector = HaarFaceDetector(self.haar_cascade)
        return self._detector(frame)

    # -- helpers for subclasses --------------------------------------------------------------------------
    def error(self, problem: str, path: Optional[Path] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config, hint=hint)

    def require_dir(self, path: Path) -> Path:
        if not path.is_dir():
            raise self.error(f"{type(self).__name__}: folder not found", path)
        return path

    def holdout_subjects(self, items: list[VideoItem]) -> tuple[list[VideoItem], list[VideoItem]]:
        """(train, val): ``val_fraction`` of the subjects (at least one when > 0), drawn with ``split_seed``."""
        subjects = sorted({item.subject for item in items})
        count = int(round(self.val_fraction * len(subjects)))
        if self.val_fraction > 0 and len(subjects) > 1:
            count = min(max(count, 1), len(subjects) - 1)
        held = set(np.random.default_rng(self.split_seed).permutation(subjects)[:count].tolist())
        return [i for i in items if i.subject not in held], [i for i in items if i.subject in held]

    # -- caching -----------------------------------------------------------------------------------------
    @property
    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        root = self.data_dir / f"cache_fas_{self.image_size}_step{self.frame_step}"
        if writable_dir(root):
            return root
        return Path.home() / ".cache" / "paperbench" / type(self).__name__ / f"{self.image_size}_step{self.frame_step}"

    def cache_path(self, item: VideoItem) -> Path:
        return self.cache_root / item.relative

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            for item in self.list_split(split):
                if not (self.cache_path(item) / _DONE).is_file():
                    self.cache_video(item)

    def cache_video(self, item: VideoItem) -> None:
        """Decode, crop, MSRCR and save the kept frames of one video."""
        if not item.path.is_file():
            raise self.error(f"{type(self).__name__}: video not found", item.path)
        out = self.cache_path(item)
        out.mkdir(parents=True, exist_ok=True)
        capture = cv2.VideoCapture(str(item.path))
        if not capture.isOpened():
            raise self.error(f"{type(self).__name__}: cannot decode the video (OpenCV)", item.path)
        index, kept, box = 0, 0, None
        try:
            while self.max_frames is None or kept < self.max_frames:
                ok, frame = capture.read()
                if not ok:
                    break
                if index % self.frame_step == 0:
                    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                    box = self.face_box(item, index, rgb) or box
                    crop = square_crop(rgb, box, self.face_margin, self.image_size)
                    np.save(out / f"{index:05d}.npy", np.concatenate([crop, msrcr(crop, self.msrcr_params)], axis=2))
                    kept += 1
                index += 1
        finally:
            capture.release()
        if kept == 0:
            raise self.error(f"{type(self).__name__}: no frame decoded", item.path)
        (out / _DONE).write_text(f"{kept}\n")

    # -- datasets ----------------------------------------------------------------------------------------
    def _depth_file(self, item: VideoItem, frame: str) -> Optional[Path]:
        if self.depth_root is not None:
            for suffix in (".npy", ".png"):
                path = self.depth_root / item.relative / f"{frame}{suffix}"
                if path.is_file():
                    return path
        return None

    def _depth(self, item: VideoItem, frame: str) -> np.ndarray:
        if item.label != 0:
            return np.zeros((self.depth_size, self.depth_size), np.float32)
        path = self._depth_file(item, frame)
        if path is not None:
            depth = (np.load(path).astype(np.float32) if path.suffix == ".npy"
                     else cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0)
            if depth.ndim == 3:
                depth = depth[..., 0]
            return cv2.resize(depth, (self.depth_size,) * 2, interpolation=cv2.INTER_AREA)
        if self.depth_fallback == "ellipsoid":
            return ellipsoid_depth(self.depth_size, self.face_margin)
        raise self.error(f"{type(self).__name__}: no depth map for a live frame",
                         (self.depth_root or Path("<depth_root>")) / item.relative / f"{frame}.npy",
                         hint="give depth_root (PRNet depth maps, same relative paths) or opt in to "
                              "depth_fallback: ellipsoid")

    def frame_dataset(self, items: list[VideoItem], train: bool) -> FrameDataset:
        refs, labels, groups, names = [], [], [], []
        for group, item in enumerate(items):
            folder = self.cache_path(item)
            if not (folder / _DONE).is_file():
                raise self.error(f"{type(self).__name__}: frame cache missing (run prepare_data)", folder)
            for path in sorted(folder.glob("*.npy")):
                if item.label == 0 and self.depth_fallback is None and self._depth_file(item, path.stem) is None:
                    self._depth(item, path.stem)  # raises the missing-depth error now, not in a loader worker
                refs.append((path, item))
                labels.append(item.label)
                groups.append(group)
                names.append(f"{item.relative}/{path.stem}")
        return FrameDataset(_CachedFrames(refs, self), labels, groups, names, hflip=train and self.hflip,
                            channels=6 if self.use_msrcr else 3)

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in ("fit", None):
            self.train_set = self.frame_dataset(self.list_split("train"), train=True)
        if stage in ("fit", "validate", None):
            self.val_set = self.frame_dataset(self.list_split("val"), train=False)
        if stage in ("test", "predict", None):
            self.test_set = self.frame_dataset(self.list_split("test"), train=False)


class _CachedFrames:
    """Picklable loader of cached frames (for worker processes)."""

    def __init__(self, refs: list[tuple[Path, VideoItem]], datamodule: FaceAntiSpoofingDataModule):
        self.refs = refs
        self.depth = datamodule._depth

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path, item = self.refs[index]
        return np.load(path), self.depth(item, path.stem)
