"""SFRSeg-Net: IEWA-DWT against PyWavelets, the pooling switch, network shapes/parameters/gradients."""
import numpy as np
import pytest
import pywt
import torch

from lightning_modules.blocks.wavelet import (POOLINGS, GlobalContextPool, HaarDWT, IEWADWTPool, MixedPool,
                                              PolynomialPool, SecondOrderPool, StochasticPool, make_pool)
from lightning_modules.sfrseg_net import SFRSegNet
from lightning_modules.utils import count_parameters


# -- wavelet pooling against the reference library --------------------------------------------------------
def test_haar_dwt_equals_pywavelets_dwt2():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 10, 14))
    bands = HaarDWT()(torch.tensor(x, dtype=torch.float64)).numpy()
    for b in range(2):
        for c in range(3):
            approx, (horizontal, vertical, diagonal) = pywt.dwt2(x[b, c], "haar")
            for index, reference in enumerate((approx, horizontal, vertical, diagonal)):
                np.testing.assert_allclose(bands[b, index, c], reference, atol=1e-12)


def test_iewa_dwt_is_ll_plus_lh_plus_hl_of_pywavelets():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 4, 16, 12))
    out = IEWADWTPool()(torch.tensor(x, dtype=torch.float64)).numpy()
    assert out.shape == (2, 4, 8, 6)
    for b in range(2):
        for c in range(4):
            approx, (horizontal, vertical, _) = pywt.dwt2(x[b, c], "haar")
            np.testing.assert_allclose(out[b, c], approx + horizontal + vertical, atol=1e-12)
    # The card's closed form: a depthwise 2x2 stride-2 kernel [[3, 1], [1, -1]] / 2.
    torch.testing.assert_close(IEWADWTPool().kernels[0, 0], torch.tensor([[1.5, 0.5], [0.5, -0.5]]))


def test_iewa_dwt_concat_and_band_variants():
    x = torch.randn(1, 2, 8, 8, dtype=torch.float64)
    bands = HaarDWT()(x)  # (1, 4, 2, 4, 4)
    concat = IEWADWTPool(combine="concat")(x)
    assert concat.shape == (1, 6, 4, 4)
    torch.testing.assert_close(concat[0, :3], bands[0, :3, 0])  # channel 0's LL, LH, HL adjacent
    torch.testing.assert_close(IEWADWTPool(bands=("LL",))(x), bands[:, 0])
    torch.testing.assert_close(IEWADWTPool(bands=("LL", "LH", "HL", "HH"))(x), bands.sum(1))
    with pytest.raises(ValueError):
        IEWADWTPool(bands=("XX",))


def test_odd_sizes_are_reflect_padded():
    x = torch.randn(1, 1, 7, 9)
    pooled = IEWADWTPool()(x)
    assert pooled.shape == (1, 1, 4, 5)
    # The same as pooling the input reflect-padded by one row and column at the end by hand.
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="reflect")
    torch.testing.assert_close(pooled, IEWADWTPool()(padded))


def test_mixed_and_stochastic_pooling():
    x = torch.rand(2, 3, 8, 8)
    mixed = MixedPool().eval()
    torch.testing.assert_close(mixed(x), 0.5 * (torch.nn.functional.max_pool2d(x, 2) + torch.nn.functional.avg_pool2d(x, 2)))
    training = MixedPool().train()(x)
    assert torch.allclose(training, torch.nn.functional.max_pool2d(x, 2)) or torch.allclose(
        training, torch.nn.functional.avg_pool2d(x, 2))
    # Stochastic: training picks a member of each window; evaluation the value-weighted mean.
    window = torch.tensor([[[[1.0, 3.0], [0.0, 0.0]]]])
    assert StochasticPool().eval()(window).item() == pytest.approx((1 + 9) / 4)
    torch.manual_seed(0)
    picks = {StochasticPool().train()(window).item() for _ in range(50)}
    assert picks == {1.0, 3.0}


def _window_members(x):
    """Direct (B, C, h, w, 4) list of each 2 x 2 window's members, by strided slicing."""
    return torch.stack([x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]], dim=-1)


def test_polynomial_pooling_spans_average_to_max():
    x = torch.rand(2, 3, 8, 6, dtype=torch.float64) + 0.01
    pool = PolynomialPool(3).double()
    windows = _window_members(x)
    # p = 1 (the initial value): sum x^2 / sum x, computed directly.
    torch.testing.assert_close(pool(x), windows.square().sum(-1) / windows.sum(-1), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        pool.p.fill_(0.0)
    torch.testing.assert_close(pool(x), torch.nn.functional.avg_pool2d(x, 2))
    with torch.no_grad():
        pool.p.copy_(torch.tensor([2.0, 3.5, 0.5], dtype=torch.float64))
    powers = pool.p.detach().view(1, 3, 1, 1, 1)
    direct = (windows ** (powers + 1)).sum(-1) / (windows ** powers).sum(-1)
    torch.testing.assert_close(pool(x), direct, rtol=1e-5, atol=1e-6)
    # Between average and max, and at a large exponent it is max pooling.
    out = pool(x)
    assert (out >= torch.nn.functional.avg_pool2d(x, 2) - 1e-9).all()
    assert (out <= torch.nn.functional.max_pool2d(x, 2) + 1e-9).all()
    with torch.no_grad():
        pool.p.fill_(500.0)
    torch.testing.assert_close(pool(x), torch.nn.functional.max_pool2d(x, 2), rtol=0, atol=2e-3)
    # An all-zero window gives 0, with a finite gradient; the exponent is learned.
    zeros = torch.zeros(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    out = pool(zeros)
    assert out.abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(zeros.grad).all()
    pool = PolynomialPool(3)
    pool(torch.rand(1, 3, 4, 4)).sum().backward()
    assert pool.p.grad is not None and pool.p.grad.abs().sum() > 0


def test_second_order_pooling_reads_the_window_second_moment_matrix():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    pool = SecondOrderPool(5).double()
    windows = _window_members(x)  # (B, C, h, w, 4)
    # At initialisation (U = V = I) the diagonal of G: root-mean-square pooling.
    rms = windows.square().mean(-1).sqrt()
    torch.testing.assert_close(pool(x), rms, rtol=0, atol=2e-2)
    with torch.no_grad():
        pool.left.weight.normal_()
        pool.right.weight.normal_()
    # Carreira et al.'s 2O-avg matrix G = 1/4 sum_i x_i x_i^T per window, read out by u_k^T G v_k.
    gram = torch.einsum("bchwi,bdhwi->bhwcd", windows, windows) / 4
    u, v = pool.left.weight[:, :, 0, 0].detach(), pool.right.weight[:, :, 0, 0].detach()
    g = torch.einsum("kc,bhwcd,kd->bkhw", u, gram, v)
    direct = g.sign() * ((g.abs() + pool.eps).sqrt() - pool.eps ** 0.5)
    torch.testing.assert_close(pool(x), direct)
    assert pool(x).shape == (2, 5, 3, 4)


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_global_pooling_adds_the_whole_map_descriptor(mode):
    x = torch.rand(2, 4, 8, 12)
    local = torch.nn.functional.max_pool2d if mode == "max" else torch.nn.functional.avg_pool2d
    whole = x.amax(dim=(-2, -1), keepdim=True) if mode == "max" else x.mean(dim=(-2, -1), keepdim=True)
    out = GlobalContextPool(mode)(x)
    assert out.shape == (2, 4, 4, 6)
    torch.testing.assert_close(out, local(x, 2) + whole)
    # A change in one corner reaches every output position (local pooling would change one).
    y = x.clone()
    y[..., 0, 0] += 5.0
    assert (GlobalContextPool(mode)(y) != out).all()


# -- the network ---------------------------------------------------------------------------------------------
def test_parameter_count_of_the_cards_choice():
    """The paper gives no count ("lightweight"); the card's choice (Keras-style 2x2 ConvT, BN with two
    trainable parameters per channel) gives exactly these numbers."""
    with torch.device("meta"):
        assert count_parameters(SFRSegNet()) == 1_944_049
        assert count_parameters(SFRSegNet(up_kernel_size=3)) == 2_161_649
        # Parameter-free poolings keep the count; Souza's fusion convs and concat's wider inputs add some.
        for pool in ("max", "avg", "mixed", "stochastic", "dwt_ll", "dwt_all"):
            assert count_parameters(SFRSegNet(pool=pool)) == 1_944_049
        assert count_parameters(SFRSegNet(pool="max_dwt")) == 1_944_049 + sum(2 * c * c + c for c in (16, 32, 64, 128))
        # Table 2's other rivals: global max/avg are parameter-free; polynomial pooling learns one exponent
        # per channel (+240), second-order pooling two C x C read-out maps per pooling layer (+43,520).
        for pool in ("global_max", "global_avg"):
            assert count_parameters(SFRSegNet(pool=pool)) == 1_944_049
        assert count_parameters(SFRSegNet(pool="polynomial")) == 1_944_049 + 240
        assert count_parameters(SFRSegNet(pool="second_order")) == 1_944_049 + 43_520


def test_eighteen_convolutions_with_the_papers_filters():
    net = SFRSegNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    three_by_three = [c.out_channels for c in convs if c.kernel_size == (3, 3)]
    assert three_by_three == [16, 16, 32, 32, 64, 64, 128, 128, 256, 256, 128, 128, 64, 64, 32, 32, 16, 16]
    assert all(isinstance(p, IEWADWTPool) for p in net.pools) and len(net.pools) == 4


@pytest.mark.parametrize("pool", POOLINGS)
def test_every_pooling_builds_trains_and_keeps_the_shape(pool):
    net = SFRSegNet(filters=(4, 8, 8, 16, 16), pool=pool)
    x = torch.rand(2, 3, 32, 48)
    out = net(x)
    assert out.shape == (2, 1, 32, 48)
    out.square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("pool", ["polynomial", "second_order", "global_max", "global_avg"])
def test_table2_poolings_fit_a_small_batch(pool):
    """A tiny SFRSeg-Net with each Table 2 rival lowers BCE on a fixed batch (a dark disc to find)."""
    torch.manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    masks = torch.stack([((rows - cy) ** 2 + (cols - cx) ** 2 < 36).float() for cy, cx in ((10, 12), (20, 18))])
    images = (0.7 - 0.5 * masks + 0.1 * torch.rand(2, 32, 32))[:, None].expand(2, 3, 32, 32)
    net = SFRSegNet(filters=(4, 8, 8, 16, 16), pool=pool)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(images), masks[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("size", [(128, 128), (64, 80)])
def test_full_model_shapes(size):
    net = SFRSegNet().eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, *size)).shape == (1, 1, *size)
    assert SFRSegNet(up_kernel_size=3).eval()(torch.rand(1, 3, *size)).shape == (1, 1, *size)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown pooling"):
        make_pool("bogus", 8)
    with pytest.raises(ValueError, match="p_init"):
        PolynomialPool(4, p_init=-1.0)
    with pytest.raises(ValueError, match="mode"):
        GlobalContextPool("min")
    with pytest.raises(ValueError, match="divisible by 16"):
        SFRSegNet()(torch.rand(1, 3, 40, 40))


# -- learning-rate schedule ------------------------------------------------------------------------------------
def test_inverse_time_decay_matches_keras_legacy_decay():
    from lightning_modules.sfrseg_net import InverseTimeDecayLR

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = InverseTimeDecayLR(optimizer, decay=0.005)
    lrs = []
    for _ in range(401):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    for step in (0, 1, 200, 400):
        assert lrs[step] == pytest.approx(1e-3 / (1 + 0.005 * step))
    assert lrs[200] == pytest.approx(5e-4)  # halved after 200 iterations


# -- end to end through run.py on the stand-in ---------------------------------------------------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import run  # noqa: E402
from lightning_modules.tasks.segmentation import SegmentationTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
         "--data.num_workers", "0", "--data.image_size", "[64, 64]", "--data.num_images", "20",
         "--data.batch_size", "16", "--model.init_args.figure_every_n_epochs", "0",
         "--model.init_args.network.init_args.filters", "[8, 16, 32, 64, 128]"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cli = run.main(["--config", str(ROOT / "experiments" / "sfrseg_net_demo.yaml"), *QUICK, "--runs_dir", str(runs),
                    "--run_id", "t"])
    return cli, runs / "sfrseg_net_demo" / "t"


def test_demo_learns_to_segment_the_standin(demo_run):
    cli, run_dir = demo_run
    results = json.loads((run_dir / "results.json").read_text())
    # Per-image Dice (the paper's DSC) beats all-background (0) and all-foreground (2p/(1+p) per image).
    test_set = cli.datamodule.test_set
    shares = torch.stack([test_set[i]["mask"].mean() for i in range(len(test_set))])
    assert results["test/dice_all_background"] == 0.0
    assert results["test/dice"] > (2 * shares / (1 + shares)).mean().item() + 0.25, results
    assert results["test/num_images"] == 4 * 18  # 20 images -> 4 test images x 18 offline copies
    scheduler = cli.trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    steps = cli.trainer.global_step
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 / (1 + 0.005 * steps))


def test_checkpoint_reloads_without_the_cli(demo_run):
    cli, run_dir = demo_run
    model = SegmentationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert isinstance(model.network, SFRSegNet) and model.network.pool_kind == "iewa_dwt"
    assert model.hparams["metric_aggregation"] == "per_image"
    image = torch.rand(2, 3, 64, 64)
    # After fit-then-test the CLI's module holds the best checkpoint's weights.
    torch.testing.assert_close(cli.model.eval()(image), model.eval()(image))


@pytest.mark.slow
def test_full_demo(tmp_path):
    run.main(["--config", str(ROOT / "experiments" / "sfrseg_net_demo.yaml"), "--runs_dir", str(tmp_path), "--run_id", "d",
              "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / "sfrseg_net_demo" / "d" / "results.json").read_text())
    assert results["test/dice"] > 0.8, results
