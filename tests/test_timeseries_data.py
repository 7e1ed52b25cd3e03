"""The shared time-series base: windows and their labels, normalisation with training statistics, splits."""
import numpy as np
import pytest
import torch

from datamodules.base import DatasetError
from datamodules.timeseries import ArrayTimeSeriesDataModule, Recording
from lightning_modules.batch import GROUP, LABEL, NAME, SIGNAL


def recordings(subjects=4, trials=3, length=100, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(subjects):
        for t in range(trials):
            signal = rng.normal(s, 1 + s, size=(length, channels)).astype(np.float32)
            out.append(Recording(signal, label=(s + t) % 3, subject=f"s{s}", trial=str(t), name=f"s{s}_t{t}"))
    return out


def module(recs=None, **kwargs):
    kwargs.setdefault("window_length", 20)
    kwargs.setdefault("window_step", 10)
    dm = ArrayTimeSeriesDataModule(recs if recs is not None else recordings(), **kwargs)
    dm.setup("fit")
    return dm


def test_windows_and_batch_layout():
    dm = module(val_fraction=0.0)
    # 100 samples, window 20, step 10: 9 windows per recording, 12 recordings
    assert len(dm.window_starts) == 9 * 12
    item = dm.train_set[0]
    assert set(item) == {SIGNAL, LABEL, GROUP, NAME}
    assert item[SIGNAL].shape == (3, 20) and item[SIGNAL].dtype == torch.float32
    assert item[LABEL].dtype == torch.int64 and item[GROUP].dtype == torch.int64
    # the window is the recording's slice, normalised with the training statistics
    rec = dm.window_recording[dm.split_indices["train"][0]]
    offset = dm.window_offsets[dm.split_indices["train"][0]]
    raw = dm.recordings[rec].signal[offset:offset + 20]
    np.testing.assert_allclose(item[SIGNAL].numpy(), ((raw - dm.mean) / dm.std).T, rtol=1e-5, atol=1e-5)
    assert item[NAME] == f"{dm.recording_names[rec]}@{offset}"
    time_first = module(signal_layout="time_first")
    assert time_first.train_set[0][SIGNAL].shape == (20, 3)


def test_zscore_uses_training_samples_only():
    recs = recordings()
    dm = module(recs, split="subject", test_subjects=["s3"], val_fraction=0.0)
    train = np.concatenate([r.signal for r in recs if r.subject != "s3"])
    np.testing.assert_allclose(dm.mean, train.mean(0), rtol=1e-5)
    np.testing.assert_allclose(dm.std, train.std(0), rtol=1e-5)


def test_seconds_and_whole_recording_windows():
    dm = module(window_length=0.5, window_step=0.25, window_unit="seconds", sample_rate=40)
    assert dm.length == 20 and np.all(np.diff(dm.window_offsets[:3]) == 10)
    whole = module(window_length=None, window_step=None)
    assert len(whole.window_starts) == 12 and whole.train_set[0][SIGNAL].shape == (3, 100)


def test_window_labels_from_per_sample_labels():
    labels = np.array([0] * 12 + [1] * 9 + [-1] * 9)
    rec = [Recording(np.zeros((30, 2)), labels, subject="a")]
    def window_labels(**kw):
        dm = ArrayTimeSeriesDataModule(rec, window_length=10, window_step=5, val_fraction=0.0, **kw)
        dm.recordings = rec
        dm.recording_names = ["a"]
        dm._build_windows()
        return dm.window_offsets.tolist(), dm.window_labels.tolist()
    # windows at 0, 5, 10, 15, 20: samples [0,10) [5,15) [10,20) [15,25) [20,30)
    assert window_labels(label_mode="majority") == ([0, 5, 10, 15], [0, 0, 1, 1])  # [20,30) all -1: dropped
    assert window_labels(label_mode="last") == ([0, 5, 10], [0, 1, 1])  # [15,25) ends on -1: dropped
    assert window_labels(label_mode="centre") == ([0, 5, 10, 15], [0, 0, 1, 1])
    assert window_labels(drop_mixed_windows=True) == ([0], [0])


def test_splits_are_deterministic_and_disjoint():
    for kwargs in [dict(split="random"), dict(split="kfold", fold=2), dict(split="subject", test_size=0.25),
                   dict(split="subject_kfold", folds=4, fold=1), dict(split="loso", fold=1),
                   dict(split="trial", test_trials=["2"])]:
        a, b = module(**kwargs), module(**kwargs)
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(a.split_indices[split], b.split_indices[split])
        sets = [set(a.split_indices[s].tolist()) for s in ("train", "val", "test")]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2]), kwargs
        assert len(sets[0] | sets[1] | sets[2]) == len(a.window_starts)
    loso = module(split="loso", fold=1)
    assert set(loso.window_subject[loso.split_indices["test"]]) == {"s1"}
    # subject splits validate on other subjects, disjoint from the training subjects
    assert not set(loso.window_subject[loso.split_indices["val"]]) & set(loso.window_subject[loso.split_indices["train"]])
    trial = module(split="trial", test_trials=["2"])
    assert set(trial.window_trial[trial.split_indices["test"]]) == {"2"}
    assert "2" not in set(trial.window_trial[trial.split_indices["train"]])
    other_seed = module(split="random", split_seed=1)
    assert not np.array_equal(other_seed.split_indices["test"], module(split="random").split_indices["test"])


def test_predefined_split_groups_and_subject_filter():
    recs = [Recording(np.random.default_rng(i).normal(size=(40, 2)), i % 2, subject=f"s{i}",
                      partition="test" if i >= 3 else "train") for i in range(5)]
    dm = module(recs, split="predefined", window_length=20, window_step=20)
    assert set(dm.window_subject[dm.split_indices["test"]]) == {"s3", "s4"}
    assert dm.group_names == ["s0", "s1", "s2", "s3", "s4"]
    assert dm.test_set[0][GROUP].item() in (3, 4)
    assert sum(dm.class_counts) == len(dm.split_indices["train"])
    only = module(recordings(), subjects=["s0", "s1"])
    assert set(only.window_subject) == {"s0", "s1"}


def test_errors():
    with pytest.raises(DatasetError, match="no labelled window"):
        module([Recording(np.zeros((5, 2)), 0)], window_length=10)
    with pytest.raises(DatasetError, match="different lengths"):
        module([Recording(np.zeros((5, 2)), 0), Recording(np.zeros((6, 2)), 1)], window_length=None)
    with pytest.raises(ValueError, match="test_trials"):
        ArrayTimeSeriesDataModule(recordings(), split="trial")


def test_loader_batches():
    dm = module(batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch[SIGNAL].shape == (8, 3, 20) and batch[LABEL].shape == (8,) and len(batch[NAME]) == 8
