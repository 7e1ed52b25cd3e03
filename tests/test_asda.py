"""ASDA: differential attention, the encoder, masking, losses, EMA teacher, parameter counts, end to end."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import run
from lightning_modules.asda import (ASDAClassifier, ASDAEncoder, ASDAPretrainingModel, CNNDecoder2d,
                                    SpectrogramFrontEnd, inverse_block_mask, spec_augment)
from lightning_modules.blocks.differential_attention import DifferentialAttention, diff_lambda_init
from lightning_modules.blocks.vit import sincos_pos_embed
from lightning_modules.losses.ssl_distillation import frame_loss, layer_averaged_targets, utterance_loss
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.tasks.ssl_pretraining import SelfDistillationPretraining, annealed_decay
from lightning_modules.utils import count_parameters

ROOT = Path(__file__).resolve().parents[1]


# -- differential attention ---------------------------------------------------------------------------
def _reference_mha(attn: DifferentialAttention, x: torch.Tensor) -> torch.Tensor:
    """torch's nn.MultiheadAttention with W_Q1, W_K1, W_V and W_O copied in."""
    d = attn.dim
    mha = nn.MultiheadAttention(d, attn.num_heads, batch_first=True)
    with torch.no_grad():
        q_w, k_w = attn.qk.weight[:d], attn.qk.weight[attn.qk.weight.shape[0] // 2: attn.qk.weight.shape[0] // 2 + d]
        q_b, k_b = attn.qk.bias[:d], attn.qk.bias[attn.qk.bias.shape[0] // 2: attn.qk.bias.shape[0] // 2 + d]
        mha.in_proj_weight.copy_(torch.cat([q_w, k_w, attn.v.weight]))
        mha.in_proj_bias.copy_(torch.cat([q_b, k_b, attn.v.bias]))
        mha.out_proj.weight.copy_(attn.proj.weight)
        mha.out_proj.bias.copy_(attn.proj.bias)
    return mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("differential", [True, False])
def test_lambda_zero_and_single_qk_reduce_to_standard_attention(differential):
    torch.manual_seed(0)
    attn = DifferentialAttention(32, 4, differential=differential, lambda_init=0.0, head_norm="none", out_scale=1.0)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(attn(x), _reference_mha(attn, x), atol=1e-5)
    if differential:  # the second softmax path then gets no gradient at all
        attn(x).sum().backward()
        assert attn.qk.weight.grad[:32].abs().sum() > 0 and attn.qk.weight.grad[64:96].abs().sum() > 0
        assert torch.all(attn.qk.weight.grad[32:64] == 0) and torch.all(attn.qk.weight.grad[96:] == 0)


def test_differential_attention_matches_equations_2_and_3():
    torch.manual_seed(1)
    dim, h, lam = 32, 4, 0.3
    attn = DifferentialAttention(dim, h, lambda_init=lam, head_norm="per_head", out_scale=0.95)
    with torch.no_grad():
        attn.norm.weight.uniform_(0.5, 1.5)
        attn.norm.bias.uniform_(-0.1, 0.1)
    x = torch.randn(2, 5, dim)
    d = dim // h
    q, k = attn.qk(x).split(2 * dim, dim=-1)
    v = attn.v(x)
    heads = []
    for i in range(h):
        q1, q2 = q[..., i * d:(i + 1) * d], q[..., dim + i * d: dim + (i + 1) * d]
        k1, k2 = k[..., i * d:(i + 1) * d], k[..., dim + i * d: dim + (i + 1) * d]
        diff = torch.softmax(q1 @ k1.transpose(1, 2) / math.sqrt(d), -1) - lam * torch.softmax(q2 @ k2.transpose(1, 2) / math.sqrt(d), -1)
        heads.append(F.layer_norm(diff @ v[..., i * d:(i + 1) * d], (d,)))  # LayerNorm per head (eq. 3)
    expected = attn.proj(0.95 * (torch.cat(heads, -1) * attn.norm.weight + attn.norm.bias))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_learnable_lambda_reparameterisation_and_depth_schedule():
    assert diff_lambda_init(1) == pytest.approx(0.2) and diff_lambda_init(12) == pytest.approx(0.8 - 0.6 * math.exp(-3.3))
    attn = DifferentialAttention(32, 4, lambda_init=None, learnable_lambda=True, layer_index=3, out_scale=None)
    expected = (torch.exp(attn.lambda_q1 @ attn.lambda_k1) - torch.exp(attn.lambda_q2 @ attn.lambda_k2) + diff_lambda_init(3))
    assert torch.allclose(attn.diff_lambda(), expected)
    assert attn.out_scale == pytest.approx(1 - diff_lambda_init(3))
    attn(torch.randn(1, 4, 32)).sum().backward()
    assert attn.lambda_q1.grad is not None and attn.lambda_q1.grad.abs().sum() > 0


# -- encoder pieces ---------------------------------------------------------------------------------
def test_sincos_positions_are_mae_style():
    pos = sincos_pos_embed(8, (2, 3), "2d")
    assert pos.shape == (6, 8)
    assert torch.allclose(pos[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))  # sin 0 / cos 0 on both axes
    assert torch.allclose(pos[1, :4], torch.tensor([math.sin(1), math.sin(1e-2), math.cos(1), math.cos(1e-2)]), atol=1e-6)
    assert torch.allclose(pos[3, 4:], pos[1, :4])  # row 1 codes the row as column 1 codes the column
    assert sincos_pos_embed(8, (2, 3), "1d").shape == (6, 8)


def test_inverse_block_mask_keeps_exactly_twenty_percent_in_blocks():
    torch.manual_seed(0)
    mask = inverse_block_mask(64, (64, 8), mask_prob=0.8, mask_length=5, mask_prob_adjust=0.07)
    assert mask.shape == (64, 512) and torch.all((~mask).sum(1) == 102)  # int(512 * 0.2)
    # Visible patches come in blocks: most have a visible neighbour in time (random picks would rarely).
    visible = (~mask).view(64, 64, 8).float()
    neighbour = F.max_pool2d(visible[:, None], (3, 1), stride=1, padding=(1, 0))[:, 0] * visible
    with_neighbour = (F.conv2d(visible[:, None], torch.tensor([[[[1.0], [0.0], [1.0]]]]), padding=(1, 0))[:, 0] * visible > 0)
    assert with_neighbour.sum() / visible.sum() > 0.8 and neighbour.sum() == visible.sum()


def test_encoder_and_classifier_shapes_cls_positions_and_pooling():
    torch.manual_seed(0)
    frontend = SpectrogramFrontEnd(target_length=96)
    wave = torch.randn(2, 16000)
    fbank = frontend(wave)
    assert fbank.shape == (2, 1, 96, 128)
    for cls_position in ("head", "middle"):
        encoder = ASDAEncoder(64, 2, 4, target_length=96, cls_position=cls_position)
        x, layers = encoder(encoder.embed(fbank))
        assert x.shape == (2, 49, 64) and len(layers) == 2 and layers[0].shape == (2, 49, 64)
        cls, patches = encoder.split_cls(x)
        assert torch.equal(cls, x[:, encoder.cls_index(48)]) and patches.shape == (2, 48, 64)
    for pooling in ("cls", "mean"):
        model = ASDAClassifier(ASDAEncoder(64, 2, 4, target_length=96), 10, frontend, pooling=pooling).eval()
        assert model(wave).shape == (2, 10)


def test_spec_augment_masks_one_band_and_one_span_per_clip():
    torch.manual_seed(0)
    out = spec_augment(torch.ones(16, 1, 100, 128), 0.2, 0.2)
    zero_bins = (out[:, 0] == 0).all(dim=1).sum(dim=1)  # frequency bins zeroed over all frames
    zero_frames = (out[:, 0] == 0).all(dim=2).sum(dim=1)
    assert zero_bins.max() < 25 and zero_frames.max() < 20 and zero_bins.sum() > 0 and zero_frames.sum() > 0


# -- losses -------------------------------------------------------------------------------------------
def test_targets_and_losses_against_direct_computation():
    torch.manual_seed(0)
    layers = [torch.randn(2, 6, 8) * (i + 1) + i for i in range(3)]
    expected = []
    for y in layers:  # instance norm: per clip and channel over tokens, biased variance, eps 1e-5
        expected.append((y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5))
    avg = torch.stack(expected).mean(0)
    avg = (avg - avg.mean(-1, keepdim=True)) / torch.sqrt(avg.var(-1, unbiased=False, keepdim=True) + 1e-5)
    targets = layer_averaged_targets(layers)
    assert torch.allclose(targets, avg, atol=1e-5)

    prediction = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    squared = ((prediction - targets) ** 2).sum(-1)
    assert frame_loss(prediction, targets, mask) == pytest.approx(float(squared[mask].sum() / math.sqrt(8) / 5), rel=1e-6)
    cls = torch.randn(2, 8)
    assert utterance_loss(cls, targets) == pytest.approx(float(((cls - targets.mean(1)) ** 2).sum() / math.sqrt(8)), rel=1e-6)


# -- pre-training model, EMA, parameter counts ----------------------------------------------------------
def _tiny_pretraining_model(**kwargs):
    encoder = ASDAEncoder(32, 2, 4, target_length=96)
    return ASDAPretrainingModel(encoder, SpectrogramFrontEnd(target_length=96), decoder_layers=2, decoder_groups=4,
                                clone_batch=3, mask_length=3, **kwargs)


def test_pretraining_forward_gradients_and_teacher_ema():
    torch.manual_seed(0)
    model = _tiny_pretraining_model()
    out = model(torch.randn(2, 16000))
    assert set(out) == {"loss", "frame_loss", "utterance_loss", "target_std"}
    assert float(out["loss"]) == pytest.approx(float(0.5 * out["utterance_loss"] + out["frame_loss"]))
    out["loss"].backward()
    assert all(p.grad is not None for p in model.student.parameters()) and all(p.grad is not None for p in model.decoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    before = [p.clone() for p in model.teacher.parameters()]
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    model.update_teacher(0.9)
    for old, new, student in zip(before, model.teacher.parameters(), model.student.parameters()):
        assert torch.allclose(new, 0.9 * old + 0.1 * student, atol=1e-6)
    assert annealed_decay(0.9998, 0.99999, 0, 100_000) == 0.9998
    assert annealed_decay(0.9998, 0.99999, 50_000, 100_000) == pytest.approx((0.9998 + 0.99999) / 2)
    assert annealed_decay(0.9998, 0.99999, 200_000, 100_000) == 0.99999


def test_decoder_is_the_grouped_conv_stack():
    decoder = CNNDecoder2d(32, (6, 8), layers=2, groups=4)
    assert decoder(torch.randn(2, 48, 32)).shape == (2, 48, 32)
    assert count_parameters(decoder) == 2 * (32 * 8 * 9 + 32) + 32 * 32 + 32


def test_parameter_counts_match_the_paper():
    """Paper: 95M pre-training, 93M fine-tuning (AudioSet head), rounded to 1M: tolerance 0.5M."""
    with torch.device("meta"):
        pretrain = ASDAPretrainingModel(ASDAEncoder())
        finetune = ASDAClassifier(ASDAEncoder(), 527)
    assert count_parameters(pretrain.student) == 92_364_288  # the card's 92.36M encoder
    assert count_parameters(pretrain) == 94_950_144 and abs(count_parameters(pretrain) - 95e6) < 0.5e6
    assert count_parameters(finetune) == 92_771_087 and abs(count_parameters(finetune) - 93e6) < 0.5e6
    assert count_parameters(pretrain.teacher) == 0  # frozen copy, updated by EMA only


# -- end to end through run.py --------------------------------------------------------------------------
FAST = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
        "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1", "--data.num_workers", "0",
        "--data.batch_size", "8", "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("asda")
    cli = run.main(["--config", str(ROOT / "experiments" / "asda_pretrain_demo.yaml"), *FAST, "--runs_dir", str(tmp),
                    "--run_id", "p"])
    return cli, tmp / "asda_pretrain_demo" / "p"


def test_pretraining_demo_runs_and_the_checkpoint_reloads(pretrain_run):
    cli, run_dir = pretrain_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test/loss"] > 0 and results["test/target_std"] > 0.5
    assert (run_dir / "figures" / "test_pretraining_input.png").stat().st_size > 10_000
    model = SelfDistillationPretraining.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    for a, b in zip(model.network.teacher.parameters(), cli.model.network.teacher.parameters()):
        assert torch.equal(a, b.cpu())
    # The teacher has moved away from the student it was copied from (EMA updates ran).
    fresh = ASDAEncoder(64, 2, 4, target_length=96)
    assert any(not torch.allclose(t, s) for t, s in zip(model.network.teacher.parameters(), model.network.student.parameters()))
    assert count_parameters(fresh) == count_parameters(model.network.student)


def test_finetuning_demo_starts_from_the_pretrained_encoder_and_reloads(pretrain_run, tmp_path):
    _, run_dir = pretrain_run
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    cli = run.main(["--config", str(ROOT / "experiments" / "asda_demo.yaml"), *FAST, "--runs_dir", str(tmp_path),
                    "--run_id", "f", "--model.network.init_args.pretrained", ckpt, "--trainer.max_steps", "0"])
    student = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    encoder = cli.model.network.encoder.state_dict()
    assert all(torch.equal(encoder[k], student[f"network.student.{k}"]) for k in encoder)  # no update ran
    results = json.loads((tmp_path / "asda_demo" / "f" / "results.json").read_text())
    assert 0 <= results["test/acc"] <= 1 and results["test/acc_prior"] > 0
    cli = run.main(["--config", str(ROOT / "experiments" / "asda_demo.yaml"), *FAST, "--runs_dir", str(tmp_path),
                    "--run_id", "g"])
    reloaded = ClassificationTask.load_from_checkpoint(tmp_path / "asda_demo" / "g" / "checkpoints" / "last.ckpt",
                                                       map_location="cpu").eval()
    wave = torch.randn(2, 16000)
    assert torch.allclose(reloaded(wave), cli.model.eval()(wave), atol=1e-5)


def test_bf16_autocast_pretraining_step_is_finite():
    torch.manual_seed(0)
    model = _tiny_pretraining_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 16000))
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32


def _column(csv_path, name):
    import csv
    return [float(r[name]) for r in csv.DictReader(open(csv_path)) if r.get(name)]


def test_short_pretraining_lowers_the_frame_loss(tmp_path):
    """40 updates on the stand-in: the student's frame loss falls, the targets keep their variance."""
    run.main(["--config", str(ROOT / "experiments" / "asda_pretrain_demo.yaml"), "--trainer.max_epochs", "2",
              "--data.num_train", "160", "--data.batch_size", "8", "--data.num_workers", "0", "--trainer.limit_val_batches", "1",
              "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
              "--model.lr_scheduler.init_args.t_total", "40", "--model.lr_scheduler.init_args.warmup_steps", "4",
              "--trainer.logger", "[{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {save_dir: " + str(tmp_path) + "}}]",
              "--runs_dir", str(tmp_path), "--run_id", "learn"])
    csvs = list(tmp_path.rglob("metrics.csv"))
    frame = _column(csvs[0], "train/frame_loss")
    assert len(frame) == 40
    assert sum(frame[-5:]) / 5 < 0.85 * sum(frame[:5]) / 5
    assert min(_column(csvs[0], "train/target_std")) > 0.5


@pytest.mark.slow
def test_demos_learn_well_above_chance(tmp_path):
    """The documented demos: pre-training, then fine-tuning (from scratch and from the pre-trained encoder),
    and the multi-label variant (mAP above the class-prior baseline)."""
    base = ["--runs_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    run.main(["--config", str(ROOT / "experiments" / "asda_pretrain_demo.yaml"), *base, "--run_id", "pre"])
    for run_id, extra in (("scratch", []), ("pretrained", ["--model.network.init_args.pretrained",
                                                              str(tmp_path / "asda_pretrain_demo" / "pre" / "checkpoints" / "last.ckpt")])):
        run.main(["--config", str(ROOT / "experiments" / "asda_demo.yaml"), *base, "--run_id", run_id, *extra])
        results = json.loads((tmp_path / "asda_demo" / run_id / "results.json").read_text())
        assert results["test/acc"] > 0.3 and results["test/acc"] > results["test/acc_prior"] + 0.15
    run.main(["--config", str(ROOT / "experiments" / "asda_demo.yaml"), *base, "--run_id", "multi",
              "--data.multilabel", "true", "--model.multilabel", "true", "--model.label_smoothing", "0.0"])
    results = json.loads((tmp_path / "asda_demo" / "multi" / "results.json").read_text())
    assert results["test/mAP"] > results["test/mAP_prior"] + 0.1


@pytest.mark.slow
def test_pretraining_and_finetuning_under_ddp_with_two_cpu_processes(tmp_path):
    """The distributed path (gloo): teachers stay identical across ranks (same student, same EMA), and the
    fine-tuning test set is counted once (every clip on exactly one rank)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop(run.RUN_ID_ENV, None)
    for config, run_id in (("asda_pretrain_demo.yaml", "ddp_pre"), ("asda_demo.yaml", "ddp_ft")):
        cmd = [sys.executable, "run.py", "--config", f"experiments/{config}", "--config", "experiments/trainer/ddp_cpu.yaml",
               *FAST, "--trainer.limit_test_batches", "1.0", "--runs_dir", str(tmp_path), "--run_id", run_id]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "asda_demo" / "ddp_ft" / "results.json").read_text())
    assert 0.0 <= results["test/acc"] <= 1.0
    state = torch.load(tmp_path / "asda_pretrain_demo" / "ddp_pre" / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"]
    assert any(not torch.equal(state[k], state[k.replace("teacher", "student")]) for k in state if ".teacher." in k)
