"""TransMorph baseline of FNOReg: parameter counts, shapes, window mechanics, gradients, bf16."""
from __future__ import annotations

import itertools

import pytest
import torch

from lightning_modules.transmorph import (
    SwinTransformerBlock,
    TransMorph,
    WindowAttention,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from lightning_modules.utils import count_parameters

# Reduced configs for fast tests (widths divisible by the heads of every stage).
SMALL = dict(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4), drop_path_rate=0.0)


def _pair(batch: int, *spatial: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch, 1, *spatial), torch.rand(batch, 1, *spatial)


# Exact counts of the official configurations (embed 96, depths (2,2,4,2), heads (4,4,8,8), no qkv bias,
# mlp_ratio 4, reg_head_chan 16, conv and transformer skips) with the window FNOReg's scripts set,
# img_size // 32: 2D get_2DTransMorph_config with window (5, 6); 3D get_3DTransMorph_config, window (5, 6, 7)
# (TransMorph paper: 46.77M). Paper column = FNOReg Tables 1 and 2, checked to its rounding.
@pytest.mark.parametrize("spatial_dims,expected,paper_millions", [(2, 31_005_506, 31.0), (3, 46_771_251, 46.8)])
def test_parameter_counts(spatial_dims, expected, paper_millions):
    with torch.device("meta"):
        model = TransMorph(spatial_dims)
    n = count_parameters(model)
    assert n == expected
    assert abs(n / 1e6 - paper_millions) < 0.05 + 1e-9


def test_parameter_count_breakdown_2d():
    # Hand count: Swin encoder 23,942,304 (incl. 64 heads x 99 bias rows); decoder + skips + head 7,063,202.
    with torch.device("meta"):
        model = TransMorph(2)
    assert count_parameters(model.encoder) == 23_942_304
    assert count_parameters(model) - count_parameters(model.encoder) == 7_063_202
    # The relative position bias tables are the only window-dependent parameters.
    with torch.device("meta"):
        other = TransMorph(2, window_size=(8, 8))
    assert count_parameters(other) - count_parameters(model) == 64 * (15 * 15 - 9 * 11)


@pytest.fixture(scope="module")
def paper_model_2d():
    torch.manual_seed(0)
    return TransMorph(2).eval()


@pytest.mark.parametrize("spatial", [(160, 192), (80, 96), (50, 70)])
def test_paper_config_forward_2d(paper_model_2d, spatial):
    moving, fixed = _pair(1, *spatial)
    with torch.no_grad():
        out = paper_model_2d(moving, fixed)
    assert out.shape == (1, 2, *spatial)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Small-initialised head: the field starts near identity.
    assert out.abs().max() < 1e-2


def test_small_forward_2d_batch():
    torch.manual_seed(0)
    model = TransMorph(2, **SMALL).eval()
    moving, fixed = _pair(2, 80, 96)
    with torch.no_grad():
        out = model(moving, fixed)
    assert out.shape == (2, 2, 80, 96)
    with torch.no_grad():  # batch items are independent (instance norm, no batch statistics)
        single = model(moving[1:], fixed[1:])
    torch.testing.assert_close(out[1:], single, rtol=1e-4, atol=1e-9)


def test_small_forward_3d():
    # 32^3 -> token maps 8, 4, 2, 1 with window 3: padding to the window (8 -> 9, 4 -> 6) and clipping (2, 1).
    torch.manual_seed(0)
    model = TransMorph(3, window_size=3, **SMALL).eval()
    moving, fixed = _pair(1, 32, 32, 32)
    with torch.no_grad():
        out = model(moving, fixed)
    assert out.shape == (1, 3, 32, 32, 32)
    assert torch.isfinite(out).all()
    moving, fixed = _pair(1, 20, 24, 28)  # padded to 32^3 internally
    with torch.no_grad():
        assert model(moving, fixed).shape == (1, 3, 20, 24, 28)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = TransMorph(2, window_size=(5, 6), **SMALL).train()
    moving, fixed = _pair(2, 64, 64)
    out = model(moving, fixed)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bf16_autocast_gives_finite_float32():
    torch.manual_seed(0)
    model = TransMorph(2, **SMALL).eval()
    moving, fixed = _pair(1, 64, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(moving, fixed)
    with torch.no_grad():
        reference = model(moving, fixed)  # float32
    assert out.dtype == torch.float32
    assert out.shape == (1, 2, 64, 96)
    assert torch.isfinite(out).all()
    # bf16 keeps an 8-bit mantissa, and 4 stages of attention compound it: within 10 % of the field's scale.
    assert (out - reference).abs().max() <= 0.1 * reference.abs().max()


def test_window_attention_matches_explicit_formula():
    # softmax(q k^T / sqrt(d) + B + M) v, with B read from the table by the reference's index rule.
    torch.manual_seed(0)
    window = (2, 3, 2)
    attn = WindowAttention(dim=8, num_heads=2, window_size=window)
    n = 12
    x = torch.randn(2, 3, n, 8)
    mask = torch.where(torch.rand(3, n, n) > 0.5, -100.0, 0.0)
    got = attn(x, window, mask)

    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    rel = rel + torch.tensor([w - 1 for w in window])
    index = rel[..., 0] * (2 * window[1] - 1) * (2 * window[2] - 1) + rel[..., 1] * (2 * window[2] - 1) + rel[..., 2]
    bias = attn.relative_position_bias_table[index.reshape(-1)].reshape(n, n, 2).permute(2, 0, 1)
    q, k, v = attn.qkv(x).reshape(2, 3, n, 3, 2, 4).permute(3, 0, 1, 4, 2, 5)
    logits = (q * 4 ** -0.5) @ k.transpose(-2, -1) + bias + mask[:, None]
    want = attn.proj((logits.softmax(-1) @ v).transpose(2, 3).reshape(2, 3, n, 8))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_clipped_window_bias_is_a_subset_of_the_full_table():
    torch.manual_seed(0)
    attn = WindowAttention(dim=4, num_heads=1, window_size=(5, 6))
    full = attn.relative_position_bias((5, 6))[0]
    clipped = attn.relative_position_bias((3, 6))[0]
    rows = torch.arange(3 * 6)  # the first 3 rows of a 5x6 window are the same positions, row-major
    torch.testing.assert_close(clipped, full[rows][:, rows])


@pytest.mark.parametrize("sizes,window,shift", [((10, 12), (5, 6), (2, 3)), ((6, 4, 6), (3, 2, 3), (1, 1, 0))])
def test_shifted_mask_blocks_wrapped_tokens(sizes, window, shift):
    # After rolling by -shift, a token at rolled position r came from across the border iff r >= size - shift;
    # inside a window, tokens may attend to each other iff they agree on that along every axis.
    mask = shifted_window_mask(sizes, window, shift)
    wrapped = torch.zeros(*sizes, len(sizes))
    for pos in itertools.product(*[range(s) for s in sizes]):
        wrapped[pos] = torch.tensor([float(s > 0 and p >= n - s) for p, n, s in zip(pos, sizes, shift)])
    w = window_partition(wrapped[None], window)[0]  # (nW, N, d)
    allowed = (w[:, :, None, :] == w[:, None, :, :]).all(-1)
    assert torch.equal(mask == 0, allowed)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}


def test_window_partition_round_trip():
    x = torch.randn(2, 6, 8, 10, 3)
    windows = window_partition(x, (3, 4, 5))
    assert windows.shape == (2, 8, 60, 3)
    torch.testing.assert_close(window_reverse(windows, (3, 4, 5), (6, 8, 10)), x)
    # The first window is the top-left-front block.
    torch.testing.assert_close(windows[0, 0].reshape(3, 4, 5, 3), x[0, :3, :4, :5])


def test_block_handles_maps_smaller_than_and_not_divisible_by_the_window():
    torch.manual_seed(0)
    block = SwinTransformerBlock(dim=8, num_heads=2, window_size=(5, 6), shifted=True).eval()
    for sizes in [(2, 3), (7, 6), (5, 6), (1, 1)]:
        x = torch.randn(1, *sizes, 8)
        out = block(x)
        assert out.shape == x.shape and torch.isfinite(out).all()


def test_invalid_configs_raise():
    with pytest.raises(ValueError, match="4 stages"):
        TransMorph(2, depths=(2, 2, 2), num_heads=(2, 2, 2))
    with pytest.raises(ValueError, match="divisible"):
        TransMorph(2, embed_dim=10, num_heads=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="window_size"):
        TransMorph(3, window_size=(5, 6))
    with pytest.raises(ValueError, match="spatial_dims"):
        TransMorph(4)
    model = TransMorph(2, **SMALL)
    with pytest.raises(ValueError, match="equal shape"):
        model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32, 32))


def test_training_after_inference_mode_forward():
    # Cached window indices/masks made under inference_mode (Lightning validation) must not leak into training.
    torch.manual_seed(0)
    model = TransMorph(2, **SMALL)
    moving, fixed = _pair(1, 64, 64)
    with torch.inference_mode():
        model.eval()(moving, fixed)
    out = model.train()(moving, fixed)
    out.sum().backward()
    assert model.encoder.stages[0][1].attn.relative_position_bias_table.grad is not None
