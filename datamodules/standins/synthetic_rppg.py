"""Offline stand-in for the rPPG datasets: synthetic face videos from the shared face renderer
(``synthetic_faces.render_faces``) whose skin carries a known pulse, with the nuisances HR-TRACK is built against.

Per video (one subject): a heart rate drifting smoothly within ``hr_range`` (50-150 bpm) drives a pulse waveform
(fundamental + a phase-shifted second harmonic, a dicrotic-notch-like shape) added to the skin's green channel
(``pulse_amplitude`` grey levels; red 0.5x, blue 0.3x, as the renderer does); illumination varies with a 0.25 Hz
respiration term and a slow drift; the head sways a little; sensor noise ``noise`` grey levels. "Expression events"
(``events_per_minute``: smiles, and talking spells whose mouth opens and closes at 0.9-2.5 Hz, inside the HR band)
move the lips and jaw, add a large green transient to the skin around the mouth (``transient_amplitude``), and drive
the matching AU channels (AU06, AU12 for smiles; AU25, AU26 for the mouth), so the AUs explain that noise, as in the
paper. Optional light-flicker bursts (``flicker_per_minute``, at 0.8-3.5 Hz) hit every skin block alike and no AU:
clips whose HR no per-clip method can get right, the case MR-TCN is meant to rectify. Landmarks come from the generator (iBUG 68 order), the reference PPG is the
pulse itself.

The records go through the same clip pipeline as UBFC-rPPG (ROI hull, blocks, filters, top-20 selection); at the
default 128 x 128 frames the face is ~64 px wide, so the blocks are 4 px (UBFC's 10 px on a ~250 px face).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from datamodules.rppg import (NUM_AUS, OPENFACE_AU_INTENSITIES, RPPGDataModule, VideoEntry, VideoRecord,
                              crop_record_grid, green_block_grid)
from datamodules.standins.synthetic_faces import FaceParams, random_identity, render_faces, smooth

AU_INDEX = {name: i for i, name in enumerate(OPENFACE_AU_INTENSITIES)}


def heart_rate_track(frames: int, fps: float, rng: np.random.Generator, hr_range: Sequence[float] = (50, 150),
                     drift_bpm: float = 8.0) -> np.ndarray:
    """(frames,) bpm: a base rate plus a smooth random drift, kept within ``hr_range``."""
    low, high = hr_range
    base = rng.uniform(low + 5, high - 5)
    drift = smooth(rng.normal(0, 1, frames), 2.0 * fps)
    drift = drift / (np.abs(drift).max() + 1e-9) * drift_bpm * rng.uniform(0.3, 1.0)
    return np.clip(base + drift, low, high)


def pulse_waveform(hr: np.ndarray, fps: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-amplitude blood-volume pulse following the bpm track ``hr``."""
    phase = 2 * np.pi * np.cumsum(hr / 60.0 / fps) + rng.uniform(0, 2 * np.pi)
    wave = np.sin(phase) + 0.35 * np.sin(2 * phase - 0.6)
    return wave / np.abs(wave).max()


def expression_events(frames: int, fps: float, rng: np.random.Generator, per_minute: float = 9.0,
                      rhythm_hz: Optional[Sequence[float]] = None) -> np.ndarray:
    """(frames,) 0..1 intensity of ~1-3 s events at random times (a smooth bump each); with ``rhythm_hz``
    (low, high) each event also oscillates at a random rate in that range (talking, chewing: in the HR band)."""
    t = np.arange(frames) / fps
    envelope = np.zeros(frames)
    for _ in range(rng.poisson(per_minute * frames / fps / 60.0)):
        centre, width = rng.uniform(0, t[-1]), rng.uniform(0.5, 1.0)
        bump = rng.uniform(0.5, 1.0) * np.exp(-0.5 * ((t - centre) / width) ** 2)
        if rhythm_hz is not None:
            bump *= 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(*rhythm_hz) * (t - centre))
        envelope = np.maximum(envelope, bump)
    return envelope


def synthetic_rppg_video(seed: int, seconds: float = 20.0, fps: float = 20.0, size: int = 128,
                         hr_range: Sequence[float] = (50, 150), pulse_amplitude: float = 0.6, noise: float = 1.5,
                         transient_amplitude: float = 6.0, events_per_minute: float = 40.0,
                         flicker_per_minute: float = 0.0, flicker_amplitude: float = 0.01) -> dict:
    """One synthetic video: ``frames`` (T, size, size, 3) uint8 RGB, ``landmarks`` (T, 68, 2) px, ``aus`` (T, 18),
    ``pulse`` (T,) the reference, ``hr`` (T,) bpm."""
    rng = np.random.default_rng(seed)
    frames = int(round(seconds * fps))
    t = np.arange(frames) / fps
    hr = heart_rate_track(frames, fps, rng, hr_range)
    pulse = pulse_waveform(hr, fps, rng)
    smile_events = expression_events(frames, fps, rng, events_per_minute / 2)
    mouth_events = expression_events(frames, fps, rng, events_per_minute / 2, rhythm_hz=(0.9, 2.5))
    light = rng.uniform(0.85, 1.1) * (1 + 0.004 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 2 * np.pi))
                                      + 0.02 * smooth(rng.normal(0, 1, frames), 3 * fps))
    # light flicker bursts at an in-band rate: on every skin block alike and in no AU, so the clip's HR goes wrong
    light = light * (1 + flicker_amplitude * expression_events(frames, fps, rng, flicker_per_minute,
                                                               rhythm_hz=(0.8, 3.5)))
    sway = smooth(rng.normal(0, 0.03, (frames, 3)), fps)
    params = FaceParams.neutral(
        frames, smile=0.8 * smile_events, mouth_open=0.5 * mouth_events, yaw=sway[:, 0], pitch=sway[:, 1],
        roll=0.5 * sway[:, 2], scale=np.full(frames, 0.5 * rng.uniform(0.95, 1.05)),
        center=0.5 + rng.uniform(-0.03, 0.03, 2) + smooth(rng.normal(0, 0.003, (frames, 2)), fps),
        light=light, light_angle=np.full(frames, rng.uniform(0, 2 * np.pi)), pulse=pulse_amplitude * pulse,
        identity=random_identity(rng), skin=tuple(int(v) for v in rng.uniform([170, 120, 90], [235, 185, 150])))
    images, marks = render_faces(params, size=size, noise=0.0, rng=rng)
    images = images.astype(np.float32)
    landmarks = marks[:, :68, :2] * size
    # expression transients on the skin around the mouth (green mostly), following the events
    mouth = landmarks[:, 48:68].mean(1)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    face_width = params.scale[0] * size
    distance2 = (xx[None] - mouth[:, 0, None, None]) ** 2 + (yy[None] - mouth[:, 1, None, None]) ** 2
    weight = np.exp(-0.5 * distance2 / (0.3 * face_width) ** 2)
    transient = transient_amplitude * (smile_events - 0.8 * mouth_events)[:, None, None] * weight
    images += transient[..., None] * np.array([0.5, 1.0, 0.3], np.float32)
    images += rng.normal(0, noise, images.shape).astype(np.float32)
    aus = np.zeros((frames, NUM_AUS), np.float32)
    aus[:, AU_INDEX["AU06_r"]] = 3.0 * smile_events
    aus[:, AU_INDEX["AU12_r"]] = 5.0 * smile_events
    aus[:, AU_INDEX["AU25_r"]] = 4.0 * mouth_events
    aus[:, AU_INDEX["AU26_r"]] = 5.0 * mouth_events
    aus += np.abs(rng.normal(0, 0.05, aus.shape)).astype(np.float32)  # OpenFace-like jitter
    return {"frames": np.clip(np.round(images), 0, 255).astype(np.uint8), "landmarks": landmarks.astype(np.float32),
            "aus": aus, "pulse": pulse.astype(np.float32), "hr": hr.astype(np.float32), "fps": fps}


class SyntheticRPPGDataModule(RPPGDataModule):
    """Synthetic videos (``synthetic_rppg_video``) through the UBFC pipeline: ``num_train`` / ``num_val`` /
    ``num_test`` subjects of ``seconds`` s at ``fps``, rendered in memory (no files).

    Args beyond ``RPPGDataModule``'s: the video count and generator settings; ``block_size`` 4 and ``erosion`` 3
    suit the 128 px frames.
    """

    def __init__(self, num_train: int = 8, num_val: int = 2, num_test: int = 4, seconds: float = 20.0,
                 fps: float = 20.0, size: int = 128, hr_range: Sequence[float] = (50, 150),
                 pulse_amplitude: float = 0.6, noise: float = 1.5, transient_amplitude: float = 6.0,
                 events_per_minute: float = 40.0, flicker_per_minute: float = 0.0, flicker_amplitude: float = 0.01,
                 clip_seconds: float = 4.0, step_seconds: float = 2.0,
                 num_traces: int = 20, block_size: int = 4, erosion: int = 3, band: Sequence[float] = (0.7, 4.0),
                 filter_order: int = 4, detrend_lambda: float = 100.0, roi_selection: str = "top",
                 use_aus: bool = True, augment_factors: Sequence[float] = (), seed: int = 0, batch_size: int = 4,
                 num_workers: int = 0, pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(data_dir="synthetic", clip_seconds=clip_seconds, step_seconds=step_seconds,
                         num_traces=num_traces, block_size=block_size, erosion=erosion, band=band,
                         filter_order=filter_order, detrend_lambda=detrend_lambda, roi_selection=roi_selection,
                         use_aus=use_aus, augment_factors=augment_factors, val_subjects=0, seed=seed,
                         batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         eval_batch_size=eval_batch_size)
        self.counts = {"train": num_train, "val": num_val, "test": num_test}
        self.generator = dict(seconds=seconds, fps=fps, size=size, hr_range=tuple(hr_range),
                              pulse_amplitude=pulse_amplitude, noise=noise, transient_amplitude=transient_amplitude,
                              events_per_minute=events_per_minute, flicker_per_minute=flicker_per_minute,
                              flicker_amplitude=flicker_amplitude)
        self._records: dict[str, VideoRecord] = {}

    def list_videos(self) -> list[VideoEntry]:
        entries, index = [], 0
        for split in ("train", "val", "test"):
            for _ in range(self.counts[split]):
                entries.append(VideoEntry(f"synthetic_{index:03d}", f"s{index:03d}", split))
                index += 1
        return entries

    def prepare_data(self) -> None:  # rendered in memory in setup
        pass

    def record(self, entry: VideoEntry) -> VideoRecord:
        if entry.name not in self._records:
            self._records[entry.name] = self.decode(entry)
        return self._records[entry.name]

    def decode(self, entry: VideoEntry) -> VideoRecord:
        index = int(entry.name.rsplit("_", 1)[1])
        video = synthetic_rppg_video(seed=self.seed * 10_000 + index, **self.generator)
        grids = green_block_grid(video["frames"].transpose(0, 3, 1, 2), self.block_size)  # (T, 3, Gh, Gw)
        grids, origin = crop_record_grid(grids, video["landmarks"], self.block_size)
        return VideoRecord(grid=np.ascontiguousarray(grids[:, 1]), origin=origin, block=self.block_size,
                           landmarks=video["landmarks"], aus=video["aus"], pulse=video["pulse"], fps=video["fps"],
                           red_blue=np.ascontiguousarray(grids[:, [0, 2]]))
