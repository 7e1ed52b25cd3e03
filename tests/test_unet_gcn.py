"""UNet-GCN (breast ultrasound): GCN block, network shapes/parameter counts/gradients, ablation switches."""
import pytest
import torch
from torch import nn

from lightning_modules.blocks.gcn import GlobalConvBlock
from lightning_modules.unet_gcn import UNetGCN
from lightning_modules.utils import count_parameters


# -- the GCN block ------------------------------------------------------------------------------------
def test_gcn_block_is_the_sum_of_two_separable_branches():
    torch.manual_seed(0)
    block = GlobalConvBlock(3, 4, kernel_size=5)
    x = torch.randn(2, 3, 12, 10)
    left = nn.functional.conv2d(nn.functional.conv2d(x, block.left[0].weight, block.left[0].bias, padding=(2, 0)),
                                block.left[1].weight, block.left[1].bias, padding=(0, 2))
    right = nn.functional.conv2d(nn.functional.conv2d(x, block.right[0].weight, block.right[0].bias, padding=(0, 2)),
                                 block.right[1].weight, block.right[1].bias, padding=(2, 0))
    assert block.left[0].weight.shape == (4, 3, 5, 1) and block.left[1].weight.shape == (4, 4, 1, 5)
    assert block.right[0].weight.shape == (4, 3, 1, 5) and block.right[1].weight.shape == (4, 4, 5, 1)
    torch.testing.assert_close(block(x), left + right)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_gcn_block_has_4k_weights_per_channel_pair_and_a_k_by_k_receptive_field(k):
    c = 6
    block = GlobalConvBlock(c, kernel_size=k)
    assert count_parameters(block) == 4 * (k * c * c + c)  # linear in k (a k x k conv: k^2 c^2)
    x = torch.zeros(1, c, 21, 21, requires_grad=True)
    block(x)[0, :, 10, 10].sum().backward()
    touched = x.grad[0].abs().sum(0) > 0
    rows, cols = torch.nonzero(touched, as_tuple=True)
    assert rows.min() == 10 - k // 2 and rows.max() == 10 + k // 2
    assert cols.min() == 10 - k // 2 and cols.max() == 10 + k // 2


def test_gcn_block_rejects_even_kernels():
    with pytest.raises(ValueError, match="odd"):
        GlobalConvBlock(4, kernel_size=4)


# -- the network ---------------------------------------------------------------------------------------
def test_parameter_counts_equal_the_cards_counts():
    """The card's widths [32..512] + 1024 give exactly these counts (tolerance 0: same architecture).
    The paper's Table 5 says 39M (UNet) / 80M (UNet-GCN), which no width set reproduces (card)."""
    with torch.device("meta"):
        assert count_parameters(UNetGCN(gcn_position=None)) == 31_105_953
        assert count_parameters(UNetGCN(gcn_position="skip")) == 40_887_073
        # Model B has the same five GCNs, on the main path; Model C's GCNs replace all 3x3 convs.
        assert count_parameters(UNetGCN(gcn_position="encoder")) == 40_887_073
        assert count_parameters(UNetGCN(gcn_position="conv")) == 95_756_993
        gcn_params = sum(4 * (7 * c * c + c) for c in (32, 64, 128, 256, 512))
        assert count_parameters(UNetGCN()) - count_parameters(UNetGCN(gcn_position="none")) == gcn_params


@pytest.mark.parametrize("position", ["skip", "encoder", "conv", None])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])  # InstanceNorm needs >1 pixel at the bottleneck
def test_shapes_at_several_sizes_and_positions(position, size):
    net = UNetGCN(channels=(4, 8, 8, 16, 16), gcn_position=position, gcn_kernel_size=3)
    out = net(torch.rand(2, 1, *size))
    assert out.shape == (2, 1, *size)
    assert torch.isfinite(out).all()


def test_full_size_model_at_256_has_an_8x8_bottleneck():
    net = UNetGCN()
    seen = {}
    net.bottleneck.register_forward_hook(lambda module, inputs, output: seen.update(shape=output.shape))
    with torch.no_grad():
        assert net(torch.rand(1, 1, 256, 256)).shape == (1, 1, 256, 256)
    assert seen["shape"] == (1, 1024, 8, 8)


def test_gradients_reach_every_parameter():
    net = UNetGCN(channels=(4, 8, 8, 16, 16), gcn_position="skip")
    net(torch.rand(2, 1, 64, 64)).square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_positions_place_the_gcn_where_the_paper_says():
    small = dict(channels=(4, 8, 8, 16, 16), gcn_kernel_size=3)
    model_a, model_b, model_c = (UNetGCN(gcn_position=p, **small) for p in ("skip", "encoder", "conv"))
    assert len(model_a.skip_gcns) == 5 and len(model_b.skip_gcns) == 5 and len(model_c.skip_gcns) == 0
    # C: every conv of the encoder, bottleneck and decoder blocks is a GCN; the up-sampling stays ConvT.
    convs = [m[0] for block in [*model_c.encoders, model_c.bottleneck, *model_c.decoders] for m in block]
    assert len(convs) == 22 and all(isinstance(c, GlobalConvBlock) for c in convs)
    assert all(isinstance(u, nn.ConvTranspose2d) for u in model_c.upsamplers)
    # A: the pooled path does not see the GCN (B's does): the bottleneck input differs between them.
    model_b.load_state_dict(model_a.state_dict())
    x = torch.rand(1, 1, 64, 64)
    captured = {}
    for name, model in (("a", model_a), ("b", model_b)):
        model.bottleneck.register_forward_hook(lambda m, i, o, name=name: captured.update({name: i[0]}))
        model(x)
    plain = UNetGCN(gcn_position=None, **small)
    plain.load_state_dict({k: v for k, v in model_a.state_dict().items() if not k.startswith("skip_gcns")})
    plain.bottleneck.register_forward_hook(lambda m, i, o: captured.update(plain=i[0]))
    plain(x)
    torch.testing.assert_close(captured["a"], captured["plain"])
    assert not torch.allclose(captured["b"], captured["plain"])


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="gcn_position"):
        UNetGCN(gcn_position="bottleneck")
    with pytest.raises(ValueError, match="divisible by 32"):
        UNetGCN(channels=(4, 8, 8, 16, 16))(torch.rand(1, 1, 48, 40))


# -- end to end through run.py on the stand-in ---------------------------------------------------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import run  # noqa: E402
from lightning_modules.tasks.segmentation import SegmentationTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--trainer.max_epochs", "4", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false",
         "--data.num_workers", "0", "--data.image_size", "64", "--data.num_train", "64", "--data.num_val", "16",
         "--data.num_test", "32", "--data.batch_size", "8", "--model.init_args.figure_every_n_epochs", "0",
         "--model.init_args.network.init_args.channels", "[4, 8, 16, 32, 64]",
         "--model.init_args.network.init_args.gcn_kernel_size", "5", "--model.init_args.optimizer.init_args.lr", "0.005",
         # albumentations draws from its own unseeded generator: without augmentation the short run is
         # reproducible (the augmentation is tested in test_unet_gcn_data.py, the full demo uses it).
         "--data.augmentation", "none"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    cli = run.main(["--config", str(ROOT / "experiments" / "unet_gcn_demo.yaml"), *QUICK, "--runs_dir", str(runs),
                    "--run_id", "t"])
    return cli, runs / "unet_gcn_demo" / "t"


def test_demo_learns_to_segment_the_standin(demo_run):
    cli, run_dir = demo_run
    results = json.loads((run_dir / "results.json").read_text())
    for key in ("test/dice", "test/iou", "test/sensitivity", "test/precision", "test/specificity"):
        assert 0.0 <= results[key] <= 1.0
    # Beats all-background (Dice 0) and all-foreground (micro Dice 2p/(1+p), p = the lesion pixel share).
    test_set = cli.datamodule.test_set
    p = torch.stack([test_set[i]["mask"] for i in range(len(test_set))]).mean().item()
    assert results["test/dice_all_background"] == 0.0
    assert results["test/dice"] > 2 * p / (1 + p) + 0.15, (results, p)
    assert results["test/specificity"] > 0.8
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_checkpoint_reloads_without_the_cli(demo_run):
    cli, run_dir = demo_run
    model = SegmentationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert isinstance(model.network, UNetGCN) and model.network.gcn_position == "skip"
    image = torch.rand(2, 1, 64, 64)
    cli.model.eval(), model.eval()  # after fit-then-test the CLI's module holds the best weights
    torch.testing.assert_close(cli.model(image), model(image))


@pytest.mark.slow
def test_full_demo(tmp_path):
    run.main(["--config", str(ROOT / "experiments" / "unet_gcn_demo.yaml"), "--runs_dir", str(tmp_path), "--run_id", "d",
              "--trainer.enable_progress_bar", "false"])
    results = json.loads((tmp_path / "unet_gcn_demo" / "d" / "results.json").read_text())
    assert results["test/dice"] > 0.6, results
