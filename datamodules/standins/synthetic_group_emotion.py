"""Offline stand-in for the group-emotion datasets (VGAF, GECV): feature-level synthetic group videos in the layout the
real readers produce (``datamodules.group_video_features``: per video faces (T, N, Df), face_mask (T, N), frames
(T, Dh)), the generator of the spec card.

Each video has a latent group valence v (Positive +1, Neutral 0, Negative -1) and 3..8 people. A person's emotion
starts at e_i^1 = v + N(0, ``person_noise``) and spreads by contagion, e_i^{t+1} = e_i^t + 0.3 (mean_j e_j^t - e_i^t)
+ N(0, 0.1); a share ``distractors`` of the people have an emotion unrelated to v (N(0, 1), drifting on their own).
Face feature x_i^t = e_i^t u + ``face_noise`` eps (u a fixed random unit vector), frame feature h^t = mean_i(e_i^t) w
+ ``frame_noise`` eps (the holistic cue, noisier). As a detector without tracking would, every frame lists its faces
in a new random order and misses each with probability ``miss_rate``. The majority baseline is 1/3 (balanced classes).
The three splits use distinct seeds.
"""
from __future__ import annotations

import numpy as np

from datamodules.group_video_features import CLASSES, GroupVideo, GroupVideoDataModule

VALENCE = (1.0, 0.0, -1.0)  # Positive, Neutral, Negative


def synthetic_group_video(label: int, rng: np.random.Generator, u: np.ndarray, w: np.ndarray, frames: int = 20,
                          max_faces: int = 8, min_people: int = 3, person_noise: float = 0.8,
                          distractors: float = 0.3, contagion: float = 0.3, drift: float = 0.1,
                          face_noise: float = 0.5, frame_noise: float = 1.0, miss_rate: float = 0.1) -> dict:
    """One video's cache arrays (see the module doc)."""
    v = VALENCE[label]
    people = int(rng.integers(min_people, max_faces + 1))
    distractor = rng.random(people) < distractors
    e = np.where(distractor, rng.normal(0, 1, people), v + rng.normal(0, person_noise, people))
    faces = np.zeros((frames, max_faces, len(u)), np.float32)
    mask = np.zeros((frames, max_faces), bool)
    holistic = np.zeros((frames, len(w)), np.float32)
    for t in range(frames):
        seen = rng.permutation(people)[:max_faces]
        seen = seen[rng.random(len(seen)) >= miss_rate]
        faces[t, :len(seen)] = e[seen, None] * u + face_noise * rng.normal(size=(len(seen), len(u)))
        mask[t, :len(seen)] = True
        holistic[t] = e.mean() * w + frame_noise * rng.normal(size=len(w))
        pull = contagion * (e[~distractor].mean() - e) if (~distractor).any() else 0.0
        e = e + np.where(distractor, 0.0, pull) + rng.normal(0, drift, people)
    return {"faces": faces, "face_mask": mask, "frames": holistic}


class SyntheticGroupEmotionDataModule(GroupVideoDataModule):
    """Synthetic group videos, balanced classes.

    Args:
        train_per_class, val_per_class, test_per_class: videos per class (card: 240 videos in all).
        face_dim, frame_dim: feature sizes (stand-in 128 / 64; real 4096 / 2048).
        person_noise, distractors, face_noise, frame_noise, miss_rate: see the module doc.
        seed: the generator seed (u and w from it; splits at seed + 1, + 2, + 3).
        Others: ``GroupVideoDataModule`` (num_frames = T, max_faces = N, batch sizes, workers).
    """

    layout = "generated in memory (no files)"

    def __init__(self, train_per_class: int = 80, val_per_class: int = 20, test_per_class: int = 20,
                 face_dim: int = 128, frame_dim: int = 64, person_noise: float = 0.8, distractors: float = 0.3,
                 face_noise: float = 0.5, frame_noise: float = 1.0, miss_rate: float = 0.1, seed: int = 0,
                 num_frames: int = 20, max_faces: int = 8, **kwargs):
        kwargs.setdefault("check_files", False)
        super().__init__(data_dir=".", num_frames=num_frames, max_faces=max_faces, **kwargs)
        self.per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        self.face_dim, self.frame_dim, self.seed = face_dim, frame_dim, seed
        self.options = dict(person_noise=person_noise, distractors=distractors, face_noise=face_noise,
                            frame_noise=frame_noise, miss_rate=miss_rate)

    def list_videos(self) -> dict[str, list[GroupVideo]]:
        rng = np.random.default_rng(self.seed)
        u = rng.normal(size=self.face_dim)
        w = rng.normal(size=self.frame_dim)
        u, w = u / np.linalg.norm(u), w / np.linalg.norm(w)
        splits = {}
        for offset, split in enumerate(("train", "val", "test"), start=1):
            split_rng = np.random.default_rng(self.seed + offset)
            labels = np.repeat(np.arange(len(CLASSES)), self.per_class[split])
            splits[split] = [GroupVideo(synthetic_group_video(int(y), split_rng, u, w, self.num_frames, self.max_faces,
                                                              **self.options), int(y), f"synthetic_{split}_{i:04d}")
                             for i, y in enumerate(labels)]
        return splits
