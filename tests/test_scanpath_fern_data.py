"""Scanpath datasets: GazeCom, MIT1003 and DOVES fixture trees in their released layouts (labels, invalid samples,
padding, the paper's disjoint splits, errors naming file / layout / stand-in), the stand-in, and the time-series
base's ``split: group``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from datamodules.base import DatasetError
from datamodules.doves import DOVESDataModule
from datamodules.gazecom import GazeComDataModule, read_gazecom_file
from datamodules.mit1003 import MIT1003DataModule
from datamodules.standins.synthetic_scanpaths import SyntheticScanpathDataModule
from datamodules.timeseries import ArrayTimeSeriesDataModule, Recording

STANDIN = "experiments/scanpath_fern_demo.yaml"


def _trace(rng, n):
    return np.cumsum(rng.normal(0, 3, size=(n, 2)), axis=0) + 400


def write_gazecom(root: Path, subjects=("V01", "V02", "V03", "V04"), stimuli=("beach", "bridge", "street", "doves"),
                  seed=0) -> dict:
    rng = np.random.default_rng(seed)
    truth = {}
    for stimulus in stimuli:
        (root / stimulus).mkdir(parents=True, exist_ok=True)
        for subject in subjects:
            if subject == "V01" and stimulus != stimuli[0]:
                continue  # V01: a single recording, as in the release
            xy = _trace(rng, 60)
            conf = np.ones(60)
            conf[10:13] = 0.0  # track loss
            lines = ["# GazeCom gaze file", "gaze 1280 720", "geometry distance 0.45 0.4 0.225"]
            lines += [f"{int(4000 * t)} {x:.3f} {y:.3f} {c:.1f}" for t, ((x, y), c) in enumerate(zip(xy, conf))]
            (root / stimulus / f"{subject}_{stimulus}.coord").write_text("\n".join(lines) + "\n")
            truth[(subject, stimulus)] = xy
    return truth


def write_mit1003(root: Path, users=("CNG", "ajs", "emb"), stems=("i05june05_static_street_boston_p1010764",
                                                                  "i1000", "i2000", "i3000"), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    (root / "ALLSTIMULI").mkdir(parents=True)
    truth = {}
    for stem in stems:
        (root / "ALLSTIMULI" / f"{stem}.jpeg").write_bytes(b"\xff\xd8\xff")
    for user in users:
        (root / "DATA" / user).mkdir(parents=True)
        for stem in stems:
            xy = _trace(rng, 50)
            xy[5:8] = -1.0  # a blink
            savemat(root / "DATA" / user / f"{stem}.mat", {stem: {"DATA": {"eyeData": xy}}})
            truth[(user, stem)] = xy
    return truth


def write_doves(root: Path, subjects=("IVDL2", "UR2", "ABC1", "XYZ3"), images=("imk00031", "imk00150", "imk00999"),
                seed=0) -> dict:
    rng = np.random.default_rng(seed)
    (root / "Fixations").mkdir(parents=True)
    (root / "Images").mkdir()
    truth = {}
    for image in images:
        (root / "Images" / f"{image}.iml").write_bytes(b"\0" * 16)
        traces = np.empty(len(subjects), dtype=object)
        fixes = np.empty(len(subjects), dtype=object)
        for i, subject in enumerate(subjects):
            xy = _trace(rng, 40 + i)
            traces[i] = xy.T  # rows x, y
            fixes[i] = np.stack([xy[::10, 0], xy[::10, 1], np.full(len(xy[::10]), 200.0)])
            truth[(subject, image)] = xy
        names = np.array(list(subjects), dtype=object)
        savemat(root / "Fixations" / f"{image}.iml.mat", {"subj_names_list": names, "eye_data": traces,
                                                          "fix_data": fixes})
    return truth


def _recordings(dm):
    return {(r.subject, r.trial): r for r in dm.recordings}


def test_gazecom_reads_the_gaze_files_drops_v01_and_track_loss(tmp_path):
    truth = write_gazecom(tmp_path)
    xy = read_gazecom_file(tmp_path / "beach" / "V02_beach.coord")
    assert xy.shape == (60, 2) and np.isnan(xy[10:13]).all()
    assert np.allclose(xy[:10], truth[("V02", "beach")][:10], atol=1e-3)
    dm = GazeComDataModule(str(tmp_path), task="subject")
    dm.setup("fit")
    assert dm.classes == ("V02", "V03", "V04") and dm.num_classes == 3
    recordings = _recordings(dm)
    assert set(recordings) == {(s, st) for s in ("V02", "V03", "V04") for st in ("beach", "bridge", "street", "doves")}
    rec = recordings[("V03", "bridge")]
    assert rec.extra["samples"] == 57 and rec.label == 1 and rec.extra["stimulus"] == "bridge"
    assert np.allclose(rec.signal[:10], truth[("V03", "bridge")][:10], atol=1e-3)
    assert np.allclose(rec.signal[10:57], truth[("V03", "bridge")][13:], atol=1e-3)  # the gap closed
    # subject task: split by stimulus, 50/50, no stimulus on both sides; validation from the training stimuli
    stimulus_of = np.array([r.trial for r in dm.recordings])
    train, val, test = (set(stimulus_of[dm.split_indices[k]]) for k in ("train", "val", "test"))
    assert len(test) == 2 and not (train | val) & test
    batch = next(iter(dm.test_dataloader()))
    assert batch["signal"].shape[1:] == (60 - 3, 2) and batch["signal"].dtype == torch.float32


def test_gazecom_stimulus_task_splits_by_subject_and_errors(tmp_path):
    write_gazecom(tmp_path)
    dm = GazeComDataModule(str(tmp_path), task="stimulus", exclude_subjects=[])
    dm.setup("fit")
    assert dm.classes == ("beach", "bridge", "doves", "street") and "V01" in {r.subject for r in dm.recordings}
    subject_of = np.array([r.subject for r in dm.recordings])
    train, test = set(subject_of[dm.split_indices["train"]]), set(subject_of[dm.split_indices["test"]])
    assert len(test) == 2 and not train & test
    (tmp_path / "beach" / "V02_beach.coord").write_text("gaze 1280 720\n12 1.0 oops 1\n")
    with pytest.raises(DatasetError, match="V02_beach.coord") as error:
        GazeComDataModule(str(tmp_path)).setup("fit")
    assert "Expected layout" in str(error.value) and STANDIN in str(error.value)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        GazeComDataModule(str(tmp_path / "missing")).setup("fit")


def test_mit1003_reads_data_user_stem_mat_and_blinks(tmp_path):
    truth = write_mit1003(tmp_path)
    dm = MIT1003DataModule(str(tmp_path), task="stimulus", test_size=1 / 3)
    dm.setup("fit")
    assert dm.num_classes == 4 and dm.classes[0] == "i05june05_static_street_boston_p1010764"
    rec = _recordings(dm)[("ajs", "i2000")]
    expected = np.delete(truth[("ajs", "i2000")], [5, 6, 7], axis=0)
    assert rec.extra["samples"] == 47 and np.allclose(rec.signal[:47], expected, atol=1e-4)
    subject_of = np.array([r.subject for r in dm.recordings])
    assert len(set(subject_of[dm.split_indices["test"]])) == 1
    assert not set(subject_of[dm.split_indices["train"]]) & set(subject_of[dm.split_indices["test"]])
    savemat(tmp_path / "DATA" / "emb" / "i1000.mat", {"i1000": {"other": np.zeros(3)}})
    with pytest.raises(DatasetError, match="emb/i1000.mat") as error:
        MIT1003DataModule(str(tmp_path)).setup("fit")
    assert "DATA/<user>/<stem>.mat" in str(error.value)


def test_doves_reads_the_fixation_mat_files(tmp_path):
    truth = write_doves(tmp_path)
    dm = DOVESDataModule(str(tmp_path), task="subject", test_size=1 / 3)
    dm.setup("fit")
    assert dm.classes == ("ABC1", "IVDL2", "UR2", "XYZ3")
    recordings = _recordings(dm)
    assert len(recordings) == 12
    rec = recordings[("UR2", "imk00150")]
    assert rec.extra["samples"] == 41 and np.allclose(rec.signal[:41], truth[("UR2", "imk00150")], atol=1e-4)
    assert np.isnan(rec.signal[41:]).all() and rec.signal.shape == (43, 2)  # padded to the longest recording
    stimulus_of = np.array([r.trial for r in dm.recordings])
    assert set(stimulus_of[dm.split_indices["test"]]).isdisjoint(stimulus_of[dm.split_indices["train"]])
    (tmp_path / "Fixations" / "imk00031.iml.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="imk00031.iml.mat") as error:
        DOVESDataModule(str(tmp_path)).setup("fit")
    assert "Fixations/<image>.iml.mat" in str(error.value) and STANDIN in str(error.value)
    with pytest.raises(DatasetError, match="Fixations folder not found"):
        DOVESDataModule(str(tmp_path / "Images")).setup("fit")


def test_synthetic_scanpaths_standin():
    dm = SyntheticScanpathDataModule(subjects=3, stimuli=4, repeats=2, seconds=0.5, task="stimulus")
    dm.setup("fit")
    assert dm.num_classes == 4 and len(dm.recordings) == 24 and dm.recordings[0].signal.shape == (125, 2)
    assert sum(len(v) for v in dm.split_indices.values()) == 24
    batch = next(iter(dm.train_dataloader()))
    assert batch["signal"].shape[1:] == (125, 2) and torch.isfinite(batch["signal"]).all()
    again = SyntheticScanpathDataModule(subjects=3, stimuli=4, repeats=2, seconds=0.5, task="stimulus")
    again.setup("fit")
    assert all(np.array_equal(a.signal, b.signal) for a, b in zip(dm.recordings, again.recordings))
    assert all(np.array_equal(dm.split_indices[k], again.split_indices[k]) for k in dm.split_indices)


def test_timeseries_group_split_holds_out_whole_key_values():
    rng = np.random.default_rng(0)
    recordings = [Recording(rng.normal(size=(20, 2)), label=i % 2, subject=f"s{i % 3}", name=f"r{i}",
                            extra={"stimulus": f"img{i % 4}"}) for i in range(24)]
    dm = ArrayTimeSeriesDataModule(recordings, split="group", split_key="stimulus", test_size=0.5, val_fraction=0.25,
                                   val_by="window", normalization="none")
    dm.setup("fit")
    stimulus = dm.recording_key("stimulus")
    test = set(stimulus[dm.split_indices["test"]])
    assert len(test) == 2 and test.isdisjoint(stimulus[dm.split_indices["train"]])
    assert test.isdisjoint(stimulus[dm.split_indices["val"]]) and len(dm.split_indices["val"]) == 3
    fixed = ArrayTimeSeriesDataModule(recordings, split="group", split_key="stimulus", test_groups=["img3"],
                                      normalization="none")
    fixed.setup("fit")
    assert set(fixed.recording_key("stimulus")[fixed.split_indices["test"]]) == {"img3"}
    bad = ArrayTimeSeriesDataModule(recordings, split="group", split_key="viewer", normalization="none")
    with pytest.raises(DatasetError, match="split_key 'viewer'"):
        bad.setup("fit")


def test_gazecom_paper_config_trains_a_step_on_the_fixture(tmp_path):
    """experiments/scanpath_fern/gazecom.yaml as written (its recipe, task and splits), at a small fern / ResNet size
    (the full 4,096 x 32 ResNet-12 is for the real runs), one step on the fixture tree, then test."""
    import json

    import run

    write_gazecom(tmp_path / "data")
    run.main(["--config", str(Path(run.__file__).parent / "experiments" / "scanpath_fern" / "gazecom.yaml"),
              "--data.data_dir", str(tmp_path / "data"), "--data.num_workers", "0", "--model.num_classes", "3",
              "--model.network.init_args.n_sets", "16", "--model.network.init_args.widths", "[4, 4, 4, 4]",
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.accelerator", "cpu",
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--runs_dir", str(tmp_path / "runs"), "--run_id", "a"])
    results = json.loads((tmp_path / "runs" / "scanpath_fern_gazecom" / "a" / "results.json").read_text())
    assert results["paper"]["test/acc"] == 0.87 and 0 <= results["test/acc"] <= 1
