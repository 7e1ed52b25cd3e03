"""The shared synthetic-face renderer: shapes, landmarks on the face, each control moves what it should."""
import numpy as np
import pytest

from datamodules.standins.synthetic_faces import (JAW, LEFT_BROW, LEFT_EYE, LEFT_IRIS, NUM_LANDMARKS, OUTER_LIPS,
                                                  RIGHT_BROW, RIGHT_EYE, RIGHT_IRIS, FaceParams, canonical_face,
                                                  engagement_clip, engagement_landmark_clips, face_landmarks,
                                                  random_episodes, render_faces)


def _still(**controls):
    """Two frames: neutral, then with the controls applied to the second frame."""
    values = {}
    for key, value in controls.items():
        neutral = FaceParams.neutral(2)
        base = np.asarray(getattr(neutral, key), float)
        base[1] = value
        values[key] = base
    return face_landmarks(FaceParams.neutral(2, **values))


def test_shapes_and_dlib_layout():
    face = canonical_face()
    assert face.shape == (NUM_LANDMARKS + 7, 3)
    marks = face_landmarks(FaceParams.neutral(5))
    assert marks.shape == (5, 78, 3) and marks.dtype == np.float32
    m = marks[0]
    # dlib order: jaw left to right through the chin (8, lowest), right eye left of the left eye, mouth below nose
    assert np.all(np.diff(m[JAW[:9], 0]) > 0) and m[8, 1] == m[JAW, 1].max()
    assert m[RIGHT_EYE, 0].max() < m[LEFT_EYE, 0].min()
    assert m[OUTER_LIPS, 1].min() > m[33, 1] > m[27, 1] > m[RIGHT_BROW, 1].max()
    # irises inside their eyes; the nose tip nearer the camera (smaller z) than the jaw's ends
    for eye, iris in ((RIGHT_EYE, RIGHT_IRIS), (LEFT_EYE, LEFT_IRIS)):
        assert m[eye, 0].min() < m[iris[0], 0] < m[eye, 0].max()
    assert m[30, 2] < m[0, 2] and m[30, 2] < m[16, 2]


def test_landmarks_inside_the_drawn_face():
    rng = np.random.default_rng(1)
    params = engagement_clip(2, 8, rng)
    params.present[:] = True
    images, marks = render_faces(params, size=96, noise=0.0, rng=rng)
    assert images.shape == (8, 96, 96, 3) and images.dtype == np.uint8
    background = np.array((70, 80, 95))
    for t in range(8):
        pixels = np.clip((marks[t, :, :2] * 96).astype(int), 0, 95)
        inner = pixels[17:]  # brows, nose, eyes, mouth, irises lie on drawn face pixels, not the background
        colours = images[t, inner[:, 1], inner[:, 0]].astype(int)
        assert (np.abs(colours - background).sum(1) > 20).mean() > 0.95
        assert np.all((marks[t, :, :2] > 0) & (marks[t, :, :2] < 1))


def test_controls_move_what_they_should():
    base = face_landmarks(FaceParams.neutral(1))[0]
    mouth = _still(mouth_open=1.0)
    assert mouth[1, 57, 1] - mouth[0, 57, 1] > 0.04 and mouth[1, 8, 1] > mouth[0, 8, 1]  # lower lip, chin drop
    assert np.allclose(mouth[1, RIGHT_EYE], mouth[0, RIGHT_EYE])  # eyes untouched
    smile = _still(smile=1.0)
    assert smile[1, 48, 1] < smile[0, 48, 1] and smile[1, 54, 1] < smile[0, 54, 1]  # corners up
    assert smile[1, 54, 0] - smile[1, 48, 0] > smile[0, 54, 0] - smile[0, 48, 0]  # and out
    raised, lowered = _still(brow=1.0), _still(brow=-1.0)
    assert np.all(raised[1, RIGHT_BROW, 1] < raised[0, RIGHT_BROW, 1])
    assert np.all(lowered[1, LEFT_BROW, 1] >= lowered[0, LEFT_BROW, 1])
    assert lowered[1, 22, 0] - lowered[1, 21, 0] < lowered[0, 22, 0] - lowered[0, 21, 0]  # drawn together (AU4)
    closed = _still(eye_open=[0.0, 1.0])
    lid_gap = lambda m, eye: m[eye[[1, 2]], 1].mean() - m[eye[[4, 5]], 1].mean()
    assert abs(lid_gap(closed[1], RIGHT_EYE)) < 0.2 * abs(lid_gap(closed[0], RIGHT_EYE))
    assert np.isclose(lid_gap(closed[1], LEFT_EYE), lid_gap(closed[0], LEFT_EYE))  # the other eye stays open
    gaze = _still(gaze=[1.0, 0.0])
    assert np.all(gaze[1, RIGHT_IRIS, 0] > gaze[0, RIGHT_IRIS, 0]) and np.allclose(gaze[1, JAW], gaze[0, JAW])
    yaw = _still(yaw=0.6)
    # turning the head shifts the nose tip sideways relative to the face outline and changes the depth order
    offset = lambda m: m[30, 0] - m[JAW, 0].mean()
    assert abs(offset(yaw[1]) - offset(yaw[0])) > 0.03
    assert np.sign(yaw[1, 0, 2] - yaw[1, 16, 2]) != 0 and abs(yaw[1, 0, 2] - yaw[1, 16, 2]) > 0.05
    pitch = _still(pitch=0.4)
    assert abs((pitch[1, 30, 1] - pitch[1, 27, 1]) - (pitch[0, 30, 1] - pitch[0, 27, 1])) > 0.01
    assert base.shape == (78, 3)
    absent = face_landmarks(FaceParams.neutral(3, present=[True, False, True]))
    assert np.all(absent[1] == 0) and np.all(absent[0] != 0)


def test_rendering_responds_to_light_pulse_and_eyes():
    params = FaceParams.neutral(4, light=[1.0, 0.6, 1.0, 1.0], pulse=[0.0, 0.0, 8.0, 0.0],
                                eye_open=[[1, 1], [1, 1], [1, 1], [0, 0]])
    images, marks = render_faces(params, size=96, noise=0.0)
    skin = (slice(52, 56), slice(30, 34))  # a cheek patch
    cheek = images[:, skin[0], skin[1]].reshape(4, -1, 3).mean(1)
    assert cheek[1].mean() < 0.8 * cheek[0].mean()  # dimmer light
    assert cheek[2, 1] - cheek[0, 1] == pytest.approx(8, abs=1) and cheek[2, 2] - cheek[0, 2] < 4  # green pulse
    iris = np.clip((marks[0, RIGHT_IRIS[0], :2] * 96).astype(int), 0, 95)
    assert images[0, iris[1], iris[0]].astype(int).sum() < 400  # open eye: dark iris
    assert images[3, iris[1], iris[0]].astype(int).sum() != images[0, iris[1], iris[0]].astype(int).sum()
    none = render_faces(FaceParams.neutral(1, present=[False]), size=32, noise=0.0)[0]
    assert np.all(none == np.array((70, 80, 95), np.uint8))


def test_engagement_levels_are_monotone():
    """Low levels look away and close their eyes more; only level 0 has face-absent frames."""
    rng = np.random.default_rng(0)
    stats = {}
    for level in (0, 3):
        clips = [engagement_clip(level, 64, rng) for _ in range(100)]
        stats[level] = (np.mean([np.mean(np.abs(c.yaw) + np.abs(c.pitch - 0.1) > 0.2) for c in clips]),
                        np.mean([np.mean(c.eye_open < 0.5) for c in clips]),
                        np.mean([np.mean(~c.present) for c in clips]))
    assert stats[0][0] > stats[3][0] + 0.2 and stats[0][1] > stats[3][1] + 0.15
    assert stats[0][2] > 0 and stats[3][2] == 0
    clips = engagement_landmark_clips([0, 1, 2, 3], frames=16, seed=0)
    assert clips.shape == (4, 16, 78, 3) and clips.dtype == np.float32
    assert random_episodes(50, 0.0, 5, rng).sum() == 0 and random_episodes(50, 0.5, 5, rng).any()
