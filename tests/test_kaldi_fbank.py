"""The torch Kaldi fbank against a direct numpy/scipy computation of Kaldi's definition, and a pure tone."""
import numpy as np
import pytest
import scipy.signal
import torch

from lightning_modules.blocks.kaldi_fbank import KaldiFbank


def numpy_kaldi_fbank(wave, rate=16000, num_mel_bins=128, window="hanning", low=20.0, high=0.0):
    """Kaldi's compute-fbank-feats written out frame by frame (feature-window.cc, mel-computations.cc)."""
    size, shift = int(rate * 0.025), int(rate * 0.010)
    padded = 512
    if window == "hanning":
        win = scipy.signal.get_window("hann", size, fftbins=False)
    elif window == "povey":
        win = scipy.signal.get_window("hann", size, fftbins=False) ** 0.85
    else:
        win = scipy.signal.get_window("hamming", size, fftbins=False)

    def mel(f):
        return 1127.0 * np.log(1.0 + f / 700.0)

    high = high if high > 0 else rate / 2 + high
    mel_low, mel_high = mel(low), mel(high)
    delta = (mel_high - mel_low) / (num_mel_bins + 1)
    banks = np.zeros((num_mel_bins, padded // 2 + 1))
    for m in range(num_mel_bins):
        left, centre, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
        for k in range(padded // 2):  # Kaldi leaves the Nyquist bin out
            f_mel = mel(k * rate / padded)
            if left < f_mel < right:
                banks[m, k] = (f_mel - left) / (centre - left) if f_mel <= centre else (right - f_mel) / (right - centre)
    num_frames = 1 + (len(wave) - size) // shift
    out = np.empty((num_frames, num_mel_bins))
    for i in range(num_frames):
        frame = wave[i * shift: i * shift + size].astype(np.float64)
        frame = frame - frame.mean()
        frame = np.concatenate([[frame[0] - 0.97 * frame[0]], frame[1:] - 0.97 * frame[:-1]])
        power = np.abs(np.fft.rfft(frame * win, n=padded)) ** 2
        out[i] = np.log(np.maximum(banks @ power, np.finfo(np.float32).eps))
    return out


@pytest.mark.parametrize("window", ["hanning", "povey", "hamming"])
def test_matches_a_direct_computation_of_kaldis_definition(window):
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(4000) + 0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16000)).astype(np.float32)
    expected = numpy_kaldi_fbank(wave, window=window)
    got = KaldiFbank(window_type=window)(torch.from_numpy(wave)).numpy()
    assert got.shape == expected.shape == (1 + (4000 - 400) // 160, 128)
    # float32 FFT vs float64: log energies agree to ~1e-4 where the energy is well above eps.
    np.testing.assert_allclose(got, expected, atol=2e-3, rtol=1e-4)


def test_pure_tone_peaks_in_the_mel_bin_centred_on_its_frequency():
    rate, freq = 16000, 1000.0
    t = np.arange(rate) / rate
    fbank = KaldiFbank(num_mel_bins=128)(torch.from_numpy(np.sin(2 * np.pi * freq * t).astype(np.float32)))
    assert fbank.shape == (98, 128)  # 1 s -> 98 frames (snip_edges), as torchaudio
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    delta = (mel(8000.0) - mel(20.0)) / 129
    centres = mel(20.0) + (np.arange(128) + 1) * delta
    expected_bin = int(np.argmin(np.abs(centres - mel(freq))))
    assert int(fbank.mean(0).argmax()) == expected_bin
    # Energy concentrated there: bins far from the tone are >= 40 dB (log e: ~9.2) lower.
    assert fbank.mean(0)[expected_bin] - fbank.mean(0)[expected_bin + 20] > 9.2


def test_batched_equals_per_clip_and_runs_under_bf16_autocast():
    waves = torch.randn(3, 16000)
    fbank = KaldiFbank()
    batched = fbank(waves)
    assert torch.allclose(batched[1], fbank(waves[1]), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fbank(waves)
    assert auto.dtype == torch.float32 and torch.allclose(auto, batched)


def test_silence_hits_the_log_floor_and_short_input_is_refused():
    out = KaldiFbank()(torch.zeros(1, 1600))
    assert torch.allclose(out, torch.full_like(out, float(np.log(np.finfo(np.float32).eps))))
    with pytest.raises(ValueError, match="shorter than one frame"):
        KaldiFbank()(torch.zeros(1, 100))
