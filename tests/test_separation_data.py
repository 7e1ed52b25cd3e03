"""DSD100 / MUSDB18-HQ layouts on tiny fixture trees, splits, chunking, clear errors; the synthetic stand-in."""
import shutil

import numpy as np
import pytest
import torch

from datamodules.audio_io import write_audio
from datamodules.base import DatasetError
from datamodules.dsd100 import SOURCES, DSD100DataModule
from datamodules.standins.synthetic_music import SyntheticMusicDataModule, write_dsd100_tree

DEV = ["001 - Actions - One Minute Smile", "002 - Some Band - Some Song", "003 - Other Band - Other Song"]
TEST = ["051 - Test Band - Test Song", "052 - Last Band - Last Song"]
RATE = 8000


@pytest.fixture(scope="module")
def dsd100(tmp_path_factory):
    root = tmp_path_factory.mktemp("DSD100")
    songs = write_dsd100_tree(root, DEV, TEST, seconds=1.0, sample_rate=RATE)
    return root, songs


def _module(root, **kwargs):
    args = dict(sample_rate=RATE, n_fft=256, hop_length=64, chunk_frames=30, chunk_stride=5, num_workers=0)
    args.update(kwargs)
    return DSD100DataModule(str(root), **args)


def test_dsd100_official_split_with_musdb_validation_tracks(dsd100):
    root, songs = dsd100
    dm = _module(root)
    dm.setup()
    assert dm.val_set.tracks.names == [DEV[0]]  # "Actions - One Minute Smile" is a MUSDB18 validation track
    assert dm.train_set.tracks.names == DEV[1:]
    assert dm.test_set.tracks.names == TEST
    item = dm.test_set[1]
    assert item["name"] == TEST[1] and item["sample_rate"] == RATE
    mixture, sources = songs[TEST[1]]
    np.testing.assert_allclose(item["mixture"].numpy(), mixture, atol=1e-6)  # mono downmix of the stereo file
    np.testing.assert_allclose(item["sources"].numpy(), sources, atol=1e-6)


def test_training_chunks_are_exact_stft_excerpts(dsd100):
    root, songs = dsd100
    dm = _module(root)
    dm.setup()
    chunk, step = 256 + 29 * 64, 5 * 64
    assert dm.chunk_samples == chunk
    per_track = (RATE - chunk) // step + 1
    assert len(dm.train_set) == 2 * per_track
    item = dm.train_set[per_track + 2]  # the second training track, third chunk
    assert item["mixture"].shape == (chunk,) and item["sources"].shape == (4, chunk)
    mixture, sources = songs[DEV[2]]
    np.testing.assert_allclose(item["sources"].numpy(), sources[:, 2 * step:2 * step + chunk], atol=1e-6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["mixture"].shape == (32, chunk) and batch["sources"].shape == (32, 4, chunk)


def test_pooled_split_is_deterministic_and_disjoint(dsd100):
    root, _ = dsd100
    splits = _module(root, split="pooled", pooled_fractions=(0.6, 0.2, 0.2), seed=3).split_tracks()
    names = {k: [t.name for t in v] for k, v in splits.items()}
    assert [len(names[k]) for k in ("train", "val", "test")] == [3, 1, 1]
    assert sorted(sum(names.values(), [])) == sorted(DEV + TEST)
    again = _module(root, split="pooled", pooled_fractions=(0.6, 0.2, 0.2), seed=3).split_tracks()
    assert names == {k: [t.name for t in v] for k, v in again.items()}


def test_musdb18hq_layout_is_detected(tmp_path):
    for subset, names in (("train", ["Actions - One Minute Smile", "A - B"]), ("test", ["C - D"])):
        for name in names:
            for stem in ("mixture", *SOURCES):
                write_audio(tmp_path / subset / name / f"{stem}.wav", np.full(3000, 0.1, np.float32), RATE)
    dm = _module(tmp_path)
    dm.setup()
    assert dm.train_set.tracks.names == ["A - B"] and dm.test_set.tracks.names == ["C - D"]


def test_missing_root_missing_stem_and_corrupt_file_raise_clear_errors(dsd100, tmp_path):
    with pytest.raises(DatasetError, match="Data folder not found") as error:
        _module(tmp_path / "nowhere").setup()
    assert "Mixtures/Dev" in str(error.value) and "experiments/chandna_demo.yaml" in str(error.value)
    root, _ = dsd100
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "Sources" / "Test" / TEST[0] / "drums.wav").unlink()
    with pytest.raises(DatasetError, match=r"Missing audio file.*drums\.wav"):
        _module(broken).setup()
    write_audio(broken / "Sources" / "Test" / TEST[0] / "drums.wav", np.zeros(100, np.float32), RATE)
    (broken / "Sources" / "Dev" / DEV[1] / "bass.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DatasetError, match=r"Cannot decode.*bass\.wav"):
        _module(broken).setup()


def test_wrong_sample_rate_is_reported_unless_preloading(dsd100):
    root, songs = dsd100
    with pytest.raises(DatasetError, match="Sample rate 8000 Hz, expected 16000 Hz"):
        _module(root, sample_rate=16000).setup()
    dm = _module(root, sample_rate=16000, preload=True)
    dm.setup()
    assert dm.test_set[0]["mixture"].shape == (16000,)  # 1 s resampled to 16 kHz


def test_synthetic_stand_in_is_deterministic_and_sums_to_the_mixture():
    dm = SyntheticMusicDataModule(num_train=2, num_val=1, num_test=2, clip_seconds=1.0)
    dm.setup()
    again = SyntheticMusicDataModule(num_train=2, num_val=1, num_test=2, clip_seconds=1.0)
    again.setup()
    a, b = dm.test_set[1], again.test_set[1]
    assert torch.equal(a["mixture"], b["mixture"])
    torch.testing.assert_close(a["sources"].sum(0), a["mixture"])
    assert (a["sources"].square().mean(-1) > 1e-4).all()  # every stem is present
    # Each stem lives in its own band: the bass below 500 Hz, the hi-hats' energy above 4 kHz.
    spectra = torch.fft.rfft(a["sources"]).abs().square()
    freqs = torch.fft.rfftfreq(a["sources"].shape[-1], 1 / 16000)
    bass_low = spectra[1, freqs < 500].sum() / spectra[1].sum()
    assert bass_low > 0.9
    assert spectra[2, freqs > 4000].sum() / spectra[2].sum() > spectra[0, freqs > 4000].sum() / spectra[0].sum()
