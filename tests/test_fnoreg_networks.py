"""FNOReg / FNO networks and the shared spectral blocks (shapes, counts, autocast, gradients)."""

import warnings

import pytest
import torch
from torch import nn

from lightning_modules.blocks.spectral import FFCResNetBlock, SpectralConv, STResNetBlock
from lightning_modules.blocks.spectral import _LegacySpectralConv
from lightning_modules.fnoreg import FNO, FNOReg, build_fno, build_fnoreg
from lightning_modules.utils import count_parameters

# Exact counts from the spec card (built with neuralop 0.2.0); the paper rounds them to 0.1M.
FNOREG_PARAMS = {"small": 1_266_546, "medium": 10_005_858, "large": 22_772_898, "3d": 98_132_295}
FNO_PARAMS = {"small": 1_263_922, "medium": 9_996_322, "large": 22_763_362}

TINY_2D = dict(hidden_channels=8, n_layers=2, n_modes=(16, 20), projection_channels=16)
TINY_3D = dict(spatial_dims=3, hidden_channels=4, n_layers=2, n_modes=(8, 8, 8), projection_channels=8)


def _pair(*spatial, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, *spatial, generator=gen), torch.rand(batch, 1, *spatial, generator=gen)


# Built on the meta device: no memory, no init cost, counts only.
@pytest.mark.parametrize("config", ["small", "medium", "large", "3d"])
def test_fnoreg_parameter_count_matches_paper(config):
    with torch.device("meta"):
        model = build_fnoreg(config)
    assert count_parameters(model) == FNOREG_PARAMS[config]


@pytest.mark.parametrize("config", ["small", "medium", "large"])
def test_fno_parameter_count_matches_paper(config):
    with torch.device("meta"):
        model = build_fno(config)
    assert count_parameters(model) == FNO_PARAMS[config]


# The paper's Tables 1-2 (hidden h, layers N, k_max, projection p), read off the built networks rather than
# off PAPER_CONFIGS, so a config that is not passed through (or a layer built with other sizes) fails here.
PAPER_TABLE = {
    "small": (16, 6, (40, 48), 32),
    "medium": (32, 12, (40, 48), 64),
    "large": (32, 12, (60, 72), 64),
    "3d": (12, 15, (40, 48, 56), 24),
}


@pytest.mark.parametrize("config", sorted(PAPER_TABLE))
def test_built_networks_have_the_papers_sizes(config):
    hidden, layers, modes, projection = PAPER_TABLE[config]
    builders = [build_fnoreg] + ([build_fno] if config != "3d" else [])
    for build in builders:
        with torch.device("meta"):
            model = build(config)
        assert model.lifting.out_channels == hidden
        assert len(model.fno_blocks) == layers
        assert all(tuple(block.spectral_conv.n_modes) == modes for block in model.fno_blocks)
        assert model.projection[0].out_channels == projection
        assert model.projection[-1].out_channels == len(modes)  # one displacement channel per spatial dim


@pytest.mark.parametrize("network", [build_fnoreg, build_fno])
@pytest.mark.parametrize("spatial", [(80, 96), (160, 192), (83, 101)])
def test_small_models_run_at_any_resolution(network, spatial):
    torch.manual_seed(0)
    model = network("small").eval()
    moving, fixed = _pair(*spatial)
    with torch.no_grad():
        displacement = model(moving, fixed)
    assert displacement.shape == (1, 2, *spatial)
    assert displacement.dtype == torch.float32
    assert torch.isfinite(displacement).all()


def test_input_smaller_than_modes_raises():
    model = FNOReg(**TINY_2D)
    with pytest.raises(ValueError, match="too small"):
        model(*_pair(12, 48))
    with pytest.raises(ValueError, match="n_modes"):
        FNOReg(spatial_dims=3, n_modes=(40, 48))


@pytest.mark.parametrize("network", [FNOReg, FNO])
def test_gradients_reach_every_parameter(network):
    torch.manual_seed(0)
    model = network(**TINY_2D).train()
    moving, fixed = _pair(40, 48, batch=2)
    target = torch.randn(2, 2, 40, 48, generator=torch.Generator().manual_seed(1))
    (model(moving, fixed) * target).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("network", [FNOReg, FNO])
def test_bf16_autocast_gives_finite_float32_output(network):
    torch.manual_seed(0)
    model = network(**TINY_2D).train()
    moving, fixed = _pair(40, 48, batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        displacement = model(moving, fixed)
    assert displacement.shape == (2, 2, 40, 48)
    assert displacement.dtype == torch.float32 and torch.isfinite(displacement).all()
    displacement.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    with torch.no_grad():
        reference = model(moving, fixed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low_precision = model(moving, fixed)
    assert torch.allclose(low_precision, reference, atol=0.05 * reference.abs().max().item() + 1e-3)


def test_tiny_3d_model():
    torch.manual_seed(0)
    model = FNOReg(**TINY_3D)
    assert isinstance(model.encoder, STResNetBlock)
    moving, fixed = _pair(24, 28, 32)
    displacement = model(moving, fixed)
    assert displacement.shape == (1, 3, 24, 28, 32)
    displacement.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low_precision = model(moving, fixed)
    assert low_precision.dtype == torch.float32 and torch.isfinite(low_precision).all()


def test_fno_gelu_quirk_of_neuralop_020():
    def active(model):
        return [isinstance(layer.act, nn.GELU) for layer in model.fno_blocks]

    assert active(FNO(**{**TINY_2D, "n_layers": 6})) == [True] * 3 + [False] * 3
    assert active(FNO(**{**TINY_2D, "n_layers": 5})) == [True] * 3 + [False] * 2
    assert all(active(FNO(**{**TINY_2D, "n_layers": 6}, gelu_first_half_only=False)))


def test_spectral_conv_matches_neuralop_legacy_forward():
    torch.manual_seed(0)
    for n_modes, spatial in [((16, 20), (40, 48)), ((8, 6, 10), (12, 14, 16))]:
        conv = SpectralConv(3, 5, n_modes)
        x = torch.randn(2, 3, *spatial)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # neuralop indexes with lists (deprecated in torch)
            expected = _LegacySpectralConv.forward(conv, x)
        torch.testing.assert_close(conv(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fft_norm", ["backward", "forward", "ortho"])
def test_spectral_conv_is_resolution_consistent(fft_norm):
    """A band-limited input sampled at 40x48 and 80x96 gives the same output function."""
    torch.manual_seed(0)
    conv = SpectralConv(2, 2, (16, 20), fft_norm=fft_norm)

    def band_limited(h, w):
        yy, xx = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
        two_pi = 2 * torch.pi
        a = torch.sin(two_pi * 3 * yy) * torch.cos(two_pi * 2 * xx) + 0.5 * torch.cos(two_pi * (yy + 5 * xx))
        b = torch.cos(two_pi * 12 * yy) + torch.sin(two_pi * 4 * xx)  # row freq 12 is dropped
        return torch.stack([a, b])[None]

    with torch.no_grad():
        coarse = conv(band_limited(40, 48))
        fine = conv(band_limited(80, 96))
    torch.testing.assert_close(fine[..., ::2, ::2], coarse, rtol=1e-4, atol=1e-4)


def test_spectral_conv_float32_under_autocast_and_size_check():
    conv = SpectralConv(4, 4, (10, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.randn(1, 4, 30, 26).bfloat16())
    assert y.dtype == torch.float32 and y.shape == (1, 4, 30, 26)
    with pytest.raises(ValueError, match="too small"):
        conv(torch.randn(1, 4, 9, 26))


def test_ffc_fourier_unit_transforms_only_h_by_default():
    """H-only FFT (official code): the block acts on every column alone, so it commutes with a
    permutation of the columns; with the FFT over H and W it does not."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 16, 12)
    perm = torch.randperm(12)
    h_only = FFCResNetBlock(8).eval()
    both = FFCResNetBlock(8, fu_fft_dims=(-2, -1)).eval()
    with torch.no_grad():
        torch.testing.assert_close(h_only(x[..., perm]), h_only(x)[..., perm])
        assert not torch.allclose(both(x[..., perm]), both(x)[..., perm], atol=1e-4)


def test_spectral_conv_inference_cache_matches_and_follows_weight_updates():
    from lightning_modules.blocks.spectral import SpectralConv

    torch.manual_seed(0)
    conv = SpectralConv(4, 4, (8, 10))
    x = torch.randn(2, 4, 16, 20)
    with torch.no_grad():
        cached = conv(x)
        assert conv._dense_cache is not None
    assert torch.allclose(cached, conv(x).detach(), atol=1e-5)  # grad mode: rebuilt from the factors
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv(x).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        after_step = conv(x)
    assert not torch.allclose(after_step, cached, atol=1e-4)
    assert torch.allclose(after_step, conv(x).detach(), atol=1e-5)
