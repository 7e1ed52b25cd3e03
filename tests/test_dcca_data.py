"""AVEC 2013/2014 loaders on tiny fixture trees in the public layouts (partition folders + label CSVs, a
manifest CSV, fchest/CSENet's pre-cut clips), their errors, segmenting, resampling cache, cross-dataset
augmentation without test leakage, the balanced sampler and the synthetic stand-in."""
import csv
from collections import Counter

import numpy as np
import pytest
import torch

from datamodules.audio_io import write_audio
from datamodules.avec import AVECDataModule, Recording, ScoreBalancedSampler, SegmentDataset, segment_starts
from datamodules.base import DatasetError
from datamodules.standins.synthetic_speech_depression import (
    SyntheticDepressionSpeechDataModule,
    standin_recordings,
    synthesise_speech,
    write_partitions_tree,
    write_segmented_tree,
)

RATE = 8000


@pytest.fixture(scope="module")
def recordings():
    """Synthetic speakers: 4 train, 2 dev, 2 test, 4.5 s each (3 s segments, 1.5 s hop -> 2 segments)."""
    return standin_recordings(num_train=4, num_dev=2, num_test=2, recording_seconds=4.5, seed=3)


def _module(root, **kwargs):
    kwargs.setdefault("num_workers", 0)
    return AVECDataModule(str(root), **kwargs)


def test_segment_starts_drop_the_partial_window_and_pad_short_recordings():
    assert segment_starts(12 * RATE, 3 * RATE, RATE * 3 // 2).tolist() == [i * 12000 for i in range(7)]  # 7 per 12 s
    assert segment_starts(31 * RATE // 10, 24000, 12000).tolist() == [0]
    assert segment_starts(1000, 24000, 12000).tolist() == [0]  # shorter than a segment: one, zero-padded


def test_partitions_layout_reads_audio_labels_and_segments(tmp_path, recordings):
    root = write_partitions_tree(tmp_path / "avec2013", recordings)
    dm = _module(root, batch_size=4)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(s.recordings) for s in (dm.train_set, dm.val_set, dm.test_set)] == [4, 2, 2]
    assert len(dm.train_set) == 4 * 2  # 4.5 s -> segments at 0 and 1.5 s
    item = dm.test_set[1]
    recording, audio = [(r, a) for r, a in recordings if r.split == "test"][0]
    assert item["audio"].shape == (24000,) and item["group"] == 0
    assert float(item["target"]) == recording.score
    np.testing.assert_allclose(item["audio"].numpy(), audio[12000:36000], atol=1 / 32767 + 1e-6)  # PCM_16
    assert dm.train_target_mean == pytest.approx(np.mean([r.score for r, _ in recordings if r.split == "train"]))
    assert not (root / ".cache_8000hz").exists()  # 8 kHz mono files are read in windows, not cached
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"audio", "target", "group"} and batch["audio"].shape == (4, 24000)


def test_other_rates_are_resampled_once_into_the_cache(tmp_path, recordings):
    root = write_partitions_tree(tmp_path / "avec", recordings, file_rate=16000)
    dm = _module(root, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup("fit")
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len(recordings)
    original = [a for r, a in recordings if r.split == "dev"][0]
    got = dm.val_set[0]["audio"].numpy()
    assert np.corrcoef(got[1000:-1000], original[1000:23000])[0, 1] > 0.99


def test_manifest_layout_with_clips(tmp_path, recordings):
    rows = []
    for recording, audio in recordings:
        for n in range(2):  # two 2 s clips per recording
            path = f"clips/{recording.recording_id}_{n}.wav"
            write_audio(tmp_path / path, audio[n * 16000:(n + 1) * 16000], RATE)
            rows.append({"path": path, "recording_id": recording.recording_id, "subject_id": recording.subject_id,
                         "split": recording.split, "bdi": recording.score})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dm = _module(tmp_path, layout="manifest", segment_seconds=1.0, hop_seconds=0.5)
    dm.setup("fit")
    assert len(dm.test_set.recordings) == 2
    assert len(dm.test_set) == 2 * 2 * 3  # 2 recordings x 2 clips x 3 one-second segments


def test_segmented_layout_of_the_authors_group(tmp_path, recordings):
    root = write_segmented_tree(tmp_path / "csenet", recordings)
    dm = _module(root, layout="segmented")
    dm.setup("fit")
    assert len(dm.train_set.recordings) == 4 and len(dm.train_set) == 8  # one 3 s segment per clip
    scores = {r.recording_id: r.score for r, _ in recordings}
    assert all(r.score == scores[r.recording_id] for r in dm.train_set.recordings)


def test_cross_dataset_training_skips_sessions_of_the_test_set(tmp_path, recordings):
    target = write_partitions_tree(tmp_path / "avec2014", recordings)
    # The other corpus: the same sessions (as AVEC2013 and AVEC2014 share them) under other file names.
    other = [(Recording(r.session_id + "_cut_audio", r.subject_id, r.session_id, r.split, r.score), a)
             for r, a in recordings]
    extra = write_partitions_tree(tmp_path / "avec2013", other)
    dm = _module(target, extra_train_dir=str(extra))
    dm.setup("fit")
    test_sessions = {r.session_id for r in dm.test_set.recordings}
    added = [r for r in dm.train_set.recordings if r.recording_id.endswith("_cut_audio")]
    assert len(added) == 4 + 2  # the other corpus's train + dev; its test sessions are excluded anyway
    assert not test_sessions & {r.session_id for r in added}
    # A test session appearing in the other corpus's train split is dropped.
    moved = [(Recording(r.recording_id, r.subject_id, r.session_id, "train" if r.split == "test" else r.split,
                        r.score), a) for r, a in other]
    extra2 = write_partitions_tree(tmp_path / "moved", moved)
    dm2 = _module(target, extra_train_dir=str(extra2))
    dm2.setup("fit")
    assert not test_sessions & {r.session_id for r in dm2.train_set.recordings if r.recording_id.endswith("_cut_audio")}


def test_missing_folder_audio_and_labels_raise_clear_errors(tmp_path, recordings):
    with pytest.raises(DatasetError, match="Dataset folder not found") as error:
        _module(tmp_path / "nowhere").setup("fit")
    assert "Training" in str(error.value) and "experiments/dcca_demo.yaml" in str(error.value)
    root = write_partitions_tree(tmp_path / "avec", recordings)
    label = next((root / "Labels" / "Development").glob("*_Depression.csv"))
    label.unlink()
    with pytest.raises(DatasetError, match=f"No label {label.name.replace('.csv', '')}"):
        _module(root).setup("fit")
    label.write_text("not a number\n")
    with pytest.raises(DatasetError, match="does not hold a BDI-II score") as error:
        _module(root).setup("fit")
    assert label.name in str(error.value)


def test_corrupt_or_empty_audio_names_the_file(tmp_path, recordings):
    root = write_partitions_tree(tmp_path / "avec", recordings)
    wav = sorted((root / "Audio" / "Testing").glob("*.wav"))[0]
    wav.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DatasetError, match="Cannot decode") as error:
        _module(root).prepare_data()
    assert str(wav) in str(error.value)
    # mp4 videos but no audio: the message says how to extract it
    video_root = tmp_path / "avec2014"
    (video_root / "Video" / "Training" / "Northwind").mkdir(parents=True)
    (video_root / "Video" / "Training" / "Northwind" / "236_1_Northwind_video.mp4").write_bytes(b"")
    with pytest.raises(DatasetError, match="ffmpeg"):
        _module(video_root).setup("fit")


def test_balanced_sampler_gives_every_score_level_the_same_number_of_segments():
    # Scores 10 (two subjects), 30 (one), 50 (one); recordings of different lengths.
    recs = [Recording(f"r{i}", s, s, "train", score) for i, (s, score) in
            enumerate([("a", 10), ("b", 10), ("c", 30), ("d", 50)])]

    class Source:
        def __init__(self, n):
            self.num_samples = n

    lengths = [20, 5, 40, 9]
    dataset = SegmentDataset(recs, [[Source(n)] for n in lengths], segment_samples=1, hop_samples=1)
    sampler = ScoreBalancedSampler(dataset, segments_per_group=4, rounds_per_epoch=6, seed=0)
    assert len(sampler) == 6 * 3 * 4
    indices = list(sampler)
    assert len(indices) == len(sampler)
    scores = Counter(float(dataset.scores[dataset.recording_index[i]]) for i in indices)
    assert scores == {10.0: 24, 30.0: 24, 50.0: 24}
    subjects = Counter(recs[dataset.recording_index[i]].subject_id for i in indices if dataset.scores[
        dataset.recording_index[i]] == 10)
    assert subjects == {"a": 12, "b": 12}  # the subjects of a level take turns
    chunks = sampler.epoch_chunks(0)
    assert all(len({dataset.recording_index[i] for i in chunk}) == 1 for chunk in chunks)
    starts = dataset.starts[chunks[0]]
    assert np.all(np.diff(starts) % lengths[dataset.recording_index[chunks[0][0]]] == 1)  # consecutive, wrapping
    assert list(sampler) != indices  # the next epoch continues the rotation and reshuffles
    again = ScoreBalancedSampler(dataset, segments_per_group=4, rounds_per_epoch=6, seed=0)
    assert list(again) == indices  # deterministic


def test_synthetic_speech_prosody_follows_the_score():
    rng = np.random.default_rng(0)

    def pause_fraction(score):
        audio = synthesise_speech(score, 8 * RATE, RATE, rng)
        frames = audio[: len(audio) // 256 * 256].reshape(-1, 256)
        energy = (frames ** 2).mean(1)
        return np.mean(energy < 1e-3 * energy.max())

    low = np.mean([pause_fraction(3) for _ in range(6)])
    high = np.mean([pause_fraction(60) for _ in range(6)])
    assert high > low + 0.1


def test_standin_datamodule_has_the_real_batch_keys_and_is_deterministic():
    dm = SyntheticDepressionSpeechDataModule(num_train=6, num_dev=2, num_test=2, recording_seconds=3.0,
                                             rounds_per_epoch=2, batch_size=8)
    dm.setup("fit")
    assert len(dm.train_set) == 6 * 5  # 1 s segments, 0.5 s hop: 5 per 3 s
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"audio", "target", "group"} and batch["audio"].shape == (8, 8000)
    other = SyntheticDepressionSpeechDataModule(num_train=6, num_dev=2, num_test=2, recording_seconds=3.0)
    other.setup("fit")
    assert torch.equal(dm.test_set[3]["audio"], other.test_set[3]["audio"])


@pytest.mark.parametrize("year", ["2013", "2014"])
def test_paper_configs_read_the_avec_layout_with_the_other_corpus(tmp_path, recordings, year):
    """The data section of every Table 2-4 YAML builds on fixture trees of both corpora."""
    import yaml

    from tests.test_regression import ROOT

    other = {"2013": "2014", "2014": "2013"}[year]
    write_partitions_tree(tmp_path / year, recordings)
    write_partitions_tree(tmp_path / other, [(Recording(r.recording_id + "_other", r.subject_id, r.session_id,
                                                        r.split, r.score), a) for r, a in recordings])
    for path in sorted((ROOT / "experiments").glob(f"dcca_avec{year}*.yaml")):
        config = yaml.safe_load(path.read_text())
        init = dict(config["data"]["init_args"], data_dir=str(tmp_path / year),
                    extra_train_dir=str(tmp_path / other), num_workers=0)
        assert config["data"]["class_path"] == "datamodules.avec.AVECDataModule"
        dm = AVECDataModule(**init)
        dm.setup("fit")
        assert dm.segment_samples == 24000 and dm.hop_samples == 12000 and dm.sampler == "balanced"
        assert len(dm.train_set.recordings) == 4 + 4 + 2  # own train + the other corpus's train and dev
        assert config["model"]["init_args"]["network"]["init_args"]["segment_samples"] == dm.segment_samples
