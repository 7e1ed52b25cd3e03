"""PA-HAR's datasets: UCI-HAR read from a tiny fixture tree in its released text layout, its errors, and the
synthetic IMU stand-in."""
from pathlib import Path

import numpy as np
import pytest

from datamodules.base import DatasetError
from datamodules.standins.synthetic_imu import SyntheticIMUDataModule
from datamodules.uci_har import ACTIVITIES, SIGNALS, UCIHARDataModule
from lightning_modules.batch import GROUP, LABEL, SIGNAL


def write_uci_har(root: Path, sizes=(("train", 12, (1, 3, 5)), ("test", 6, (2, 4))), seed=0) -> dict:
    """``root/UCI HAR Dataset`` with random windows; returns the arrays written, per part."""
    rng = np.random.default_rng(seed)
    base = root / "UCI HAR Dataset"
    base.mkdir(parents=True)
    (base / "activity_labels.txt").write_text("".join(f"{i + 1} {name}\n" for i, name in enumerate(ACTIVITIES)))
    written = {}
    for part, count, subjects in sizes:
        folder = base / part / "Inertial Signals"
        folder.mkdir(parents=True)
        labels = (np.arange(count) % 6) + 1
        subject = np.array([subjects[i % len(subjects)] for i in range(count)])
        np.savetxt(base / part / f"y_{part}.txt", labels, fmt="%d")
        np.savetxt(base / part / f"subject_{part}.txt", subject, fmt="%d")
        signals = {}
        for name in SIGNALS:
            values = rng.normal(size=(count, 128)).astype(np.float32)
            np.savetxt(folder / f"{name}_{part}.txt", values, fmt="%15.7e")  # the release: "  2.5717778e-001 ..."
            signals[name] = values
        written[part] = (labels, subject, signals)
    return written


def test_uci_har_reads_the_released_layout(tmp_path):
    written = write_uci_har(tmp_path)
    dm = UCIHARDataModule(str(tmp_path), val_fraction=0.0, normalization="none", batch_size=4)
    dm.setup("fit")
    assert len(dm.recordings) == 18 and dm.length == 128 and dm.num_classes == 6 and dm.num_channels == 9
    test_labels, test_subjects, test_signals = written["test"]
    # the predefined split is the released one: test windows are the test files' rows, in order
    assert len(dm.test_set) == 6 and set(dm.window_subject[dm.split_indices["test"]]) == {"subject02", "subject04"}
    item = dm.test_set[1]
    assert item[SIGNAL].shape == (128, 9)  # time x sensor channels, the signal image
    np.testing.assert_allclose(item[SIGNAL][:, 3].numpy(), test_signals["body_gyro_x"][1], rtol=1e-6)
    assert item[LABEL].item() == test_labels[1] - 1
    assert dm.group_names[item[GROUP].item()] == f"subject{test_subjects[1]:02d}"
    assert dm.class_counts == [2] * 6
    # the data folder itself works too, and channel subsets
    sub = UCIHARDataModule(str(tmp_path / "UCI HAR Dataset"), signals=["total_acc_x", "total_acc_y", "total_acc_z"])
    sub.setup("fit")
    assert sub.train_set[0][SIGNAL].shape == (128, 3)
    # a random window split over both parts (as some papers do)
    rnd = UCIHARDataModule(str(tmp_path), split="random", test_size=0.3, val_fraction=0.0)
    rnd.setup("fit")
    assert len(rnd.split_indices["test"]) + len(rnd.split_indices["train"]) == 18


def test_uci_har_errors_name_the_file_layout_and_standin(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        UCIHARDataModule(str(tmp_path / "nowhere")).setup("fit")
    write_uci_har(tmp_path)
    gyro = tmp_path / "UCI HAR Dataset" / "test" / "Inertial Signals" / "body_gyro_z_test.txt"
    gyro.unlink()
    with pytest.raises(DatasetError) as error:
        UCIHARDataModule(str(tmp_path)).setup("fit")
    message = str(error.value)
    assert "body_gyro_z_test.txt" in message and "Inertial Signals" in message and "pa_har_demo.yaml" in message
    gyro.write_text("1.0 2.0\n")  # a truncated window
    with pytest.raises(DatasetError, match="128 columns"):
        UCIHARDataModule(str(tmp_path)).setup("fit")
    gyro.write_text("\n".join(" ".join(["x"] * 128) for _ in range(6)))
    with pytest.raises(DatasetError, match="body_gyro_z_test"):
        UCIHARDataModule(str(tmp_path)).setup("fit")


def test_synthetic_imu_standin():
    dm = SyntheticIMUDataModule(test_size=0.2, val_fraction=0.0)
    dm.setup("fit")
    assert len(dm.split_indices["train"]) == 1200 and len(dm.split_indices["test"]) == 300  # the card's sizes
    assert dm.train_set[0][SIGNAL].shape == (128, 9)
    again = SyntheticIMUDataModule(test_size=0.2, val_fraction=0.0)
    again.setup("fit")
    np.testing.assert_array_equal(dm.data.numpy(), again.data.numpy())
    # classes 4 and 5 differ only in the inter-sensor phase lag: same per-channel power spectrum shape
    rec4 = next(r for r in dm.recordings if r.label == 4 and r.subject == "subject0")
    rec5 = next(r for r in dm.recordings if r.label == 5 and r.subject == "subject0")
    assert abs(rec4.signal.std(0).mean() - rec5.signal.std(0).mean()) < 0.15
    subject = SyntheticIMUDataModule(split="loso", fold=2)
    subject.setup("fit")
    assert set(subject.window_subject[subject.split_indices["test"]]) == {"subject2"}


def test_unimib_shar_reads_the_released_mat_files(tmp_path):
    from scipy.io import savemat

    from datamodules.unimib_shar import UniMiBSHARDataModule

    rng = np.random.default_rng(0)
    n = 34
    data = rng.normal(size=(n, 453))
    labels = np.stack([np.arange(n) % 17 + 1, np.arange(n) % 5 + 1, np.ones(n)], axis=1)
    (tmp_path / "UniMiB-SHAR" / "data").mkdir(parents=True)
    savemat(tmp_path / "UniMiB-SHAR" / "data" / "acc_data.mat", {"acc_data": data})
    savemat(tmp_path / "UniMiB-SHAR" / "data" / "acc_labels.mat", {"acc_labels": labels})
    dm = UniMiBSHARDataModule(str(tmp_path), normalization="none", val_fraction=0.0, test_size=0.5)
    dm.setup("fit")
    assert dm.num_classes == 17 and dm.length == 151 and len(dm.window_starts) == n
    index = int(dm.split_indices["test"][0])
    item = dm.test_set[0]
    # columns 0-150 are x, 151-301 y, 302-452 z
    np.testing.assert_allclose(item[SIGNAL].numpy(), data[index].reshape(3, 151).T, rtol=1e-6)
    assert item[LABEL].item() == labels[index, 0] - 1
    savemat(tmp_path / "UniMiB-SHAR" / "data" / "acc_labels.mat", {"wrong": labels})
    with pytest.raises(DatasetError, match="acc_labels"):
        UniMiBSHARDataModule(str(tmp_path)).setup("fit")


def test_mhealth_reads_the_released_logs_and_windows_them(tmp_path):
    from datamodules.mhealth import MHEALTHDataModule

    folder = tmp_path / "MHEALTHDATASET"
    folder.mkdir()
    rng = np.random.default_rng(0)
    logs = {}
    for subject in (1, 2, 10):
        labels = np.repeat([0, 1, 4, 0, 11], 60)  # 300 samples, activity segments of 60
        signals = rng.normal(size=(300, 23))
        np.savetxt(folder / f"mHealth_subject{subject}.log", np.column_stack([signals, labels]), fmt="%.6f",
                   delimiter="\t")
        logs[subject] = (signals, labels)
    dm = MHEALTHDataModule(str(tmp_path), normalization="none", val_fraction=0.0, split="loso", fold=0)
    dm.setup("fit")
    assert dm.num_classes == 13 and dm.num_channels == 23 and dm.length == 100
    assert len(dm.window_starts) == 3 * 5  # (300 - 100) / 50 + 1 windows per subject
    assert set(dm.window_subject[dm.split_indices["test"]]) == {"subject1"}
    # window at offset 50 covers samples 50-149: labels 0 (10), 1 (60), 4 (30) -> majority 1
    index = int(np.flatnonzero((dm.window_subject == "subject1") & (dm.window_offsets == 50))[0])
    assert dm.window_labels[index] == 1
    np.testing.assert_allclose(dm.data[dm.window_starts[index]:dm.window_starts[index] + 100].numpy(),
                               logs[1][0][50:150], atol=1e-5)
    no_null = MHEALTHDataModule(str(folder), keep_null=False, drop_mixed_windows=True, channels=["ecg_1", "ecg_2"],
                                window_length=30, window_step=30, split="subject", test_subjects=["subject10"])
    no_null.setup("fit")
    assert no_null.num_classes == 12 and no_null.num_channels == 2
    assert sorted(set(no_null.window_labels.tolist())) == [0, 3, 10] and len(no_null.window_starts) == 3 * 6
    (folder / "mHealth_subject2.log").write_text("1.0\t2.0\n")
    with pytest.raises(DatasetError, match="mHealth_subject2.log"):
        MHEALTHDataModule(str(tmp_path)).setup("fit")


def test_pamap2_reads_the_protocol_logs_interpolates_and_picks_imus(tmp_path):
    from datamodules.pamap2 import PAMAP2DataModule

    protocol = tmp_path / "PAMAP2_Dataset" / "Protocol"
    protocol.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for subject in (101, 102, 103):
        rows = 171 * 4
        table = rng.normal(size=(rows, 54))
        table[:, 0] = np.arange(rows) / 100
        table[:, 1] = np.repeat([0, 1, 24, 9], 171)  # transient, lying, rope jumping, an optional activity (dropped)
        table[::11, 2] = np.nan  # heart rate mostly missing
        table[5, 4] = np.nan  # a dropped hand packet, interpolated
        np.savetxt(protocol / f"subject{subject}.dat", table, fmt="%.6f")
    table[5, 4] = (table[4, 4] + table[6, 4]) / 2
    dm = PAMAP2DataModule(str(tmp_path), normalization="none", val_fraction=0.0, split="loso", fold=2)
    dm.setup("fit")
    assert dm.num_classes == 12 and dm.num_channels == 27 and dm.length == 171
    assert sorted(set(dm.window_labels.tolist())) == [0, 11] and len(dm.window_starts) == 3 * 2
    last = dm.recordings[-1]
    np.testing.assert_allclose(last.signal[:, 0], table[:, 4], atol=1e-5)  # hand acc16g x, NaN interpolated
    hand = PAMAP2DataModule(str(tmp_path / "PAMAP2_Dataset"), imus=["ankle"], acc6g=True)
    hand.setup("fit")
    assert hand.num_channels == 12
    np.testing.assert_allclose(hand.recordings[-1].signal[:, 3], table[:, 41], atol=1e-5)  # ankle acc6g x
    (protocol / "subject102.dat").write_text("1 2 3\n")
    with pytest.raises(DatasetError, match="subject102.dat"):
        PAMAP2DataModule(str(tmp_path)).setup("fit")


def test_uci_har_paper_config_trains_a_step_on_the_fixture(tmp_path):
    """experiments/pa_har/uci_har.yaml as written (full-width network), one step on the fixture tree, then test."""
    import json

    import run

    write_uci_har(tmp_path / "data")
    run.main(["--config", str(Path(run.__file__).parent / "experiments" / "pa_har" / "uci_har.yaml"),
              "--data.data_dir", str(tmp_path / "data"), "--data.num_workers", "0", "--data.val_fraction", "0.2",
              "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.accelerator", "cpu",
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--runs_dir", str(tmp_path / "runs"), "--run_id", "a"])
    results = json.loads((tmp_path / "runs" / "pa_har_uci_har" / "a" / "results.json").read_text())
    assert results["paper"]["test/acc"] == 0.976 and 0 <= results["test/acc"] <= 1 and "test/macro_f1" in results


def test_usc_had_reads_the_released_mat_files(tmp_path):
    from scipy.io import savemat

    from datamodules.usc_had import USCHADDataModule

    rng = np.random.default_rng(0)
    written = {}
    for subject in (1, 2):
        folder = tmp_path / "USC-HAD" / f"Subject{subject}"
        folder.mkdir(parents=True)
        for activity in (1, 12):
            for trial in (1, 2):
                values = rng.normal(size=(1024, 6))
                savemat(folder / f"a{activity}t{trial}.mat", {"sensor_readings": values, "activity_number": str(activity)})
                written[(subject, activity, trial)] = values
    dm = USCHADDataModule(str(tmp_path), normalization="none", val_fraction=0.0, split="trial", test_trials=["2"])
    dm.setup("fit")
    assert dm.num_classes == 12 and dm.num_channels == 6 and dm.length == 512
    assert len(dm.window_starts) == 8 * 3  # (1024 - 512) / 256 + 1 windows per trial
    assert sorted(set(dm.window_labels.tolist())) == [0, 11]
    index = int(np.flatnonzero((dm.window_subject == "Subject2") & (dm.window_trial == "1")
                               & (dm.window_labels == 11) & (dm.window_offsets == 256))[0])
    np.testing.assert_allclose(dm.data[dm.window_starts[index]:dm.window_starts[index] + 512].numpy(),
                               written[(2, 12, 1)][256:768], rtol=1e-6)
    savemat(tmp_path / "USC-HAD" / "Subject2" / "a1t1.mat", {"other": np.zeros((4, 6))})
    with pytest.raises(DatasetError, match="sensor_readings"):
        USCHADDataModule(str(tmp_path)).setup("fit")


def write_opportunity(root: Path, seed: int = 0) -> dict:
    """OpportunityUCIDataset/dataset/S<k>-{ADL<r>,Drill}.dat: 250 space-separated columns, NaN for lost samples."""
    from datamodules.opportunity import GESTURE_CODES

    folder = root / "OpportunityUCIDataset" / "dataset"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    written = {}
    for name in ("S1-ADL1", "S1-Drill", "S2-ADL4", "S3-ADL1"):
        rows = 64 * 5
        table = rng.normal(size=(rows, 250)).round(4)
        table[:, 0] = np.arange(rows) * 33
        table[:, 243:] = 0
        # ML_Both_Arms (column 250): Null, open door 1, Null, toggle switch, drink from cup
        table[:, 249] = np.repeat([0, GESTURE_CODES[0], 0, GESTURE_CODES[16], GESTURE_CODES[15]], 64)
        table[:, 243] = np.repeat([1, 2, 4, 5, 1], 64)  # Locomotion
        table[10, 1] = np.nan  # a lost sample of a selected channel (column 2), interpolated
        table[:, 46] = np.nan  # the back IMU's quaternion (column 47), not selected
        table[:, 200] = np.nan  # an ambient sensor, not selected
        if name == "S3-ADL1":
            table[:, 5] = np.nan  # a selected channel (column 6) lost for the whole run: 0, with a warning
        written[name] = table.copy()
        text = "\n".join(" ".join("NaN" if np.isnan(v) else f"{v:g}" for v in row) for row in table)
        (folder / f"{name}.dat").write_text(text + "\n")
    (folder / "label_legend.txt").write_text("0   -   ML_Both_Arms   -   Null\n")
    return written


def test_opportunity_reads_the_released_runs_113_channels_17_gestures(tmp_path):
    from datamodules.opportunity import CHALLENGE_113, OpportunityDataModule

    written = write_opportunity(tmp_path)
    assert len(CHALLENGE_113) == 113
    dm = OpportunityDataModule(str(tmp_path), normalization="none", val_fraction=0.0, split="trial",
                               test_trials=["S2-ADL4"])
    with pytest.warns(UserWarning, match=r"S3-ADL1.dat: sensor columns \[6\] have no valid sample"):
        dm.setup("fit")
    assert (dm.recordings[3].signal[:, 4] == 0).all()
    assert dm.num_classes == 17 and dm.num_channels == 113 and dm.length == 64 and dm.sample_rate == 30
    assert [r.name for r in dm.recordings] == ["S1-ADL1", "S1-Drill", "S2-ADL4", "S3-ADL1"]
    assert dm.recordings[2].subject == "S2"
    # windows of 64 every 32 over 320 samples: 9 per run; those with a Null majority are dropped. Starts 0 and
    # 128 are all Null, 32/96/160 half Null (a tie goes to the smaller label, Null = -1); kept: 64 (door, 0),
    # 192 (toggle switch, 16), 224 (half toggle, half drink: the tie goes to drink, 15), 256 (drink, 15).
    run = dm.window_recording == 0
    assert dm.window_offsets[run].tolist() == [64, 192, 224, 256]
    assert dm.window_labels[run].tolist() == [0, 16, 15, 15]
    assert set(dm.window_trial[dm.split_indices["test"]]) == {"S2-ADL4"}
    signal = dm.recordings[0].signal
    table = written["S1-ADL1"]
    expected = table[:, np.asarray(CHALLENGE_113) - 1].copy()
    expected[10, 0] = (table[9, 1] + table[11, 1]) / 2
    np.testing.assert_allclose(signal, expected, atol=1e-4)
    loco = OpportunityDataModule(str(tmp_path / "OpportunityUCIDataset"), task="locomotion", include_drill=False,
                                 sensor_columns=[38, 39, 40], window_length=64, window_step=64)
    loco.setup("fit")
    assert loco.num_classes == 4 and loco.num_channels == 3 and len(loco.recordings) == 3
    assert loco.window_labels[loco.window_recording == 0].tolist() == [0, 1, 2, 3, 0]


def test_opportunity_errors_name_the_file_layout_and_standin(tmp_path):
    from datamodules.opportunity import OpportunityDataModule

    with pytest.raises(DatasetError, match="S<subject>-ADL") as error:
        OpportunityDataModule(str(tmp_path)).setup("fit")
    assert "OpportunityUCIDataset" in str(error.value) and "pa_har_demo.yaml" in str(error.value)
    folder = tmp_path / "OpportunityUCIDataset" / "dataset"
    folder.mkdir(parents=True)
    (folder / "S1-ADL1.dat").write_text("0 1 2\n33 1 2\n")
    with pytest.raises(DatasetError, match="S1-ADL1.dat"):
        OpportunityDataModule(str(tmp_path)).setup("fit")
    table = np.zeros((70, 250))
    table[:, 249] = 123456  # not an ML_Both_Arms code
    np.savetxt(folder / "S1-ADL1.dat", table, fmt="%g")
    with pytest.raises(DatasetError, match="unknown gestures label codes"):
        OpportunityDataModule(str(tmp_path)).setup("fit")


def write_dsads(root: Path, activities=range(1, 10), subjects=(1, 2, 3), segments=2, seed=0) -> dict:
    """data/a<NN>/p<k>/s<NN>.txt: 125 rows x 45 comma-separated columns."""
    rng = np.random.default_rng(seed)
    written = {}
    for a in activities:
        for p in subjects:
            folder = root / "data" / f"a{a:02d}" / f"p{p}"
            folder.mkdir(parents=True)
            for s in range(1, segments + 1):
                values = rng.normal(size=(125, 45)).round(5)
                np.savetxt(folder / f"s{s:02d}.txt", values, fmt="%.5f", delimiter=",")
                written[(a, p, s)] = values
    return written


def test_dsads_reads_the_released_segments_one_window_each(tmp_path):
    from datamodules.dsads import CHANNELS, DSADSDataModule

    written = write_dsads(tmp_path)
    dm = DSADSDataModule(str(tmp_path), normalization="none", val_fraction=0.0, split="loso", fold=1)
    dm.setup("fit")
    assert dm.num_classes == 9 and dm.num_channels == 45 and dm.length == 125 and dm.sample_rate == 25
    assert len(dm.window_starts) == 9 * 3 * 2 and set(dm.window_subject[dm.split_indices["test"]]) == {"p2"}
    index = int(np.flatnonzero(np.array([r.name for r in dm.recordings]) == "a05_p3_s02")[0])
    assert dm.window_labels[index] == 4
    np.testing.assert_allclose(dm.data[dm.window_starts[index]:dm.window_starts[index] + 125].numpy(),
                               written[(5, 3, 2)], atol=1e-6)
    legs = DSADSDataModule(str(tmp_path / "data"), activities=["a09", "a01"], units=["RL", "LL"])
    legs.setup("fit")
    assert legs.classes == ("walking_in_parking_lot", "sitting") and legs.num_channels == 18
    np.testing.assert_allclose(legs.recordings[0].signal[:, 0], written[(9, 1, 1)][:, CHANNELS.index("RL_accx")],
                               atol=1e-6)


def test_dsads_errors_name_the_file_layout_and_standin(tmp_path):
    from datamodules.dsads import DSADSDataModule

    write_dsads(tmp_path, activities=(1, 2), subjects=(1,), segments=1)
    with pytest.raises(DatasetError, match="a03") as error:
        DSADSDataModule(str(tmp_path)).setup("fit")  # the default 9 activities need a01-a09
    assert "s01.txt ... s60.txt" in str(error.value) and "pa_har_demo.yaml" in str(error.value)
    path = tmp_path / "data" / "a02" / "p1" / "s01.txt"
    np.savetxt(path, np.zeros((100, 45)), delimiter=",")
    with pytest.raises(DatasetError, match="125 rows"):
        DSADSDataModule(str(tmp_path), activities=["a01", "a02"]).setup("fit")
    path.write_text("1,2,x\n")
    with pytest.raises(DatasetError, match=r"a02/p1/s01.txt"):
        DSADSDataModule(str(tmp_path), activities=["a01", "a02"]).setup("fit")


def test_opportunity_paper_config_trains_a_step_on_the_fixture(tmp_path):
    """experiments/pa_har/opportunity.yaml (113 channels, 17 classes as written; a narrow backbone): a step, then test.

    (DSADS's config is the same network on 45 channels and 9 classes; tests/test_configs.py builds it.)"""
    import json

    import run

    write_opportunity(tmp_path / "data")
    run.main(["--config", str(Path(run.__file__).parent / "experiments" / "pa_har" / "opportunity.yaml"),
              "--data.data_dir", str(tmp_path / "data"), "--data.num_workers", "0",
              "--data.split", "trial", "--data.test_trials", "[S2-ADL4]",  # the fixture has 3 of the 17 gestures
              "--model.init_args.network.init_args.channels", "[8, 8, 8]",
              "--data.batch_size", "8", "--trainer.max_epochs", "1", "--trainer.max_steps", "1",
              "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.accelerator", "cpu",
              "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
              "--runs_dir", str(tmp_path / "runs"), "--run_id", "a"])
    results = json.loads((tmp_path / "runs" / "pa_har_opportunity" / "a" / "results.json").read_text())
    assert results["paper"]["test/acc"] == 0.912 and 0 <= results["test/acc"] <= 1
    assert "test/recall/toggle_switch" in results
