"""ConTL data: DE features against the closed-form Gaussian DE, LDS smoothing, SEED / SEED-IV fixture trees in the
released .mat layouts (scipy.io.savemat), the trial and leave-one-subject-out splits, band z-scoring, the stand-in."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch

from datamodules.base import DatasetError
from datamodules.eeg_features import BANDS, band_variances, differential_entropy, gaussian_de, lds_smooth
from datamodules.seed_eeg import SEED_IV_LABELS, SEEDDataModule, SEEDIVDataModule
from datamodules.standins.synthetic_eeg import SyntheticSEEDIVDataModule


# -- differential entropy -----------------------------------------------------------------------------
def test_gaussian_de_closed_form():
    assert gaussian_de(1.0) == pytest.approx(0.5 * np.log(2 * np.pi * np.e))
    rng = np.random.default_rng(0)
    sigma = 3.0
    samples = sigma * rng.standard_normal(200_000)
    # the DE of the Gaussian with the samples' variance = 0.5 log(2 pi e sigma^2)
    assert gaussian_de(samples.var()) == pytest.approx(0.5 * np.log(2 * np.pi * np.e * sigma ** 2), abs=5e-3)


@pytest.mark.parametrize("method", ["stft", "bandpass"])
def test_band_de_of_white_gaussian_noise(method):
    """White noise of variance s^2 at fs has s^2 * (f_hi - f_lo) / (fs / 2) in a band: its DE is closed-form."""
    fs, sigma, seconds = 200.0, 2.0, 400
    rng = np.random.default_rng(1)
    x = sigma * rng.standard_normal((2, int(fs * seconds)))
    de = differential_entropy(x, fs, method=method)  # (2, 400, 5)
    assert de.shape == (2, seconds, 5)
    freqs = np.fft.rfftfreq(256, 1 / fs)
    for b, (lo, hi) in enumerate(BANDS.values()):
        if method == "stft":  # the band's bins times the bin width
            width = ((freqs >= lo) & (freqs <= hi)).sum() * fs / 256
        else:  # a Butterworth band-pass: its equivalent noise bandwidth is ~ the nominal band
            width = hi - lo
        expected = 0.5 * np.log(2 * np.pi * np.e * sigma ** 2 * width / (fs / 2))
        # DE of the mean band variance (per-window estimates scatter; their mean is unbiased)
        mean_var = band_variances(x, fs, method=method)[..., b].mean()
        tol = 0.03 if method == "stft" else 0.12
        assert gaussian_de(mean_var) == pytest.approx(expected, abs=tol), (method, lo, hi)


def test_de_of_a_sinusoid_lands_in_its_band():
    fs = 200.0
    t = np.arange(int(fs * 10)) / fs
    x = np.sin(2 * np.pi * 10 * t)[None]  # alpha, variance 0.5
    var = band_variances(x, fs)
    assert var[0, :, 2] == pytest.approx(0.5, rel=0.05)          # Parseval: all of it in alpha
    assert (var[0, :, [0, 1, 3, 4]] < 0.05 * 0.5).all()


def test_de_errors():
    with pytest.raises(ValueError, match="shorter than one"):
        differential_entropy(np.zeros((1, 10)), 200.0)
    with pytest.raises(ValueError, match="method"):
        differential_entropy(np.zeros((1, 400)), 200.0, method="wavelet")


def test_lds_smooth_denoises_and_matches_a_direct_kalman_rts():
    rng = np.random.default_rng(2)
    truth = np.cumsum(0.05 * rng.standard_normal(300))
    noisy = truth + 0.5 * rng.standard_normal(300)
    x = np.stack([noisy, noisy])[:, :, None]  # (channels 2, windows 300, bands 1)
    smooth = lds_smooth(x, process_var=0.05 ** 2, observation_var=0.25)
    assert smooth.shape == x.shape
    assert np.mean((smooth[0, :, 0] - truth) ** 2) < 0.3 * np.mean((noisy - truth) ** 2)
    # reference: the textbook scalar Kalman filter + RTS smoother
    q, r = 0.05 ** 2, 0.25
    m, p = noisy.mean(), noisy.var() + r
    ms, ps = [], []
    for t, z in enumerate(noisy):
        if t:
            p += q
        k = p / (p + r)
        m, p = m + k * (z - m), (1 - k) * p
        ms.append(m), ps.append(p)
    ref = list(ms)
    for t in range(len(noisy) - 2, -1, -1):
        ref[t] = ms[t] + ps[t] / (ps[t] + q) * (ref[t + 1] - ms[t])
    np.testing.assert_allclose(smooth[1, :, 0], ref, rtol=1e-4, atol=1e-5)


# -- SEED-IV fixture --------------------------------------------------------------------------------
def write_seed_iv(root, subjects=("1", "2"), n_windows=(6, 8), raw=False, fs=200, seed=0):
    """eeg_feature_smooth/{1,2,3}/<subject>_<date>.mat with de_LDS1..24 (62, n, 5) whose first value encodes
    (session, trial), or eeg_raw_data/... with cz_eeg1..24 (62, T)."""
    rng = np.random.default_rng(seed)
    folder = root / ("eeg_raw_data" if raw else "eeg_feature_smooth")
    for session in (1, 2, 3):
        (folder / str(session)).mkdir(parents=True)
        for s in subjects:
            arrays = {}
            for trial in range(1, 25):
                n = n_windows[trial % 2]
                if raw:
                    arrays[f"cz_eeg{trial}"] = rng.standard_normal((62, n * fs))
                else:
                    a = rng.standard_normal((62, n, 5)) + np.arange(5)  # band offsets 0..4
                    a[0, :, 0] = 1000 * int(s) + 100 * session + trial
                    arrays[f"de_LDS{trial}"] = a
                    arrays[f"de_movingAve{trial}"] = a
            scipy.io.savemat(folder / str(session) / f"{s}_2016051{session}.mat", arrays)


def _codes(dataset, dm):
    x = dataset.x.numpy()
    if dm.band_mean is not None:
        x = x * dm.band_std + dm.band_mean
    return np.rint(x[:, 0, 0]).astype(int)


def test_seed_iv_trial_split_subject_dependent(tmp_path):
    write_seed_iv(tmp_path)
    dm = SEEDIVDataModule(data_dir=str(tmp_path), subject=2, batch_size=16)
    dm.setup("fit")
    train_codes = np.concatenate([_codes(dm.train_set, dm), _codes(dm.val_set, dm)])
    test_codes = _codes(dm.test_set, dm)
    assert set(train_codes // 1000) == {2} and set(test_codes // 1000) == {2}
    assert set(train_codes % 100) == set(range(1, 17)) and set(test_codes % 100) == set(range(17, 25))
    assert set((test_codes // 100) % 10) == {1, 2, 3}  # sessions pooled
    n_train = 3 * (8 * 6 + 8 * 8)
    assert len(dm.train_set) + len(dm.val_set) == n_train and len(dm.val_set) == int(np.ceil(0.3 * n_train))
    assert len(dm.test_set) == 3 * (4 * 6 + 4 * 8)
    # labels: the ReadMe's session lists
    for ds in (dm.train_set, dm.test_set):
        codes = _codes(ds, dm)
        expected = [SEED_IV_LABELS[(c // 100) % 10][c % 100 - 1] for c in codes]
        np.testing.assert_array_equal(ds.y.numpy(), expected)
    batch = next(iter(dm.train_dataloader()))
    assert batch["signal"].shape == (16, 62, 5) and batch["label"].dtype == torch.int64
    assert batch["name"][0].startswith("2_s")


def test_seed_iv_band_zscore_from_train_only(tmp_path):
    write_seed_iv(tmp_path)
    dm = SEEDIVDataModule(data_dir=str(tmp_path), subject=1)
    dm.setup("fit")
    x = dm.train_set.x.numpy()
    assert dm.band_mean.shape == (1, 1, 5)
    np.testing.assert_allclose(x.mean(axis=(0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 1)), 1, atol=1e-3)
    assert dm.class_counts == np.bincount(dm.train_set.y.numpy(), minlength=4).tolist()


def test_seed_iv_loso_and_feature_key(tmp_path):
    write_seed_iv(tmp_path, subjects=("1", "2", "3"))
    dm = SEEDIVDataModule(data_dir=str(tmp_path), split="loso", fold=1, feature="de_movingAve", val_fraction=0.2)
    dm.setup("fit")
    assert set(_codes(dm.test_set, dm) // 1000) == {2}
    assert set(_codes(dm.train_set, dm) // 1000) == {1, 3}
    assert set(dm.test_set.groups.tolist()) == {1}
    assert set(_codes(dm.test_set, dm) % 100) == set(range(1, 25))  # every trial of the held-out subject


def test_seed_iv_raw_recomputes_de(tmp_path):
    write_seed_iv(tmp_path, subjects=("1",), n_windows=(3, 4), raw=True)
    dm = SEEDIVDataModule(data_dir=str(tmp_path), feature="raw", sample_rate=200, subject=1, normalization="none")
    dm.setup("fit")
    mat = scipy.io.loadmat(tmp_path / "eeg_raw_data" / "1" / "1_20160511.mat")
    expected = differential_entropy(mat["cz_eeg1"], 200.0).transpose(1, 0, 2)  # trial 1: 4 windows
    got = dm.train_set.x.numpy()
    names = dm.train_set.names + dm.val_set.names
    xs = np.concatenate([got, dm.val_set.x.numpy()])
    for w in range(4):
        np.testing.assert_allclose(xs[names.index(f"1_s1_t1_w{w}")], expected[w], rtol=1e-5)


def test_seed_iv_errors_name_the_file_and_layout(tmp_path):
    with pytest.raises(DatasetError, match="eeg_feature_smooth") as error:
        SEEDIVDataModule(data_dir=str(tmp_path)).setup("fit")
    assert "contl_demo.yaml" in str(error.value) and "de_LDS1..de_LDS24" in str(error.value)
    write_seed_iv(tmp_path, subjects=("1",))
    (tmp_path / "eeg_feature_smooth" / "2" / "1_20160512.mat").write_bytes(b"not a mat file")
    with pytest.raises(DatasetError, match="1_20160512.mat"):
        SEEDIVDataModule(data_dir=str(tmp_path)).setup("fit")
    scipy.io.savemat(tmp_path / "eeg_feature_smooth" / "2" / "1_20160512.mat", {"de_LDS1": np.zeros((62, 2, 5))})
    with pytest.raises(DatasetError, match="de_LDS2"):
        SEEDIVDataModule(data_dir=str(tmp_path)).setup("fit")


# -- SEED fixture -----------------------------------------------------------------------------------
SEED_LABELS = [1, 0, -1, -1, 0, 1, -1, 0, 1, 1, 0, -1, 0, 1, -1]


def write_seed(root, subjects=("1", "2"), raw=False, fs=200, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / ("Preprocessed_EEG" if raw else "ExtractedFeatures")
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "label.mat", {"label": np.array([SEED_LABELS])})
    for s in subjects:
        for session, date in enumerate(("20131027", "20131030", "20131107"), start=1):
            arrays = {}
            for trial in range(1, 16):
                if raw:
                    arrays[f"djc_eeg{trial}"] = rng.standard_normal((62, 3 * fs))
                else:
                    a = rng.standard_normal((62, 5, 5))
                    a[0, :, 0] = 1000 * int(s) + 100 * session + trial
                    arrays[f"de_LDS{trial}"] = a
            scipy.io.savemat(folder / f"{s}_{date}.mat", arrays)


def test_seed_first_9_train_last_6_test(tmp_path):
    write_seed(tmp_path)
    dm = SEEDDataModule(data_dir=str(tmp_path), subject=1, sessions=[1], normalization="none")
    dm.setup("fit")
    train_codes = np.concatenate([_codes(dm.train_set, dm), _codes(dm.val_set, dm)])
    test_codes = _codes(dm.test_set, dm)
    assert set(train_codes % 100) == set(range(1, 10)) and set(test_codes % 100) == set(range(10, 16))
    assert set((test_codes // 100) % 10) == {1}  # the chosen session (by date)
    np.testing.assert_array_equal(dm.test_set.y.numpy(), [SEED_LABELS[c % 100 - 1] + 1 for c in test_codes])
    assert dm.num_classes == 3


def test_seed_raw_and_missing_labels(tmp_path):
    write_seed(tmp_path, subjects=("3",), raw=True)
    dm = SEEDDataModule(data_dir=str(tmp_path), feature="raw", normalization="none")
    dm.setup("fit")
    assert dm.train_set.x.shape[1:] == (62, 5) and len(dm.test_set) == 3 * 6 * 3
    (tmp_path / "Preprocessed_EEG" / "label.mat").unlink()
    with pytest.raises(DatasetError, match="label.mat"):
        SEEDDataModule(data_dir=str(tmp_path), feature="raw").setup("fit")


def test_resize_to_repeats_cyclically(tmp_path):
    write_seed(tmp_path, subjects=("1",))
    dm = SEEDDataModule(data_dir=str(tmp_path), resize_to=400, normalization="none")
    dm.setup("fit")
    x = dm.test_set.x.numpy()
    assert x.shape[1:] == (400,)
    np.testing.assert_array_equal(x[:, 310:], x[:, :90])


# -- stand-in --------------------------------------------------------------------------------------
def test_standin_band_pattern_depends_on_class():
    dm = SyntheticSEEDIVDataModule(n_subjects=1, n_sessions=1, n_windows=6, normalization="none", val_fraction=0.0)
    trials = dm.load_trials()
    assert len(trials) == 24 and trials[0].features.shape == (6, 62, 5)
    by_class = {c: np.mean([t.features for t in trials if t.label == c], axis=(0, 1)) for c in range(4)}
    # happy (3) raises gamma on channels 36-47 over the other classes; fear (2) beta on 24-35; neutral alpha on 0-11
    assert by_class[3][36:48, 4].mean() > max(by_class[c][36:48, 4].mean() for c in (0, 1, 2)) + 0.1
    assert by_class[2][24:36, 3].mean() > max(by_class[c][24:36, 3].mean() for c in (0, 1, 3)) + 0.1
    assert by_class[0][0:12, 2].mean() > max(by_class[c][0:12, 2].mean() for c in (1, 2, 3)) + 0.1
    assert by_class[1][12:24, 2].mean() < min(by_class[c][12:24, 2].mean() for c in (0, 2, 3)) - 0.1


# -- DEAP fixture -----------------------------------------------------------------------------------
def test_deap_bins():
    from datamodules.deap import bin_ratings, k_class_bins
    np.testing.assert_array_equal(bin_ratings([1, 2.99, 3.0, 5.99, 6.0, 9.0], [1, 3, 6, 9]), [0, 0, 1, 1, 2, 2])
    assert k_class_bins(3) == [1.0, 3.0, 6.0, 9.0]


def test_deap_layout_de_and_split(tmp_path):
    import pickle
    from datamodules.deap import DEAPDataModule
    folder = tmp_path / "data_preprocessed_python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for s in (1, 2):
        ratings = np.tile([[2.0, 8.0, 5, 5], [4.0, 2.0, 5, 5], [7.0, 4.0, 5, 5]], (4, 1))  # 12 trials, 4 per class
        record = {"data": rng.standard_normal((12, 40, 128 * 8)).astype(np.float32), "labels": ratings}
        with open(folder / f"s{s:02d}.dat", "wb") as file:
            pickle.dump(record, file)
    dm = DEAPDataModule(data_dir=str(tmp_path), label_dim=0, subject=2, drop_baseline_s=3, normalization="none")
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.test_set.x.shape[1:] == (310,)
    n_test_trials = len({n.rsplit("_w", 1)[0] for n in dm.test_set.names})
    assert n_test_trials == 4 and len(dm.test_set) == 4 * 5  # 30 % of 12 trials, 8 - 3 = 5 windows each
    assert sorted(np.bincount(dm.test_set.y.numpy()) // 5) == [1, 1, 2]  # stratified
    with open(folder / "s02.dat", "rb") as file:
        record = pickle.load(file, encoding="latin1")
    name = dm.test_set.names[0]
    trial, window = int(name.split("_t")[1].split("_w")[0]), int(name.rsplit("_w", 1)[1])
    de = differential_entropy(record["data"][trial - 1, :32, 384:], 128.0)  # (32, 5, 5)
    np.testing.assert_allclose(dm.test_set.x.numpy()[0], np.resize(de[:, window].reshape(-1), 310), rtol=1e-5)
    dm = DEAPDataModule(data_dir=str(tmp_path), label_dim=1, split="loso", fold=0)
    dm.setup("fit")
    assert set(dm.test_set.groups.tolist()) == {0} and len(dm.test_set) == 12 * 5
    (folder / "s01.dat").write_bytes(b"\x00garbage")
    with pytest.raises(DatasetError, match="s01.dat"):
        DEAPDataModule(data_dir=str(tmp_path), split="loso").setup("fit")
