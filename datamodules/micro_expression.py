"""Micro-expression clips (CASME II, SAMM, SMIC-HS and the MEGC 2019 composite of the three) as the DST paper
feeds them: 17 frames around the apex, motion-magnified (MI) and long-term optical flow (OF), one subject held out.

Preprocessing (``prepare_clip``, computed once per clip and cached as ``.npy`` in ``prepare_data``):
frames apex-8 .. apex+8 (edge frames repeated where the clip is shorter), optionally a face crop (a Haar/LBP cascade
on the first frame, the same box for every frame; the datasets' cropped releases need none), resized to
``image_size``; MI: linear Eulerian magnification I'_t = I_t + alpha (I_t - I_1) (alpha 4; the paper names no
method); OF: the flow of every frame w.r.t. the first (Farneback, or TV-L1 where opencv-contrib is installed),
encoded as (u, v, |w|) scaled by the clip's largest magnitude and stored as uint8 (u, v centred at 128).
A sample is ``{"video": float (T, 6, H, W) in [-1, 1] (MI RGB, then u, v, |w|), "label", "group" (the subject's
index), "name"}``. Training augmentation (the paper states none): one random horizontal flip (u negated), rotation
(+-``rotation`` degrees, flow vectors rotated with the image) and shift (+-``translate``) for all frames and both
streams.

Protocol: leave-one-subject-out; ``fold`` k holds out the k-th subject in sorted order
(``splits.leave_one_group_out``; ``experiments/dst_mer/*_loso_study.yaml`` runs every fold and pools the
predictions). The paper has no validation split (a fixed 100 epochs); ``val`` here is the held-out subject's clips,
logged for curves only: ``DSTTask(select_best=false)`` tests the last epoch.

Layouts (``data_dir``):

- CASME II: ``CASME2-coding-*.xlsx`` (or ``.csv``; columns Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
  Estimated Emotion) beside ``Cropped/sub01/EP02_01f/reg_img46.jpg`` (or ``CASME2_RAW_selected/sub01/EP02_01f/
  img46.jpg``). 5 classes (the paper's 247 clips): happiness, surprise, disgust, repression, others (fear and
  sadness dropped).
- SAMM: ``SAMM_Micro_FACS_Codes_v2.xlsx`` (header rows before the table; columns Subject, Filename, Onset Frame,
  Apex Frame, Offset Frame, Estimated Emotion) beside ``SAMM/006/006_1_2/006_05562.jpg`` (or ``006/...`` directly
  under ``data_dir``). 8 classes: contempt, disgust, fear, anger, sadness, happiness, surprise, others.
- SMIC-HS: ``HS/s1/micro/{positive,negative,surprise}/s1_po_01/*.bmp`` (``data_dir`` holds ``HS/``, or is it).
  3 classes; no apex annotation: the middle frame.
- MEGC 2019 composite (CDE): the three with 3 classes (negative, positive, surprise): CASME II happiness ->
  positive, disgust/repression -> negative, surprise; SAMM happiness -> positive, anger/contempt/disgust/fear/
  sadness -> negative, surprise; SMIC as is; others dropped (145 + 133 + 164 = 442 clips, 68 subjects).
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError, PathLike, writable_dir
from datamodules.splits import leave_one_group_out
from lightning_modules.batch import GROUP, LABEL, NAME, VIDEO

FlowMethod = Literal["farneback", "tvl1"]
STANDIN = "experiments/dst_mer_demo.yaml"

CASME2_CLASSES = ("happiness", "surprise", "disgust", "repression", "others")
SAMM_CLASSES = ("contempt", "disgust", "fear", "anger", "sadness", "happiness", "surprise", "others")
SMIC_CLASSES = ("positive", "negative", "surprise")
MEGC2019_CLASSES = ("negative", "positive", "surprise")
#: MEGC 2019's composite mapping of each dataset's emotion to 3 classes (classes not listed are dropped).
MEGC2019_MAP = {
    "casme2": {"happiness": "positive", "disgust": "negative", "repression": "negative", "surprise": "surprise"},
    "samm": {"happiness": "positive", "anger": "negative", "contempt": "negative", "disgust": "negative",
             "fear": "negative", "sadness": "negative", "surprise": "surprise"},
    "smic": {"positive": "positive", "negative": "negative", "surprise": "surprise"},
}


@dataclass
class MEClip:
    """One micro-expression clip: its frames (image paths in time order, or a uint8 (N, H, W, 3) RGB array), the
    apex's index among them, the emotion as the dataset names it, and the subject."""

    subject: str
    name: str
    frames: Union[list[Path], np.ndarray]
    apex: int
    emotion: str
    label: int = -1
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ preprocessing
def apex_window(num_frames_clip: int, apex: int, length: int = 17) -> np.ndarray:
    """Indices apex - length//2 .. apex + (length-1)//2, clamped to the clip (edge frames repeated)."""
    half = length // 2
    return np.clip(np.arange(apex - half, apex - half + length), 0, num_frames_clip - 1)


def magnify(frames: np.ndarray, alpha: float) -> np.ndarray:
    """Linear Eulerian magnification I'_t = I_t + alpha (I_t - I_1) of uint8 (T, H, W, C) frames, clipped."""
    f = frames.astype(np.float32)
    return np.clip(np.round(f + alpha * (f - f[:1])), 0, 255).astype(np.uint8)


def optical_flow(reference: np.ndarray, frame: np.ndarray, method: FlowMethod = "farneback") -> np.ndarray:
    """(H, W, 2) float32 flow (u, v) in pixels from grey uint8 ``reference`` to ``frame``."""
    if method == "tvl1":
        optflow = getattr(cv2, "optflow", None)
        if optflow is None:
            raise RuntimeError("flow: tvl1 needs opencv-contrib (cv2.optflow); use flow: farneback")
        return optflow.DualTVL1OpticalFlow_create().calc(reference, frame, None)
    return cv2.calcOpticalFlowFarneback(reference, frame, None, pyr_scale=0.5, levels=3, winsize=9, iterations=5,
                                        poly_n=5, poly_sigma=1.1, flags=0)


def encode_flow(flows: np.ndarray) -> np.ndarray:
    """(T, H, W, 2) flows -> uint8 (T, H, W, 3): u, v as 128 + 127 w/m and |w| as 255 |w|/m, with m the clip's
    largest magnitude (per-clip normalisation)."""
    magnitude = np.linalg.norm(flows, axis=-1)
    scale = max(float(magnitude.max()), 1e-6)
    uv = 128.0 + 127.0 * flows / scale
    mag = 255.0 * magnitude / scale
    return np.clip(np.round(np.concatenate([uv, mag[..., None]], -1)), 0, 255).astype(np.uint8)


def detect_face_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the largest frontal face (slightly enlarged): OpenCV's Haar cascade where this OpenCV build
    has it, else scikit-image's LBP frontal-face cascade; the central square when no face is found."""
    H, W = frame.shape[:2]
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    if hasattr(cv2, "CascadeClassifier") and hasattr(cv2, "data"):
        cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
        faces = [tuple(int(v) for v in b) for b in cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5,
                                                                             minSize=(H // 5, H // 5))]
    else:
        from skimage.data import lbp_frontal_face_cascade_filename
        from skimage.feature import Cascade

        found = Cascade(lbp_frontal_face_cascade_filename()).detect_multi_scale(
            img=grey, scale_factor=1.2, step_ratio=1, min_size=(H // 5, H // 5), max_size=(H, W))
        faces = [(d["c"], d["r"], d["width"], d["height"]) for d in found]
    if not faces:
        side = min(H, W)
        return (W - side) // 2, (H - side) // 2, side, side
    x, y, w, h = max(faces, key=lambda b: b[2] * b[3])
    grow = int(0.1 * w)
    x0, y0 = max(0, x - grow), max(0, y - grow)
    return x0, y0, min(W, x + w + grow) - x0, min(H, y + h + grow) - y0


def prepare_clip(frames: np.ndarray, apex: int, num_frames: int = 17, image_size: int = 112, alpha: float = 4.0,
                 flow: FlowMethod = "farneback", face_crop: bool = False) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB frames of a clip -> uint8 (T, 6, S, S): the magnified frames and the encoded
    long-term flow of the ``num_frames`` around ``apex`` (module doc)."""
    window = frames[apex_window(len(frames), apex, num_frames)]
    if face_crop:
        x, y, w, h = detect_face_box(window[0])
        window = window[:, y:y + h, x:x + w]
    resized = np.stack([cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) for f in window])
    grey = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in resized]
    flows = np.zeros((len(grey), image_size, image_size, 2), np.float32)
    for t in range(1, len(grey)):
        flows[t] = optical_flow(grey[0], grey[t], flow)
    clip = np.concatenate([magnify(resized, alpha), encode_flow(flows)], axis=-1)  # (T, S, S, 6)
    return np.ascontiguousarray(clip.transpose(0, 3, 1, 2))


def read_frames(paths: Sequence[Path]) -> np.ndarray:
    """uint8 (N, H, W, 3) RGB frames (grey images replicated); all frames resized to the first's size."""
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError("unreadable frame", path=path)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if images and image.shape != images[0].shape:
            image = cv2.resize(image, images[0].shape[1::-1], interpolation=cv2.INTER_AREA)
        images.append(image)
    return np.stack(images)


def frame_number(path: Path) -> int:
    """The frame number in a file name: the last run of digits (reg_img46.jpg -> 46, 006_05562.jpg -> 5562)."""
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def sorted_frames(folder: Path, patterns: Sequence[str] = ("*.jpg", "*.bmp", "*.png")) -> list[Path]:
    files = [p for pattern in patterns for p in folder.glob(pattern)]
    return sorted(files, key=lambda p: (frame_number(p), p.name))


# ------------------------------------------------------------------------------------------------ coding sheets
def read_sheet(path: Path, header_key: str = "subject") -> list[dict[str, str]]:
    """Rows of an .xlsx (first sheet) or .csv coding sheet as {lower-case stripped column: cell text}; the header
    is the first row whose first non-empty cell is ``header_key`` (SAMM has title rows above its table)."""
    if path.suffix.lower() == ".csv":
        import csv

        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = [list(r) for r in csv.reader(file)]
    else:
        try:
            import openpyxl
        except ImportError as error:  # pragma: no cover - openpyxl is a dependency
            raise DatasetError("reading the .xlsx coding sheet needs openpyxl (pip install openpyxl), or save it "
                               "as .csv beside it", path=path) from error
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
        rows = [["" if c is None else c for c in r] for r in workbook.worksheets[0].iter_rows(values_only=True)]
        workbook.close()
    for index, row in enumerate(rows):
        cells = [str(c).strip().lower() for c in row]
        if any(cells) and next(c for c in cells if c) == header_key:
            header = [re.sub(r"\s+", " ", c) for c in cells]
            table = []
            for r in rows[index + 1:]:
                values = [_cell_text(c) for c in r]
                if any(values):
                    table.append({h: v for h, v in zip(header, values) if h})
            return table
    raise DatasetError(f"no header row starting with '{header_key}' in the coding sheet", path=path)


def _cell_text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _column(row: dict[str, str], *names: str) -> str:
    for name in names:
        for key, value in row.items():
            if key.replace(" ", "") == name.replace(" ", ""):
                return value
    raise KeyError(names[0])


def _int_or_none(text: str) -> Optional[int]:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def _clip_frames(folder: Path, onset: Optional[int], apex: Optional[int],
                 offset: Optional[int]) -> tuple[list[Path], int]:
    """The frames of ``folder`` from onset to offset (all where unknown) and the apex's index among them
    (the frame nearest the apex number; the middle where the apex is unknown)."""
    frames = sorted_frames(folder)
    if onset is not None and offset is not None and offset >= onset:
        inside = [p for p in frames if onset <= frame_number(p) <= offset]
        frames = inside or frames
    if not frames:
        return [], 0
    if apex is None:
        return frames, len(frames) // 2
    numbers = np.array([frame_number(p) for p in frames])
    return frames, int(np.argmin(np.abs(numbers - apex)))


# ------------------------------------------------------------------------------------------------ listers
CASME2_LAYOUT = """<data_dir>/
  CASME2-coding-20140508.xlsx   (or .csv: Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame, ..., Estimated Emotion)
  Cropped/sub01/EP02_01f/reg_img46.jpg ...   (or CASME2_RAW_selected/sub01/EP02_01f/img46.jpg)"""
SAMM_LAYOUT = """<data_dir>/
  SAMM_Micro_FACS_Codes_v2.xlsx      (or .csv; title rows, then Subject, Filename, Onset Frame, Apex Frame,
                                      Offset Frame, ..., Estimated Emotion)
  SAMM/006/006_1_2/006_05562.jpg ... (or 006/006_1_2/... directly under data_dir)"""
SMIC_LAYOUT = """<data_dir>/
  HS/s1/micro/positive/s1_po_01/*.bmp
  HS/s1/micro/negative/s1_ne_01/*.bmp
  HS/s1/micro/surprise/s1_sur_01/*.bmp   (data_dir may also be HS/ itself)"""


def _find_sheet(root: Path, patterns: Sequence[str], layout: str, what: str) -> Path:
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if not p.name.startswith("~$"))
        if found:
            return found[0]
    raise DatasetError(f"{what}: coding sheet ({' or '.join(patterns)}) not found", path=root, layout=layout,
                       standin_config=STANDIN)


def list_casme2(root: PathLike, frames_dir: Optional[str] = None) -> list[MEClip]:
    """CASME II clips of the coding sheet whose frame folder exists (every emotion; map them afterwards)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("CASME II folder not found", path=root, layout=CASME2_LAYOUT, standin_config=STANDIN)
    sheet = _find_sheet(root, ("CASME2-coding-*.xlsx", "CASME2-coding*.csv", "CASME2*coding*.xlsx"), CASME2_LAYOUT,
                        "CASME II")
    candidates = [frames_dir] if frames_dir else ["Cropped", "CASME2_RAW_selected", "CASME2-RAW", "CASME2_RAW"]
    frame_root = next((root / c for c in candidates if (root / c).is_dir()), None)
    if frame_root is None:
        raise DatasetError(f"CASME II frame folder ({' or '.join(candidates)}) not found", path=root,
                           layout=CASME2_LAYOUT, standin_config=STANDIN)
    clips = []
    for row in read_sheet(sheet):
        subject = _column(row, "subject")
        number = _int_or_none(subject)
        subject = f"sub{number:02d}" if number is not None else subject
        name = _column(row, "filename")
        folder = frame_root / subject / name
        if not folder.is_dir():
            raise DatasetError(f"CASME II clip {subject}/{name} of the coding sheet has no frame folder", path=folder,
                               layout=CASME2_LAYOUT, standin_config=STANDIN)
        frames, apex = _clip_frames(folder, _int_or_none(_column(row, "onsetframe")),
                                    _int_or_none(_column(row, "apexframe")), _int_or_none(_column(row, "offsetframe")))
        if not frames:
            raise DatasetError(f"CASME II clip {subject}/{name} has no frames", path=folder, layout=CASME2_LAYOUT,
                               standin_config=STANDIN)
        emotion = _column(row, "estimated emotion").strip().lower()
        clips.append(MEClip(subject, f"{subject}/{name}", frames, apex, emotion))
    return clips


def list_samm(root: PathLike) -> list[MEClip]:
    """SAMM clips of the FACS coding sheet (every emotion; 'Other' -> 'others')."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("SAMM folder not found", path=root, layout=SAMM_LAYOUT, standin_config=STANDIN)
    sheet = _find_sheet(root, ("SAMM_Micro_FACS_Codes*.xlsx", "SAMM_Micro_FACS_Codes*.csv"), SAMM_LAYOUT, "SAMM")
    frame_root = root / "SAMM" if (root / "SAMM").is_dir() else root
    clips = []
    for row in read_sheet(sheet):
        subject = _column(row, "subject")
        number = _int_or_none(subject)
        subject = f"{number:03d}" if number is not None else subject
        name = _column(row, "filename")
        folder = frame_root / subject / name
        if not folder.is_dir():
            raise DatasetError(f"SAMM clip {name} of the coding sheet has no frame folder", path=folder,
                               layout=SAMM_LAYOUT, standin_config=STANDIN)
        frames, apex = _clip_frames(folder, _int_or_none(_column(row, "onset frame")),
                                    _int_or_none(_column(row, "apex frame")),
                                    _int_or_none(_column(row, "offset frame")))
        if not frames:
            raise DatasetError(f"SAMM clip {name} has no frames", path=folder, layout=SAMM_LAYOUT,
                               standin_config=STANDIN)
        emotion = _column(row, "estimated emotion").strip().lower()
        emotion = "others" if emotion in ("other", "others") else emotion
        clips.append(MEClip(subject, f"{subject}/{name}", frames, apex, emotion))
    return clips


def list_smic(root: PathLike, part: str = "HS") -> list[MEClip]:
    """SMIC clips (``part`` HS, VIS or NIR) from the folder layout; the apex is the middle frame."""
    root = Path(root)
    base = root / part if (root / part).is_dir() else root
    subjects = sorted(p for p in base.glob("s*") if p.is_dir() and (p / "micro").is_dir()) if base.is_dir() else []
    if not subjects:
        raise DatasetError(f"SMIC-{part}: no subject folders s*/micro/ found", path=base, layout=SMIC_LAYOUT,
                           standin_config=STANDIN)
    clips = []
    for subject_dir in subjects:
        for emotion in SMIC_CLASSES:
            for folder in sorted(p for p in (subject_dir / "micro" / emotion).glob("*") if p.is_dir()):
                frames = sorted_frames(folder)
                if not frames:
                    raise DatasetError(f"SMIC clip {folder.name} has no frames", path=folder, layout=SMIC_LAYOUT,
                                       standin_config=STANDIN)
                clips.append(MEClip(subject_dir.name, f"{subject_dir.name}/{folder.name}", frames, len(frames) // 2,
                                    emotion))
    return clips


def assign_labels(clips: list[MEClip], classes: Sequence[str],
                  mapping: Optional[dict[str, str]] = None) -> list[MEClip]:
    """Keep the clips whose (mapped) emotion is one of ``classes`` and set their label index."""
    kept = []
    for clip in clips:
        emotion = mapping.get(clip.emotion) if mapping is not None else clip.emotion
        if emotion in classes:
            clip.label = list(classes).index(emotion)
            kept.append(clip)
    return kept


# ------------------------------------------------------------------------------------------------ dataset
class MicroExpressionClips(Dataset):
    """Cached uint8 clips (N, T, 6, S, S) -> samples; ``augment`` draws one flip/rotation/shift per clip."""

    def __init__(self, clips: np.ndarray, labels: Sequence[int], groups: Sequence[int], names: Sequence[str],
                 augment: bool = False, rotation: float = 10.0, translate: float = 0.08):
        self.clips, self.names = clips, list(names)
        self.labels = torch.as_tensor(np.asarray(labels, np.int64))
        self.groups = torch.as_tensor(np.asarray(groups, np.int64))
        self.augment, self.rotation, self.translate = augment, rotation, translate

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        video = torch.from_numpy(np.asarray(self.clips[index])).float().div_(127.5).sub_(1.0)  # (T, 6, S, S)
        if self.augment:
            video = augment_clip(video, self.rotation, self.translate)
        return {VIDEO: video, LABEL: self.labels[index], GROUP: self.groups[index], NAME: self.names[index]}


def affine_clip(video: torch.Tensor, flip: bool = False, angle: float = 0.0,
                shift: Sequence[float] = (0.0, 0.0)) -> torch.Tensor:
    """Every frame of both streams of a (T, 6, S, S) clip in [-1, 1] mirrored (``flip``), rotated by ``angle``
    degrees and shifted by ``shift`` (fractions of the side), borders replicated; the flow vectors (channels 3, 4)
    are mirrored / rotated with the image (|w| kept)."""
    a = math.radians(angle)
    # affine_grid maps output to input coordinates: input = L @ output + 2 shift, L = R(a) @ diag(+-1, 1)
    linear = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ torch.diag(
        torch.tensor([-1.0 if flip else 1.0, 1.0]))
    offset = torch.as_tensor(shift, dtype=torch.float32) * 2  # normalised coordinates span 2
    theta = torch.cat([linear, offset[:, None]], 1)[None].expand(video.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(video.shape), align_corners=False)
    out = F.grid_sample(video, grid, mode="bilinear", padding_mode="border", align_corners=False)
    forward = torch.linalg.inv(linear)  # a displacement w of the input is forward @ w in the output
    u, v = out[:, 3].clone(), out[:, 4].clone()
    out[:, 3] = forward[0, 0] * u + forward[0, 1] * v
    out[:, 4] = forward[1, 0] * u + forward[1, 1] * v
    return out


def augment_clip(video: torch.Tensor, rotation: float = 10.0, translate: float = 0.08,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``affine_clip`` with a random flip (p 0.5), angle U(-rotation, rotation) and shift U(-translate, translate)
    per axis, one draw for the whole clip."""
    flip = bool(torch.rand((), generator=generator) < 0.5)
    angle = float(torch.empty(()).uniform_(-rotation, rotation, generator=generator))
    shift = torch.empty(2).uniform_(-translate, translate, generator=generator)
    return affine_clip(video, flip, angle, shift.tolist())


# ------------------------------------------------------------------------------------------------ datamodules
class MicroExpressionDataModule(BaseDataModule):
    """Base of the micro-expression datamodules: subclasses list the clips (``list_clips``) and name ``classes``.

    Args:
        data_dir: the dataset's root (module doc for each layout).
        num_frames: T = 17 frames around the apex.
        image_size: 112 (Former-DFER's input).
        magnify_alpha: the linear magnification factor (4).
        flow: ``farneback`` (OpenCV) or ``tvl1`` (needs opencv-contrib).
        face_crop: detect the face on the first frame (Haar or LBP cascade) and crop every frame to it.
        fold: the LOSO fold: the held-out subject's index in sorted order (0 .. subjects - 1).
        augment, rotation, translate: training augmentation (module doc).
        cache_dir: where the preprocessed clips are kept (``<data_dir>/.dst_cache`` by default; in memory when
            neither is writable).
    """

    classes: tuple[str, ...] = ()
    layout: str = ""

    def __init__(self, data_dir: Optional[PathLike] = None, num_frames: int = 17, image_size: int = 112,
                 magnify_alpha: float = 4.0, flow: FlowMethod = "farneback", face_crop: bool = False, fold: int = 0,
                 augment: bool = True, rotation: float = 10.0, translate: float = 0.08,
                 cache_dir: Optional[PathLike] = None, batch_size: int = 16, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if flow not in ("farneback", "tvl1"):
            raise ValueError(f"flow must be 'farneback' or 'tvl1', got {flow!r}")
        if num_frames < 2 or image_size < 16:
            raise ValueError("num_frames must be >= 2 and image_size >= 16")
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.num_frames, self.image_size, self.magnify_alpha, self.flow = num_frames, image_size, magnify_alpha, flow
        self.face_crop, self.fold = face_crop, fold
        self.augment, self.rotation, self.translate = augment, rotation, translate
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._memory: dict[str, np.ndarray] = {}
        self.subjects: list[str] = []
        self.held_out: Optional[str] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def list_clips(self) -> list[MEClip]:
        raise NotImplementedError

    # -- caching ----------------------------------------------------------------------------------
    def _cache_root(self) -> Optional[Path]:
        root = self.cache_dir or (None if self.data_dir is None else self.data_dir / ".dst_cache")
        return root if root is not None and writable_dir(root) else None

    def _cache_key(self, clip: MEClip) -> str:
        settings = f"{clip.name}|{self.num_frames}|{self.image_size}|{self.magnify_alpha}|{self.flow}|{self.face_crop}"
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", clip.name)
        return f"{safe}_{hashlib.sha1(settings.encode()).hexdigest()[:10]}"

    def _compute(self, clip: MEClip) -> np.ndarray:
        frames = clip.frames if isinstance(clip.frames, np.ndarray) else read_frames(clip.frames)
        return prepare_clip(frames, clip.apex, self.num_frames, self.image_size, self.magnify_alpha, self.flow,
                            self.face_crop)

    def load_clip(self, clip: MEClip) -> np.ndarray:
        """The preprocessed uint8 (T, 6, S, S) clip: from the cache, else computed (and cached)."""
        key = self._cache_key(clip)
        if key in self._memory:
            return self._memory[key]
        root = self._cache_root()
        path = None if root is None else root / f"{key}.npy"
        if path is not None and path.is_file():
            return np.load(path)
        array = self._compute(clip)
        if path is not None:
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, array)
            tmp.replace(path)
        else:
            self._memory[key] = array
        return array

    def prepare_data(self) -> None:
        for clip in self.list_clips():  # decode, flow and cache once (rank 0)
            self.load_clip(clip)

    # -- splits -----------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        clips = self.list_clips()
        if not clips:
            raise DatasetError(f"{type(self).__name__}: no clips of the classes {list(self.classes)}",
                               path=self.data_dir, layout=self.layout, standin_config=STANDIN)
        self.subjects = sorted({c.subject for c in clips})
        if not 0 <= self.fold < len(self.subjects):
            raise ValueError(f"fold must be in [0, {len(self.subjects)}) (one per subject), got {self.fold}")
        self.held_out = self.subjects[self.fold]
        groups = [c.subject for c in clips]
        train, test = leave_one_group_out(groups, self.held_out)
        arrays = np.stack([self.load_clip(c) for c in clips])
        labels = [c.label for c in clips]
        subject_index = [self.subjects.index(g) for g in groups]
        names = [c.name for c in clips]

        def subset(indices: list[int], augment: bool) -> MicroExpressionClips:
            return MicroExpressionClips(arrays[indices], [labels[i] for i in indices],
                                        [subject_index[i] for i in indices], [names[i] for i in indices],
                                        augment=augment and self.augment, rotation=self.rotation,
                                        translate=self.translate)

        self.train_set = subset(train, True)
        self.test_set = subset(test, False)
        self.val_set = self.test_set  # curves only: the paper has no validation split (module doc)
        self.class_counts = np.bincount([labels[i] for i in train], minlength=self.num_classes).tolist()


class CASME2DataModule(MicroExpressionDataModule):
    """CASME II (module doc): 5 classes (``labels: five``) or MEGC 2019's 3 (``labels: megc2019``)."""

    layout = CASME2_LAYOUT

    def __init__(self, data_dir: PathLike = "data/CASME2", labels: Literal["five", "megc2019"] = "five",
                 frames_dir: Optional[str] = None, **kwargs):
        super().__init__(data_dir, **kwargs)
        if labels not in ("five", "megc2019"):
            raise ValueError(f"labels must be 'five' or 'megc2019', got {labels!r}")
        self.labels, self.frames_dir = labels, frames_dir
        self.classes = CASME2_CLASSES if labels == "five" else MEGC2019_CLASSES

    def list_clips(self) -> list[MEClip]:
        clips = list_casme2(self.data_dir, self.frames_dir)
        return assign_labels(clips, self.classes, None if self.labels == "five" else MEGC2019_MAP["casme2"])


class SAMMDataModule(MicroExpressionDataModule):
    """SAMM (module doc): 8 classes (``labels: eight``) or MEGC 2019's 3; faces cropped by default (SAMM's frames
    are the full 960 x 650 view)."""

    layout = SAMM_LAYOUT

    def __init__(self, data_dir: PathLike = "data/SAMM", labels: Literal["eight", "megc2019"] = "eight",
                 face_crop: bool = True, **kwargs):
        super().__init__(data_dir, face_crop=face_crop, **kwargs)
        if labels not in ("eight", "megc2019"):
            raise ValueError(f"labels must be 'eight' or 'megc2019', got {labels!r}")
        self.labels = labels
        self.classes = SAMM_CLASSES if labels == "eight" else MEGC2019_CLASSES

    def list_clips(self) -> list[MEClip]:
        return assign_labels(list_samm(self.data_dir), self.classes,
                             None if self.labels == "eight" else MEGC2019_MAP["samm"])


class SMICDataModule(MicroExpressionDataModule):
    """SMIC (module doc): ``part`` HS (the paper's), VIS or NIR; 3 classes; apex = middle frame."""

    classes = SMIC_CLASSES
    layout = SMIC_LAYOUT

    def __init__(self, data_dir: PathLike = "data/SMIC", part: str = "HS", **kwargs):
        super().__init__(data_dir, **kwargs)
        self.part = part

    def list_clips(self) -> list[MEClip]:
        return assign_labels(list_smic(self.data_dir, self.part), self.classes)


class MEGC2019CompositeDataModule(MicroExpressionDataModule):
    """MEGC 2019's composite database (CASME II + SAMM + SMIC-HS, 3 classes; module doc); subjects are prefixed
    by their dataset (``casme2/sub01``), so LOSO runs over all 68."""

    classes = MEGC2019_CLASSES
    layout = "\n".join([CASME2_LAYOUT.replace("<data_dir>", "<casme2_dir>"),
                        SAMM_LAYOUT.replace("<data_dir>", "<samm_dir>"),
                        SMIC_LAYOUT.replace("<data_dir>", "<smic_dir>")])

    def __init__(self, casme2_dir: PathLike = "data/CASME2", samm_dir: PathLike = "data/SAMM",
                 smic_dir: PathLike = "data/SMIC", samm_face_crop: bool = True, **kwargs):
        kwargs.setdefault("cache_dir", Path(casme2_dir) / ".dst_cache_megc2019")
        super().__init__(None, **kwargs)
        self.casme2_dir, self.samm_dir, self.smic_dir = Path(casme2_dir), Path(samm_dir), Path(smic_dir)
        self.samm_face_crop = samm_face_crop

    def list_clips(self) -> list[MEClip]:
        clips = []
        for dataset, listed in (("casme2", list_casme2(self.casme2_dir)), ("samm", list_samm(self.samm_dir)),
                                ("smic", list_smic(self.smic_dir))):
            for clip in assign_labels(listed, self.classes, MEGC2019_MAP[dataset]):
                clip.subject, clip.name = f"{dataset}/{clip.subject}", f"{dataset}/{clip.name}"
                clip.extra["face_crop"] = dataset == "samm" and self.samm_face_crop
                clips.append(clip)
        return clips

    def _cache_key(self, clip: MEClip) -> str:
        return super()._cache_key(clip) + ("_crop" if clip.extra.get("face_crop") else "")

    def _compute(self, clip: MEClip) -> np.ndarray:
        frames = read_frames(clip.frames)
        return prepare_clip(frames, clip.apex, self.num_frames, self.image_size, self.magnify_alpha, self.flow,
                            clip.extra.get("face_crop", False))


# ------------------------------------------------------------------------------------------------ DFEW (pre-training)
DFEW_CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")  # DFEW's labels 1-7
DFEW_LAYOUT = """<data_dir>/
  Clip/clip_224x224/00001/00001_00001.jpg ...          (one folder of face frames per clip, 5-digit clip id)
  EmoLabel_DataSplit/train(single-labeled)/set_1.csv   (video_name,label: label 1-7 = happy, sad, neutral, angry,
  EmoLabel_DataSplit/test(single-labeled)/set_1.csv     surprise, disgust, fear; set_1 .. set_5 = the 5 folds)"""


class LazyClips:
    """The preprocessed clips of a large set, read from the cache one at a time (DFEW: ~21 GB at 112 px)."""

    def __init__(self, datamodule: MicroExpressionDataModule, clips: list[MEClip]):
        self.datamodule, self.clips = datamodule, clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.datamodule.load_clip(self.clips[index])


class DFEWDataModule(MicroExpressionDataModule):
    """DFEW (the paper's pre-training set; 16,372 clips, 7 classes) in the DST input format: ``num_frames`` frames
    sampled uniformly over each clip, magnified and with long-term flow w.r.t. the first sampled frame (the paper
    does not say how it built the two streams on DFEW: the card's choice). Splits: the official 5-fold
    ``set_<fold>`` train/test CSVs (``fold`` 1-5); ``val`` is the fold's test set (curves only, as for LOSO)."""

    classes = DFEW_CLASSES
    layout = DFEW_LAYOUT

    def __init__(self, data_dir: PathLike = "data/DFEW", fold: int = 1, **kwargs):
        super().__init__(data_dir, fold=fold, **kwargs)
        if not 1 <= fold <= 5:
            raise ValueError(f"DFEW fold must be 1-5 (set_1 .. set_5), got {fold}")
        self._splits: dict[str, list[MEClip]] = {}

    def _split_csv(self, split: str) -> Path:
        return self.data_dir / "EmoLabel_DataSplit" / f"{split}(single-labeled)" / f"set_{self.fold}.csv"

    def _read_split(self, split: str) -> list[MEClip]:
        import csv

        path = self._split_csv(split)
        if not path.is_file():
            raise DatasetError(f"DFEW split file for fold {self.fold} not found", path=path, layout=DFEW_LAYOUT,
                               standin_config=STANDIN)
        clips = []
        with open(path, newline="", encoding="utf-8-sig") as file:
            for row in csv.DictReader(file):
                name = f"{int(row['video_name']):05d}"
                folder = self.data_dir / "Clip" / "clip_224x224" / name
                frames = sorted_frames(folder)
                if not frames:
                    raise DatasetError(f"DFEW clip {name} has no frames", path=folder, layout=DFEW_LAYOUT,
                                       standin_config=STANDIN)
                index = np.linspace(0, len(frames) - 1, self.num_frames).round().astype(int)
                sampled = [frames[i] for i in index]
                clips.append(MEClip(split, name, sampled, self.num_frames // 2, DFEW_CLASSES[int(row["label"]) - 1],
                                    int(row["label"]) - 1))
        return clips

    def list_clips(self) -> list[MEClip]:
        if not self._splits:
            self._splits = {split: self._read_split(split) for split in ("train", "test")}
        return self._splits["train"] + self._splits["test"]

    def setup(self, stage: Optional[str] = None) -> None:
        self.list_clips()

        def subset(clips: list[MEClip], augment: bool) -> MicroExpressionClips:
            return MicroExpressionClips(LazyClips(self, clips), [c.label for c in clips],
                                        [0] * len(clips), [c.name for c in clips], augment=augment and self.augment,
                                        rotation=self.rotation, translate=self.translate)

        self.train_set = subset(self._splits["train"], True)
        self.test_set = subset(self._splits["test"], False)
        self.val_set = self.test_set
        self.class_counts = np.bincount([c.label for c in self._splits["train"]], minlength=self.num_classes).tolist()
