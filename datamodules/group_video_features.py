"""Group videos as cached per-face and per-frame features: the shared base of the group-emotion datasets (VGAF, GECV,
the synthetic stand-in) and the offline extraction that makes their ``features/<video id>.npz`` cache.

A video is stored as ``features/<video id>.npz`` with ``faces`` float32 (T, N, Df) (up to N faces per frame in
detector-confidence order, no tracking; rows past a frame's face count are zeros), ``face_mask`` bool (T, N) and
``frames`` float32 (T, Dh). GER-STGAT: T = 20 (VGAF) / 15 (GECV), N = 8, Df = 4096 (VGGFace fc7), Dh = 2048
(ResNet-50 pooled ``layer4``). A cache with more frames than asked is resampled uniformly, with fewer it is
stretched by repetition (uniform indices); more faces than ``max_faces`` keep the first (most confident) ones.

Batches: ``group_video`` a dict of ``faces`` (T, N, Df), ``face_mask`` (T, N), ``frames`` (T, Dh); ``label`` int64;
``name``.

Extraction (OpenCV decoding; faces by OpenCV's YuNet with ``--yunet-model``, else ``facenet_pytorch``'s MTCNN (the
paper's detector) when it imports, else OpenCV's Haar cascade where the OpenCV build ships it (not OpenCV 5))::

    python -m datamodules.group_video_features extract --videos <dir of .mp4> --out <root>/features --frames 20
        [--yunet-model face_detection_yunet_2023mar.onnx] [--face-checkpoint vggface_emotion.pt]
        [--frame-checkpoint resnet50_gaf.pt]

The paper's extractors (a VGGFace fine-tuned on face emotions, a ResNet-50 trained on GAF) are not released: without
checkpoints the extractors are randomly initialised (deterministic seed) and the features carry no emotion
knowledge. A checkpoint is a state dict in torchvision's ``vgg16`` / ``resnet50`` key layout.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError

CLASSES = ("Positive", "Neutral", "Negative")
FEATURE_LAYOUT = """\
<root>/features/<video id>.npz     faces float32 (T, N, Df), face_mask bool (T, N), frames float32 (T, Dh); made by:
                                   python -m datamodules.group_video_features extract --videos <videos> --out <root>/features"""


@dataclass
class GroupVideo:
    """One video: its feature cache (an ``.npz`` path or a dict of arrays), class index and name."""
    source: Union[str, Path, dict]
    label: int
    name: str


def uniform_indices(length: int, count: int) -> np.ndarray:
    """``count`` indices spread uniformly over ``range(length)`` (centres of equal segments; repeats when short)."""
    return np.minimum(((np.arange(count) + 0.5) * length / count).astype(int), length - 1)


def fit_video(arrays: dict, num_frames: int, max_faces: int) -> dict:
    """Resample to ``num_frames`` frames and pad/crop to ``max_faces`` faces."""
    faces, mask, frames = arrays["faces"], arrays["face_mask"].astype(bool), arrays["frames"]
    index = uniform_indices(faces.shape[0], num_frames)
    faces, mask, frames = faces[index], mask[index], frames[index]
    t, n, d = faces.shape
    if n >= max_faces:
        faces, mask = faces[:, :max_faces], mask[:, :max_faces]
    else:
        faces = np.concatenate([faces, np.zeros((t, max_faces - n, d), faces.dtype)], axis=1)
        mask = np.concatenate([mask, np.zeros((t, max_faces - n), bool)], axis=1)
    return {"faces": torch.from_numpy(np.ascontiguousarray(faces, np.float32)),
            "face_mask": torch.from_numpy(np.ascontiguousarray(mask)),
            "frames": torch.from_numpy(np.ascontiguousarray(frames, np.float32))}


def check_arrays(arrays, name) -> Optional[str]:
    """None when the arrays are a well-formed cache, else what is wrong."""
    missing = [k for k in ("faces", "face_mask", "frames") if k not in arrays]
    if missing:
        return f"missing arrays {missing}"
    faces, mask, frames = arrays["faces"], arrays["face_mask"], arrays["frames"]
    if faces.ndim != 3 or mask.shape != faces.shape[:2] or frames.ndim != 2 or frames.shape[0] != faces.shape[0]:
        return (f"shapes faces {faces.shape}, face_mask {mask.shape}, frames {frames.shape}: expected (T, N, Df), "
                "(T, N), (T, Dh)")
    if faces.shape[0] < 1:
        return "no frames"
    return None


class GroupVideoFeatures(Dataset):
    """Items ``{"group_video": {faces, face_mask, frames}, "label", "name"}`` of cached videos."""

    def __init__(self, videos: Sequence[GroupVideo], num_frames: int, max_faces: int):
        self.videos, self.num_frames, self.max_faces = list(videos), num_frames, max_faces

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index]
        if isinstance(video.source, dict):
            arrays = video.source
        else:
            with np.load(video.source) as file:
                arrays = {k: file[k] for k in ("faces", "face_mask", "frames")}
        return {"group_video": fit_video(arrays, self.num_frames, self.max_faces),
                "label": torch.tensor(video.label, dtype=torch.long), "name": video.name}


class GroupVideoDataModule(BaseDataModule):
    """Base of the group-video datasets: subclasses list each split's videos (``list_videos``); the base checks the
    feature files, builds the datasets and counts the classes.

    Args:
        data_dir: the dataset root (subclasses' layouts).
        num_frames: T frames per video (20 VGAF, 15 GECV).
        max_faces: N faces per frame (8).
        check_files: open every cache in ``setup`` (fails early on a missing or malformed file).
    """

    classes: tuple[str, ...] = CLASSES
    standin_config: Optional[str] = "experiments/ger_stgat_demo.yaml"
    layout: str = FEATURE_LAYOUT

    def __init__(self, data_dir: str = "data", num_frames: int = 20, max_faces: int = 8, check_files: bool = True,
                 batch_size: int = 64, num_workers: int = 2, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if num_frames < 1 or max_faces < 1:
            raise ValueError(f"num_frames and max_faces must be >= 1, got {num_frames}, {max_faces}")
        self.data_dir = Path(os.path.expanduser(str(data_dir)))
        self.num_frames, self.max_faces, self.check_files = num_frames, max_faces, check_files
        self.splits: dict[str, list[GroupVideo]] = {}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def error(self, problem: str, path: Optional[Union[str, Path]] = None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config, hint=hint)

    def feature_path(self, video_id: str) -> Path:
        return self.data_dir / "features" / f"{video_id}.npz"

    def list_videos(self) -> dict[str, list[GroupVideo]]:
        """``{"train": [...], "val": [...], "test": [...]}``."""
        raise NotImplementedError

    def _check(self, video: GroupVideo) -> None:
        if isinstance(video.source, dict):
            problem = check_arrays(video.source, video.name)
            if problem:
                raise self.error(f"video {video.name}: {problem}")
            return
        if not os.path.isfile(video.source):
            raise self.error("feature cache missing", video.source,
                             hint="extract the features first (python -m datamodules.group_video_features extract)")
        try:
            with np.load(video.source) as file:
                problem = check_arrays({k: file[k] for k in file.files}, video.name)
        except (OSError, ValueError) as error:
            raise self.error(f"cannot read feature cache ({error})", video.source) from error
        if problem:
            raise self.error(f"feature cache malformed: {problem}", video.source)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        splits = self.list_videos()
        for split in ("train", "val", "test"):
            if not splits.get(split):
                raise self.error(f"the {split} split has no videos", self.data_dir)
        if self.check_files:
            for videos in splits.values():
                for video in videos:
                    self._check(video)
        self.splits = splits
        self.train_set, self.val_set, self.test_set = (
            GroupVideoFeatures(splits[s], self.num_frames, self.max_faces) for s in ("train", "val", "test"))

    @property
    def class_counts(self) -> list[int]:
        if not self.splits:
            self.setup("fit")
        labels = np.array([v.label for v in self.splits["train"]], dtype=int)
        return np.bincount(labels, minlength=self.num_classes).tolist()


def parse_label(value: str) -> int:
    """Class index (0 Positive, 1 Neutral, 2 Negative) of a name or of VGAF's 1 / 2 / 3."""
    text = value.strip()
    names = {c.lower(): i for i, c in enumerate(CLASSES)}
    if text.lower() in names:
        return names[text.lower()]
    if text.isdigit() and 1 <= int(text) <= 3:
        return int(text) - 1
    raise ValueError(f"unknown group emotion label {value!r} (expected {list(CLASSES)} or 1/2/3)")


def read_manifest(path: Path) -> list[tuple[str, int]]:
    """A ``path,label`` CSV (header optional) -> [(video id = file stem, class index)]."""
    import csv

    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and any(c.strip() for c in r)]
    if rows and rows[0][0].strip().lower() in ("path", "video", "file", "name"):
        rows = rows[1:]
    return [(Path(r[0].strip()).stem, parse_label(r[1])) for r in rows]


# ---------------------------------------------------------------------------------------------------------------------
# Extraction: frames -> faces (MTCNN / Haar) -> VGG-16 fc7; frames -> ResNet-50 pooled layer4.

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16Features(nn.Module):
    """VGG-16 (torchvision's key layout: ``features.*``, ``classifier.0/3``) up to fc7: (B, 3, 224, 224) -> (B, 4096)."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(),
                                        nn.Linear(4096, 4096))  # fc6, relu, dropout, fc7 ("last FC" feature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet50_features() -> nn.Module:
    """ResNet-50 (MONAI's, torchvision's key names) with its head removed: (B, 3, H, W) -> (B, 2048) pooled layer4."""
    from monai.networks.nets import resnet50

    net = resnet50(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, num_classes=1)
    net.fc = nn.Identity()
    for name, module in net.named_modules():  # torchvision's shortcut convolutions have no bias
        if "downsample" in name and isinstance(module, nn.Conv2d) and module.bias is not None:
            module.register_parameter("bias", None)
    return net


def load_checkpoint(net: nn.Module, path: Optional[str]) -> nn.Module:
    if path:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        missing, unexpected = net.load_state_dict(state, strict=False)
        print(f"{path}: loaded ({len(missing)} missing, {len(unexpected)} unexpected keys)", file=sys.stderr)
    return net.eval()


def face_detector(max_faces: int = 8, yunet_model: Optional[str] = None
                  ) -> Callable[[np.ndarray], list[tuple[np.ndarray, float]]]:
    """RGB frame -> [(box x1 y1 x2 y2, confidence)], most confident first, from the first detector available:
    OpenCV's YuNet (``FaceDetectorYN``) with the model file ``yunet_model`` (face_detection_yunet_*.onnx, from the
    OpenCV zoo); MTCNN (``facenet_pytorch``, the paper's detector; its wheel ships the weights but its NMS needs
    torchvision); OpenCV's Haar cascade (OpenCV < 5 ships it; its level weights as confidence). None: an error."""
    import cv2

    if yunet_model:
        if not os.path.isfile(yunet_model):
            raise DatasetError("YuNet model file not found", path=yunet_model)

        def detect_yunet(frame: np.ndarray):
            h, w = frame.shape[:2]
            net = cv2.FaceDetectorYN.create(yunet_model, "", (w, h), 0.6)
            _, faces = net.detect(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            found = [] if faces is None else [((f[0], f[1], f[0] + f[2], f[1] + f[3]), float(f[-1])) for f in faces]
            return sorted(found, key=lambda f: -f[1])[:max_faces]
        return detect_yunet
    try:
        from facenet_pytorch import MTCNN  # type: ignore
        mtcnn = MTCNN(keep_all=True, device="cpu")

        def detect_mtcnn(frame: np.ndarray):
            boxes, probs = mtcnn.detect(frame)
            if boxes is None:
                return []
            order = np.argsort(-probs)[:max_faces]
            return [(boxes[i], float(probs[i])) for i in order]
        return detect_mtcnn
    except Exception:  # not installed, or its torchvision import fails
        pass
    if hasattr(cv2, "CascadeClassifier"):
        cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))

        def detect_haar(frame: np.ndarray):
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            boxes, _, weights = cascade.detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5, minSize=(20, 20),
                                                          outputRejectLevels=True)
            found = [((x, y, x + w, y + h), float(c)) for (x, y, w, h), c in zip(boxes, np.ravel(weights))]
            return sorted(found, key=lambda f: -f[1])[:max_faces]
        return detect_haar
    raise DatasetError("no face detector available", hint="give --yunet-model face_detection_yunet_2023mar.onnx (OpenCV "
                       "zoo), or install facenet-pytorch (MTCNN; needs torchvision) or an OpenCV with Haar cascades")


_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _to_tensor(images: Sequence[np.ndarray], size: int = 224) -> torch.Tensor:
    import cv2

    batch = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images])
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255 - _MEAN) / _STD


@torch.no_grad()
def extract_video(frames: Sequence[np.ndarray], num_frames: int, max_faces: int, detect, face_net: nn.Module,
                  frame_net: nn.Module, boxes: Optional[Sequence[list]] = None, input_size: int = 224) -> dict:
    """RGB frames -> the cache arrays of ``num_frames`` uniformly sampled frames. ``boxes``: per input frame the
    detections [(box, confidence)] to use instead of ``detect`` (a generator's ground truth); ``input_size``: the
    side faces and frames are resized to for the extractors (224, as the paper)."""
    if not frames:
        raise ValueError("the video has no frames")
    index = uniform_indices(len(frames), num_frames)
    sampled = [frames[i] for i in index]
    if boxes is not None:
        given = [boxes[i] for i in index]
        detect = lambda frame, _it=iter(given): next(_it)
    holistic = frame_net(_to_tensor(sampled, input_size)).reshape(num_frames, -1).numpy()
    faces, mask = None, np.zeros((num_frames, max_faces), bool)
    for t, frame in enumerate(sampled):
        h, w = frame.shape[:2]
        crops = []
        for box, _ in detect(frame)[:max_faces]:
            x1, y1, x2, y2 = (int(round(v)) for v in box)
            x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            if x2 - x1 >= 2 and y2 - y1 >= 2:
                crops.append(frame[y1:y2, x1:x2])
        feats = face_net(_to_tensor(crops, input_size)).numpy() if crops else np.zeros((0, 1), np.float32)
        if faces is None and crops:
            faces = np.zeros((num_frames, max_faces, feats.shape[1]), np.float32)
        if crops:
            faces[t, :len(crops)] = feats
            mask[t, :len(crops)] = True
    if faces is None:
        faces = np.zeros((num_frames, max_faces, 4096), np.float32)
    return {"faces": faces.astype(np.float32), "face_mask": mask, "frames": holistic.astype(np.float32)}


def extract_directory(videos: Union[str, Path], out: Union[str, Path], num_frames: int = 20, max_faces: int = 8,
                      face_checkpoint: Optional[str] = None, frame_checkpoint: Optional[str] = None,
                      pattern: str = "*.mp4", overwrite: bool = False, detect=None, face_net: Optional[nn.Module] = None,
                      frame_net: Optional[nn.Module] = None, yunet_model: Optional[str] = None) -> list[Path]:
    """Every ``pattern`` video under ``videos`` -> ``out/<stem>.npz``; returns the files written."""
    from datamodules.face_landmarks import read_video

    videos, out = Path(videos), Path(out)
    files = sorted(videos.rglob(pattern))
    if not files:
        raise DatasetError(f"no {pattern} videos", path=videos)
    torch.manual_seed(0)  # random-init extractors (no checkpoint) are the same on every run
    face_net = face_net or load_checkpoint(VGG16Features(), face_checkpoint)
    frame_net = frame_net or load_checkpoint(resnet50_features(), frame_checkpoint)
    detect = detect or face_detector(max_faces, yunet_model)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, video in enumerate(files):
        target = out / f"{video.stem}.npz"
        if target.exists() and not overwrite:
            continue
        arrays = extract_video(list(read_video(video)), num_frames, max_faces, detect, face_net, frame_net)
        np.savez(target, **arrays)
        written.append(target)
        print(f"[{index + 1}/{len(files)}] {target}", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datamodules.group_video_features",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    extract = sub.add_parser("extract", help="videos -> features/<video>.npz")
    extract.add_argument("--videos", required=True)
    extract.add_argument("--out", required=True)
    extract.add_argument("--frames", type=int, default=20)
    extract.add_argument("--max-faces", type=int, default=8)
    extract.add_argument("--face-checkpoint", default=None, help="VGG-16 state dict (torchvision keys)")
    extract.add_argument("--frame-checkpoint", default=None, help="ResNet-50 state dict (torchvision keys)")
    extract.add_argument("--yunet-model", default=None, help="OpenCV YuNet face detector .onnx")
    extract.add_argument("--pattern", default="*.mp4")
    extract.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        written = extract_directory(args.videos, args.out, args.frames, args.max_faces, args.face_checkpoint,
                                    args.frame_checkpoint, args.pattern, args.overwrite,
                                    yunet_model=args.yunet_model)
        print(f"wrote {len(written)} feature caches to {args.out}")
    except (RuntimeError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
