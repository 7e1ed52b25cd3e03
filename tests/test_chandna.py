"""Chandna et al. CNN: shapes, parameter counts, masks, gradients, the discriminative loss, chunked separation."""
import pytest
import torch

from lightning_modules.chandna_cnn import ChandnaCNN, soft_masks
from lightning_modules.losses.separation import chandna_discriminative_loss
from lightning_modules.tasks.separation import SeparationTask
from lightning_modules.utils import count_parameters

# The paper gives no parameter count. These are the layer sizes' exact sums, written out from the
# architecture, and they must agree with the card's estimates (0.41 M report setting, 0.58 M code
# setting) to 1 %, the rounding of those estimates.
REPORT_PARAMETERS = (50 * 513 + 50) + (30 * 50 * 12 + 30) + (30 * 19 * 128 + 128) + 4 * (128 * 30 * 19 + 30 * 19) + 4
CODE_PARAMETERS = (50 * 513 + 50) + (50 * 50 * 15 + 50) + (50 * 16 * 128 + 128) + 4 * (128 * 50 * 16 + 50 * 16) + 4


def test_parameter_counts_report_and_code_settings():
    report = ChandnaCNN()
    code = ChandnaCNN(horizontal_filters=50, horizontal_kernel=(15, 1))
    assert count_parameters(report) == REPORT_PARAMETERS == 410_942
    assert count_parameters(code) == CODE_PARAMETERS == 578_582
    assert count_parameters(report) == pytest.approx(0.41e6, rel=0.01)
    assert count_parameters(code) == pytest.approx(0.58e6, rel=0.01)
    # Untied decoders add one transposed-conv weight per stage (no bias, as Lasagne's InverseLayer).
    assert count_parameters(ChandnaCNN(tied_decoder=False)) == REPORT_PARAMETERS + 30 * 50 * 12 + 50 * 513


def test_shapes_masks_and_mixture_consistency():
    torch.manual_seed(0)
    model = ChandnaCNN()
    assert model.code_shape == (30, 19, 1)
    mixture = torch.rand(3, 30, 513) + 0.1
    raw = model.raw_estimates(mixture)
    assert raw.shape == (3, 4, 30, 513) and (raw >= 0).all()
    estimates = model(mixture)
    assert estimates.shape == (3, 4, 30, 513)
    # Where the network is active the masks sum to one, so the estimates add up to the mixture.
    active = raw.sum(1) > 1e-3
    torch.testing.assert_close(estimates.sum(1)[active], mixture[active], atol=1e-4, rtol=1e-4)
    assert torch.equal(model(mixture[:, None]), estimates)  # (B, 1, T, F) input as well


def test_soft_masks_formula():
    y = torch.tensor([[1.0, 3.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])[None]  # (1, S=4, 2 bins)
    masks = soft_masks(y)
    torch.testing.assert_close(masks[0, :, 0], torch.tensor([0.25, 0.0, 0.75, 0.0]))
    torch.testing.assert_close(masks[0, :, 1], torch.tensor([0.75, 0.25, 0.0, 0.0]))


def test_decoders_are_weight_tied_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = ChandnaCNN(time_context=30, num_bins=65, vertical_kernel=(1, 65))
    targets = torch.rand(2, 4, 30, 65)
    loss = chandna_discriminative_loss(model(torch.rand(2, 30, 65) + 0.1), targets)["loss"]
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    names = {name for name, _ in model.named_parameters()}
    assert not any("inverse" in name for name in names)  # the deconvolutions reuse the conv weights


def test_discriminative_loss_against_hand_computed_values():
    # One bin per source: estimates e = (1, 2, 3, 4), targets y = (1, 0, 0, 2) (vocals, bass, drums, other).
    e = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)
    y = torch.tensor([1.0, 0.0, 0.0, 2.0]).reshape(1, 4, 1, 1)
    sq = (1 - 1) ** 2 + (2 - 0) ** 2 + (3 - 0) ** 2  # 13
    diff = ((1 - 0) ** 2 + (1 - 0) ** 2) + ((2 - 1) ** 2 + (2 - 0) ** 2) + ((3 - 1) ** 2 + (3 - 0) ** 2)  # 2 + 5 + 13
    other = (2 - 2) ** 2 + (3 - 2) ** 2  # 1
    othervocals = (1 - 2) ** 2  # 1
    terms = chandna_discriminative_loss(e, y, alpha=0.001, beta=0.01, beta_vocals=0.03)
    assert terms["sq"].item() == sq and terms["diff"].item() == diff
    assert terms["other"].item() == other and terms["othervocals"].item() == othervocals
    assert terms["loss"].item() == pytest.approx(abs(sq - 0.001 * diff - 0.01 * other - 0.03 * othervocals))
    # "other" (source 4) is never fitted directly: changing its estimate leaves the loss unchanged.
    e2 = e.clone()
    e2[:, 3] = 100.0
    assert chandna_discriminative_loss(e2, y)["loss"].item() == terms["loss"].item()
    # The abs() of the code: a loss dominated by the negative terms is still >= 0.
    big = chandna_discriminative_loss(y, y.flip(1), alpha=10.0)
    assert big["loss"].item() == pytest.approx(abs(big["sq"] - 10.0 * big["diff"] - 0.01 * big["other"]
                                                   - 0.03 * big["othervocals"]).item())
    mean = chandna_discriminative_loss(e.expand(2, 4, 3, 5), y.expand(2, 4, 3, 5), reduction="mean")
    assert mean["loss"].item() == pytest.approx(terms["loss"].item())


def test_chunked_separation_overlap_adds_and_covers_every_frame():
    """With an identity-like network (each source = mixture / 4), averaging the overlapping chunks gives
    back mixture / 4 on every frame, including the zero-padded tail; the mixture phase resynthesises it."""

    class Quarter(torch.nn.Module):
        time_context = 30

        def forward(self, x):
            return x[:, None].expand(-1, 4, -1, -1) / 4

    task = SeparationTask(network=Quarter(), n_fft=256, hop_length=64, chunk_stride=5, eval_chunk_batch=7)
    magnitude = torch.rand(103, 129)  # 103 frames: not a multiple of the stride
    torch.testing.assert_close(task.separate_magnitudes(magnitude), magnitude.expand(4, -1, -1) / 4)
    mixture = torch.randn(6400)
    torch.testing.assert_close(task.separate(mixture), mixture.expand(4, -1) / 4, atol=1e-4, rtol=0)


def test_baseline_estimators():
    mixture_task = SeparationTask(estimator="mixture", n_fft=256, hop_length=64)
    sources = torch.randn(4, 6400)
    mixture = sources.sum(0)
    assert torch.equal(mixture_task.separate(mixture), mixture.expand(4, -1))
    oracle = SeparationTask(estimator="oracle_irm", n_fft=256, hop_length=64)
    estimates = oracle.separate(mixture, sources)
    torch.testing.assert_close(estimates.sum(0), mixture, atol=1e-3, rtol=0)  # ratio masks sum to one
    error = (estimates - sources).square().sum() / sources.square().sum()
    assert error < 1.0  # far better than the mixture (relative error 3 for 4 equal-power noises)
    with pytest.raises(ValueError, match="needs a network"):
        SeparationTask(estimator="network")
