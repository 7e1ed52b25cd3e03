"""BSS Eval images v3 (mono) against museval's reference code and closed forms; SI-SDR; the STFT round trip."""
import importlib.util
import math

import numpy as np
import pytest
import torch

from lightning_modules.blocks.stft import STFT
from lightning_modules.metrics.separation import bss_eval_images_mono, bss_windows, si_sdr, track_bss_scores


def _museval_metrics():
    """museval's metrics module, loaded by path: the package's __init__ needs ffmpeg, this file does not."""
    spec = importlib.util.find_spec("museval")
    if spec is None:
        pytest.skip("museval is not installed")
    path = f"{spec.submodule_search_locations[0]}/metrics.py"
    module_spec = importlib.util.spec_from_file_location("museval_metrics", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _mixture_like(rng, sources=3, samples=12000):
    references = rng.standard_normal((sources, samples))
    estimates = np.stack([np.convolve(references[j], [1.0, 0.4, -0.2], mode="same") + 0.3 * references[(j + 1) % sources]
                          + 0.2 * rng.standard_normal(samples) for j in range(sources)])
    return references, estimates


def test_images_v3_matches_museval_framewise():
    museval = _museval_metrics()
    references, estimates = _mixture_like(np.random.default_rng(0))
    window, hop = 5000, 2500  # overlapping windows; the last 500 samples are in none (museval)
    expected = museval.bss_eval(references[..., None], estimates[..., None], window=window, hop=hop,
                                framewise_filters=True, bsseval_sources_version=False)
    ours = bss_eval_images_mono(torch.from_numpy(references), torch.from_numpy(estimates), window, hop)
    for name, reference in zip(("sdr", "isr", "sir", "sar"), expected[:4]):
        assert ours[name].shape == reference.shape == (3, 3)
        np.testing.assert_allclose(ours[name].numpy(), reference, atol=1e-6, err_msg=name)


def test_silent_windows_are_nan_as_in_museval():
    museval = _museval_metrics()
    references, estimates = _mixture_like(np.random.default_rng(1), samples=8000)
    references[1, :4000] = 0.0  # source 1 silent in the first window
    expected = museval.bss_eval(references[..., None], estimates[..., None], window=4000, hop=4000,
                                framewise_filters=True)
    ours = bss_eval_images_mono(torch.from_numpy(references), torch.from_numpy(estimates), 4000, 4000)
    assert torch.isnan(ours["sdr"][:, 0]).all() and np.isnan(expected[0][:, 0]).all()
    np.testing.assert_allclose(ours["sdr"][:, 1].numpy(), expected[0][:, 1], atol=1e-6)


def test_closed_forms_scaled_reference_and_pure_interference():
    rng = np.random.default_rng(2)
    references = torch.from_numpy(rng.standard_normal((2, 8000)))
    # A scaled reference: images SDR = ISR = -20 log10 |1 - g|; no interference, no artifacts (SIR, SAR large).
    scores = bss_eval_images_mono(references, 0.5 * references, 8000, 8000)
    np.testing.assert_allclose(scores["sdr"].numpy(), 20 * math.log10(2), atol=1e-6)
    np.testing.assert_allclose(scores["isr"].numpy(), 20 * math.log10(2), atol=1e-4)
    assert (scores["sir"] > 60).all() and (scores["sar"] > 60).all()
    # Reference + c * the other source: SIR = 10 log10(|s_0|^2 / (c^2 |s_1|^2)) (SDR exactly the same). With
    # white noise the 512-tap projection on s_0 also absorbs ~512/n of the interference's energy, so SIR
    # sits about 10 log10(1 / (1 - 512/n)) above the closed form: ~0.01 dB for n = 200,000.
    references = torch.from_numpy(rng.standard_normal((2, 200_000)))
    c = 0.25
    estimates = torch.stack([references[0] + c * references[1], references[1]])
    scores = bss_eval_images_mono(references, estimates, 200_000, 200_000)
    expected_sir = 10 * math.log10(float(references[0].square().sum() / (c ** 2 * references[1].square().sum())))
    assert expected_sir < scores["sir"][0, 0].item() < expected_sir + 0.05
    assert scores["sdr"][0, 0].item() == pytest.approx(expected_sir, abs=1e-6)
    assert scores["sar"][0, 0].item() > 60


def test_windows_follow_museval_framing_and_track_scores_average_them():
    assert bss_windows(100, 30, 15) == [slice(0, 30), slice(15, 45), slice(30, 60), slice(45, 75), slice(60, 90)]
    assert bss_windows(20, 30, 15) == [slice(0, 20)]
    references, estimates = (torch.from_numpy(a) for a in _mixture_like(np.random.default_rng(3), samples=6000))
    framewise = bss_eval_images_mono(references, estimates, 3000, 1500)
    track = track_bss_scores(references, estimates, sample_rate=100, window_seconds=30, hop_seconds=15)
    torch.testing.assert_close(track["sdr"], framewise["sdr"].mean(-1))
    median = track_bss_scores(references, estimates, 100, 30, 15, aggregate="median")
    torch.testing.assert_close(median["sir"], framewise["sir"].nanmedian(-1).values)


def test_si_sdr_is_scale_invariant_and_matches_the_definition():
    rng = np.random.default_rng(4)
    reference = torch.from_numpy(rng.standard_normal(4000))
    noise = torch.from_numpy(rng.standard_normal(4000))
    estimate = 3.0 * reference + 0.1 * noise
    ref0, est0 = reference - reference.mean(), estimate - estimate.mean()
    target = (est0 @ ref0) / (ref0 @ ref0) * ref0
    expected = 10 * torch.log10(target.square().sum() / (est0 - target).square().sum())
    assert si_sdr(estimate, reference).item() == pytest.approx(expected.item(), abs=1e-6)
    assert si_sdr(0.01 * estimate, reference).item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("window, hop", [("hann", 256), ("blackmanharris", 512)])
def test_stft_round_trip_with_the_mixture_phase(window, hop):
    stft = STFT(1024, hop, window)
    audio = torch.randn(2, 3, 20000)
    spectrum = stft(audio)
    assert spectrum.shape == (2, 3, 1 + 20000 // hop, 513)  # (..., frames, bins)
    rebuilt = stft.inverse(spectrum.abs(), spectrum.angle(), 20000)
    torch.testing.assert_close(rebuilt, audio, atol=1e-4, rtol=0)
    assert stft.magnitude(audio[0, 0, :stft.excerpt_samples(30)], center=False).shape == (30, 513)
