"""Offline stand-in for the group-emotion datasets (VGAF, GECV): feature-level synthetic group videos in the layout the
real readers produce (``datamodules.group_video_features``: per video faces (T, N, Df), face_mask (T, N), frames
(T, Dh)), the generator of the spec card.

Each video has a latent group valence v (Positive +1, Neutral 0, Negative -1) and 3..8 people. A person's emotion
starts at e_i^1 = v + N(0, ``person_noise``) and spreads by contagion, e_i^{t+1} = e_i^t + 0.3 (mean_j e_j^t - e_i^t)
+ N(0, 0.1); a share ``distractors`` of the people have an emotion unrelated to v (N(0, 1), drifting on their own).
Face feature x_i^t = e_i^t u + ``face_noise`` eps (u a fixed random unit vector), frame feature h^t = mean_i(e_i^t) w
+ ``frame_noise`` eps (the holistic cue, noisier). As a detector without tracking would, every frame lists its faces
in a new random order and misses each with probability ``miss_rate``. The majority baseline is 1/3 (balanced classes).

``rendered``: the pixel path. The same people are drawn by the shared synthetic-face renderer (expression from their
emotion, ``render_group_video``) and the features extracted by the real extraction code (``extract_video``) with the
generator's boxes as the detector and fixed pixel descriptors as the extractors.
The three splits use distinct seeds.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from datamodules.group_video_features import CLASSES, GroupVideo, GroupVideoDataModule, extract_video

VALENCE = (1.0, 0.0, -1.0)  # Positive, Neutral, Negative


def group_emotions(label: int, rng: np.random.Generator, frames: int = 20, max_faces: int = 8, min_people: int = 3,
                   person_noise: float = 0.8, distractors: float = 0.3, contagion: float = 0.3,
                   drift: float = 0.1) -> np.ndarray:
    """(T, P) emotions of a video's 3..``max_faces`` people (see the module doc)."""
    v = VALENCE[label]
    people = int(rng.integers(min_people, max_faces + 1))
    distractor = rng.random(people) < distractors
    e = np.where(distractor, rng.normal(0, 1, people), v + rng.normal(0, person_noise, people))
    out = np.empty((frames, people))
    for t in range(frames):
        out[t] = e
        pull = contagion * (e[~distractor].mean() - e) if (~distractor).any() else 0.0
        e = e + np.where(distractor, 0.0, pull) + rng.normal(0, drift, people)
    return out


def detections(rng: np.random.Generator, frames: int, people: int, max_faces: int, miss_rate: float) -> list:
    """Per frame the people a detector without tracking reports: a new random order each frame, each missed with
    probability ``miss_rate``, at most ``max_faces``."""
    out = []
    for _ in range(frames):
        seen = rng.permutation(people)[:max_faces]
        out.append(seen[rng.random(len(seen)) >= miss_rate])
    return out


def synthetic_group_video(label: int, rng: np.random.Generator, u: np.ndarray, w: np.ndarray, frames: int = 20,
                          max_faces: int = 8, person_noise: float = 0.8, distractors: float = 0.3,
                          face_noise: float = 0.5, frame_noise: float = 1.0, miss_rate: float = 0.1) -> dict:
    """One video's cache arrays at the feature level (see the module doc)."""
    e = group_emotions(label, rng, frames, max_faces, person_noise=person_noise, distractors=distractors)
    faces = np.zeros((frames, max_faces, len(u)), np.float32)
    mask = np.zeros((frames, max_faces), bool)
    holistic = np.zeros((frames, len(w)), np.float32)
    for t, seen in enumerate(detections(rng, frames, e.shape[1], max_faces, miss_rate)):
        faces[t, :len(seen)] = e[t, seen, None] * u + face_noise * rng.normal(size=(len(seen), len(u)))
        mask[t, :len(seen)] = True
        holistic[t] = e[t].mean() * w + frame_noise * rng.normal(size=len(w))
    return {"faces": faces, "face_mask": mask, "frames": holistic}


def render_group_video(label: int, rng: np.random.Generator, frames: int = 20, max_faces: int = 8, face_px: int = 32,
                       person_noise: float = 0.8, distractors: float = 0.3, miss_rate: float = 0.1
                       ) -> tuple[np.ndarray, list]:
    """Pixels: (T, 2 face_px, 4 face_px, 3) uint8 RGB frames of the people (the shared renderer's cartoon faces, each
    a random identity, standing in a 2 x 4 grid of cells with a random offset) whose expression follows their emotion
    e (smile = e, brow = 0.5 e, mouth opening 0.3 max(e, 0), clipped), and per frame the detections
    [(box x1 y1 x2 y2, confidence)] of an untracked detector (ground-truth boxes, random order, misses)."""
    from datamodules.standins.synthetic_faces import FaceParams, random_identity, render_faces

    e = group_emotions(label, rng, frames, max_faces, person_noise=person_noise, distractors=distractors)
    people = e.shape[1]
    height, width = 2 * face_px, 4 * face_px
    video = np.empty((frames, height, width, 3), np.uint8)
    video[:] = np.asarray((70, 80, 95), np.uint8)
    cells = rng.permutation(8)[:people]
    boxes = []
    for i, cell in enumerate(cells):
        params = FaceParams.neutral(frames, smile=np.clip(e[:, i], -1, 1), brow=np.clip(0.5 * e[:, i], -1, 1),
                                    mouth_open=np.clip(0.3 * e[:, i], 0, 1), yaw=np.full(frames, rng.normal(0, 0.15)),
                                    scale=np.full(frames, rng.uniform(0.7, 0.85)), identity=random_identity(rng))
        images, _ = render_faces(params, size=face_px, rng=rng)
        y, x = (cell // 4) * face_px, (cell % 4) * face_px
        video[:, y:y + face_px, x:x + face_px] = images
        boxes.append((x + 2, y + 2, x + face_px - 2, y + face_px - 2))
    found = [[(boxes[p], float(c)) for p, c in zip(seen, sorted(rng.random(len(seen)), reverse=True))]
             for seen in detections(rng, frames, people, max_faces, miss_rate)]
    return video, found


class PixelDescriptor(nn.Module):
    """A fixed, parameter-free stand-in for the frozen extractors: (B, 3, H, W) normalised images -> average-pooled
    ``grid`` x ``grid`` pixels (grey or colour), flattened; the rendered stand-in's face (12 x 12 grey = 144-d) and
    frame (8 x 8 colour = 192-d) features."""

    def __init__(self, grid: int, colour: bool = False):
        super().__init__()
        self.grid, self.colour = grid, colour

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x if self.colour else x.mean(1, keepdim=True)
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


class SyntheticGroupEmotionDataModule(GroupVideoDataModule):
    """Synthetic group videos, balanced classes.

    Args:
        train_per_class, val_per_class, test_per_class: videos per class (card: 240 videos in all).
        face_dim, frame_dim: feature sizes (stand-in 128 / 64; real 4096 / 2048; ignored with ``rendered``).
        rendered: draw the videos (``render_group_video``) and extract their features with the extraction code
            (``extract_video``: the generator's boxes instead of a detector, ``PixelDescriptor`` instead of the
            CNNs): face features 144-d, frame features 192-d. Slower (about 1 ms per face and frame).
        face_px: the rendered faces' size in pixels.
        person_noise, distractors, face_noise, frame_noise, miss_rate: see the module doc.
        seed: the generator seed (u and w from it; splits at seed + 1, + 2, + 3).
        Others: ``GroupVideoDataModule`` (num_frames = T, max_faces = N, batch sizes, workers).
    """

    layout = "generated in memory (no files)"

    def __init__(self, train_per_class: int = 80, val_per_class: int = 20, test_per_class: int = 20,
                 face_dim: int = 128, frame_dim: int = 64, person_noise: float = 0.8, distractors: float = 0.3,
                 face_noise: float = 0.5, frame_noise: float = 1.0, miss_rate: float = 0.1, rendered: bool = False,
                 face_px: int = 32, seed: int = 0, num_frames: int = 20, max_faces: int = 8, **kwargs):
        kwargs.setdefault("check_files", False)
        super().__init__(data_dir=".", num_frames=num_frames, max_faces=max_faces, **kwargs)
        self.per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
        self.face_dim, self.frame_dim, self.seed = face_dim, frame_dim, seed
        self.rendered, self.face_px = rendered, face_px
        self.options = dict(person_noise=person_noise, distractors=distractors, face_noise=face_noise,
                            frame_noise=frame_noise, miss_rate=miss_rate)

    def make_video(self, label: int, rng: np.random.Generator, u: np.ndarray, w: np.ndarray) -> dict:
        if not self.rendered:
            return synthetic_group_video(label, rng, u, w, self.num_frames, self.max_faces, **self.options)
        options = {k: self.options[k] for k in ("person_noise", "distractors", "miss_rate")}
        video, found = render_group_video(label, rng, self.num_frames, self.max_faces, self.face_px, **options)
        return extract_video(list(video), self.num_frames, self.max_faces, None, PixelDescriptor(12),
                             PixelDescriptor(8, colour=True), boxes=found, input_size=48)

    def list_videos(self) -> dict[str, list[GroupVideo]]:
        rng = np.random.default_rng(self.seed)
        u = rng.normal(size=self.face_dim)
        w = rng.normal(size=self.frame_dim)
        u, w = u / np.linalg.norm(u), w / np.linalg.norm(w)
        splits = {}
        for offset, split in enumerate(("train", "val", "test"), start=1):
            split_rng = np.random.default_rng(self.seed + offset)
            labels = np.repeat(np.arange(len(CLASSES)), self.per_class[split])
            splits[split] = [GroupVideo(self.make_video(int(y), split_rng, u, w), int(y), f"synthetic_{split}_{i:04d}")
                             for i, y in enumerate(labels)]
        return splits
