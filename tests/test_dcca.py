"""DCCANet: front end, CA / ECA / vectorisation blocks against literal references, shapes, parameter
counts of every Table 4 variant, gradients, checkpoint reload."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_modules.blocks.coordinate_attention import TimeFrequencyCoordinateAttention
from lightning_modules.blocks.eca import EfficientChannelAttention, adaptive_eca_kernel_size
from lightning_modules.blocks.stft_features import NormalisedSTFTFeatures, normalise_per_frame
from lightning_modules.blocks.vectorisation import TimeFrequencyChannelVectorisation
from lightning_modules.dcca import DCCANet
from lightning_modules.tasks.regression import RegressionTask
from lightning_modules.utils import count_parameters

SMALL = dict(segment_samples=4000, stem_channels=8, growth_rate=4, dense_layers=2, ca_hidden_channels=4,
             channel_kernel_size=3)


def test_front_end_is_2x129x188_for_3s_at_8khz_and_matches_a_numpy_reference():
    torch.manual_seed(0)
    wave = torch.randn(2, 24000, dtype=torch.float64)
    features = NormalisedSTFTFeatures()(wave)  # float64 in, float64 out
    assert features.shape == (2, 2, 129, 188)  # the paper's 129 x 188
    # numpy: centred frames (reflect padding), periodic Hamming window, rfft
    x = np.pad(wave[0].numpy(), 128, mode="reflect")
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(256) / 256)
    frames = np.stack([x[i * 128:i * 128 + 256] * window for i in range(188)], axis=1)
    spectrum = np.fft.rfft(frames, axis=0)
    for channel, part in enumerate((np.abs(spectrum), np.angle(spectrum))):
        expected = (part - part.mean(0)) / (part.var(0) + 1e-5)  # Eq. (2): divided by the variance
        # The reflect-padded first frame is symmetric, so its spectrum is real up to a linear phase and
        # its angles sit at +-pi, where round-off decides the sign: compare the phase from frame 1 on.
        first = 0 if channel == 0 else 1
        np.testing.assert_allclose(features[0, channel, :, first:].numpy(), expected[:, first:], rtol=1e-5, atol=1e-5)


def test_per_frame_normalisation_std_option_standardises_each_frame():
    x = torch.randn(3, 129, 20) * 5 + 2
    out = normalise_per_frame(x, "std", eps=0.0)
    assert torch.allclose(out.mean(-2), torch.zeros(3, 20), atol=1e-5)
    assert torch.allclose(out.std(-2, unbiased=False), torch.ones(3, 20), atol=1e-5)


def _reference_eca(x, conv):
    """The authors' eca_layer (github BangguWu/ECANet, models/eca_module.py)."""
    y = nn.AdaptiveAvgPool2d(1)(x)
    y = conv(y.squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
    return x * torch.sigmoid(y).expand_as(x)


def test_eca_matches_the_authors_layer_and_adaptive_kernel_size():
    torch.manual_seed(0)
    eca = EfficientChannelAttention(13)
    x = torch.randn(2, 256, 9, 11)
    assert torch.allclose(eca(x), _reference_eca(x, eca.conv), atol=1e-6)
    assert count_parameters(eca) == 13  # one k-tap kernel, no bias
    # ECA-Net: k = |log2(C)/2 + 1/2|_odd -> 5 for 256 channels, 3 for 64, 7 for 2048
    assert [adaptive_eca_kernel_size(c) for c in (64, 256, 2048)] == [3, 5, 7]
    with pytest.raises(ValueError):
        EfficientChannelAttention(4)


def test_coordinate_attention_follows_eqs_4_to_6_channel_by_channel():
    torch.manual_seed(0)
    f, t = 9, 12
    ca = TimeFrequencyCoordinateAttention(f, t, hidden_channels=5, softmax_rescale=False)
    x = torch.randn(2, 3, f, t)
    out = ca(x)
    for b in range(2):
        for c in range(3):
            xi = x[b, c]  # (F, T)
            a_t = torch.sigmoid(ca.time_profile.conv2(torch.relu(ca.time_profile.conv1(xi[None]))))[0]  # (1, T)
            a_f = torch.sigmoid(ca.frequency_profile.conv2(torch.relu(ca.frequency_profile.conv1(xi.T[None]))))[0].T
            weights = torch.softmax((a_f @ a_t).flatten(), 0).view(f, t)  # delta(A_F (x) A_T)
            assert torch.allclose(out[b, c], xi * weights, atol=1e-6)
    rescaled = TimeFrequencyCoordinateAttention(f, t, hidden_channels=5, softmax_rescale=True)
    rescaled.load_state_dict(ca.state_dict())
    assert torch.allclose(rescaled(x), out * f * t, atol=1e-5)
    with pytest.raises(ValueError, match="9 x 12"):
        ca(torch.randn(1, 3, f, t + 1))


def test_vectorisation_concatenates_time_and_frequency_vectors_then_fuses_channels():
    torch.manual_seed(0)
    f, t, c = 5, 7, 4
    block = TimeFrequencyChannelVectorisation(f, t)
    x = torch.randn(2, c, f, t)
    w_t, b_t = block.time_vector.weight.view(f), block.time_vector.bias
    w_f, b_f = block.frequency_vector.weight.view(t), block.frequency_vector.bias
    v_t = torch.einsum("bcft,f->bct", x, w_t) + b_t  # V_T^c in R^{1 x T}
    v_f = torch.einsum("bcft,t->bcf", x, w_f) + b_f  # V_F^c in R^{1 x F}
    v_m = torch.cat([v_t, v_f], dim=2)  # (B, C, T + F), Eq. (8)
    expected = v_m @ block.channel_fusion.weight.view(t + f) + block.channel_fusion.bias
    assert torch.allclose(block(x), expected, atol=1e-5)
    per_channel = TimeFrequencyChannelVectorisation(f, t, num_channels=c, per_channel=True)
    assert per_channel(x).shape == (2, c)
    assert count_parameters(per_channel) == c * (f + 1) + c * (t + 1) + (f + t + 1)


def _expected_parameters(attention, stem=64, growth=32, layers=6, bn=4, hidden=32, f=129, t=188, v=7, v_c=13):
    """Layer-by-layer count from the paper's sizes (independent of the code)."""
    n = 2 * stem * 9 + 2 * stem  # stem conv (no bias) + BN
    channels = stem
    for _ in range(layers):  # BN-ReLU-Conv1x1(bn*growth)-BN-ReLU-Conv3x3(growth)
        n += 2 * channels + channels * bn * growth + 2 * bn * growth + bn * growth * growth * 9
        channels += growth
    n += 2 * channels  # final BN
    if attention in ("cca", "ca"):
        n += (f * hidden * v + hidden) + (hidden * v + 1) + (t * hidden * v + hidden) + (hidden * v + 1)
    if attention in ("cca", "eca"):
        n += v_c
    n += (f + 1) + (t + 1) + (f + t + 1)  # vectorisation
    n += channels + 1  # fully connected
    return n, channels


@pytest.mark.parametrize("attention", ["cca", "ca", "eca", "none"])
def test_parameter_counts_of_the_table_4_variants(attention):
    """The paper gives no counts: ours must equal the count of its stated layer sizes exactly (409,261 for
    DCCANet; the dense block's 256 channels are the paper's)."""
    with torch.device("meta"):
        model = DCCANet(attention=attention)
    expected, channels = _expected_parameters(attention)
    assert channels == model.num_channels == 256
    assert count_parameters(model) == expected
    if attention == "cca":
        assert expected == 409_261


def test_small_dccanet_shapes_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = DCCANet(**SMALL)
    assert model.feature_size == (129, 32)
    wave = torch.randn(3, 4000)
    scores = model(wave)
    assert scores.shape == (3,)
    scores.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="4000-sample"):
        model(torch.randn(1, 3999))


def test_stem_stride_shrinks_the_maps_and_ablations_drop_their_blocks():
    model = DCCANet(**{**SMALL, "attention": "none"}, stem_stride=2)
    assert model.feature_size == (65, 16)
    assert isinstance(model.coordinate_attention, nn.Identity) and isinstance(model.channel_attention, nn.Identity)
    assert model(torch.randn(2, 4000)).shape == (2,)
    assert isinstance(DCCANet(**SMALL, attention="eca").coordinate_attention, nn.Identity)
    with pytest.raises(ValueError):
        DCCANet(attention="se")


def test_forward_under_bf16_autocast_keeps_the_front_end_in_float32():
    model = DCCANet(**SMALL).eval()
    wave = torch.randn(2, 4000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model.features(wave)
        scores = model(wave)
    assert features.dtype == torch.float32 and torch.isfinite(scores).all()
    with torch.no_grad():
        torch.testing.assert_close(features, model.features(wave))  # the front end does not run in bf16
        reference = model(wave)
    assert (scores.float() - reference).abs().max() <= 0.05 * reference.abs().max() + 1e-3


def test_regression_task_reloads_from_a_checkpoint(tmp_path):
    from lightning.pytorch import Trainer

    task = RegressionTask(network=DCCANet(**SMALL), clamp_range=[0, 63])
    trainer = Trainer(logger=False, enable_checkpointing=False, max_epochs=0, enable_progress_bar=False)
    trainer.strategy.connect(task)
    task.train_target_mean.fill_(21.5)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    # Built in Python, the network object cannot go in hparams: pass it again (the CLI path saves it).
    again = RegressionTask.load_from_checkpoint(path, network=DCCANet(**SMALL), map_location="cpu")
    assert again.clamp_range == (0.0, 63.0) and float(again.train_target_mean) == 21.5
    wave = torch.randn(2, 4000)
    task.eval(), again.eval()
    assert torch.allclose(task.predict_scores(wave), again.predict_scores(wave))
    assert math.isclose(count_parameters(again), count_parameters(task))
