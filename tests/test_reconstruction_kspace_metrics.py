"""k-space utilities, undersampling masks, reconstruction metrics (against scikit-image/torchmetrics) and losses."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torchmetrics.functional.image import peak_signal_noise_ratio as tm_psnr

from lightning_modules.blocks.kspace import (apply_line_mask, equispaced_line_mask, fft2c, ifft2c, root_sum_of_squares,
                                             undersample_magnitude, zero_pad_kspace)
from lightning_modules.losses.reconstruction import discriminator_loss, epsilon_loss, pixel_loss
from lightning_modules.metrics.reconstruction import nmse_per_slice, psnr_per_slice, ssim_per_slice


def _complex_image(rng, shape=(2, 3, 20, 24)):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


def test_centred_fft_round_trip_and_parseval_numpy_and_torch():
    rng = np.random.default_rng(0)
    image = _complex_image(rng)
    kspace = fft2c(image)
    assert np.allclose(ifft2c(kspace), image)
    assert np.isclose(np.sum(np.abs(kspace) ** 2), np.sum(np.abs(image) ** 2))  # orthonormal
    torch_kspace = fft2c(torch.from_numpy(image))
    assert np.allclose(torch_kspace.numpy(), kspace)
    assert torch.allclose(ifft2c(torch_kspace), torch.from_numpy(image))


def test_centred_fft_puts_dc_in_the_centre():
    image = np.ones((8, 10))
    kspace = fft2c(image)
    assert np.argmax(np.abs(kspace)) == np.ravel_multi_index((4, 5), kspace.shape)


def test_kspace_zero_padding_interpolates_without_new_frequencies():
    rng = np.random.default_rng(1)
    image = _complex_image(rng, (6, 8))
    kspace = fft2c(image)
    padded = zero_pad_kspace(kspace, (12, 16))
    assert padded.shape == (12, 16)
    assert np.isclose(np.sum(np.abs(padded) ** 2), np.sum(np.abs(kspace) ** 2))  # energy: only zeros added
    assert np.allclose(zero_pad_kspace(padded, (6, 8)), kspace)  # cropping back recovers it exactly
    upsampled = ifft2c(padded)
    # Sinc interpolation on the doubled grid keeps the original samples (scaled by the orthonormal factor 2).
    assert np.allclose(upsampled[::2, ::2] * 2, image)
    assert np.allclose(zero_pad_kspace(torch.from_numpy(kspace), (12, 16)).numpy(), padded)


def test_kspace_padding_to_512_of_a_cmrxrecon_shape():
    kspace = np.zeros((2, 246, 512), np.complex64)
    kspace[:, 123, 256] = 1.0  # DC
    padded = zero_pad_kspace(kspace, (512, 512))
    assert padded.shape == (2, 512, 512) and padded[0, 256, 256] == 1.0


def test_root_sum_of_squares_combines_coils():
    coils = np.stack([np.full((4, 4), 3.0 + 0j), np.full((4, 4), 4.0j)])
    assert np.allclose(root_sum_of_squares(coils, coil_axis=0), 5.0)
    assert torch.allclose(root_sum_of_squares(torch.from_numpy(coils), coil_axis=0), torch.full((4, 4), 5.0,
                                                                                                  dtype=torch.float64))


@pytest.mark.parametrize("acceleration", [4, 8, 10])
def test_line_masks_keep_every_rth_line_plus_the_24_central_lines(acceleration):
    num_lines = 246
    mask = equispaced_line_mask(num_lines, acceleration)
    centre = np.arange(num_lines // 2 - 12, num_lines // 2 + 12)
    assert mask[centre].all()
    outside = np.setdiff1d(np.arange(num_lines), centre)
    # Outside the autocalibration lines exactly one line in R is acquired.
    assert np.array_equal(np.flatnonzero(mask[outside] & (outside % acceleration != 0)), [])
    assert mask[outside].sum() == np.sum(outside % acceleration == 0)
    expected_fraction = 1 / acceleration + 24 / num_lines
    assert abs(mask.mean() - expected_fraction) < 24 / num_lines / acceleration + 1 / num_lines


def test_undersampling_zeroes_unacquired_lines_and_aliases_the_image():
    rng = np.random.default_rng(2)
    image = np.abs(_complex_image(rng, (32, 32)))
    mask = equispaced_line_mask(32, 4, center_lines=4)
    under_k = apply_line_mask(fft2c(image), mask)
    assert np.all(under_k[~mask] == 0) and np.allclose(under_k[mask], fft2c(image)[mask])
    zero_filled = undersample_magnitude(image, mask)
    assert zero_filled.shape == image.shape and not np.allclose(zero_filled, image)
    assert np.allclose(undersample_magnitude(image, np.ones(32, bool)), image)  # full sampling: identity


def _pairs(seed=3, n=4, size=40):
    rng = np.random.default_rng(seed)
    target = rng.random((n, 1, size, size)) * rng.uniform(0.5, 1.0, (n, 1, 1, 1))
    prediction = np.clip(target + 0.05 * rng.standard_normal(target.shape), 0, None)
    return prediction, target


def test_psnr_matches_scikit_image_and_torchmetrics_with_the_slice_max_as_data_range():
    prediction, target = _pairs()
    ours = psnr_per_slice(torch.from_numpy(prediction), torch.from_numpy(target)).numpy()
    for i in range(len(target)):
        reference = peak_signal_noise_ratio(target[i, 0], prediction[i, 0], data_range=target[i, 0].max())
        assert ours[i] == pytest.approx(reference, abs=1e-8)
        tm = tm_psnr(torch.from_numpy(prediction[i]), torch.from_numpy(target[i]), data_range=float(target[i].max()))
        assert ours[i] == pytest.approx(float(tm), abs=1e-5)


def test_ssim_matches_scikit_image_per_slice():
    prediction, target = _pairs(seed=4)
    ours = ssim_per_slice(torch.from_numpy(prediction), torch.from_numpy(target)).numpy()
    for i in range(len(target)):
        reference = structural_similarity(target[i, 0], prediction[i, 0], data_range=target[i, 0].max())
        assert ours[i] == pytest.approx(reference, abs=1e-10)
    identical = ssim_per_slice(torch.from_numpy(target), torch.from_numpy(target))
    assert torch.allclose(identical, torch.ones_like(identical))


def test_nmse_against_its_definition():
    prediction, target = _pairs(seed=5)
    ours = nmse_per_slice(torch.from_numpy(prediction), torch.from_numpy(target)).numpy()
    reference = [np.linalg.norm(t - p) ** 2 / np.linalg.norm(t) ** 2 for p, t in zip(prediction, target)]
    assert np.allclose(ours, reference)
    assert float(nmse_per_slice(torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4))) == 1.0


def test_losses_reference_values():
    a, b = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 0.5)
    assert float(pixel_loss(a, b, "l1")) == pytest.approx(0.5)
    assert float(pixel_loss(a, b, "mse")) == pytest.approx(0.25)
    noise = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(epsilon_loss(torch.zeros_like(noise), noise)) == pytest.approx(float(noise.pow(2).mean()))
    logits = torch.zeros(3, 1, 5, 5)
    assert float(discriminator_loss(logits, logits)) == pytest.approx(np.log(2))
    with pytest.raises(ValueError):
        pixel_loss(a, b, "huber")
