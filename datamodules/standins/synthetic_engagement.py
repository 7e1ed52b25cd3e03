"""Offline stand-in for the engagement datasets (EngageNet, Online SE): landmark clips of the shared synthetic-face
renderer (``synthetic_faces.engagement_clip``) in the layout the real readers produce, (T, 78, 3) per clip.

Each clip has an ordinal level k in 0..3; its behaviour is drawn at a continuous level k + N(0, ``level_noise``)
(clipped to [0, 3]), so neighbouring levels overlap as annotated engagement does: look-away share 60 % -> 5 %,
eye closure 40 % -> 2 %, gaze wander, face-absent spells at level 0 (see ``engagement_clip``); every clip a new
identity, scale +-10 % and landmark jitter sigma 0.01. ``binary``: levels {0, 1} -> Not-Engaged, {2, 3} ->
Engaged (Online SE's task). The three splits use distinct seeds.
"""
from __future__ import annotations

import numpy as np

from datamodules.engagenet import CLASSES as ENGAGENET_CLASSES
from datamodules.face_landmarks import LandmarkClip, LandmarkClipDataModule
from datamodules.online_se import CLASSES as ONLINE_SE_CLASSES
from datamodules.standins.synthetic_faces import engagement_landmark_clips

LEVELS = 4


class SyntheticEngagementDataModule(LandmarkClipDataModule):
    """Synthetic engagement clips.

    Args:
        train_per_class, val_per_class, test_per_class: clips per level (card: 80 / 20; test 20).
        frames: frames per clip (card: 64).
        level_noise: sd of the clip's behaviour level around its label (overlap of neighbouring levels).
        jitter: landmark noise sd (image widths).
        binary: two classes (levels 0-1 vs 2-3) instead of four.
        seed: the generator seed (splits at seed, seed + 1, seed + 2).
        Others: ``LandmarkClipDataModule`` (frame_stride, use_z, batch sizes, workers).
    """

    standin_config = "experiments/engagement_stgcn_demo.yaml"
    layout = "generated in memory (no files)"

    def __init__(self, train_per_class: int = 80, val_per_class: int = 20, test_per_class: int = 20,
                 frames: int = 64, level_noise: float = 0.35, jitter: float = 0.01, binary: bool = False,
                 seed: int = 0, **kwargs):
        kwargs.setdefault("check_files", False)
        super().__init__(data_dir=".", num_frames=frames, **kwargs)
        self.per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        self.frames, self.level_noise, self.jitter, self.binary, self.seed = frames, level_noise, jitter, binary, seed
        self.classes = ONLINE_SE_CLASSES if binary else ENGAGENET_CLASSES

    def make_split(self, count: int, seed: int) -> list[LandmarkClip]:
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(LEVELS), count)
        behaviour = np.clip(labels + rng.normal(0, self.level_noise, len(labels)), 0, LEVELS - 1)
        clips = engagement_landmark_clips(behaviour, self.frames, seed=seed + 1000, jitter=self.jitter)
        targets = (labels >= LEVELS // 2).astype(int) if self.binary else labels
        return [LandmarkClip(clip, int(y), f"synthetic_{seed}_{i:04d}") for i, (clip, y) in
                enumerate(zip(clips, targets))]

    def list_clips(self) -> dict[str, list[LandmarkClip]]:
        return {split: self.make_split(self.per_class[split], self.seed + offset)
                for offset, split in enumerate(("train", "val", "test"))}
