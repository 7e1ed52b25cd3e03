"""Offline stand-in for wearable HAR (PA-HAR's card): synthetic multi-sensor IMU recordings.

Three "sensors" (x, y, z each: 9 channels) at 50 Hz. Each activity is a continuous periodic pattern (a base
frequency with its second harmonic), a per-sensor/axis amplitude pattern, a posture (the gravity direction,
a constant offset) and an inter-sensor phase lag. Classes are built so that every cue matters:

- 0 "slow", 1 "walk", 3 "run": different base frequencies (0.6, 1.2, 3.2 Hz);
- 2 "lie-cycle" and 4 "cycle" share frequency and amplitudes and differ only in posture;
- 4 "cycle" and 5 "cycle-lag" differ **only** in the phase relation between the sensors (0 vs a quarter
  period per sensor), which a time-only convolution cannot see but a cross-sensor (3x3) one can.

Every recording has a random phase and a +-20 % frequency jitter, Gaussian noise (sigma 0.3), and every subject
its own per-channel gain (+-20 %) and offset (sigma 0.2). Recordings are cut by the shared time-series base
(``TimeSeriesDataModule``): 128-sample windows with 50 % overlap, as UCI-HAR.
"""
from __future__ import annotations

import numpy as np

from datamodules.timeseries import Recording, TimeSeriesDataModule

ACTIVITIES = ("slow", "walk", "lie_cycle", "run", "cycle", "cycle_lag")
#: (base frequency Hz, posture axis, inter-sensor lag in periods)
PATTERNS = {0: (0.6, 2, 0.0), 1: (1.2, 2, 0.0), 2: (2.0, 0, 0.0), 3: (3.2, 2, 0.0), 4: (2.0, 2, 0.0),
            5: (2.0, 2, 0.25)}
SENSORS, AXES = 3, 3


def synthetic_imu_recordings(subjects: int = 5, windows_per_recording: int = 50, window: int = 128,
                             sample_rate: float = 50.0, noise: float = 0.3, seed: int = 0) -> list[Recording]:
    """One recording per (subject, activity), long enough for ``windows_per_recording`` half-overlapping windows."""
    rng = np.random.default_rng(seed)
    # class amplitude patterns (sensor x axis), shared by classes 2/4/5 so that only posture / lag differ
    amplitudes = {k: rng.uniform(0.3, 1.5, size=(SENSORS, AXES)) for k in range(len(ACTIVITIES))}
    amplitudes[2] = amplitudes[5] = amplitudes[4]
    harmonic = {k: rng.uniform(0.2, 0.6) for k in range(len(ACTIVITIES))}
    harmonic[2] = harmonic[5] = harmonic[4]
    length = (windows_per_recording + 1) * window // 2
    time = np.arange(length) / sample_rate
    recordings = []
    for subject in range(subjects):
        gain = rng.uniform(0.8, 1.2, size=SENSORS * AXES)
        offset = rng.normal(0.0, 0.2, size=SENSORS * AXES)
        for label, (frequency, posture, lag) in PATTERNS.items():
            f = frequency * rng.uniform(0.8, 1.2)
            phase = rng.uniform(0, 2 * np.pi)
            channels = []
            for sensor in range(SENSORS):
                angle = 2 * np.pi * f * time + phase - 2 * np.pi * lag * sensor
                wave = np.sin(angle) + harmonic[label] * np.sin(2 * angle)
                for axis in range(AXES):
                    gravity = 1.0 if axis == posture else 0.0
                    channels.append(amplitudes[label][sensor, axis] * wave + gravity)
            signal = np.stack(channels, axis=1) * gain + offset + rng.normal(0, noise, size=(length, SENSORS * AXES))
            recordings.append(Recording(signal.astype(np.float32), label, subject=f"subject{subject}",
                                        trial="0", name=f"subject{subject}_{ACTIVITIES[label]}"))
    return recordings


class SyntheticIMUDataModule(TimeSeriesDataModule):
    """The synthetic IMU stand-in through the time-series base (windowing, z-score, splits).

    Args:
        subjects, windows_per_recording, noise, seed: the generator (``synthetic_imu_recordings``); 5 subjects x
            6 activities x 50 windows = 1500 windows (1200 train / 300 test at test_size 0.2, the card's sizes).
        Others: ``TimeSeriesDataModule`` (window_length 128, window_step 64, sample_rate 50 by default).
    """

    classes = ACTIVITIES
    default_sample_rate = 50.0

    def __init__(self, subjects: int = 5, windows_per_recording: int = 50, noise: float = 0.3, seed: int = 0,
                 window_length: float = 128, window_step: float = 64, **kwargs):
        kwargs.setdefault("signal_layout", "time_first")
        super().__init__(window_length=window_length, window_step=window_step, **kwargs)
        self.subjects_count, self.windows_per_recording, self.noise, self.seed = \
            subjects, windows_per_recording, noise, seed

    def list_recordings(self) -> list[Recording]:
        return synthetic_imu_recordings(self.subjects_count, self.windows_per_recording, self.window_length,
                                        self.sample_rate, self.noise, self.seed)
