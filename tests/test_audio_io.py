"""Audio I/O shared by the audio datasets: round trip, mono downmix, resampling, clear errors."""
import numpy as np
import pytest

from datamodules.audio_io import audio_info, load_audio, resample, write_audio
from datamodules.base import DatasetError


def test_round_trip_stereo_to_mono_and_window(tmp_path):
    rate = 8000
    t = np.arange(rate) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    path = write_audio(tmp_path / "a" / "mix.wav", stereo, rate, subtype="FLOAT")
    assert audio_info(path).channels == 2
    both, got_rate = load_audio(path, mono=False)
    assert got_rate == rate and both.shape == (2, rate)
    np.testing.assert_allclose(both, stereo, atol=1e-7)
    mono, _ = load_audio(path, start=100, frames=50)
    np.testing.assert_allclose(mono, stereo.mean(0)[100:150], atol=1e-7)


def test_resampling_keeps_a_tone_and_its_length():
    t = np.arange(44100) / 44100
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    down = resample(tone, 44100, 16000)
    assert down.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(down))
    assert np.argmax(spectrum) == 1000  # 1 s at 16 kHz: bin k = k Hz


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="not found.*nowhere.wav"):
        load_audio(tmp_path / "nowhere.wav", layout="clips/*.wav", standin_config="experiments/x_demo.yaml")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(DatasetError, match="Cannot decode.*bad.wav") as error:
        load_audio(bad, standin_config="experiments/x_demo.yaml")
    assert "python run.py --config experiments/x_demo.yaml" in str(error.value)
