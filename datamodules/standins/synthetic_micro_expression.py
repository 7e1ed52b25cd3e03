"""Offline stand-in for the micro-expression datasets (DST): short clips of the shared synthetic face
(``synthetic_faces``) with a subtle onset -> apex -> offset movement whose kind is the class, several subjects.

Per subject: an identity (face shape), skin tone, scale, position and light. Per clip (``num_frames`` frames, the
apex in the middle): a smooth bump (sin^2 from onset to offset) of amplitude ``amplitude`` (x U(0.7, 1.3)) in one
action: positive = lip corners up (AU12: ``smile``), negative = brows lowered and drawn together (AU4:
``brow`` < 0), surprise = brows raised and a slight jaw drop (AU1+2+26). At 64 px and amplitude 1 the brows move
about 1.8 px and the lip corners about 1.4 px; the head jitters by ~0.1 px per frame and every frame has
sensor noise (sigma 1.5 grey levels), so motion is the only class signal: a single frame shows nothing of it.
The clips go through the real datasets' preprocessing (magnification, long-term flow; ``MicroExpressionDataModule``)
and leave-one-subject-out splits.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from datamodules.micro_expression import SMIC_CLASSES, MEClip, MicroExpressionDataModule
from datamodules.standins.synthetic_faces import FaceParams, random_identity, render_faces


def micro_expression_params(emotion: str, num_frames: int, rng: np.random.Generator, identity: np.ndarray,
                            subject: dict, amplitude: float = 1.0, jitter: float = 0.0015) -> FaceParams:
    """Per-frame controls of one clip of ``emotion`` (positive, negative or surprise; module doc)."""
    t = np.arange(num_frames)
    onset, offset = 1 + rng.integers(0, 2), num_frames - 2 - rng.integers(0, 2)
    phase = np.clip((t - onset) / max(offset - onset, 1), 0.0, 1.0)
    bump = np.sin(np.pi * phase) ** 2 * amplitude * rng.uniform(0.7, 1.3)
    smile, brow, mouth = np.zeros(num_frames), np.zeros(num_frames), np.zeros(num_frames)
    if emotion == "positive":
        smile = bump
    elif emotion == "negative":
        brow = -bump
    elif emotion == "surprise":
        brow, mouth = bump, 0.25 * bump
    else:
        raise ValueError(f"unknown emotion {emotion!r}")
    centre = subject["center"] + np.cumsum(rng.normal(0, jitter, (num_frames, 2)), 0)
    return FaceParams.neutral(num_frames, smile=smile, brow=brow, mouth_open=mouth,
                              scale=np.full(num_frames, subject["scale"]), center=centre,
                              light=np.full(num_frames, subject["light"]),
                              light_angle=np.full(num_frames, subject["light_angle"]), identity=identity,
                              skin=subject["skin"])


def synthetic_micro_expressions(num_subjects: int = 6, clips_per_class: int = 5, num_frames: int = 17,
                                size: int = 64, amplitude: float = 1.0, noise: float = 1.5,
                                seed: int = 0) -> list[MEClip]:
    """``num_subjects`` x 3 classes x ``clips_per_class`` clips (uint8 RGB frames, apex in the middle)."""
    rng = np.random.default_rng(seed)
    clips = []
    for s in range(num_subjects):
        identity = random_identity(rng)
        subject = {"center": 0.5 + rng.uniform(-0.03, 0.03, 2), "scale": 0.6 * rng.uniform(0.92, 1.08),
                   "light": rng.uniform(0.8, 1.15), "light_angle": rng.uniform(0, 2 * np.pi),
                   "skin": tuple(int(v) for v in rng.uniform([150, 100, 70], [235, 190, 160]))}
        for label, emotion in enumerate(SMIC_CLASSES):
            for k in range(clips_per_class):
                params = micro_expression_params(emotion, num_frames, rng, identity, subject, amplitude)
                frames, _ = render_faces(params, size=size, noise=noise, rng=rng)
                clips.append(MEClip(f"s{s + 1:02d}", f"s{s + 1:02d}/{emotion}_{k:02d}", frames, num_frames // 2,
                                    emotion, label))
    return clips


class SyntheticMicroExpressionDataModule(MicroExpressionDataModule):
    """The stand-in clips (module doc) through the real preprocessing and LOSO split (``fold`` = held-out subject;
    kept in memory). Classes: positive, negative, surprise (SMIC's)."""

    classes = SMIC_CLASSES

    def __init__(self, num_subjects: int = 6, clips_per_class: int = 5, size: int = 64, amplitude: float = 1.0,
                 noise: float = 1.5, seed: int = 0, **kwargs):
        kwargs.setdefault("image_size", size)
        super().__init__(None, **kwargs)
        self.num_subjects, self.clips_per_class, self.size = num_subjects, clips_per_class, size
        self.amplitude, self.noise, self.seed = amplitude, noise, seed
        self._clips: Optional[list[MEClip]] = None

    def list_clips(self) -> list[MEClip]:
        if self._clips is None:
            self._clips = synthetic_micro_expressions(self.num_subjects, self.clips_per_class, self.num_frames,
                                                      self.size, self.amplitude, self.noise, self.seed)
        return self._clips

    def prepare_data(self) -> None:
        pass  # nothing on disk: setup renders and preprocesses in memory
