"""DiffCMR: network structure and parameter count, the diffusion schedule against the paper's formula,
Algorithm 2's update, the sampler (shapes, determinism, ensembling, DDIM) and the baselines' networks."""
import numpy as np
import pytest
import torch

from lightning_modules.blocks.diffusion_unet import timestep_embedding
from lightning_modules.diffcmr import DiffCMR
from lightning_modules.patch_discriminator import ConditionalPatchDiscriminator
from lightning_modules.reconstruction_unet import ReconstructionUNet
from lightning_modules.tasks.reconstruction import DiffusionReconstructionTask, linear_beta_range
from lightning_modules.utils import count_parameters

TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_downsample=(2,), num_heads=2,
            rrdb_blocks=1, rrdb_channels=8, rrdb_growth=8)


# -- parameter counts from the architecture's description, layer by layer -----------------------------
def _conv(cin, cout, k=3):
    return cin * cout * k * k + cout


def _linear(cin, cout):
    return cin * cout + cout


def _resblock(cin, cout, emb):
    skip = 0 if cin == cout else _conv(cin, cout, 1)
    return 2 * cin + _conv(cin, cout) + _linear(emb, 2 * cout) + 2 * cout + _conv(cout, cout) + skip


def _attention(c):
    return 2 * c + (c * 3 * c + 3 * c) + (c * c + c)


def expected_unet_parameters(c=128, mult=(1, 1, 2, 2, 4, 4), blocks=2, attention=(8, 16), in_ch=1, out_ch=1):
    emb = 4 * c
    total = _linear(c, emb) + _linear(emb, emb) + _conv(in_ch, c)
    ch, ds, skips = c, 1, [c]
    for level, m in enumerate(mult):
        for _ in range(blocks):
            total += _resblock(ch, m * c, emb) + (_attention(m * c) if ds in attention else 0)
            ch = m * c
            skips.append(ch)
        if level < len(mult) - 1:
            total += _conv(ch, ch)
            skips.append(ch)
            ds *= 2
    total += 2 * _resblock(ch, ch, emb) + _attention(ch)
    for level, m in reversed(list(enumerate(mult))):
        for i in range(blocks + 1):
            total += _resblock(ch + skips.pop(), m * c, emb) + (_attention(m * c) if ds in attention else 0)
            ch = m * c
            if level and i == blocks:
                total += _conv(ch, ch)
                ds //= 2
    return total + 2 * ch + _conv(c, out_ch)


def expected_rrdb_parameters(nf=64, nb=10, gc=32, in_ch=1, out_ch=128):
    rdb = sum(_conv(nf + i * gc, gc) for i in range(4)) + _conv(nf + 4 * gc, nf)
    return _conv(in_ch, nf) + nb * 3 * rdb + 2 * _conv(nf, nf) + _conv(nf, out_ch)


def test_official_size_parameter_count():
    """The official default (C=128, mult 1,1,2,2,4,4, 2 ResBlocks, attention at 16x16 and 8x8, 10 RRDBs).

    The paper gives no count; the expected value is computed above from the layer description of the
    official code (improved-diffusion UNetModel + SegDiff RRDBNet): exact equality, no tolerance.
    """
    with torch.device("meta"):
        model = DiffCMR()
    unet, rrdb = expected_unet_parameters(), expected_rrdb_parameters()
    assert count_parameters(model.unet) == unet
    assert count_parameters(model.condition_encoder) == rrdb
    assert count_parameters(model) == unet + rrdb == 127_451_393


def test_official_layout_has_attention_at_16_and_8_pixels_and_six_levels():
    with torch.device("meta"):
        model = DiffCMR()
    downsamples = [m for m in model.unet.input_blocks if type(m[0]).__name__ == "Downsample"]
    assert len(downsamples) == 5  # 6 levels: 128 -> 4 px
    attention_widths = [m[-1].qkv.in_channels for m in model.unet.input_blocks if type(m[-1]).__name__ == "AttentionBlock"]
    assert attention_widths == [256, 256, 512, 512]  # levels 3 and 4 (ds 8, 16): widths 2C and 4C
    assert model.unet.time_embed[0].in_features == 128 and model.unet.time_embed[2].out_features == 512
    assert len(model.condition_encoder.RRDB_trunk) == 10 and model.condition_encoder.conv_last.out_channels == 128


def test_tiny_diffcmr_shapes_gradients_and_condition_use():
    torch.manual_seed(0)
    model = DiffCMR(**TINY)
    with torch.no_grad():  # undo the zero-init so that every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x, condition = torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    t = torch.tensor([0.0, 990.0])
    out = model(x, condition, t)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing
    # The condition and the timestep both change the output; the cached-condition path is identical.
    assert not torch.allclose(out, model(x, torch.zeros_like(condition), t))
    assert not torch.allclose(out, model(x, condition, t.flip(0)))
    assert torch.allclose(out, model.denoise(x, t, model.encode_condition(condition)))
    with pytest.raises(ValueError):
        model(torch.randn(1, 1, 15, 16), torch.rand(1, 1, 15, 16), t[:1])


def test_timestep_embedding_is_cos_then_sin_of_geometric_frequencies():
    emb = timestep_embedding(torch.tensor([0.0, 3.0]), 8)
    freqs = 10000 ** (-np.arange(4) / 4)
    assert np.allclose(emb[1].numpy(), np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), atol=1e-6)
    assert np.allclose(emb[0].numpy(), [1, 1, 1, 1, 0, 0, 0, 0])


# -- the diffusion ----------------------------------------------------------------------------------
def paper_betas(T):
    """Algorithm 1/2: beta_t = (1e-4 (T - t) + 2e-2 (t - 1)) / (T - 1), t = 1..T."""
    t = np.arange(1, T + 1)
    return (1e-4 * (T - t) + 2e-2 * (t - 1)) / (T - 1)


def _task(**kwargs):
    return DiffusionReconstructionTask(DiffCMR(**TINY), **kwargs)


def test_inference_schedule_is_the_papers_formula_and_training_uses_the_codes_rescaling():
    task = _task()
    inference = task.make_scheduler(1000)
    assert np.allclose(inference.betas.numpy(), paper_betas(1000), rtol=1e-5)
    assert np.allclose(inference.alphas_cumprod.numpy(), np.cumprod(1 - paper_betas(1000)), rtol=1e-4)
    # T_train = 100: the code's scaled linear schedule (1e-3 .. 0.2), i.e. the paper's scaled by 1000/T.
    assert linear_beta_range(100) == pytest.approx((1e-3, 0.2))
    assert np.allclose(task.train_scheduler.betas.numpy(), paper_betas(100) * 10, rtol=1e-5)
    # Both chains end at about the same noise level, which is what makes T=100 training / T=1000 sampling work.
    end_train, end_inference = float(task.train_scheduler.alphas_cumprod[-1]), float(inference.alphas_cumprod[-1])
    assert end_train < 1e-4 and end_inference < 1e-4 and 0.3 < end_train / end_inference < 3
    assert torch.allclose(task.network_timesteps(torch.tensor([0, 50, 99]), 100), torch.tensor([0.0, 500.0, 990.0]))


def test_forward_process_is_equation_4():
    task = _task()
    x0, eps = torch.rand(3, 1, 8, 8), torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 40, 99])
    abar = torch.cumprod(1 - torch.from_numpy(paper_betas(100) * 10).float(), 0)[t][:, None, None, None]
    expected = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    assert torch.allclose(task.train_scheduler.add_noise(x0, eps, t), expected, atol=1e-6)


def test_ddpm_step_is_algorithm_2_with_the_posterior_variance():
    """Without clipping and with sigma_t^2 = beta-tilde_t (Algorithm 2):
    x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t) + sqrt(beta-tilde_t) z."""
    task = _task(variance="fixed_small", clip_denoised=False)
    scheduler = task.make_scheduler(1000)
    x, eps = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    t = 500
    betas = paper_betas(1000)
    abar = np.cumprod(1 - betas)
    out, _ = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(3))
    z = torch.randn(eps.shape, generator=torch.Generator().manual_seed(3))
    beta_tilde = (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]
    expected = (x - betas[t] / np.sqrt(1 - abar[t]) * eps) / np.sqrt(1 - betas[t]) + np.sqrt(beta_tilde) * z
    assert torch.allclose(out, expected.float(), atol=1e-5)
    large = _task(clip_denoised=False).make_scheduler(1000)  # the code's default: sigma_t^2 = beta_t
    out_large, _ = large.step(eps, t, x, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out_large - out, (np.sqrt(betas[t]) - np.sqrt(beta_tilde)) * z, atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_clip_range_bounds_the_predicted_x0(sampler):
    """x0-hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) is clamped to clip_range: the code's [-1, 1]
    lets a small positive bias of eps push x0-hat far below the [0, 1] images; [0, 1] does not."""
    x, eps = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.05)  # eps biased by +0.05 at x_t = 0
    t = 30
    outputs = {}
    for clip in ((-1.0, 1.0), (0.0, 1.0)):
        scheduler = _task(inference_steps=50, clip_range=clip, sampler=sampler).make_scheduler(50, sampler)
        if sampler == "ddim":
            scheduler.set_timesteps(10)
            t = int(scheduler.timesteps[2])
        abar = scheduler.alphas_cumprod[t]
        unclamped = -(1 - abar).sqrt() * 0.05 / abar.sqrt()
        step = scheduler.step(eps, t, x, generator=torch.Generator().manual_seed(0))
        outputs[clip] = step[1]
        assert torch.allclose(step[1], unclamped.clamp(*clip).expand_as(x), atol=1e-6)
    assert outputs[(-1.0, 1.0)].max() < -0.1 and outputs[(0.0, 1.0)].min() == 0.0
    with pytest.raises(ValueError, match="clip_range"):
        _task(clip_range=(1.0, 0.0))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_sampler_shapes_determinism_and_ensembling(sampler):
    torch.manual_seed(0)
    task = _task(inference_steps=10, rounds=3, sampler=sampler, ddim_steps=4).eval()
    condition = torch.rand(2, 1, 16, 16)
    a = task.sample(condition, generator=torch.Generator().manual_seed(1))
    b = task.sample(condition, generator=torch.Generator().manual_seed(1))
    c = task.sample(condition, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 3, 1, 16, 16)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert torch.isfinite(a).all() and a.abs().max() < 10  # T = 10: betas capped at 0.999, no NaN
    out = task.reconstruct(condition)
    assert torch.allclose(out[""], task.reconstruct(condition)[""])  # sample_seed: reproducible tests
    assert out[""].shape == (2, 1, 16, 16) and out["_r1"].shape == (2, 1, 16, 16)
    assert not torch.allclose(out[""], out["_r1"])


def test_sampler_calls_the_network_once_per_step_and_encodes_the_condition_once():
    task = _task(inference_steps=12, rounds=2, sampler="ddpm").eval()
    calls = {"denoise": 0, "encode": 0}
    denoise, encode = task.network.denoise, task.network.encode_condition

    def counting_denoise(*args):
        calls["denoise"] += 1
        return denoise(*args)

    def counting_encode(*args):
        calls["encode"] += 1
        return encode(*args)

    task.network.denoise, task.network.encode_condition = counting_denoise, counting_encode
    task.sample(torch.rand(3, 1, 16, 16))
    assert calls == {"denoise": 12, "encode": 1}  # the 2 rounds x 3 images run as one batch of 6
    task.sampler, task.ddim_steps, calls["denoise"] = "ddim", 5, 0
    task.sample(torch.rand(3, 1, 16, 16))
    assert calls["denoise"] == 5


def test_a_constant_zero_noise_prediction_scores_one():
    """The trivial baseline of the epsilon loss: the zero-initialised network predicts 0 -> MSE ~ 1."""
    task = _task()
    batch = {"image": torch.rand(64, 1, 16, 16), "target": torch.rand(64, 1, 16, 16)}
    loss = task.diffusion_loss(batch, torch.Generator().manual_seed(0))
    assert float(loss) == pytest.approx(1.0, abs=0.05)


# -- baselines -----------------------------------------------------------------------------------------
def test_unet_baseline_is_fastmri_unet_size_and_shape():
    model = ReconstructionUNet()
    # fastMRI Unet(in_chans=1, out_chans=1, chans=32, num_pool_layers=4): 7,756,097 parameters.
    assert count_parameters(model) == 7_756_097
    x = torch.rand(2, 1, 128, 128)
    assert model(x).shape == x.shape
    assert model(torch.rand(1, 1, 60, 44)).shape == (1, 1, 60, 44)  # odd sizes after pooling


def test_cgan_discriminator_is_a_conditional_70px_patchgan():
    model = ConditionalPatchDiscriminator()
    logits = model(torch.rand(2, 2, 128, 128))
    assert logits.shape == (2, 1, 14, 14)  # 70x70 receptive fields on a 128x128 pair
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1] and convs[0].in_channels == 2
