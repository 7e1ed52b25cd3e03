"""Offline stand-in for scanpath classification (the scanpath angle-fern card): synthetic raw gaze recordings in
which every viewer and every stimulus leaves its own trace in the inter-sample angles, so both tasks are learnable.

A recording alternates fixations and saccades at ``sample_rate`` (250 Hz, 2 s = 500 samples, as GazeCom):

- **fixations**: the eye drifts slowly in the viewer's own drift direction (speed 0.03 units/sample) with Gaussian
  jitter, isotropic (sigma ``jitter_iso`` 0.03) plus elongated along the stimulus's texture axis (sigma
  ``jitter_axis`` 0.06: the image's fixation structure); durations ~ exponential around the viewer's mean
  (150-350 ms, at least 60 ms);
- **saccades**: 5-10 samples with a smooth (raised-cosine) velocity profile; direction with probability
  ``viewer_weight`` from the viewer's two-component von Mises mixture (its own means, kappa 4), otherwise from the
  stimulus's (its salient-object layout: its own two axis means, kappa 4); amplitude ~ gamma around the stimulus's
  mean (3-8 units).

So the subject task reads drift and saccade directions, the stimulus task the texture axis of the fixational jitter
and the layout's saccade directions (amplitudes do not change angles). With fixed random ferns (256 x 4) and an
extra-trees classifier the test accuracy is 0.88 (subject, chance 1/6) and 0.53 (stimulus, chance 1/10).
Each (viewer, stimulus) pair is seen ``repeats`` times (different noise), as a viewer re-seeing frames of one video
in GazeCom's static condition.
"""
from __future__ import annotations

import numpy as np

from datamodules.scanpath import Scanpath, ScanpathDataModule


def synthetic_scanpaths(subjects: int = 6, stimuli: int = 10, repeats: int = 6, sample_rate: float = 250.0,
                        seconds: float = 2.0, viewer_weight: float = 0.5, kappa: float = 4.0,
                        jitter_iso: float = 0.03, jitter_axis: float = 0.06, seed: int = 0) -> list[Scanpath]:
    rng = np.random.default_rng(seed)
    length = int(round(sample_rate * seconds))
    viewer_means = rng.uniform(-np.pi, np.pi, size=(subjects, 2))
    viewer_drift = rng.uniform(-np.pi, np.pi, size=subjects)
    viewer_fixation_ms = rng.uniform(150, 350, size=subjects)
    layout_means = rng.uniform(-np.pi, np.pi, size=(stimuli, 2))
    layout_amplitude = rng.uniform(3.0, 8.0, size=stimuli)
    texture_axis = rng.uniform(0, np.pi, size=stimuli)  # fixation jitter elongated along the image's texture
    scanpaths = []
    for subject in range(subjects):
        for stimulus in range(stimuli):
            for repeat in range(repeats):
                samples = []
                position = rng.normal(0.0, 5.0, size=2)
                while sum(len(s) for s in samples) < length:
                    duration = max(int(0.06 * sample_rate),
                                   int(rng.exponential(viewer_fixation_ms[subject] / 1000 * sample_rate)))
                    drift = 0.03 * np.array([np.cos(viewer_drift[subject]), np.sin(viewer_drift[subject])])
                    axis = np.array([np.cos(texture_axis[stimulus]), np.sin(texture_axis[stimulus])])
                    jitter = rng.normal(0.0, jitter_iso, size=(duration, 2)) \
                        + rng.normal(0.0, jitter_axis, size=(duration, 1)) * axis
                    fixation = position + np.arange(1, duration + 1)[:, None] * drift + jitter
                    samples.append(fixation)
                    position = fixation[-1]
                    means = viewer_means[subject] if rng.random() < viewer_weight else layout_means[stimulus]
                    direction = rng.vonmises(means[rng.integers(2)], kappa)
                    amplitude = rng.gamma(4.0, layout_amplitude[stimulus] / 4.0)
                    steps = int(rng.integers(5, 11))
                    profile = 0.5 - 0.5 * np.cos(np.pi * np.arange(1, steps + 1) / steps)  # smooth 0 -> 1
                    saccade = position + amplitude * profile[:, None] * np.array([np.cos(direction), np.sin(direction)])
                    samples.append(saccade)
                    position = saccade[-1]
                xy = np.concatenate(samples)[:length].astype(np.float32)
                scanpaths.append(Scanpath(xy, f"viewer{subject}", f"image{stimulus}",
                                          name=f"viewer{subject}_image{stimulus}_r{repeat}"))
    return scanpaths


class SyntheticScanpathDataModule(ScanpathDataModule):
    """The synthetic scanpaths through the scanpath base (paper splits: subject task by stimulus, stimulus task by
    subject, 50/50, 20 % of train for validation).

    Args:
        subjects, stimuli, repeats, seconds, viewer_weight, seed: the generator (``synthetic_scanpaths``):
            6 viewers x 10 images x 6 repeats = 360 recordings of 500 samples by default.
        Others: ``ScanpathDataModule``.
    """

    def __init__(self, subjects: int = 6, stimuli: int = 10, repeats: int = 6, seconds: float = 2.0,
                 viewer_weight: float = 0.5, seed: int = 0, sample_rate: float = 250.0, **kwargs):
        super().__init__(sample_rate=sample_rate, **kwargs)
        self.generator_args = dict(subjects=subjects, stimuli=stimuli, repeats=repeats, sample_rate=sample_rate,
                                   seconds=seconds, viewer_weight=viewer_weight, seed=seed)

    def read_scanpaths(self) -> list[Scanpath]:
        return synthetic_scanpaths(**self.generator_args)
