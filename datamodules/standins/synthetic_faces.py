"""The shared synthetic-face renderer: a parametric cartoon face that yields, per frame, an RGB image and its 78
3-D landmarks in MediaPipe's convention, for the face/landmark papers' offline stand-ins (engagement ST-GCN, group
emotion, FER Grad-CAM, rPPG heart rate, micro-expressions).

Landmarks (``NUM_LANDMARKS`` = 78, the engagement paper's set): the 68 points of dlib's layout, in dlib's order
(jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67), then the irises as MediaPipe refines them: the
subject's right iris (centre + 4 ring points, MediaPipe 468-472) and left iris (473-477). As MediaPipe writes them,
x and y are normalised by the image width and height (0..1, y down) and z is the depth relative to the face
(smaller = nearer the camera), in units of the image width.

A face is built in three steps, each vectorised over frames (a clip is T frames of per-frame parameters):

1. ``canonical_face`` (plus an identity from ``random_identity``): the neutral 3-D shape in face units (width about
   0.95, y down, z away from the camera), with a few extra outline points for the forehead (not landmarks);
2. ``face_landmarks``: expression (mouth opening, smile/frown, brow raise/furrow, per-eye openness, gaze), then the
   head pose (yaw, pitch, roll about the head's centre), scale and position, projected weakly-perspectively to
   normalised image coordinates; frames with ``present`` False are all zeros (MediaPipe found no face);
3. ``render_faces``: OpenCV draws each frame (skin, shading from a directional light, eyes with clipped irises,
   brows, nose, lips, open mouth) and modulates the skin by a pulse signal (the rPPG stand-in's blood volume
   signal, mostly in green), with sensor noise.

``engagement_clip`` draws the per-frame parameters of an engagement-like video: look-away episodes (head turns and
downward glances), eye closures and blinks, gaze wander and, at the lowest level, face-absent spells, all
controlled monotonically by a continuous engagement level (see its doc).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

NUM_DLIB = 68
NUM_LANDMARKS = 78
JAW, RIGHT_BROW, LEFT_BROW = np.arange(0, 17), np.arange(17, 22), np.arange(22, 27)
NOSE_BRIDGE, NOSE_LOWER = np.arange(27, 31), np.arange(31, 36)
RIGHT_EYE, LEFT_EYE = np.arange(36, 42), np.arange(42, 48)
OUTER_LIPS, INNER_LIPS = np.arange(48, 60), np.arange(60, 68)
RIGHT_IRIS, LEFT_IRIS = np.arange(68, 73), np.arange(73, 78)  # centre first, then 4 ring points
#: Landmark groups by name (the regions the stand-ins' cues live in).
REGIONS = {"jaw": JAW, "right_brow": RIGHT_BROW, "left_brow": LEFT_BROW, "nose": np.r_[NOSE_BRIDGE, NOSE_LOWER],
           "right_eye": RIGHT_EYE, "left_eye": LEFT_EYE, "mouth": np.r_[OUTER_LIPS, INNER_LIPS],
           "right_iris": RIGHT_IRIS, "left_iris": LEFT_IRIS}
IRIS_RADIUS = 0.028
HEAD_CENTRE = np.array([0.0, 0.05, 0.40])  # rotation centre, behind the face surface (face units)
_NUM_FOREHEAD = 7  # extra outline points above the brows (not landmarks)


def _surface_depth(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Depth of the face surface (away from the camera) at face coordinates (x, y): a rounded front."""
    return 0.9 * x ** 2 + 0.25 * (y - 0.05) ** 2


def canonical_face() -> np.ndarray:
    """The neutral face, (78 + 7, 3) in face units: the 78 landmarks, then 7 forehead outline points."""
    pts = np.zeros((NUM_LANDMARKS + _NUM_FOREHEAD, 3))
    phi = np.linspace(0, np.pi, 17)
    pts[JAW, 0] = -0.47 * np.cos(phi)
    pts[JAW, 1] = -0.08 + 0.58 * np.sin(phi) ** 0.8
    u = np.linspace(0, 1, 5)
    brow_x, brow_y = -0.40 + 0.32 * u, -0.24 - 0.06 * np.sin(np.pi * u ** 0.8)
    pts[RIGHT_BROW, 0], pts[RIGHT_BROW, 1] = brow_x, brow_y
    pts[LEFT_BROW, 0], pts[LEFT_BROW, 1] = -brow_x[::-1], brow_y[::-1]
    pts[NOSE_BRIDGE, 1] = [-0.18, -0.10, -0.02, 0.06]
    pts[NOSE_LOWER, 0] = [-0.09, -0.045, 0.0, 0.045, 0.09]
    pts[NOSE_LOWER, 1] = [0.11, 0.125, 0.135, 0.125, 0.11]
    right_eye = np.array([[-0.285, -0.12], [-0.23, -0.155], [-0.17, -0.155], [-0.115, -0.12], [-0.17, -0.09],
                          [-0.23, -0.09]])
    pts[RIGHT_EYE, :2] = right_eye
    # dlib's left eye: inner corner 42, upper lid 43-44, outer corner 45, lower lid 46-47 (mirror of 39,38,37,36,41,40)
    pts[LEFT_EYE, :2] = right_eye[[3, 2, 1, 0, 5, 4]] * [-1, 1]
    pts[OUTER_LIPS, :2] = [[-0.20, 0.30], [-0.13, 0.265], [-0.05, 0.245], [0.0, 0.255], [0.05, 0.245], [0.13, 0.265],
                           [0.20, 0.30], [0.13, 0.34], [0.05, 0.36], [0.0, 0.365], [-0.05, 0.36], [-0.13, 0.34]]
    pts[INNER_LIPS, :2] = [[-0.17, 0.30], [-0.05, 0.29], [0.0, 0.292], [0.05, 0.29], [0.17, 0.30], [0.05, 0.305],
                           [0.0, 0.307], [-0.05, 0.305]]
    ring = np.array([[0, 0], [1, 0], [0, -1], [-1, 0], [0, 1]]) * IRIS_RADIUS  # centre, right, up, left, down
    pts[RIGHT_IRIS, :2] = right_eye.mean(0) + ring
    pts[LEFT_IRIS, :2] = right_eye.mean(0) * [-1, 1] + ring
    theta = np.linspace(0.15 * np.pi, 0.85 * np.pi, _NUM_FOREHEAD)
    pts[NUM_LANDMARKS:, 0] = -0.45 * np.cos(theta)
    pts[NUM_LANDMARKS:, 1] = -0.30 - 0.22 * np.sin(theta)
    pts[:, 2] = _surface_depth(pts[:, 0], pts[:, 1])
    pts[JAW, 2] += 0.10 * np.abs(np.cos(phi)) ** 1.5  # the jaw line wraps back towards the ears
    pts[NOSE_BRIDGE, 2] = [-0.03, -0.07, -0.11, -0.15]
    pts[NOSE_LOWER, 2] = [-0.04, -0.08, -0.10, -0.08, -0.04]
    pts[np.r_[RIGHT_EYE, LEFT_EYE], 2] += 0.02
    pts[np.r_[RIGHT_IRIS, LEFT_IRIS], 2] += 0.01
    pts[np.r_[OUTER_LIPS, INNER_LIPS], 2] -= 0.05
    return pts


def random_identity(rng: np.random.Generator, amount: float = 1.0) -> np.ndarray:
    """A subject's neutral shape: the canonical face with its width/height scaled (+-8 %), eyes spaced,
    nose lengthened, mouth widened and every point jittered (sigma 0.006), times ``amount``. (85, 3)."""
    pts = canonical_face()
    pts[:, 0] *= 1 + amount * rng.uniform(-0.08, 0.08)
    pts[:, 1] *= 1 + amount * rng.uniform(-0.08, 0.08)
    eyes = np.r_[RIGHT_EYE, RIGHT_IRIS, RIGHT_BROW]
    spread = amount * rng.uniform(-0.02, 0.02)
    pts[eyes, 0] -= spread
    pts[np.r_[LEFT_EYE, LEFT_IRIS, LEFT_BROW], 0] += spread
    pts[NOSE_LOWER, 1] += amount * rng.uniform(-0.02, 0.02)
    pts[np.r_[OUTER_LIPS, INNER_LIPS], 0] *= 1 + amount * rng.uniform(-0.1, 0.1)
    pts[:NUM_LANDMARKS] += amount * rng.normal(0, 0.006, size=(NUM_LANDMARKS, 3)) * [1, 1, 0.5]
    return pts


@dataclass
class FaceParams:
    """Per-frame controls of one clip; every field is an array over the T frames (``per_eye`` ones (T, 2):
    the subject's right, left eye). ``FaceParams.neutral(T)`` gives a still, frontal, neutral face.

    Expression: ``mouth_open`` 0..1 (jaw drop), ``smile`` -1..1 (lip corners up/down: AU12 / AU15), ``brow``
    -1..1 (raised: AU1+2 / lowered and drawn together: AU4), ``eye_open`` (T, 2) 0 (closed) .. 1 (neutral) .. 1.4
    (wide), ``gaze`` (T, 2) iris offset in x, y (-1..1 of its range; +x = image right, +y = down).
    Head: ``yaw``, ``pitch``, ``roll`` in radians, ``scale`` (face width / image width), ``center`` (T, 2) the
    face centre in normalised image coordinates. ``present``: False = no face in the frame.
    Appearance (rendering only): ``light`` (T,) overall illumination gain, ``light_angle`` (T,) the direction
    the light comes from (radians in the image plane), ``pulse`` (T,) the skin's blood-volume signal (grey
    levels added to green, 0.5x to red and 0.3x to blue).
    """

    mouth_open: np.ndarray
    smile: np.ndarray
    brow: np.ndarray
    eye_open: np.ndarray
    gaze: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    scale: np.ndarray
    center: np.ndarray
    present: np.ndarray
    light: np.ndarray
    light_angle: np.ndarray
    pulse: np.ndarray
    identity: np.ndarray = field(default_factory=canonical_face)
    skin: tuple = (205, 160, 130)

    @classmethod
    def neutral(cls, frames: int, **overrides) -> "FaceParams":
        zeros, ones = np.zeros(frames), np.ones(frames)
        values = dict(mouth_open=zeros, smile=zeros, brow=zeros, eye_open=np.ones((frames, 2)),
                      gaze=np.zeros((frames, 2)), yaw=zeros, pitch=zeros, roll=zeros, scale=0.55 * ones,
                      center=np.full((frames, 2), 0.5), present=np.ones(frames, bool), light=ones,
                      light_angle=zeros, pulse=zeros)
        values.update(overrides)
        values = {k: (np.array(v, dtype=float, copy=True) if k not in ("identity", "skin", "present") else v)
                  for k, v in values.items()}
        values["present"] = np.asarray(values["present"], dtype=bool).copy()
        return cls(**values)

    @property
    def frames(self) -> int:
        return len(self.yaw)

    def __post_init__(self) -> None:
        T = len(self.yaw)
        for f in fields(self):
            if f.name in ("identity", "skin"):
                continue
            value = getattr(self, f.name)
            expected = (T, 2) if f.name in ("eye_open", "gaze", "center") else (T,)
            if np.shape(value) != expected:
                raise ValueError(f"FaceParams.{f.name} must have shape {expected}, got {np.shape(value)}")


def rotation_matrices(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """(T, 3, 3) rotations R = Rz(roll) Rx(pitch) Ry(yaw) (image axes: x right, y down, z away)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    one, zero = np.ones_like(yaw), np.zeros_like(yaw)
    ry = np.stack([np.stack([cy, zero, sy], -1), np.stack([zero, one, zero], -1), np.stack([-sy, zero, cy], -1)], -2)
    rx = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, cp, -sp], -1), np.stack([zero, sp, cp], -1)], -2)
    rz = np.stack([np.stack([cr, -sr, zero], -1), np.stack([sr, cr, zero], -1), np.stack([zero, zero, one], -1)], -2)
    return rz @ rx @ ry


def expressive_shape(params: FaceParams) -> np.ndarray:
    """(T, 85, 3) face-unit shapes after the expression controls (before head pose)."""
    T = params.frames
    pts = np.broadcast_to(params.identity, (T, *params.identity.shape)).copy()
    m, s, b = params.mouth_open[:, None], params.smile[:, None], params.brow[:, None]
    # mouth opening: the jaw (chin most), lower lip and lower inner lip drop; the upper inner lip lifts a little
    jaw_weight = np.sin(np.linspace(0, np.pi, 17)) ** 2
    pts[:, JAW, 1] += 0.12 * m * jaw_weight
    pts[:, OUTER_LIPS[7:12], 1] += 0.11 * m
    pts[:, INNER_LIPS[5:8], 1] += 0.10 * m
    pts[:, INNER_LIPS[1:4], 1] -= 0.01 * m
    pts[:, [48, 54, 60, 64], 1] += 0.03 * m
    # smile (AU12) / frown (AU15): lip corners up and out / down
    corners = {48: -1, 60: -1, 54: 1, 64: 1}
    for index, side in corners.items():
        pts[:, index, 1] -= 0.04 * s[:, 0]
        pts[:, index, 0] += side * 0.03 * np.clip(s[:, 0], 0, None)
    for index in (49, 59, 53, 55):
        pts[:, index, 1] -= 0.02 * s[:, 0]
    # brows: raised (AU1+2) or lowered and drawn together, inner ends most (AU4)
    pts[:, np.r_[RIGHT_BROW, LEFT_BROW], 1] -= 0.05 * b
    lowered = np.clip(-b, 0, None)
    inner = np.linspace(0, 1, 5)
    pts[:, RIGHT_BROW, 0] += 0.03 * lowered * inner
    pts[:, LEFT_BROW, 0] -= 0.03 * lowered * inner[::-1]
    pts[:, RIGHT_BROW, 1] += 0.02 * lowered * inner
    pts[:, LEFT_BROW, 1] += 0.02 * lowered * inner[::-1]
    # eyelids close towards a line just below the eye's mid height; wide eyes open past neutral
    for eye, lids, iris, k in ((RIGHT_EYE, [37, 38, 40, 41], RIGHT_IRIS, 0), (LEFT_EYE, [43, 44, 46, 47], LEFT_IRIS, 1)):
        closed = pts[:, eye, 1].mean(1, keepdims=True) + 0.012
        openness = params.eye_open[:, k:k + 1]
        pts[:, lids, 1] = closed + (pts[:, lids, 1] - closed) * openness
        # gaze moves the iris within the eye
        pts[:, iris, 0] += 0.045 * params.gaze[:, 0:1]
        pts[:, iris, 1] += 0.02 * params.gaze[:, 1:2]
    return pts


def face_landmarks(params: FaceParams, with_outline: bool = False) -> np.ndarray:
    """(T, 78, 3) float32 landmarks in MediaPipe's convention (x, y normalised to the image, z relative depth in
    image widths); absent frames are zeros. ``with_outline`` also returns the 7 forehead points (T, 85, 3)."""
    pts = expressive_shape(params) - HEAD_CENTRE
    rotation = rotation_matrices(params.yaw, params.pitch, params.roll)
    pts = np.einsum("tij,tnj->tni", rotation, pts) + HEAD_CENTRE
    out = np.empty_like(pts)
    out[..., :2] = params.center[:, None, :] + params.scale[:, None, None] * pts[..., :2]
    out[..., 2] = params.scale[:, None] * (pts[..., 2] - pts[:, 27:31, 2].mean(1, keepdims=True))
    out[~params.present] = 0.0
    out = out.astype(np.float32)
    return out if with_outline else out[:, :NUM_LANDMARKS]


def _shading(size: int, centre: np.ndarray, scale: float, light: float, angle: float) -> np.ndarray:
    """(H, W) illumination gain: ``light`` times a directional ramp across the face."""
    grid = (np.arange(size) + 0.5) / size
    u = (grid[None, :] - centre[0]) / max(scale, 1e-3)
    v = (grid[:, None] - centre[1]) / max(scale, 1e-3)
    ramp = np.clip(0.5 * (u * np.cos(angle) + v * np.sin(angle)), -0.35, 0.35)
    return light * (1.0 + ramp)


def render_faces(params: FaceParams, size: int = 64, noise: float = 1.5, background: Sequence[int] = (70, 80, 95),
                 rng: Optional[np.random.Generator] = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw the clip: ``(images (T, size, size, 3) uint8 RGB, landmarks (T, 78, 3) float32)``.

    The skin gets the light's shading, then ``pulse`` (grey levels: green 1x, red 0.5x, blue 0.3x); eyes are white
    with irises clipped by the eyelids (closed eyes show no iris); the mouth's interior is dark when open;
    Gaussian sensor noise of sigma ``noise`` grey levels. Absent frames show only the background.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    outline = face_landmarks(params, with_outline=True)
    T = params.frames
    images = np.empty((T, size, size, 3), np.float32)
    skin = np.asarray(params.skin, np.float32)
    pulse_colour = np.array([0.5, 1.0, 0.3], np.float32)
    scale_px = size * 16  # fixed-point drawing (shift=4) for sub-pixel landmarks
    for t in range(T):
        frame = np.empty((size, size, 3), np.float32)
        frame[:] = np.asarray(background, np.float32)
        if params.present[t]:
            p = np.round(outline[t, :, :2] * scale_px).astype(np.int32)
            face = np.zeros((size, size), np.uint8)
            hull = cv2.convexHull(np.concatenate([p[JAW], p[NUM_LANDMARKS:]]))
            cv2.fillConvexPoly(face, hull, 1, lineType=cv2.LINE_AA, shift=4)
            mask = face.astype(bool)
            shade = _shading(size, params.center[t], params.scale[t], params.light[t], params.light_angle[t])
            frame[mask] = skin * shade[mask, None] + params.pulse[t] * pulse_colour
            layer = np.zeros((size, size, 3), np.uint8)
            drawn = np.zeros((size, size), np.uint8)
            for eye, iris in ((RIGHT_EYE, RIGHT_IRIS), (LEFT_EYE, LEFT_IRIS)):
                eye_mask = np.zeros((size, size), np.uint8)
                cv2.fillPoly(eye_mask, [p[eye]], 1, lineType=cv2.LINE_AA, shift=4)
                iris_mask = np.zeros((size, size), np.uint8)
                radius = int(round(np.linalg.norm(outline[t, iris[1], :2] - outline[t, iris[0], :2]) * scale_px))
                cv2.circle(iris_mask, tuple(int(v) for v in p[iris[0]]), max(radius, 8), 1, -1, cv2.LINE_AA, 4)
                layer[eye_mask > 0] = (235, 235, 230)
                layer[(eye_mask > 0) & (iris_mask > 0)] = (60, 90, 120)
                drawn |= eye_mask
            for brow in (RIGHT_BROW, LEFT_BROW):
                cv2.polylines(layer, [p[brow]], False, (70, 45, 30), max(1, size // 32), cv2.LINE_AA, 4)
                cv2.polylines(drawn, [p[brow]], False, 1, max(1, size // 32), cv2.LINE_AA, 4)
            cv2.polylines(layer, [p[np.r_[NOSE_BRIDGE, NOSE_LOWER[2]]], p[NOSE_LOWER]], False, (150, 100, 85), 1,
                          cv2.LINE_AA, 4)
            cv2.polylines(drawn, [p[np.r_[NOSE_BRIDGE, NOSE_LOWER[2]]], p[NOSE_LOWER]], False, 1, 1, cv2.LINE_AA, 4)
            cv2.fillPoly(layer, [p[OUTER_LIPS]], (170, 70, 75), cv2.LINE_AA, 4)
            cv2.fillPoly(drawn, [p[OUTER_LIPS]], 1, cv2.LINE_AA, 4)
            inner_height = outline[t, 66, 1] - outline[t, 62, 1]
            if inner_height * size > 0.6:
                cv2.fillPoly(layer, [p[INNER_LIPS]], (40, 15, 20), cv2.LINE_AA, 4)
            features = drawn.astype(bool)
            frame[features] = layer[features] * np.clip(params.light[t], 0.2, 2.0)
        images[t] = frame
    images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
    return np.clip(np.round(images), 0, 255).astype(np.uint8), outline[:, :NUM_LANDMARKS]


# ---------------------------------------------------------------------------------------------- behaviour
def random_episodes(frames: int, fraction: float, mean_length: float, rng: np.random.Generator) -> np.ndarray:
    """(frames,) bool: episodes of ~``mean_length`` frames at random places covering about ``fraction`` of the
    clip (overlaps merge)."""
    if fraction <= 0:
        return np.zeros(frames, bool)
    count = max(1, int(round(fraction * frames / mean_length)))
    lengths = np.maximum(1, rng.exponential(mean_length, count)).astype(int)
    starts = rng.integers(-mean_length // 2, frames, count)
    t = np.arange(frames)
    return ((t[None] >= starts[:, None]) & (t[None] < (starts + lengths)[:, None])).any(0)


def smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time (axis 0)."""
    return gaussian_filter1d(x, sigma, axis=0, mode="nearest") if sigma > 0 else x


#: The two ends (least, most engaged) of each behaviour; a level in between interpolates.
ENGAGEMENT_ENDS = {
    "away_fraction": (0.60, 0.05),     # share of frames looking away (head turned or glancing down)
    "away_amplitude": (0.85, 0.30),    # radians of yaw (or pitch) when looking away
    "closed_fraction": (0.40, 0.02),   # share of frames with the eyes closed (drowsy spells, blinks)
    "gaze_wander": (0.90, 0.15),       # iris offset spread
    "absent_probability": (0.20, 0.0), # chance of a face-absent spell (level 0 only)
}


def engagement_clip(level: float, frames: int, rng: np.random.Generator, levels: int = 4,
                    identity: Optional[np.ndarray] = None, fps: float = 30.0) -> FaceParams:
    """Per-frame controls of one student clip at engagement ``level`` (0 = not engaged .. levels-1 = highly
    engaged; fractional levels interpolate).

    With ``u = level / (levels - 1)``, each behaviour of ``ENGAGEMENT_ENDS`` moves monotonically from its
    not-engaged end (u = 0) to its engaged end (u = 1): look-away episodes (share of frames and head-turn
    amplitude; half are downward glances, as at a phone), eye-closure spells, gaze wander, and a face-absent
    spell (20 % of clips at u = 0, decreasing linearly to none at u = 1/3). Every clip also has blinks (3-frame
    closures, ~15 a minute), small head sway, a random light and mild random expressions.
    """
    u = float(np.clip(level / max(levels - 1, 1), 0.0, 1.0))
    lerp = {k: a + (b - a) * u for k, (a, b) in ENGAGEMENT_ENDS.items()}
    episode = max(4, int(frames / 8))
    away = random_episodes(frames, lerp["away_fraction"], episode, rng)
    down = rng.random() < 0.5
    turn = rng.choice([-1.0, 1.0]) * lerp["away_amplitude"] * rng.uniform(0.8, 1.2)
    sway = smooth(rng.normal(0, 0.08, (frames, 3)), frames / 16)
    target = np.zeros((frames, 3))
    target[:, 1 if down else 0] = away * (abs(turn) if down else turn)
    pose = smooth(target, 2.0) + sway
    closed = random_episodes(frames, lerp["closed_fraction"], episode, rng)
    blinks = random_episodes(frames, 0.25 * 3 / fps * 2, 3, rng)
    eye_open = np.where(closed | blinks, 0.05, 1.0) + rng.normal(0, 0.03, frames)
    gaze = smooth(rng.normal(0, lerp["gaze_wander"], (frames, 2)), 3.0) * 2.5
    gaze = np.clip(gaze, -1, 1)
    present = np.ones(frames, bool)
    absent_chance = ENGAGEMENT_ENDS["absent_probability"][0] * max(0.0, 1 - 3 * u)
    if rng.random() < absent_chance:
        present &= ~random_episodes(frames, rng.uniform(0.2, 0.5), episode, rng)
    expression = smooth(rng.normal(0, 0.3, (frames, 3)), frames / 10)
    return FaceParams.neutral(
        frames, yaw=pose[:, 0], pitch=pose[:, 1] + 0.1, roll=0.3 * pose[:, 2], eye_open=np.clip(eye_open, 0, 1.2)[:, None]
        .repeat(2, 1), gaze=gaze, mouth_open=np.clip(expression[:, 0], 0, 1), smile=np.clip(expression[:, 1], -1, 1),
        brow=np.clip(expression[:, 2], -1, 1), scale=np.full(frames, 0.5 * rng.uniform(0.9, 1.1)),
        center=0.5 + rng.uniform(-0.05, 0.05, 2) + smooth(rng.normal(0, 0.01, (frames, 2)), 4.0), present=present,
        light=np.full(frames, rng.uniform(0.7, 1.2)), light_angle=np.full(frames, rng.uniform(0, 2 * np.pi)),
        pulse=np.zeros(frames), identity=random_identity(rng) if identity is None else identity,
        skin=tuple(int(v) for v in rng.uniform([150, 100, 70], [235, 190, 160])))


def engagement_landmark_clips(levels: Sequence[float], frames: int = 64, seed: int = 0, jitter: float = 0.01,
                              num_levels: int = 4) -> np.ndarray:
    """(N, frames, 78, 3) float32 landmark clips, one per entry of ``levels``, with per-frame landmark jitter
    of sigma ``jitter`` (image widths; absent frames stay zero)."""
    rng = np.random.default_rng(seed)
    clips = np.empty((len(levels), frames, NUM_LANDMARKS, 3), np.float32)
    for i, level in enumerate(levels):
        params = engagement_clip(level, frames, rng, num_levels)
        marks = face_landmarks(params)
        noise = rng.normal(0, jitter, marks.shape).astype(np.float32)
        clips[i] = np.where(params.present[:, None, None], marks + noise, 0.0)
    return clips
