"""Coglier data: GAMEEMO's released CSV / SAM layout and SEED / SEED-IV raw .mat layouts as fixture trees (windows,
labels, channel order, errors naming file / layout / stand-in), the per-window DE / PSD against closed forms, the 9 x 9
grids, the per-subject split (the same whichever subjects are loaded), and the stages (ODM groups from a study
folder, MSP filtering, the Riemannian Potato against pyriemann directly)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import torch
import yaml

from datamodules.base import DatasetError
from datamodules.eeg_emotion import subject_accuracies
from datamodules.eeg_features import (GAMEEMO_CHANNELS, GAMEEMO_GRID, SEED_CHANNELS, SEED_GRID, grid_positions,
                                      to_grid, window_band_de, window_band_psd)
from datamodules.gameemo import GAMEEMODataModule
from datamodules.seed_eeg import SEED_IV_LABELS, SEEDIVRawWindowsDataModule, SEEDRawWindowsDataModule
from datamodules.standins.synthetic_emotion_shift import SyntheticConceptShiftDataModule


def write_gameemo(root, n_subjects=2, n_samples=700, ratings=None, extra_column=True, seed=0):
    """A tiny GAMEEMO release: (S01)/Preprocessed EEG Data/.csv format/S01G1AllChannels.csv, (S01)/SAM Ratings/G1.txt."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    ratings = ratings or {}
    for s in range(1, n_subjects + 1):
        sub = f"{s:02d}"
        csv_dir = root / f"(S{sub})" / "Preprocessed EEG Data" / ".csv format"
        sam_dir = root / f"(S{sub})" / "SAM Ratings"
        csv_dir.mkdir(parents=True)
        sam_dir.mkdir(parents=True)
        for g, game in enumerate(("G1", "G2", "G3", "G4")):
            columns = list(reversed(GAMEEMO_CHANNELS))  # another column order than the montage's
            table = pd.DataFrame(rng.standard_normal((n_samples, 14)) + 100 * s + 10 * g, columns=columns)
            if extra_column:
                table.insert(0, "Unnamed: 0", np.arange(n_samples))
            table.to_csv(csv_dir / f"S{sub}{game}AllChannels.csv", index=False)
            v, a = ratings.get((sub, game), (g + 1, 9 - g))
            (sam_dir / f"{game}.txt").write_text(f"V{v}A{a}\n")


def test_gameemo_layout_windows_labels_and_channel_order(tmp_path):
    write_gameemo(tmp_path)
    dm = GAMEEMODataModule(str(tmp_path), label="arousal", feature="raw", input_layout="raw", val_fraction=0.1)
    dm.setup()
    # 700 samples, windows 256 every 128 -> 4 per game (the code's `idx + window < n` gives 4 too)
    assert len(dm.window_starts) == 2 * 4 * 4
    assert sorted(set(dm.window_labels.tolist())) == [5, 6, 7, 8]  # arousal 9 - g -> 9,8,7,6 -> minus 1
    first = dm.recordings[0]
    assert first.name == "S01G1" and first.signal.shape == (700, 14)
    valence = GAMEEMODataModule(str(tmp_path), label="valence", feature="de", input_layout="grid")
    valence.setup()
    assert sorted(set(valence.window_labels.tolist())) == [0, 1, 2, 3]
    assert valence.train_set[0]["signal"].shape == (4, 9, 9)
    assert len(valence.classes) == 9


def test_gameemo_errors_name_file_layout_and_standin(tmp_path):
    with pytest.raises(DatasetError, match="coglier_demo.yaml"):
        GAMEEMODataModule(str(tmp_path / "missing")).setup()
    write_gameemo(tmp_path, n_subjects=1)
    (tmp_path / "(S01)" / "SAM Ratings" / "G3.txt").write_text("no rating here")
    with pytest.raises(DatasetError, match=r"G3.txt") as error:
        GAMEEMODataModule(str(tmp_path)).setup()
    assert "SAM Ratings" in str(error.value) and "Expected layout" in str(error.value)
    (tmp_path / "(S01)" / "SAM Ratings" / "G3.txt").write_text("V3A4")
    csv = tmp_path / "(S01)" / "Preprocessed EEG Data" / ".csv format" / "S01G2AllChannels.csv"
    csv.write_text("AF3,AF4\n1,2\n")
    with pytest.raises(DatasetError, match="S01G2AllChannels.csv"):
        GAMEEMODataModule(str(tmp_path)).setup()
    csv.unlink()
    with pytest.raises(DatasetError, match="EEG CSV not found"):
        GAMEEMODataModule(str(tmp_path)).setup()


def write_seed_raw(root, n_subjects=2, samples=1000, iv=False, seed=0):
    rng = np.random.default_rng(seed)
    n_trials = 24 if iv else 15
    sessions = [(1, "20140411"), (2, "20140418"), (3, "20140425")]
    folder = root / ("eeg_raw_data" if iv else "Preprocessed_EEG")
    for s in range(1, n_subjects + 1):
        for session, date in sessions:
            target = folder / str(session) if iv else folder
            target.mkdir(parents=True, exist_ok=True)
            arrays = {f"ab{s}_eeg{t}": rng.standard_normal((62, samples + 10 * t)) for t in range(1, n_trials + 1)}
            scipy.io.savemat(target / f"{s}_{date}.mat", arrays)
    if not iv:
        scipy.io.savemat(folder / "label.mat", {"label": np.array([[1, 0, -1, -1, 0, 1, -1, 0, 1, 1, 0, -1, 0, 1, -1]])})


def test_seed_raw_layout_windows_labels(tmp_path):
    write_seed_raw(tmp_path, samples=500)
    dm = SEEDRawWindowsDataModule(str(tmp_path), feature="de", input_layout="channels")
    dm.setup()
    lengths = 500 + 10 * np.arange(1, 16)
    per_session = int(((lengths - 400) // 200 + 1).sum())
    assert len(dm.window_starts) == 2 * 3 * per_session
    assert dm.train_set[0]["signal"].shape == (62, 4)
    rec = dm.recordings[2]
    assert rec.label == 0 and rec.trial == "s1t3"  # label -1 -> 0
    iv_root = tmp_path / "iv"
    write_seed_raw(iv_root, n_subjects=1, samples=400, iv=True)
    iv = SEEDIVRawWindowsDataModule(str(iv_root), feature="psd", input_layout="grid")
    iv.setup()
    assert [r.label for r in iv.recordings[24:48]] == list(SEED_IV_LABELS[2])
    assert iv.test_set[0]["signal"].shape == (4, 9, 9)
    (iv_root / "eeg_raw_data" / "2" / "1_20140418.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="1_20140418.mat"):
        SEEDIVRawWindowsDataModule(str(iv_root)).setup()


def test_de_and_psd_against_closed_forms():
    rng = np.random.default_rng(0)
    fs, n = 128.0, 4096
    t = np.arange(n) / fs
    x = np.stack([np.sin(2 * np.pi * 10 * t), 3 * np.sin(2 * np.pi * 20 * t)])[None]  # alpha, beta tones
    de = window_band_de(x, fs, formula="textbook")
    # a sinusoid of amplitude A in its band: var A^2 / 2 (after the filter's transient: 4096 samples)
    assert de[0, 0, 1] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 0.5), abs=0.02)
    assert de[0, 1, 2] == pytest.approx(0.5 * np.log(2 * np.pi * np.e * 4.5), abs=0.02)
    code = window_band_de(x, fs, formula="code")
    assert code[0, 1, 2] == pytest.approx(0.5 * np.log2(2 * np.pi * np.e * 3 / np.sqrt(2)), abs=0.02)
    noise = rng.standard_normal((2, 3, 256))
    psd = window_band_psd(noise, fs, log=False)
    spectrum = np.abs(np.fft.rfft(noise * np.hanning(256), axis=-1)) ** 2  # numpy's Hann == scipy's symmetric
    freqs = np.fft.rfftfreq(256, 1 / fs)
    np.testing.assert_allclose(psd[..., 0], spectrum[..., (freqs >= 4) & (freqs <= 7)].mean(-1), rtol=1e-5)
    np.testing.assert_allclose(window_band_psd(noise, fs), np.log1p(psd), rtol=1e-5)


def test_grids_place_each_electrode():
    pos = grid_positions(GAMEEMO_CHANNELS, GAMEEMO_GRID)
    assert tuple(pos[GAMEEMO_CHANNELS.index("AF3")]) == (1, 3) and tuple(pos[GAMEEMO_CHANNELS.index("O2")]) == (8, 5)
    seed_pos = grid_positions(SEED_CHANNELS, SEED_GRID)
    assert len({tuple(p) for p in seed_pos}) == 62
    feats = np.arange(62 * 4, dtype=np.float32).reshape(1, 62, 4)
    grid = to_grid(feats, seed_pos)
    assert grid.shape == (1, 4, 9, 9) and grid[0, 2, 4, 4] == feats[0, SEED_CHANNELS.index("CZ"), 2]
    assert (grid != 0).sum() == 62 * 4 - 1  # the one zero is channel 0, band 0
    with pytest.raises(KeyError, match="XX"):
        grid_positions(["XX"], GAMEEMO_GRID)


def test_per_subject_split_is_independent_of_the_loaded_subjects():
    kwargs = dict(n_subjects=4, windows_per_class=10, shifted_subjects=["4"], feature="de", input_layout="channels")
    pooled = SyntheticConceptShiftDataModule(**kwargs)
    pooled.setup()
    alone = SyntheticConceptShiftDataModule(stage="subject", subject="2", **kwargs)
    alone.setup()
    names = lambda ds: sorted(ds.names)  # noqa: E731
    assert names(alone.test_set) == sorted(n for n in pooled.test_set.names if n.startswith("S2c"))
    assert len(alone.test_set) == 3 and len(pooled.test_set) == 12  # 10 % of 30 windows, stratified, per subject
    for subject in ("1", "2", "3", "4"):  # stratified: one test window per class and subject
        test = pooled.split_indices["test"]
        labels = pooled.window_labels[test][pooled.window_subject[test] == subject]
        assert sorted(labels.tolist()) == [0, 1, 2]


def fake_study(root, accuracies):
    for subject, acc in accuracies.items():
        run = root / f"subject{subject}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"stage": "subject",
                                                                                 "subject": subject}}}))
        (run / "results.json").write_text(json.dumps({"metrics": {"test/acc": acc}}))
    (root / "odm").mkdir()
    (root / "odm" / "config.yaml").write_text(yaml.safe_dump({"data": {"init_args": {"stage": "odm"}}}))


def test_odm_stage_groups_from_a_study_folder(tmp_path):
    fake_study(tmp_path, {"1": 1.0, "2": 0.9, "3": 0.95, "4": 0.4})
    assert subject_accuracies(tmp_path) == {"1": 1.0, "2": 0.9, "3": 0.95, "4": 0.4}
    dm = SyntheticConceptShiftDataModule(n_subjects=4, windows_per_class=10, shifted_subjects=["4"], feature="de",
                                         input_layout="channels", stage="odm", groups_from=str(tmp_path))
    dm.setup()
    assert dm.groups["high"] == ["1", "3", "2"] and dm.groups["low"] == ["4"]
    low = dm.ood_test_sets["low"]
    assert len(low) == 27 and all(n.startswith("S4") for n in low.names)  # subject 4's D_train (90 % of 30)
    seen = set(dm.train_set.names) | set(dm.val_set.names) | set(dm.test_set.names)
    assert len(seen) == 81 and not any(n.startswith("S4") for n in seen)
    assert 3 <= len(dm.test_set) <= 6
    with pytest.raises(DatasetError, match="subjects"):
        SyntheticConceptShiftDataModule(n_subjects=5, windows_per_class=10, feature="de", input_layout="channels",
                                        stage="odm", groups_from=str(tmp_path)).setup()


def test_msp_threshold_filters_train_and_test(monkeypatch):
    dm = SyntheticConceptShiftDataModule(n_subjects=3, windows_per_class=10, feature="de", input_layout="channels",
                                         threshold=0.6, eval_thresholds=[0.3], odm_checkpoint="unused.ckpt")
    table = np.random.default_rng(0).random(90)  # a fixed MSP per window

    monkeypatch.setattr(dm, "odm_msp", lambda indices: table[indices])
    dm.setup()
    train_pool = np.concatenate([dm.split_indices["train"], dm.split_indices["val"]])
    assert (table[train_pool] >= 0.6).all() and (table[dm.split_indices["test"]] >= 0.6).all()
    full = SyntheticConceptShiftDataModule(n_subjects=3, windows_per_class=10, feature="de", input_layout="channels")
    full.setup()
    full_pool = np.concatenate([full.split_indices["train"], full.split_indices["val"]])
    assert dm.refinement["rr"] == pytest.approx((table[full_pool] < 0.6).mean())
    assert dm.refinement["test_rejection"] == pytest.approx((table[full.split_indices["test"]] < 0.6).mean())
    assert len(dm.test_sets["T030"]) == (table[full.split_indices["test"]] >= 0.3).sum()
    assert len(dm.test_sets["all"]) == 9
    assert dm.test_loader_names == ["test", "all", "T030"]


def test_riemannian_potato_matches_pyriemann():
    pytest.importorskip("pyriemann")
    from pyriemann.artifact_detection import Potato
    from pyriemann.estimation import Covariances

    dm = SyntheticConceptShiftDataModule(n_subjects=2, windows_per_class=10, feature="raw", input_layout="raw",
                                         potato_z=1.5)
    dm.setup()
    assert dm.refinement["rr"] > 0
    test = SyntheticConceptShiftDataModule(n_subjects=2, windows_per_class=10, feature="raw", input_layout="raw")
    test.setup()
    train_pool = np.sort(np.concatenate([test.split_indices["train"], test.split_indices["val"]]))
    covs = Covariances(estimator="sch").transform(test.raw_windows(train_pool).astype(np.float64))
    flagged = Potato(metric="riemann", threshold=1.5).fit(covs).predict(covs) == 0
    assert dm.refinement["rr"] == pytest.approx(flagged.mean())
    assert len(dm.window_starts) == 60
    assert torch.is_tensor(dm.train_set[0]["signal"]) and dm.train_set[0]["signal"].shape == (14, 256)
