"""The rPPG clip pipeline (filters against scipy / the definitions, ROI blocks, top-20 selection, resampling
augmentation), the synthetic stand-in, and the UBFC-rPPG and COHFACE readers on tiny fixture trees in the public
layouts (lossless FFV1 videos, OpenFace CSVs, ground-truth files)."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.signal import butter, filtfilt

from datamodules.base import DatasetError
from datamodules.cohface import COHFACE_DEV, COHFACE_TEST, COHFACE_TRAIN, COHFACEDataModule
from datamodules.rppg import (OPENFACE_AU_INTENSITIES, ROI_LANDMARKS, ClipSettings, VideoRecord, bandpass,
                              collate_clip_sequences, detrend, green_block_grid, read_openface_csv, resample_record,
                              roi_block_mask, select_traces, video_clips)
from datamodules.standins.synthetic_rppg import SyntheticRPPGDataModule, synthetic_rppg_video
from datamodules.ubfc_rppg import UBFCRPPGDataModule


# -- pipeline pieces --------------------------------------------------------------------------------------------
def test_bandpass_matches_scipy_butter_filtfilt_and_keeps_the_hr_band():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 240))
    b, a = butter(4, [0.7, 4.0], btype="bandpass", fs=30.0)
    ours = bandpass(x, 30.0)
    reference = filtfilt(b, a, x, axis=-1)
    # sos vs (b, a) form and their edge handling differ slightly at the ends: compare the middle
    np.testing.assert_allclose(ours[:, 40:-40], reference[:, 40:-40], atol=0.05 * np.abs(reference).max())
    t = np.arange(240) / 30.0
    assert np.std(bandpass(np.sin(2 * np.pi * 0.2 * t), 30.0)[40:-40]) < 0.05  # respiration removed
    assert np.std(bandpass(np.sin(2 * np.pi * 1.5 * t), 30.0)[40:-40]) > 0.6  # 90 bpm kept


def test_smoothness_priors_detrending_matches_tarvainen():
    rng = np.random.default_rng(1)
    z = rng.normal(size=50) + np.linspace(0, 5, 50) ** 2
    lam = 10.0
    n = 50
    d2 = np.zeros((n - 2, n))
    for i in range(n - 2):
        d2[i, i:i + 3] = [1, -2, 1]
    expected = z - np.linalg.solve(np.eye(n) + lam ** 2 * d2.T @ d2, z)  # Eq. (4) of Tarvainen et al. 2002
    np.testing.assert_allclose(detrend(z[None], lam)[0], expected, atol=1e-8)
    assert abs(np.polyfit(np.arange(n), detrend(z[None], lam)[0], 1)[0]) < 0.05  # the trend is gone


def test_block_grid_roi_mask_and_top_traces():
    frames = np.arange(2 * 40 * 60, dtype=np.float32).reshape(2, 40, 60)
    grid = green_block_grid(frames, 10)
    assert grid.shape == (2, 4, 6) and grid[0, 0, 0] == frames[0, :10, :10].mean()
    landmarks = np.zeros((68, 2))
    landmarks[list(ROI_LANDMARKS)] = [[8, 8], [52, 8], [52, 32], [8, 32]] * 4  # a 44 x 24 px box
    mask = roi_block_mask(landmarks, (4, 6), (0, 0), 10, erosion=1)
    assert mask[1:3, 1:5].all() and mask.sum() == 8  # only the blocks fully inside the box
    assert roi_block_mask(landmarks, (4, 6), (0, 0), 10, erosion=7).sum() < mask.sum()
    rng = np.random.default_rng(2)
    scales = 1.5 ** np.arange(30)  # well-separated standard deviations
    order = rng.permutation(30)
    traces = rng.normal(size=(30, 100)) * scales[order, None]
    selected = select_traces(traces, 20)
    calm = traces[np.argsort(order)[:20]]  # the rows of the 20 smallest scales, smallest first
    np.testing.assert_allclose(selected, (calm - calm.mean(1, keepdims=True)) / calm.std(1, keepdims=True),
                               atol=1e-5)
    assert select_traces(traces[:3], 20).shape == (20, 100)  # fewer blocks: repeated
    assert not np.allclose(select_traces(traces, 20, "random"), selected)


def _record(bpm=75.0, seconds=20.0, fps=20.0):
    t = np.arange(int(seconds * fps)) / fps
    pulse = np.sin(2 * np.pi * bpm / 60 * t).astype(np.float32)
    grid = (100 + 0.5 * pulse[:, None, None] + np.random.default_rng(0).normal(0, 0.2, (len(t), 8, 8))).astype(
        np.float32)
    landmarks = np.zeros((len(t), 68, 2), np.float32)
    landmarks[:, list(ROI_LANDMARKS)] = np.array([[2, 2], [78, 2], [78, 78], [2, 78]] * 4)
    return VideoRecord(grid=grid, origin=(0, 0), block=10, landmarks=landmarks,
                       aus=np.zeros((len(t), 18), np.float32), pulse=pulse, fps=fps)


def test_clips_have_the_paper_shape_and_the_reference_hr():
    clips = video_clips(_record(75.0), ClipSettings(erosion=1))
    assert clips["signal"].shape == (9, 38, 80) and clips["pulse"].shape == (9, 80)  # 20 s: 4 s clips, 2 s step
    np.testing.assert_allclose(clips["target"], 75.0, atol=1.5)
    assert clips["valid"].all()
    no_aus = video_clips(_record(), ClipSettings(use_aus=False, clip_seconds=6.0, erosion=1))
    assert no_aus["signal"].shape == (8, 20, 120)


def test_resampling_augmentation_scales_the_hr_and_masks_out_of_range_clips():
    record = _record(75.0, seconds=40.0)
    faster = video_clips(resample_record(record, 2.0), ClipSettings(erosion=1))
    np.testing.assert_allclose(faster["target"], 150.0, atol=2.0)
    slower = video_clips(resample_record(record, 0.667), ClipSettings(erosion=1))
    np.testing.assert_allclose(slower["target"], 75.0 * 0.667, atol=3.5)  # 3.3 periods a clip: leakage
    triple = video_clips(resample_record(_record(90.0, seconds=40.0), 3.0), ClipSettings(erosion=1))
    assert not triple["valid"].any()  # 270 bpm leaves 42-240


def test_collate_pads_videos_to_the_longest():
    a = video_clips(_record(seconds=20.0), ClipSettings(erosion=1))
    b = video_clips(_record(seconds=12.0), ClipSettings(erosion=1))
    from datamodules.rppg import ClipSequences

    batch = collate_clip_sequences([ClipSequences([a, b], ["a", "b"])[i] for i in range(2)])
    assert batch["signal"].shape == (2, 9, 38, 80) and batch["num_clips"].tolist() == [9, 5]
    assert batch["valid"][1, 5:].sum() == 0 and batch["valid"][1, :5].all()


# -- the stand-in --------------------------------------------------------------------------------------------
def test_synthetic_video_has_a_pulse_in_the_skin_and_aus_that_follow_the_events():
    video = synthetic_rppg_video(seed=3, seconds=6.0, size=96)
    assert video["frames"].shape == (120, 96, 96, 3) and video["landmarks"].shape == (120, 68, 2)
    assert 50 <= video["hr"].min() and video["hr"].max() <= 150
    # cheek pixel green correlates with the pulse
    cheek = video["landmarks"][0, [3, 4, 31]].mean(0).astype(int)
    green = video["frames"][:, cheek[1] - 2:cheek[1] + 3, cheek[0] - 2:cheek[0] + 3, 1].reshape(120, -1).mean(1)
    assert np.corrcoef(bandpass(green.astype(float), 20.0), video["pulse"])[0, 1] > 0.3
    assert video["aus"].shape == (120, 18)


def test_standin_datamodule_batches_and_is_deterministic():
    kwargs = dict(num_train=1, num_val=0, num_test=1, seconds=8.0, size=96, block_size=3)
    dm = SyntheticRPPGDataModule(augment_factors=[0.667], **kwargs)
    dm.setup("fit")
    assert len(dm.train_set) == 2 and len(dm.val_set) == 1 and len(dm.test_set) == 1  # val = unaugmented train
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) >= {"signal", "pulse", "target", "valid", "num_clips", "sample_rate", "group", "name"}
    assert batch["signal"].shape[2:] == (38, 80) and batch["sample_rate"][0] == 20.0
    again = SyntheticRPPGDataModule(augment_factors=[0.667], **kwargs)
    again.setup("fit")
    assert torch.equal(again.test_set[0]["signal"], dm.test_set[0]["signal"])
    assert dm.train_target_mean == pytest.approx(float(dm.val_set[0]["target"].mean()), rel=1e-5)


# -- UBFC-rPPG and COHFACE fixtures ------------------------------------------------------------------------
def _write_video(path: Path, video: dict, fps: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = video["frames"]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, frames.shape[2:0:-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def _write_openface(path: Path, video: dict, skip_frame: int = 3) -> None:
    """An OpenFace FeatureExtraction CSV (headers with leading spaces, as OpenFace writes them)."""
    header = ["frame", "face_id", "timestamp", "confidence", "success"]
    header += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)] + list(OPENFACE_AU_INTENSITIES)
    header += ["AU28_c"]
    lines = [", ".join(header)]
    for t, (marks, aus) in enumerate(zip(video["landmarks"], video["aus"])):
        success = 0 if t == skip_frame else 1
        values = [t + 1, 0, t / 30, 0.98, success, *marks[:, 0], *marks[:, 1], *aus[:17], 1.0 if aus[17] > 0 else 0.0]
        lines.append(", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def videos():
    return [synthetic_rppg_video(seed=s, seconds=6.0, fps=30.0, size=96, events_per_minute=0.0) for s in range(3)]


def test_openface_csv_reader_fills_failed_frames(tmp_path, videos):
    path = tmp_path / "vid.csv"
    _write_openface(path, videos[0], skip_frame=3)
    landmarks, aus = read_openface_csv(path, 180)
    assert landmarks.shape == (180, 68, 2) and aus.shape == (180, 18)
    np.testing.assert_allclose(landmarks[5], videos[0]["landmarks"][5], atol=1e-3)
    assert np.allclose(landmarks[3], videos[0]["landmarks"][2], atol=1e-3) or np.allclose(
        landmarks[3], videos[0]["landmarks"][4], atol=1e-3)


def _ubfc_tree(root: Path, videos) -> Path:
    for i, video in zip((1, 3, 10), videos):
        folder = root / f"subject{i}"
        _write_video(folder / "vid.avi", video, 30.0)
        _write_openface(folder / "vid.csv", video)
        t = np.arange(len(video["pulse"])) / 30.0
        lines = [" ".join(f"{v:.6e}" for v in row) for row in (video["pulse"], video["hr"], t)]
        (folder / "ground_truth.txt").write_text("\n".join(lines) + "\n")
    return root


def test_ubfc_reads_the_layout_caches_and_splits_by_subject_number(tmp_path, videos):
    root = _ubfc_tree(tmp_path / "DATASET_2", videos)
    dm = UBFCRPPGDataModule(str(root), num_train_subjects=2, block_size=3, erosion=3, augment_factors=[],
                            cache_dir=str(tmp_path / "cache"), batch_size=2)
    dm.prepare_data()
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 3
    dm.setup("fit")
    assert dm.split_names["train"] == ["subject1", "subject3"] and dm.split_names["test"] == ["subject10"]
    item = dm.test_set[0]
    assert item["signal"].shape == (2, 38, 120) and item["sample_rate"] == 30.0  # 6 s: two 4 s clips
    # the reference HR per clip is the generator's HR (spectral peak of the PPG in the clip)
    hr = videos[2]["hr"]
    np.testing.assert_allclose(item["target"].numpy(), [hr[:120].mean(), hr[60:180].mean()], atol=4.0)
    # the decoded green traces carry the pulse: GREEN's HR is close to the reference on this clean video
    from lightning_modules.metrics.rppg import hr_from_pulse

    green, _ = hr_from_pulse(item["signal"][:, :20].mean(1), 30.0)
    assert (green - item["target"]).abs().max() < 10
    assert item["signal"][:, 20:].abs().sum() > 0  # AUs from the CSV
    # the ROI's mean colour for the RGB baselines: skin-coloured (R > G > B) and carrying the green traces' mean
    assert item["rgb"].shape == (2, 3, 120) and (item["rgb"][:, 0] > item["rgb"][:, 2]).all()


def test_ubfc_errors_name_the_missing_file_and_the_standin(tmp_path, videos):
    with pytest.raises(DatasetError, match="hr_track_demo.yaml"):
        UBFCRPPGDataModule(str(tmp_path / "nowhere")).prepare_data()
    root = _ubfc_tree(tmp_path / "u", videos[:1])
    (root / "subject1" / "ground_truth.txt").unlink()
    with pytest.raises(DatasetError, match="ground_truth.txt"):
        UBFCRPPGDataModule(str(root)).prepare_data()
    root = _ubfc_tree(tmp_path / "v", videos[:1])
    (root / "subject1" / "vid.csv").unlink()
    with pytest.raises(DatasetError, match="landmark_source template"):
        UBFCRPPGDataModule(str(root), cache_dir=str(tmp_path / "c1")).prepare_data()
    # the template fallback runs without the CSV (AUs zero)
    dm = UBFCRPPGDataModule(str(root), landmark_source="template", template_box=[0.5, 0.5, 0.5], block_size=3,
                            cache_dir=str(tmp_path / "c2"))
    record = dm.record(dm.list_videos()[0])
    assert record.aus.sum() == 0 and record.grid.shape[0] == 180


def test_cohface_reads_hdf5_and_follows_the_bob_protocol(tmp_path, videos):
    import h5py

    assert len(set(COHFACE_TRAIN) | set(COHFACE_DEV) | set(COHFACE_TEST)) == 40
    root = tmp_path / "cohface"
    for subject, video in zip((1, 2, 3), videos):  # train, dev, test subjects
        folder = root / str(subject) / "0"
        _write_video(folder / "data.avi", video, 20.0)
        _write_openface(folder / "data.csv", video)
        t256 = np.arange(0, len(video["pulse"]) / 20.0, 1 / 256)
        with h5py.File(folder / "data.hdf5", "w") as f:
            f["pulse"] = np.interp(t256, np.arange(len(video["pulse"])) / 20.0, video["pulse"])
            f["respiration"] = np.zeros_like(t256)
            f["time"] = t256
    dm = COHFACEDataModule(str(root), block_size=3, erosion=3, augment_factors=[], cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    assert dm.split_names["train"] == ["1_0", "2_0"] and dm.split_names["test"] == ["3_0"]
    assert dm.test_set[0]["signal"].shape == (len(dm.test_set[0]["target"]), 38, 80)  # 20 fps: f = 80
    val = COHFACEDataModule(str(root), dev_as_val=True, block_size=3, erosion=3, augment_factors=[],
                            cache_dir=str(tmp_path / "c"))
    val.setup("fit")
    assert val.split_names["val"] == ["2_0"]
    (root / "3" / "0" / "data.hdf5").unlink()
    with pytest.raises(DatasetError, match="data.hdf5"):
        COHFACEDataModule(str(root)).list_videos()
