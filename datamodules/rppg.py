"""Face-video rPPG datasets as sequences of clip features: the shared base of UBFC-rPPG, COHFACE and the synthetic
stand-in (HR-TRACK, Birla et al., ICPR 2024, Sect. 2.1-2.4).

Two levels of work, so that no video is decoded in a loader's hot path:

1. ``prepare_data`` decodes each video once into a ``VideoRecord`` cached as ``<cache>/<video>.npz``: the mean green
   (and red, blue) intensity of every ``block_size`` x ``block_size`` pixel block of every frame on the frame's block
   grid (cropped to the blocks the face ever covers), the 68 facial landmarks per frame (iBUG/dlib order, pixels), 18 action-unit
   features per frame and the reference PPG resampled to the frame times.
2. ``setup`` cuts each record into clips (``clip_seconds``, ``step_seconds``) and computes, per clip (Sect. 2.2-2.3):
   the ROI = convex hull of landmarks 2-6, 7-11, 12-16 and 29 (1-based) of the clip's first frame, eroded by an
   ``erosion`` x ``erosion`` kernel; the blocks lying fully inside it; their green traces, band-passed (4th-order
   Butterworth, 0.7-4 Hz, zero-phase) and detrended (smoothness priors, Tarvainen et al. 2002, ``detrend_lambda``);
   the ``num_traces`` traces of smallest standard deviation (Eq. 2-3; ``roi_selection: random`` for the ablation),
   z-scored; then the AUs (intensity / 5). The clip's input is (num_traces + 18) x f (38 x f), its target the
   band-passed, z-scored reference pulse and the HR at its spectral peak (Eq. 4 on the reference; both in a wider
   band, 0.5 Hz to 0.45 x fps, so that out-of-range HRs are recognised).

Training videos are augmented (Sect. 3.2, HR balancing) by resampling the whole record in time by linear
interpolation (``augment_factors``: 2 and 3 speed the video up, raising HR; 0.667 slows it down); clips whose reference
HR leaves ``hr_range`` (42-240 bpm) are masked out (``valid`` False).

Batches (one item = one video's clips, padded to the batch's longest video): ``signal`` (B, n, C, f), ``pulse``
(B, n, f), ``target`` (B, n) HR in bpm, ``valid`` (B, n) bool, ``num_clips`` (B,), ``sample_rate`` (B,) fps,
``group`` (B,) video index, ``name``, and ``rgb`` (B, n, 3, f) the raw mean R, G, B of each clip's whole ROI (for the
unsupervised baselines).

Landmarks and AUs come from OpenFace (``FeatureExtraction -f <video> -out_dir <its folder>`` writes
``<video stem>.csv`` next to the video: ``x_0..x_67``, ``y_0..y_67``, ``AU01_r``...``AU45_r``, ``AU28_c``). OpenFace
gives 17 intensities and 18 presences; the 18 features are the 17 intensities and 5 x AU28's presence. Without the CSVs,
``landmark_source: template`` places a fixed 68-point face template in a box (``template_box``) and sets the AUs to
zero: a degraded pipeline (the paper's "Without-AUs" ablation shows the cost of missing AUs).
"""
from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional, Sequence

import cv2
import numpy as np
import torch
from scipy.signal import butter, sosfiltfilt
from torch.utils.data import Dataset

from datamodules.base import BaseDataModule, DatasetError, writable_dir
from lightning_modules import batch as keys
from lightning_modules.batch import NUM_CLIPS, PULSE, RGB, VALID
from lightning_modules.metrics.rppg import hr_from_pulse

#: 0-based indices of the ROI landmarks (the paper's 1-based 2-6 left cheek, 7-11 chin, 12-16 right cheek, 29 nose).
ROI_LANDMARKS = (*range(1, 6), *range(6, 11), *range(11, 16), 28)
#: OpenFace's 17 AU intensity columns (0-5) and the presence-only AU28.
OPENFACE_AU_INTENSITIES = ("AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r", "AU12_r",
                           "AU14_r", "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r", "AU45_r")
NUM_AUS = 18


# ------------------------------------------------------------------------------------------------ records
@dataclass
class VideoRecord:
    """One decoded video: ``grid`` (T, Gh, Gw) float32 mean green per block, whose top-left block starts at pixel
    ``origin`` (x0, y0) of the frame; ``landmarks`` (T, 68, 2) float32 pixel (x, y); ``aus`` (T, 18) float32
    (0-5); ``pulse`` (T,) float32 reference PPG at the frame times; ``fps``; ``block`` the block size in pixels;
    ``red_blue`` (T, 2, Gh, Gw) the red and blue block means (for the RGB baselines CHROM, POS, ICA), or None."""

    grid: np.ndarray
    origin: tuple
    block: int
    landmarks: np.ndarray
    aus: np.ndarray
    pulse: np.ndarray
    fps: float
    red_blue: Optional[np.ndarray] = None

    @property
    def frames(self) -> int:
        return len(self.grid)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        extra = {} if self.red_blue is None else {"red_blue": self.red_blue}
        np.savez(tmp, grid=self.grid, origin=np.asarray(self.origin), block=self.block, landmarks=self.landmarks,
                 aus=self.aus, pulse=self.pulse, fps=self.fps, **extra)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "VideoRecord":
        with np.load(path) as f:
            return cls(grid=f["grid"], origin=tuple(int(v) for v in f["origin"]), block=int(f["block"]),
                       landmarks=f["landmarks"], aus=f["aus"], pulse=f["pulse"], fps=float(f["fps"]),
                       red_blue=f["red_blue"] if "red_blue" in f.files else None)


def green_block_grid(green: np.ndarray, block: int) -> np.ndarray:
    """(..., H, W) channel(s) -> (..., H // block, W // block) mean per block (Eq. 1 on the frame's grid)."""
    h, w = green.shape[-2] // block * block, green.shape[-1] // block * block
    g = np.asarray(green[..., :h, :w], np.float32)
    return g.reshape(*g.shape[:-2], h // block, block, w // block, block).mean((-3, -1))


def crop_record_grid(grid: np.ndarray, landmarks: np.ndarray, block: int, margin: int = 1) -> tuple[np.ndarray, tuple]:
    """Crop a full-frame block grid (T, ..., Gh, Gw) to the blocks the ROI landmarks ever cover (+ ``margin``
    blocks): returns (cropped grid, origin (x0, y0) in pixels)."""
    pts = landmarks[:, list(ROI_LANDMARKS)].reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    gh, gw = grid.shape[-2:]
    if not len(pts):
        return grid, (0, 0)
    x0 = int(np.clip(np.floor(pts[:, 0].min() / block) - margin, 0, gw - 1))
    y0 = int(np.clip(np.floor(pts[:, 1].min() / block) - margin, 0, gh - 1))
    x1 = int(np.clip(np.ceil(pts[:, 0].max() / block) + margin, x0 + 1, gw))
    y1 = int(np.clip(np.ceil(pts[:, 1].max() / block) + margin, y0 + 1, gh))
    return np.ascontiguousarray(grid[..., y0:y1, x0:x1]), (x0 * block, y0 * block)


def roi_block_mask(landmarks: np.ndarray, grid_shape: Sequence[int], origin: Sequence[int], block: int,
                   erosion: int = 7) -> np.ndarray:
    """(Gh, Gw) bool: the blocks lying fully inside the eroded convex hull of the ROI landmarks (68, 2) px."""
    gh, gw = grid_shape
    pts = np.asarray(landmarks, np.float64)[list(ROI_LANDMARKS)] - np.asarray(origin, np.float64)
    mask = np.zeros((gh * block, gw * block), np.uint8)
    if not np.isfinite(pts).all():
        return np.zeros((gh, gw), bool)
    hull = cv2.convexHull(np.round(pts * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    if erosion > 1:
        mask = cv2.erode(mask, np.ones((erosion, erosion), np.uint8))
    return mask.reshape(gh, block, gw, block).all((1, 3))


# ------------------------------------------------------------------------------------------------ filters
@lru_cache(maxsize=32)
def _bandpass_sos(fps: float, low: float, high: float, order: int) -> np.ndarray:
    return butter(order, [low, high], btype="bandpass", fs=fps, output="sos")


def bandpass(x: np.ndarray, fps: float, band: Sequence[float] = (0.7, 4.0), order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass along the last axis (``scipy.signal.butter`` + ``sosfiltfilt``)."""
    return sosfiltfilt(_bandpass_sos(float(fps), float(band[0]), float(band[1]), int(order)), x, axis=-1)


@lru_cache(maxsize=32)
def _detrend_matrix(length: int, lam: float) -> np.ndarray:
    eye = np.eye(length)
    d2 = (eye[:-2] - 2 * eye[1:-1] + eye[2:])  # second differences (length - 2, length)
    return eye - np.linalg.inv(eye + lam ** 2 * d2.T @ d2)


def detrend(x: np.ndarray, lam: float = 100.0) -> np.ndarray:
    """Smoothness-priors detrending (Tarvainen et al. 2002): ``(I - (I + lam^2 D2'D2)^-1) x`` along the last axis."""
    return x @ _detrend_matrix(x.shape[-1], float(lam)).T


def zscore(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return (x - x.mean(axis, keepdims=True)) / (x.std(axis, keepdims=True) + 1e-8)


def select_traces(traces: np.ndarray, count: int = 20, mode: Literal["top", "random"] = "top",
                  rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """(K, f) filtered traces -> (count, f): the ``count`` of smallest standard deviation (Eq. 2-3), or ``count``
    random ones; z-scored. Fewer than ``count`` blocks: the selection is repeated cyclically (none: zeros)."""
    if len(traces) == 0:
        return np.zeros((count, traces.shape[-1]), np.float32)
    if mode == "top":
        order = np.argsort(traces.std(-1), kind="stable")[:count]
    elif mode == "random":
        order = (rng or np.random.default_rng(0)).permutation(len(traces))[:count]
    else:
        raise ValueError(f"roi_selection must be 'top' or 'random', got {mode!r}")
    order = np.resize(order, count)
    return zscore(traces[order]).astype(np.float32)


def resample_record(record: VideoRecord, factor: float) -> VideoRecord:
    """The record played ``factor`` times faster (linear interpolation in time; frame rate kept): factor 2 doubles
    the heart rate, 0.5 halves it (HR-TRACK's HR-balancing augmentation)."""
    positions = np.arange(0.0, record.frames - 1 + 1e-9, factor)
    lo = np.floor(positions).astype(int)
    hi = np.minimum(lo + 1, record.frames - 1)
    w = (positions - lo).astype(np.float32)

    def interp(a: np.ndarray) -> np.ndarray:
        shape = (-1,) + (1,) * (a.ndim - 1)
        return (a[lo] * (1 - w.reshape(shape)) + a[hi] * w.reshape(shape)).astype(a.dtype)

    return VideoRecord(grid=interp(record.grid), origin=record.origin, block=record.block,
                       landmarks=interp(record.landmarks), aus=interp(record.aus), pulse=interp(record.pulse),
                       fps=record.fps, red_blue=None if record.red_blue is None else interp(record.red_blue))


@dataclass
class ClipSettings:
    clip_seconds: float = 4.0
    step_seconds: float = 2.0
    num_traces: int = 20
    erosion: int = 7
    band: tuple = (0.7, 4.0)
    filter_order: int = 4
    detrend_lambda: float = 100.0
    roi_selection: str = "top"
    use_aus: bool = True
    hr_range: tuple = (42.0, 240.0)
    nfft: int = 2048


def clip_starts(frames: int, clip: int, step: int) -> list[int]:
    return list(range(0, frames - clip + 1, step)) if frames >= clip else []


def video_clips(record: VideoRecord, settings: ClipSettings, seed: int = 0) -> dict[str, np.ndarray]:
    """All clips of a record: ``signal`` (n, C, f), ``pulse`` (n, f), ``target`` (n,) HR, ``valid`` (n,)."""
    f = int(round(settings.clip_seconds * record.fps))
    step = max(1, int(round(settings.step_seconds * record.fps)))
    starts = clip_starts(record.frames, f, step)
    rows = settings.num_traces + (NUM_AUS if settings.use_aus else 0)
    signal = np.zeros((len(starts), rows, f), np.float32)
    rng = np.random.default_rng(seed)
    rgb = None if record.red_blue is None else np.zeros((len(starts), 3, f), np.float32)
    for i, s in enumerate(starts):
        mask = roi_block_mask(record.landmarks[s], record.grid.shape[1:], record.origin, record.block,
                              settings.erosion)
        traces = record.grid[s:s + f][:, mask].T.astype(np.float64)  # (K, f)
        if rgb is not None and mask.any():  # raw mean colour of the whole ROI (the RGB baselines' input)
            rb = record.red_blue[s:s + f][:, :, mask].mean(-1)
            rgb[i] = np.stack([rb[:, 0], traces.mean(0), rb[:, 1]])
        if len(traces):
            traces = detrend(bandpass(traces, record.fps, settings.band, settings.filter_order),
                             settings.detrend_lambda)
        signal[i, :settings.num_traces] = select_traces(traces, settings.num_traces, settings.roi_selection, rng)
        if settings.use_aus:
            signal[i, settings.num_traces:] = record.aus[s:s + f].T / 5.0
    if starts:
        # the reference is filtered and searched in a wider band (0.5 Hz .. 0.45 fps, at most 8 Hz), so that a clip
        # whose true HR leaves hr_range (after resampling augmentation) is seen as such and masked out
        wide = (0.5, min(8.0, 0.45 * record.fps))
        reference = np.stack([record.pulse[s:s + f] for s in starts]).astype(np.float64)
        pulse = zscore(bandpass(reference, record.fps, wide, settings.filter_order)).astype(np.float32)
        hr, _ = hr_from_pulse(torch.from_numpy(pulse), record.fps, settings.nfft, wide)
        hr = hr.numpy().astype(np.float32)
    else:
        pulse, hr = np.zeros((0, f), np.float32), np.zeros(0, np.float32)
    valid = (hr >= settings.hr_range[0]) & (hr <= settings.hr_range[1])
    out = {"signal": signal, "pulse": pulse, "target": hr, "valid": valid, "fps": np.float32(record.fps)}
    if rgb is not None:
        out["rgb"] = rgb
    return out


# ------------------------------------------------------------------------------------------------ datasets
class ClipSequences(Dataset):
    """One item per video: its clips' features (see the module doc)."""

    def __init__(self, videos: list[dict], names: list[str]):
        self.videos, self.names = videos, names

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict:
        v = self.videos[index]
        return {keys.SIGNAL: torch.from_numpy(v["signal"]), PULSE: torch.from_numpy(v["pulse"]),
                keys.TARGET: torch.from_numpy(v["target"]), VALID: torch.from_numpy(v["valid"]),
                NUM_CLIPS: torch.tensor(len(v["target"])), keys.SAMPLE_RATE: torch.tensor(float(v["fps"])),
                keys.GROUP: torch.tensor(index), keys.NAME: self.names[index],
                **({RGB: torch.from_numpy(v["rgb"])} if "rgb" in v else {})}


def collate_clip_sequences(items: list[dict]) -> dict:
    """Pad every video to the batch's most clips (padding: zeros, ``valid`` False)."""
    n = max(int(item[NUM_CLIPS]) for item in items)
    out = {}
    for key in (keys.SIGNAL, PULSE, keys.TARGET, VALID, RGB):
        if key not in items[0]:
            continue
        out[key] = torch.stack([torch.nn.functional.pad(item[key], (0, 0) * (item[key].dim() - 1)
                                                        + (0, n - item[key].shape[0])) for item in items])
    for key in (NUM_CLIPS, keys.SAMPLE_RATE, keys.GROUP):
        out[key] = torch.stack([item[key] for item in items])
    out[keys.NAME] = [item[keys.NAME] for item in items]
    return out


@dataclass
class VideoEntry:
    """A video of a dataset: its id (cache file stem), subject, split ("train"/"val"/"test") and files."""

    name: str
    subject: str
    split: str
    video: Optional[Path] = None
    reference: Optional[Path] = None


class RPPGDataModule(BaseDataModule):
    """Base of the rPPG clip-sequence datasets; subclasses list the videos and decode one into a ``VideoRecord``.

    Args:
        data_dir: the dataset root.
        cache_dir: where decoded records go (default ``<data_dir>/.hrtrack_cache``, or ``~/.cache`` when the data
            is read-only).
        clip_seconds, step_seconds: clips of 4 s every 2 s.
        num_traces: the 20 traces of smallest standard deviation.
        block_size: ROI blocks of 10 x 10 pixels.
        erosion: ROI erosion kernel (not given: 7).
        band, filter_order, detrend_lambda: 0.7-4 Hz 4th-order Butterworth; lambda not given: 100.
        roi_selection: "top" (Eq. 2-3) or "random" (the "Without Top 20" ablation).
        use_aus: append the 18 AU features (False: the "Without-AUs" ablation).
        augment_factors: training-video resampling factors (2, 3 raise the HR; 0.667 lowers it); [] for none.
        hr_range: clips whose reference HR leaves it are not scored.
        val_subjects: the last k training subjects form the validation set; 0 validates on the (unaugmented)
            training videos (the paper has no validation split: the final weights are tested).
        landmark_source: "openface" (``<video stem>.csv`` next to each video) or "template" (see the module doc).
        template_box: (centre x, centre y, face width) as fractions of the frame width/height, for "template".
    """

    layout: str = ""
    standin_config: str = "experiments/hr_track_demo.yaml"

    def __init__(self, data_dir: str = "data", cache_dir: Optional[str] = None, clip_seconds: float = 4.0,
                 step_seconds: float = 2.0, num_traces: int = 20, block_size: int = 10, erosion: int = 7,
                 band: Sequence[float] = (0.7, 4.0), filter_order: int = 4, detrend_lambda: float = 100.0,
                 roi_selection: Literal["top", "random"] = "top", use_aus: bool = True,
                 augment_factors: Sequence[float] = (2.0, 3.0, 0.667), hr_range: Sequence[float] = (42.0, 240.0),
                 val_subjects: int = 0, landmark_source: Literal["openface", "template"] = "openface",
                 template_box: Sequence[float] = (0.5, 0.45, 0.35), seed: int = 0, batch_size: int = 8,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if roi_selection not in ("top", "random"):
            raise ValueError(f"roi_selection must be 'top' or 'random', got {roi_selection!r}")
        if landmark_source not in ("openface", "template"):
            raise ValueError(f"landmark_source must be 'openface' or 'template', got {landmark_source!r}")
        if any(f <= 0 for f in augment_factors):
            raise ValueError(f"augment_factors must be > 0, got {augment_factors}")
        self.data_dir = Path(data_dir)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.block_size, self.landmark_source = block_size, landmark_source
        self.template_box = tuple(template_box)
        self.augment_factors = [float(f) for f in augment_factors]
        self.val_subjects, self.seed = val_subjects, seed
        self.settings = ClipSettings(clip_seconds, step_seconds, num_traces, erosion, tuple(band), filter_order,
                                     detrend_lambda, roi_selection, use_aus, tuple(hr_range))
        self.train_target_mean: Optional[float] = None
        self.split_names: dict[str, list[str]] = {}

    @property
    def in_rows(self) -> int:
        return self.settings.num_traces + (NUM_AUS if self.settings.use_aus else 0)

    # -- subclass hooks -----------------------------------------------------------------------------------
    def list_videos(self) -> list[VideoEntry]:
        raise NotImplementedError

    def decode(self, entry: VideoEntry) -> VideoRecord:
        raise NotImplementedError

    # -- errors ---------------------------------------------------------------------------------------------
    def error(self, problem: str, path=None, hint: Optional[str] = None) -> DatasetError:
        return DatasetError(problem, path=path, layout=self.layout, standin_config=self.standin_config, hint=hint)

    # -- caching --------------------------------------------------------------------------------------------
    def _cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        local = self.data_dir / ".hrtrack_cache"
        if writable_dir(local):
            return local
        digest = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return Path.home() / ".cache" / "paperbench" / f"hrtrack_{digest}"

    def _cache_path(self, entry: VideoEntry) -> Path:
        tag = f"b{self.block_size}_{self.landmark_source}"
        return self._cache_root() / tag / f"{entry.name}.npz"

    def record(self, entry: VideoEntry) -> VideoRecord:
        """The cached record of a video (decoded and cached first if needed)."""
        path = self._cache_path(entry)
        if path.is_file():
            try:
                return VideoRecord.load(path)
            except Exception:  # a partial or stale cache file: decode again
                path.unlink(missing_ok=True)
        record = self.decode(entry)
        if writable_dir(path.parent):
            record.save(path)
        return record

    def prepare_data(self) -> None:
        for entry in self.list_videos():
            if not self._cache_path(entry).is_file():
                self.record(entry)

    # -- splits ---------------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None and self.test_set is not None:
            return
        entries = self.list_videos()
        if self.val_subjects > 0:
            train_subjects = sorted({e.subject for e in entries if e.split == "train"}, key=_natural_key)
            held = set(train_subjects[-self.val_subjects:])
            entries = [VideoEntry(e.name, e.subject, "val" if e.split == "train" and e.subject in held else e.split,
                                  e.video, e.reference) for e in entries]
        sets: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
        train_hrs = []
        for i, entry in enumerate(entries):
            record = self.record(entry)
            clips = video_clips(record, self.settings, seed=self.seed + i)
            if not len(clips["target"]):
                warnings.warn(f"{entry.name}: shorter than one clip, skipped")
                continue
            sets[entry.split][0].append(clips)
            sets[entry.split][1].append(entry.name)
            if entry.split == "train":
                train_hrs.append(clips["target"][clips["valid"]])
                for factor in self.augment_factors:
                    augmented = video_clips(resample_record(record, factor), self.settings, seed=self.seed + i)
                    if len(augmented["target"]):
                        sets["train"][0].append(augmented)
                        sets["train"][1].append(f"{entry.name}@x{factor:g}")
        if not sets["train"][0] or not sets["test"][0]:
            raise self.error("No usable training or test videos (each needs at least one clip)", path=self.data_dir)
        self.train_target_mean = float(np.concatenate(train_hrs).mean()) if train_hrs else None
        self.train_set = ClipSequences(*sets["train"])
        self.test_set = ClipSequences(*sets["test"])
        if sets["val"][0]:
            self.val_set = ClipSequences(*sets["val"])
        else:
            originals = [(v, n) for v, n in zip(*sets["train"]) if "@x" not in n]
            self.val_set = ClipSequences([v for v, _ in originals], [n for _, n in originals])
        self.split_names = {k: list(v[1]) for k, v in sets.items()}

    def _loader(self, dataset, batch_size, *, shuffle, sampler):
        loader = super()._loader(dataset, batch_size, shuffle=shuffle, sampler=sampler)
        loader.collate_fn = collate_clip_sequences
        return loader

    # -- landmarks and AUs ----------------------------------------------------------------------------------
    def template_landmarks(self, frames: int, width: int, height: int) -> np.ndarray:
        """(frames, 68, 2) px: the canonical 68-point face placed in ``template_box`` (no tracking)."""
        from datamodules.standins.synthetic_faces import canonical_face

        cx, cy, w = self.template_box
        face = canonical_face()[:68, :2]
        pts = np.stack([cx * width + face[:, 0] * w * width, cy * height + face[:, 1] * w * width], -1)
        return np.broadcast_to(pts.astype(np.float32), (frames, 68, 2)).copy()

    def landmarks_and_aus(self, video: Path, frames: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        """From ``<video stem>.csv`` (OpenFace) or the template (AUs zero)."""
        csv_path = video.with_suffix(".csv")
        if self.landmark_source == "template":
            return self.template_landmarks(frames, width, height), np.zeros((frames, NUM_AUS), np.float32)
        if not csv_path.is_file():
            raise self.error("Missing OpenFace landmarks/AUs", path=csv_path,
                             hint="Run OpenFace's FeatureExtraction -f <video> -out_dir <its folder>, or use "
                                  "--data.landmark_source template (a fixed face template, no AUs: degraded).")
        return read_openface_csv(csv_path, frames)


def _natural_key(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def read_openface_csv(path: Path, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """OpenFace FeatureExtraction CSV -> landmarks (frames, 68, 2) px and AUs (frames, 18): rows by ``frame``
    (1-based), missing frames and rows with ``success`` 0 filled from the nearest successful frame."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        rows = [row for row in reader if row]
    col = {name: i for i, name in enumerate(header)}
    needed = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)] + list(OPENFACE_AU_INTENSITIES)
    missing = [n for n in needed if n not in col]
    if missing:
        raise DatasetError(f"OpenFace CSV lacks columns {missing[:5]}{'...' if len(missing) > 5 else ''}", path=path)
    data = np.array([[float(row[col[n]]) for n in needed] for row in rows], np.float64).reshape(len(rows), -1)
    au28 = (np.array([float(row[col["AU28_c"]]) for row in rows]) if "AU28_c" in col else np.zeros(len(rows)))
    index = (np.array([int(float(row[col["frame"]])) for row in rows]) - 1 if "frame" in col
             else np.arange(len(rows)))
    ok = np.array([float(row[col["success"]]) > 0 for row in rows]) if "success" in col else np.ones(len(rows), bool)
    keep = ok & (index >= 0) & (index < frames)
    if not keep.any():
        raise DatasetError("OpenFace CSV has no successfully tracked frame", path=path)
    index, data, au28 = index[keep], data[keep], au28[keep]
    order = np.argsort(index)
    index, data, au28 = index[order], data[order], au28[order]
    nearest = np.clip(np.searchsorted(index, np.arange(frames)), 0, len(index) - 1)
    before = np.clip(nearest - 1, 0, len(index) - 1)
    nearest = np.where(np.abs(index[before] - np.arange(frames)) < np.abs(index[nearest] - np.arange(frames)),
                       before, nearest)
    data, au28 = data[nearest], au28[nearest]
    landmarks = np.stack([data[:, :68], data[:, 68:136]], -1).astype(np.float32)
    aus = np.concatenate([data[:, 136:], 5.0 * au28[:, None]], 1).astype(np.float32)
    return landmarks, aus


def decode_block_grids(path: Path, block: int) -> tuple[np.ndarray, float, int, int]:
    """Decode a video with OpenCV into its (T, 3, H // block, W // block) RGB block means; also fps, width,
    height. Frames are read one at a time (no frame is kept)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DatasetError("Cannot open video", path=path)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    grids: list[np.ndarray] = []
    width = height = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        height, width = frame.shape[:2]
        grids.append(green_block_grid(frame[..., ::-1].transpose(2, 0, 1), block))  # OpenCV frames are BGR
    capture.release()
    if not grids:
        raise DatasetError("Video has no decodable frame", path=path)
    return np.stack(grids), fps, width, height


def interpolate_reference(times: np.ndarray, values: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """The reference signal at the frame times ``k / fps`` (times relative to the first sample)."""
    times = np.asarray(times, np.float64)
    return np.interp(np.arange(frames) / fps, times - times[0], np.asarray(values, np.float64)).astype(np.float32)


def decode_video_record(module: RPPGDataModule, video: Path, times: np.ndarray, values: np.ndarray,
                        default_fps: float) -> VideoRecord:
    """Decode + landmarks/AUs + reference at frame times, grid cropped to the face: the common real-data path."""
    grids, fps, width, height = decode_block_grids(video, module.block_size)
    fps = fps if fps > 1 else default_fps
    landmarks, aus = module.landmarks_and_aus(video, len(grids), width, height)
    grids, origin = crop_record_grid(grids, landmarks, module.block_size)
    pulse = interpolate_reference(times, values, len(grids), fps)
    return VideoRecord(grid=np.ascontiguousarray(grids[:, 1]), origin=origin, block=module.block_size,
                       landmarks=landmarks, aus=aus, pulse=pulse, fps=fps,
                       red_blue=np.ascontiguousarray(grids[:, [0, 2]]))
