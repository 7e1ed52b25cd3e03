"""Offline stand-in for face anti-spoofing: bona fide faces vs print and replay attacks of the shared synthetic
face renderer (``synthetic_faces.py``), with pseudo-depth maps.

Per subject (random identity and skin): ``live_videos`` bona fide videos and ``spoof_videos`` attack videos
(alternately print and replay), ``frames`` frames each, every video with its own head pose, sway, scale, position
and light. What separates them is what separates real presentations:

- bona fide: the face's 3-D shape shades it (Lambertian shading of the depth surface interpolated from the
  renderer's 3-D landmarks under the video's light direction); ground-truth depth = that surface (0.3 at the
  face's rim .. 1 at the nose tip, 0 off the face), area-averaged to ``depth_size``;
- print (label 1): the flat face (no 3-D shading), partly desaturated, contrast compressed, warm paper cast,
  a halftone dot grid, slight blur, sometimes a white paper edge;
- replay (label 2): the flat face, a blue screen cast, brighter, a moire grating at a random angle and period,
  slight blur, sometimes a dark bezel;

each cue at a random strength (0.5-1x), then sensor noise. Ground-truth depth of attacks: zeros. Subjects are
split ``train_subjects`` / ``val_subjects`` / rest (20 / 10 / 10 of 40), so APCER / BPCER / ACER, HTER and EER
are measured on unseen subjects. MSRCR (``blocks/retinex.py``) is computed once per frame, with sigmas scaled to
the 64-pixel crops (15 / 80 / 250 at 256 pixels -> 3.75 / 20 / 62.5).
"""
from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np
from scipy.interpolate import griddata

from datamodules.base import BaseDataModule
from datamodules.face_antispoofing import FrameDataset
from datamodules.standins.synthetic_faces import FaceParams, face_landmarks, random_identity, render_faces
from lightning_modules.blocks.retinex import MSRCRParams, msrcr_batch

LIVE, PRINT, REPLAY = 0, 1, 2


def dense_depth(outline: np.ndarray, size: int) -> np.ndarray:
    """(size, size) float32 depth of one frame's face surface from its (85, 3) landmarks + outline (x, y
    normalised, z smaller = nearer): linear interpolation inside their hull, 0.3 (farthest) .. 1 (nearest), 0 off
    the face."""
    xy, z = outline[:, :2] * size - 0.5, outline[:, 2]
    near = (z.max() - z) / max(float(z.max() - z.min()), 1e-6)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), -1).reshape(-1, 2)
    values = griddata(xy, near, grid, method="linear")
    depth = np.where(np.isnan(values), 0.0, 0.3 + 0.7 * np.nan_to_num(values)).reshape(size, size)
    return depth.astype(np.float32)


def lambertian(depth: np.ndarray, angle: float, relief: float) -> np.ndarray:
    """Shading gain of the depth surface (height ``relief`` pixels at depth 1) under a light from ``angle`` in the
    image plane, 53 degrees off the viewing axis; 1 on a surface facing the camera."""
    gy, gx = np.gradient(depth * relief)
    normal = np.stack([-gx, -gy, np.ones_like(gx)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([0.6 * np.cos(angle), 0.6 * np.sin(angle), 0.8])
    return (0.3 + 0.7 * np.clip(normal @ light, 0, 1)) / (0.3 + 0.7 * 0.8)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))


def print_attack(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A printed photo of ``image`` (float RGB 0-255) recaptured (see the module docstring)."""
    k = rng.uniform(0.5, 1.0)
    size = image.shape[0]
    grey = image.mean(-1, keepdims=True)
    out = image + 0.3 * k * (grey - image)
    out = 255 * (1 - 0.3 * k) * (out / 255) ** (1 + 0.3 * k) + 35 * k
    out = out * (1 + k * np.array([0.06, 0.0, -0.12]))
    x, y = _grid(size)
    period, phase = rng.uniform(2.5, 3.5), rng.uniform(0, 2 * np.pi, 2)
    dots = 1 - 0.12 * k * (0.5 + 0.5 * np.cos(2 * np.pi * x / period + phase[0]) * np.cos(2 * np.pi * y / period
                                                                                          + phase[1]))
    out = cv2.GaussianBlur((out * dots[..., None]).astype(np.float32), (0, 0), 0.4 + 0.5 * k)
    if rng.random() < 0.3:
        width = int(rng.integers(2, 5))
        out[:width], out[-width:], out[:, :width], out[:, -width:] = 235, 235, 235, 235
    return out


def replay_attack(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A screen replay of ``image`` (float RGB 0-255) recaptured (see the module docstring)."""
    k = rng.uniform(0.5, 1.0)
    size = image.shape[0]
    out = image * (1 + k * np.array([-0.08, -0.02, 0.10])) + 18 * k
    x, y = _grid(size)
    theta, period = rng.uniform(0, np.pi), rng.uniform(3.0, 6.0)
    moire = 1 + 0.10 * k * np.sin(2 * np.pi * (x * np.cos(theta) + y * np.sin(theta)) / period)
    out = cv2.GaussianBlur((out * moire[..., None]).astype(np.float32), (0, 0), 0.3 + 0.4 * k)
    if rng.random() < 0.3:
        width = int(rng.integers(2, 5))
        out[:width], out[-width:], out[:, :width], out[:, -width:] = 15, 15, 15, 15
    return out


def render_presentations(num_subjects: int = 40, live_videos: int = 2, spoof_videos: int = 2, frames: int = 5,
                         size: int = 64, depth_size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """All frames: ``images`` (N, size, size, 3) uint8, ``depth`` (N, d, d) float32, ``labels`` (N,) (0 live,
    1 print, 2 replay), ``subjects`` (N,), ``videos`` (N,) int64."""
    rng = np.random.default_rng(seed)
    images, depths, labels, subjects, videos = [], [], [], [], []
    video = 0
    for subject in range(num_subjects):
        identity = random_identity(rng)
        skin = tuple(int(v) for v in rng.uniform([150, 100, 70], [235, 190, 160]))
        kinds = [LIVE] * live_videos + [PRINT if i % 2 == 0 else REPLAY for i in range(spoof_videos)]
        for kind in kinds:
            sway = rng.normal(0, 0.04, (frames, 3)).cumsum(0)
            params = FaceParams.neutral(
                frames, yaw=rng.uniform(-0.3, 0.3) + sway[:, 0], pitch=rng.uniform(-0.15, 0.15) + sway[:, 1],
                roll=rng.uniform(-0.1, 0.1) + 0.5 * sway[:, 2], scale=np.full(frames, rng.uniform(0.55, 0.7)),
                center=0.5 + rng.uniform(-0.04, 0.04, 2) + rng.normal(0, 0.005, (frames, 2)),
                light=np.full(frames, rng.uniform(0.8, 1.15)), light_angle=np.full(frames, rng.uniform(0, 2 * np.pi)),
                mouth_open=np.clip(rng.normal(0, 0.2, frames), 0, 1), smile=np.clip(rng.normal(0, 0.3, frames), -1, 1),
                identity=identity, skin=skin)
            frames_rgb, _ = render_faces(params, size=size, noise=0.0, rng=rng)
            outlines = face_landmarks(params, with_outline=True)
            for t in range(frames):
                image = frames_rgb[t].astype(np.float32)
                if kind == LIVE:
                    surface = dense_depth(outlines[t], size)
                    gain = np.where(surface > 0, lambertian(surface, params.light_angle[t], 0.35 * size), 1.0)
                    image = image * gain[..., None]
                    depth = cv2.resize(surface, (depth_size, depth_size), interpolation=cv2.INTER_AREA)
                else:
                    image = (print_attack if kind == PRINT else replay_attack)(image, rng)
                    depth = np.zeros((depth_size, depth_size), np.float32)
                image = image + rng.normal(0, 2.0, image.shape)
                images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
                depths.append(depth)
                labels.append(kind)
                subjects.append(subject)
                videos.append(video)
            video += 1
    return {"images": np.stack(images), "depth": np.stack(depths).astype(np.float32),
            "labels": np.array(labels, np.int64), "subjects": np.array(subjects, np.int64),
            "videos": np.array(videos, np.int64)}


class _ArrayFrames:
    """Picklable loader of in-memory frames: (RGB + MSRCR (S, S, 6) uint8, depth (d, d))."""

    def __init__(self, frames: np.ndarray, depth: np.ndarray):
        self.frames, self.depth = frames, depth

    def __call__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.frames[index], self.depth[index]


class SyntheticAntiSpoofingDataModule(BaseDataModule):
    """The stand-in's frames as the face anti-spoofing batches (``datamodules/face_antispoofing.py``), split by
    subject: the first ``train_subjects`` (after a seeded shuffle) train, the next ``val_subjects`` validate (the
    dev threshold), the rest test.

    Args:
        num_subjects, live_videos, spoof_videos, frames, image_size, depth_size, seed: ``render_presentations``.
        train_subjects, val_subjects: subjects per split (the rest: test).
        use_msrcr: 6 input channels (RGB + MSRCR) or 3 (RGB).
        msrcr_sigmas: MSRCR's Gaussian surrounds (the other constants: the ``dongb5/Retinex`` preset).
        hflip: random horizontal flips of training frames.
    """

    def __init__(self, num_subjects: int = 40, live_videos: int = 2, spoof_videos: int = 2, frames: int = 5,
                 image_size: int = 64, depth_size: int = 8, seed: int = 0, train_subjects: int = 20,
                 val_subjects: int = 10, use_msrcr: bool = True, msrcr_sigmas: Sequence[float] = (3.75, 20.0, 62.5),
                 hflip: bool = True, batch_size: int = 16, num_workers: int = 0, pin_memory: Optional[bool] = None,
                 eval_batch_size: Optional[int] = None):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        if train_subjects < 1 or val_subjects < 1 or train_subjects + val_subjects >= num_subjects:
            raise ValueError(f"need train_subjects, val_subjects >= 1 and a test subject left: {train_subjects} + "
                             f"{val_subjects} of {num_subjects}")
        self.render_args = dict(num_subjects=num_subjects, live_videos=live_videos, spoof_videos=spoof_videos,
                                frames=frames, size=image_size, depth_size=depth_size, seed=seed)
        self.seed, self.train_subjects, self.val_subjects = seed, train_subjects, val_subjects
        self.use_msrcr, self.hflip = use_msrcr, hflip
        self.msrcr_params = MSRCRParams(sigmas=tuple(msrcr_sigmas))
        self.image_size, self.depth_size = image_size, depth_size
        self._data: Optional[dict[str, np.ndarray]] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self._data is None:
            data = render_presentations(**self.render_args)
            data["frames"] = np.concatenate([data["images"], msrcr_batch(data["images"], self.msrcr_params)], -1)
            self._data = data
        data = self._data
        order = np.random.default_rng(self.seed + 1).permutation(self.render_args["num_subjects"])
        split = {"train": order[:self.train_subjects],
                 "val": order[self.train_subjects:self.train_subjects + self.val_subjects],
                 "test": order[self.train_subjects + self.val_subjects:]}
        sets = {}
        for name, members in split.items():
            index = np.flatnonzero(np.isin(data["subjects"], members))
            sets[name] = FrameDataset(_ArrayFrames(data["frames"][index], data["depth"][index]),
                                      data["labels"][index].tolist(), data["videos"][index].tolist(),
                                      [f"subject{data['subjects'][i]}_video{data['videos'][i]}_frame{i}"
                                       for i in index],
                                      hflip=self.hflip and name == "train", channels=6 if self.use_msrcr else 3)
        self.train_set, self.val_set, self.test_set = sets["train"], sets["val"], sets["test"]
