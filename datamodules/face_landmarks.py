"""Facial-landmark clips: the shared base of the landmark-sequence datasets (EngageNet, Online SE, the synthetic
stand-in) and the offline MediaPipe extraction that makes their ``landmarks/<clip>.npy`` cache.

A clip is stored as ``landmarks/<clip id>.npy``: float32 (T, 78, 3), the MediaPipe Face Mesh points matching
dlib's 68 (``MEDIAPIPE_TO_DLIB68``, the community map) followed by the 10 iris points 468-477, as MediaPipe
writes them: x, y normalised by the frame's width and height, z relative depth. Frames where no face was found
are zeros (the engagement paper: an absent face means not engaged).

Batches: ``signal`` float (C, T', N) = (3 or 2 coordinates, frames, 78 landmarks), ``label`` int64, ``name``.
``num_frames`` pads (zeros = face absent) or crops every clip to one length, then ``frame_stride`` keeps every
s-th frame (Table 3's "every 2/4/8/16 frames"), ``use_z`` False drops z (Table 3's "only x and y") and ``hands``
appends the 21 MediaPipe hand landmarks of ``hands/<clip id>.npy`` as nodes 78-98 (Table 3's last row).

Extraction (needs ``mediapipe``; not a core dependency)::

    python -m datamodules.face_landmarks extract --videos <dir of .mp4> --out <root>/landmarks [--model face_landmarker.task]
    python -m datamodules.face_landmarks extract --hands --videos <dir of .mp4> --out <root>/hands [--model hand_landmarker.task]
    python -m datamodules.face_landmarks mean-face --root <root> --clips <root>/train.txt --out <root>/mean_face.npy

``--model`` uses MediaPipe's Tasks FaceLandmarker with that model file (current wheels ship no models);
without it the legacy ``mediapipe.solutions.face_mesh`` (bundled in wheels up to 0.10.14) with
``refine_landmarks=True``. Either way a missing package or model is one clear error.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError

#: MediaPipe Face Mesh index of each dlib-68 point (jaw, brows, nose, eyes, mouth): the community map.
MEDIAPIPE_TO_DLIB68 = (162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
                       71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
                       168, 197, 5, 4, 75, 97, 2, 326, 305,
                       33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
                       61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87)
#: The 78 landmarks kept from MediaPipe's 478: dlib's 68, then the irises (468-472 right, 473-477 left).
MEDIAPIPE_INDICES = MEDIAPIPE_TO_DLIB68 + tuple(range(468, 478))
NUM_LANDMARKS = len(MEDIAPIPE_INDICES)
#: MediaPipe Hands: 21 points of one hand (wrist 0, thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20).
NUM_HAND_LANDMARKS = 21
HAND_CONNECTIONS = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (5, 9), (9, 10), (10, 11),
                    (11, 12), (9, 13), (13, 14), (14, 15), (15, 16), (13, 17), (0, 17), (17, 18), (18, 19), (19, 20))

LANDMARK_LAYOUT = """\
<root>/landmarks/<clip id>.npy     float32 (T, 78, 3) per clip (x, y normalised, z relative; absent face = zeros),
                                   made by: python -m datamodules.face_landmarks extract --videos <videos> --out <root>/landmarks
<root>/hands/<clip id>.npy         (only with hands: true) float32 (T, 21, 3) MediaPipe Hands points, zeros = no hand:
                                   python -m datamodules.face_landmarks extract --hands --videos <videos> --out <root>/hands"""


@dataclass
class LandmarkClip:
    """One clip: its landmarks (a ``.npy`` path or a (T, 78, 3) array), class index and name; optionally its hand
    landmarks (a path or a (T, 21, 3) array), appended as nodes 78-98."""

    source: Union[str, Path, np.ndarray]
    label: int
    name: str
    hands: Union[str, Path, np.ndarray, None] = None


def check_landmarks(array: np.ndarray, path: Union[str, Path], layout: str, standin: Optional[str],
                    points: int = NUM_LANDMARKS) -> np.ndarray:
    """A (T, points, 3) finite float array, else a DatasetError naming the file."""
    if array.ndim != 3 or array.shape[1:] != (points, 3) or array.shape[0] < 1:
        raise DatasetError(f"landmark clip has shape {array.shape}, expected (T, {points}, 3)", path=path,
                           layout=layout, standin_config=standin)
    if not np.isfinite(array).all():
        raise DatasetError("landmark clip has NaN or infinite values", path=path, layout=layout, standin_config=standin)
    return array.astype(np.float32, copy=False)


def fit_length(clip: np.ndarray, num_frames: Optional[int]) -> np.ndarray:
    """Crop to ``num_frames`` or pad with zero frames (face absent) at the end; None keeps the clip."""
    if num_frames is None or len(clip) == num_frames:
        return clip
    if len(clip) > num_frames:
        return clip[:num_frames]
    return np.concatenate([clip, np.zeros((num_frames - len(clip), *clip.shape[1:]), clip.dtype)])


class LandmarkClips(Dataset):
    """Clips -> ``{"signal": (C, T', N), "label", "name"}``; ``.npy`` files are read (memory-mapped) per item."""

    def __init__(self, clips: Sequence[LandmarkClip], num_frames: Optional[int] = None, frame_stride: int = 1,
                 use_z: bool = True, layout: str = LANDMARK_LAYOUT, standin_config: Optional[str] = None):
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.clips, self.num_frames, self.frame_stride, self.use_z = list(clips), num_frames, frame_stride, use_z
        self.layout, self.standin_config = layout, standin_config

    def __len__(self) -> int:
        return len(self.clips)

    def read(self, source: Union[str, Path, np.ndarray], points: int) -> np.ndarray:
        if isinstance(source, np.ndarray):
            return source
        try:
            array = np.load(source, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise DatasetError(f"cannot read landmark clip ({error})", path=source, layout=self.layout,
                               standin_config=self.standin_config) from error
        return check_landmarks(np.asarray(array), source, self.layout, self.standin_config, points)

    def load(self, clip: LandmarkClip) -> np.ndarray:
        """(T, 78, 3), or (T, 99, 3) with the hands (fitted to the face clip's length) appended."""
        face = fit_length(self.read(clip.source, NUM_LANDMARKS), self.num_frames)
        if clip.hands is None:
            return face
        hands = fit_length(self.read(clip.hands, NUM_HAND_LANDMARKS), len(face))
        return np.concatenate([face, hands], axis=1)

    def __getitem__(self, index: int) -> dict:
        clip = self.clips[index]
        array = self.load(clip)[::self.frame_stride]
        if not self.use_z:
            array = array[..., :2]
        signal = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))
        return {"signal": signal, "label": torch.tensor(clip.label, dtype=torch.long), "name": clip.name}


class LandmarkClipDataModule(BaseDataModule):
    """Base of the landmark-clip datasets: subclasses list each split's clips (``list_clips``); the base checks
    the files, builds the datasets and counts the classes.

    Args:
        data_dir: the dataset root (subclasses' layouts).
        num_frames: every clip padded/cropped to this many frames (30 fps x 10 s = 300 for EngageNet).
        frame_stride: keep every s-th frame (Table 3).
        use_z: keep z (False: Table 3's "only x and y"; the network's in_channels must be 2).
        hands: append the 21 hand landmarks of ``hands/<clip id>.npy`` (Table 3's last row; the network's
            ``hand_landmarks`` must be true).
        check_files: read every clip's header in ``setup`` (fails early on a missing or malformed file).
    """

    classes: tuple[str, ...] = ()
    standin_config: Optional[str] = None
    layout: str = LANDMARK_LAYOUT

    def __init__(self, data_dir: str = "data", num_frames: Optional[int] = None, frame_stride: int = 1,
                 use_z: bool = True, hands: bool = False, check_files: bool = True, batch_size: int = 16,
                 num_workers: int = 2,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.num_frames, self.frame_stride, self.use_z, self.check_files = num_frames, frame_stride, use_z, check_files
        self.hands = hands
        self.splits: dict[str, list[LandmarkClip]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3 if self.use_z else 2

    def error(self, problem: str, path: Optional[Union[str, Path]] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config, hint=hint)

    def list_clips(self) -> dict[str, list[LandmarkClip]]:
        """``{"train": [...], "val": [...], "test": [...]}``."""
        raise NotImplementedError

    def landmark_path(self, clip_id: str) -> Path:
        return self.data_dir / "landmarks" / f"{clip_id}.npy"

    def hand_path(self, clip_id: str) -> Path:
        return self.data_dir / "hands" / f"{clip_id}.npy"

    def _check_file(self, source: Union[str, Path, np.ndarray], name: str, points: int) -> None:
        if isinstance(source, np.ndarray):
            check_landmarks(source, name, self.layout, self.standin_config, points)
            return
        if not os.path.isfile(source):
            raise self.error("landmark clip missing", source,
                             hint="extract the landmarks first (python -m datamodules.face_landmarks extract)")
        try:
            header = np.load(source, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise self.error(f"cannot read landmark clip ({error})", source) from error
        if header.ndim != 3 or header.shape[1:] != (points, 3) or header.shape[0] < 1:
            raise self.error(f"landmark clip has shape {header.shape}, expected (T, {points}, 3)", source)

    def _check(self, clips: Iterable[LandmarkClip]) -> None:
        for clip in clips:
            self._check_file(clip.source, clip.name, NUM_LANDMARKS)
            if clip.hands is not None:
                self._check_file(clip.hands, clip.name, NUM_HAND_LANDMARKS)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        splits = self.list_clips()
        if self.hands:
            splits = {split: [c if c.hands is not None else replace(c, hands=self.hand_path(c.name)) for c in clips]
                      for split, clips in splits.items()}
        for split, clips in splits.items():
            if not clips and split in ("train", "val", "test"):
                raise self.error(f"the {split} split has no clips", self.data_dir)
            if self.check_files:
                self._check(clips)
        self.splits = splits
        make = lambda clips: LandmarkClips(clips, self.num_frames, self.frame_stride, self.use_z, self.layout,
                                           self.standin_config)
        self.train_set, self.val_set, self.test_set = (make(splits[s]) for s in ("train", "val", "test"))

    @property
    def class_counts(self) -> list[int]:
        """Training clips per class (``class_weights: balanced``)."""
        if not self.splits:
            self.setup("fit")
        labels = np.array([c.label for c in self.splits["train"]], dtype=int)
        return np.bincount(labels, minlength=self.num_classes).tolist()


def mean_face(clips: Sequence[LandmarkClip]) -> np.ndarray:
    """(78, 3) mean of the clips' frames where a face was found (not all zeros): the reference face of the
    Delaunay graph (``EngagementSTGCN(graph_reference=...)``), e.g. over the training set."""
    total, count = np.zeros((NUM_LANDMARKS, 3)), 0
    for clip in clips:
        array = clip.source if isinstance(clip.source, np.ndarray) else np.load(clip.source)
        present = np.abs(array).reshape(len(array), -1).sum(1) > 0
        total += array[present].sum(0)
        count += int(present.sum())
    if count == 0:
        raise ValueError("no frame with a face in these clips")
    return (total / count).astype(np.float32)


# ------------------------------------------------------------------------------------------------ extraction
MEDIAPIPE_MISSING = ("landmark extraction needs MediaPipe, which is not installed: pip install 'mediapipe==0.10.14' "
                     "(its wheel still bundles the Face Mesh model used without --model), or a newer mediapipe with "
                     "the FaceLandmarker model file passed as --model face_landmarker.task")


def select_landmarks(points: np.ndarray) -> np.ndarray:
    """MediaPipe's 478 refined points (478, 3) -> the 78 kept (78, 3)."""
    if points.shape[0] != 478:
        raise ValueError(f"expected MediaPipe's 478 refined landmarks (refine_landmarks / iris), got {points.shape[0]}")
    return points[list(MEDIAPIPE_INDICES)]


def mediapipe_landmarker(model: Optional[str] = None) -> Callable[[np.ndarray], Optional[np.ndarray]]:
    """A function RGB frame (H, W, 3) uint8 -> (478, 3) landmarks or None (no face). Clear errors when MediaPipe
    or the model file is absent."""
    try:
        import mediapipe as mp
    except ImportError as error:
        raise RuntimeError(MEDIAPIPE_MISSING) from error
    if model is not None:
        if not os.path.isfile(model):
            raise FileNotFoundError(f"MediaPipe FaceLandmarker model not found: {model} (download face_landmarker.task "
                                    "from MediaPipe's model page and pass its path)")
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import FaceLandmarker, FaceLandmarkerOptions

        landmarker = FaceLandmarker.create_from_options(
            FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=model), num_faces=1))

        def detect(frame: np.ndarray) -> Optional[np.ndarray]:
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
            if not result.face_landmarks:
                return None
            return np.array([[p.x, p.y, p.z] for p in result.face_landmarks[0]], np.float32)
        return detect
    if not hasattr(mp, "solutions") or not hasattr(mp.solutions, "face_mesh"):
        raise RuntimeError("this mediapipe has no bundled Face Mesh (mediapipe.solutions was removed): pass the "
                           "FaceLandmarker model as --model face_landmarker.task, or pip install 'mediapipe==0.10.14'")
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True)

    def detect_legacy(frame: np.ndarray) -> Optional[np.ndarray]:
        result = mesh.process(frame)
        if not result.multi_face_landmarks:
            return None
        return np.array([[p.x, p.y, p.z] for p in result.multi_face_landmarks[0].landmark], np.float32)
    return detect_legacy


def mediapipe_hand_landmarker(model: Optional[str] = None) -> Callable[[np.ndarray], Optional[np.ndarray]]:
    """A function RGB frame -> (21, 3) landmarks of the first detected hand or None: MediaPipe Hands (Tasks
    HandLandmarker with ``model``, else the legacy bundled ``solutions.hands``). Clear errors as for the face."""
    try:
        import mediapipe as mp
    except ImportError as error:
        raise RuntimeError(MEDIAPIPE_MISSING) from error
    if model is not None:
        if not os.path.isfile(model):
            raise FileNotFoundError(f"MediaPipe HandLandmarker model not found: {model}")
        from mediapipe.tasks.python import BaseOptions
        from mediapipe.tasks.python.vision import HandLandmarker, HandLandmarkerOptions

        landmarker = HandLandmarker.create_from_options(
            HandLandmarkerOptions(base_options=BaseOptions(model_asset_path=model), num_hands=1))

        def detect(frame: np.ndarray) -> Optional[np.ndarray]:
            result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
            if not result.hand_landmarks:
                return None
            return np.array([[p.x, p.y, p.z] for p in result.hand_landmarks[0]], np.float32)
        return detect
    if not hasattr(mp, "solutions") or not hasattr(mp.solutions, "hands"):
        raise RuntimeError("this mediapipe has no bundled Hands model: pass --model hand_landmarker.task, or "
                           "pip install 'mediapipe==0.10.14'")
    hands = mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=1)

    def detect_legacy(frame: np.ndarray) -> Optional[np.ndarray]:
        result = hands.process(frame)
        if not result.multi_hand_landmarks:
            return None
        return np.array([[p.x, p.y, p.z] for p in result.multi_hand_landmarks[0].landmark], np.float32)
    return detect_legacy


def read_video(path: Union[str, Path]) -> Iterable[np.ndarray]:
    """RGB frames of a video file (OpenCV)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError("cannot open video", path=path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


def extract_clip(frames: Iterable[np.ndarray], detect: Callable[[np.ndarray], Optional[np.ndarray]],
                 hands: bool = False) -> np.ndarray:
    """(T, 78, 3) float32 landmarks of the frames (``hands``: (T, 21, 3) hand points); zeros where ``detect``
    finds nothing."""
    rows = []
    points_per_frame = NUM_HAND_LANDMARKS if hands else NUM_LANDMARKS
    for frame in frames:
        points = detect(frame)
        if points is None:
            rows.append(np.zeros((points_per_frame, 3), np.float32))
        elif hands:
            if points.shape != (NUM_HAND_LANDMARKS, 3):
                raise ValueError(f"expected 21 hand landmarks, got {points.shape}")
            rows.append(points.astype(np.float32))
        else:
            rows.append(select_landmarks(points))
    if not rows:
        raise ValueError("the video has no frames")
    return np.stack(rows).astype(np.float32)


def extract_directory(videos: Union[str, Path], out: Union[str, Path], model: Optional[str] = None,
                      pattern: str = "*.mp4", overwrite: bool = False,
                      detect: Optional[Callable[[np.ndarray], Optional[np.ndarray]]] = None,
                      hands: bool = False) -> list[Path]:
    """Every ``pattern`` video under ``videos`` -> ``out/<stem>.npy`` (face, or with ``hands`` hand landmarks);
    returns the files written."""
    videos, out = Path(videos), Path(out)
    files = sorted(videos.rglob(pattern))
    if not files:
        raise DatasetError(f"no {pattern} videos", path=videos)
    detect = detect or (mediapipe_hand_landmarker(model) if hands else mediapipe_landmarker(model))
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, video in enumerate(files):
        target = out / f"{video.stem}.npy"
        if target.exists() and not overwrite:
            continue
        np.save(target, extract_clip(read_video(video), detect, hands))
        written.append(target)
        print(f"[{index + 1}/{len(files)}] {target}", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.face_landmarks", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract", help="videos -> landmarks/<clip>.npy")
    extract.add_argument("--videos", required=True)
    extract.add_argument("--out", required=True)
    extract.add_argument("--model", default=None, help="MediaPipe face_landmarker.task (else the legacy Face Mesh)")
    extract.add_argument("--pattern", default="*.mp4")
    extract.add_argument("--overwrite", action="store_true")
    extract.add_argument("--hands", action="store_true", help="MediaPipe Hands (21 points) instead of the face")
    mean = sub.add_parser("mean-face", help="the mean face of listed clips (the graph's reference)")
    mean.add_argument("--root", required=True)
    mean.add_argument("--clips", required=True, help="a text file of clip ids (e.g. <root>/train.txt)")
    mean.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "extract":
            written = extract_directory(args.videos, args.out, args.model, args.pattern, args.overwrite,
                                        hands=args.hands)
            print(f"wrote {len(written)} landmark clips to {args.out}")
        else:
            ids = [line.strip().removesuffix(".mp4") for line in Path(args.clips).read_text().splitlines() if line.strip()]
            clips = [LandmarkClip(Path(args.root) / "landmarks" / f"{i}.npy", 0, i) for i in ids
                     if (Path(args.root) / "landmarks" / f"{i}.npy").is_file()]
            np.save(args.out, mean_face(clips))
            print(f"mean face of {len(clips)} clips written to {args.out}")
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
