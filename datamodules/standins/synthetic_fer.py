"""Offline stand-in of FER Grad-CAM: 7 expression classes drawn by the shared synthetic-face renderer
(``synthetic_faces``) at 48 x 48 with the Table 4 action-unit cues, each image with the mask of the facial region
its class's cue lives in (the batch's ``mask``: Grad-CAM's in-region mass is measurable here).

Per class (renderer controls; intensities drawn per image, see ``EXPRESSIONS``), expected region:

- angry: brows lowered and drawn together (AU4), eyes wide (AU5), lips pressed (AU23: slight frown) - brows + eyes;
- disgust: nose wrinkle (AU9: dark creases drawn across the nose bridge) and lip-corner depression (AU15) -
  nose + mouth;
- fear: brows raised (AU1+2), eyes wide (AU5), lips stretched and parted (AU20, AU25) - brows + eyes + mouth;
- happy: lip corners up (AU12), cheeks raised narrowing the eyes (AU6) - mouth + eyes;
- sad: inner brows raised (AU1, a weaker brow raise) and lip corners down (AU15) - brows + mouth;
- surprise: brows raised (AU1+2), eyes wide (AU5), jaw dropped (AU26) - brows + eyes + mouth;
- neutral: no cue - the whole face (its mass check is only a sanity check).

Every image has its own identity (shape, skin), head pose (yaw/pitch +-0.25 rad, roll +-0.15), scale, position,
illumination (gain and direction) and sensor noise, plus small random expression jitter. Region masks are the
convex hulls of the region's landmarks, dilated by ``mask_margin`` pixels.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from datamodules.fer2013 import EMOTIONS
from datamodules.image_classification import ClassificationItem, ImageClassificationDataModule
from datamodules.standins.synthetic_faces import (JAW, LEFT_BROW, LEFT_EYE, NOSE_BRIDGE, NOSE_LOWER, NUM_DLIB,
                                                  OUTER_LIPS, RIGHT_BROW, RIGHT_EYE, FaceParams, face_landmarks,
                                                  random_identity, render_faces)

#: class -> (controls as (low, high) ranges, expected regions).
EXPRESSIONS = {
    "angry": ({"brow": (-1.0, -0.7), "eye_open": (1.15, 1.35), "smile": (-0.3, -0.1)}, ("brows", "eyes")),
    "disgust": ({"smile": (-1.0, -0.6), "eye_open": (0.7, 0.85), "wrinkle": (0.8, 1.0)}, ("nose", "mouth")),
    "fear": ({"brow": (0.6, 0.9), "eye_open": (1.3, 1.45), "mouth_open": (0.25, 0.45), "smile": (-0.5, -0.3)},
             ("brows", "eyes", "mouth")),
    "happy": ({"smile": (0.7, 1.0), "eye_open": (0.6, 0.8), "mouth_open": (0.0, 0.3)}, ("mouth", "eyes")),
    "sad": ({"brow": (0.3, 0.5), "smile": (-1.0, -0.7), "eye_open": (0.8, 0.95)}, ("brows", "mouth")),
    "surprise": ({"brow": (0.8, 1.0), "eye_open": (1.3, 1.45), "mouth_open": (0.8, 1.0)}, ("brows", "eyes", "mouth")),
    "neutral": ({}, ("face",)),
}
CLASSES = tuple(EXPRESSIONS)
assert CLASSES == EMOTIONS, "the stand-in's classes follow the paper's label order"
REGION_LANDMARKS = {"brows": [RIGHT_BROW, LEFT_BROW], "eyes": [RIGHT_EYE, LEFT_EYE],
                    "nose": [np.r_[NOSE_BRIDGE, NOSE_LOWER]], "mouth": [OUTER_LIPS], "face": [JAW]}


def region_mask(points: np.ndarray, regions, size: int, margin: int) -> np.ndarray:
    """(size, size) uint8 0/1: the union of the regions' landmark hulls (``points`` (78, 2) normalised), dilated
    by ``margin`` pixels; the face region is the hull of the jaw and the brows."""
    mask = np.zeros((size, size), np.uint8)
    for region in regions:
        groups = [np.r_[JAW, RIGHT_BROW, LEFT_BROW]] if region == "face" else REGION_LANDMARKS[region]
        for group in groups:
            hull = cv2.convexHull(np.round(points[group] * size * 16).astype(np.int32))
            cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_8, shift=4)
    if margin > 0:
        mask = cv2.dilate(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return mask


def render_expressions(labels: np.ndarray, size: int = 48, seed: int = 0, mask_margin: int = 2,
                       render_size: int = 96, return_landmarks: bool = False) -> tuple[np.ndarray, ...]:
    """Images (N, size, size, 3) uint8 and region masks (N, size, size) uint8 of the classes ``labels`` (indices
    into ``CLASSES``), one random identity, pose and light per image (rendered at ``render_size``, area-resized);
    with ``return_landmarks`` also the 68 dlib-order landmarks (N, 68, 2) float32, (x, y) normalised to the image."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.empty((n, size, size), np.uint8)
    landmarks = np.empty((n, NUM_DLIB, 2), np.float32)
    for i, label in enumerate(labels):
        controls, regions = EXPRESSIONS[CLASSES[int(label)]]
        value = {k: rng.uniform(*v) for k, v in controls.items()}
        jitter = rng.normal(0, 0.06, 3)
        eye = value.get("eye_open", 1.0) + rng.normal(0, 0.03)
        params = FaceParams.neutral(
            1, mouth_open=[np.clip(value.get("mouth_open", 0.0) + abs(jitter[0]), 0, 1)],
            smile=[np.clip(value.get("smile", 0.0) + jitter[1], -1, 1)],
            brow=[np.clip(value.get("brow", 0.0) + jitter[2], -1, 1)], eye_open=[[eye, eye]],
            gaze=rng.uniform(-0.4, 0.4, (1, 2)), yaw=[rng.uniform(-0.25, 0.25)], pitch=[rng.uniform(-0.2, 0.2)],
            roll=[rng.uniform(-0.15, 0.15)], scale=[rng.uniform(0.78, 0.9)],
            center=[0.5 + rng.uniform(-0.04, 0.04, 2) + [0, 0.03]], light=[rng.uniform(0.6, 1.25)],
            light_angle=[rng.uniform(0, 2 * np.pi)], identity=random_identity(rng),
            skin=tuple(int(v) for v in rng.uniform([150, 100, 70], [235, 190, 160])))
        frame, _ = render_faces(params, size=render_size, noise=2.0, rng=rng,
                                background=tuple(int(v) for v in rng.uniform(30, 150, 3)))
        points = face_landmarks(params)[0, :, :2]
        frame = frame[0]
        if "wrinkle" in value:  # AU9: creases across the nose bridge
            for t in (0.35, 0.55, 0.75):
                centre = points[27] + t * (points[30] - points[27])
                half = 0.05 * params.scale[0]
                a = np.round((centre - [half, 0]) * render_size).astype(int)
                b = np.round((centre + [half, 0]) * render_size).astype(int)
                cv2.line(frame, tuple(int(v) for v in a), tuple(int(v) for v in b),
                         tuple(int(v * value["wrinkle"]) for v in (95, 60, 50)), max(1, render_size // 48), cv2.LINE_AA)
        images[i] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        masks[i] = region_mask(points, regions, size, mask_margin)
        landmarks[i] = points[:NUM_DLIB]
    return (images, masks, landmarks) if return_landmarks else (images, masks)


class SyntheticFERDataModule(ImageClassificationDataModule):
    """The stand-in: ``num_per_class`` images of each of the 7 classes (``CLASSES``, the paper's label order), with
    the expected region as the batch's ``mask``; the paper's stratified 56 / 24 / 20 split by default.

    Args:
        num_per_class: images per class (the card: 300).
        size: rendered side (48, the paper's input).
        seed: rendering seed.
        mask_margin: dilation of the region masks (pixels at ``size``).
        **kwargs: ``ImageClassificationDataModule`` 's (image_size, augmentation, split, batch_size, ...).
    """

    classes = CLASSES
    standin_config = "experiments/fer_gradcam_demo.yaml"

    def __init__(self, num_per_class: int = 300, size: int = 48, seed: int = 0, mask_margin: int = 2,
                 image_size: int = 48, normalization: str = "unit", test_size: float = 0.2,
                 val_fraction: float = 0.3, **kwargs):
        super().__init__("", image_size=image_size, normalization=normalization, test_size=test_size,
                         val_fraction=val_fraction, **kwargs)
        if num_per_class < 2:
            raise ValueError(f"num_per_class must be >= 2, got {num_per_class}")
        self.num_per_class, self.size, self.seed, self.mask_margin = num_per_class, size, seed, mask_margin
        self._masks: Optional[dict[str, np.ndarray]] = None

    def list_items(self) -> list[ClassificationItem]:
        labels = np.repeat(np.arange(len(CLASSES)), self.num_per_class)
        images, masks = render_expressions(labels, self.size, self.seed, self.mask_margin)
        self._masks = {f"{CLASSES[y]}_{i:05d}": m for i, (y, m) in enumerate(zip(labels, masks))}
        return [ClassificationItem(image, int(y), name=f"{CLASSES[y]}_{i:05d}")
                for i, (image, y) in enumerate(zip(images, labels))]

    def preprocess(self, image: np.ndarray, item: ClassificationItem):
        return image, self._masks[item.name]
