"""HR-TRACK networks, losses, HR/SNR estimation and metrics against references (numpy, scipy, the definitions),
the three-stage schedule, and a short run of the demo that learns (HR MAE far below the training-mean baseline)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from lightning_modules.hr_track import MRTCN, RPPGTCN, HRTrackTask, PulseLSTM
from lightning_modules.losses.rppg import generalized_cross_entropy, neg_pearson_loss
from lightning_modules.metrics.rppg import hr_errors, hr_from_pulse, soft_hr
from lightning_modules.utils import count_parameters

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "experiments" / "hr_track_demo.yaml")


# -- networks ------------------------------------------------------------------------------------------------
def test_rppg_tcn_maps_38xf_to_a_pulse_and_has_the_derived_parameter_count():
    net = RPPGTCN()
    assert net(torch.randn(3, 38, 120)).shape == (3, 120)
    # Fig. 3 with biases: Conv2d 7 x (38 x 7) + 7 = 1,869; two Conv1d 7 x 7 + 7 = 56 each (exact, derived)
    assert count_parameters(net) == 1869 + 56 + 56 == 1981
    assert count_parameters(RPPGTCN(in_rows=20)) == 7 * 20 * 7 + 7 + 112  # Without-AUs
    with pytest.raises(ValueError, match="38"):
        net(torch.randn(1, 20, 120))


def test_mr_tcn_maps_hr_and_snr_sequences_and_has_the_derived_parameter_count():
    net = MRTCN()
    assert net(torch.full((2, 29), 80.0), torch.ones(2, 29)).shape == (2, 29)
    assert count_parameters(net) == 55 + 30 + 30 == 115  # Fig. 4: 5 x (2 x 5) + 5, two 5 x 5 + 5
    assert count_parameters(MRTCN(use_snr=False)) == 30 + 60  # Without-SNR: 1 x 5 first filters
    assert PulseLSTM()(torch.randn(2, 38, 80)).shape == (2, 80)


def test_averaging_the_filters_is_one_convolution_with_the_mean_kernel():
    """"Average pooling in one direction" of Fig. 3: the block equals a single conv with the averaged kernel."""
    torch.manual_seed(0)
    net = RPPGTCN(dropout=0.0).eval()
    x = torch.randn(2, 38, 60)
    conv = net.blocks[0].conv
    single = nn.functional.conv2d(x.unsqueeze(1), conv.weight.mean(0, keepdim=True), conv.bias.mean().view(1),
                                  padding=(0, 3))
    first = torch.relu(single).squeeze(1).squeeze(1)
    block2 = net.blocks[1].conv
    second = torch.relu(nn.functional.conv1d(first.unsqueeze(1), block2.weight.mean(0, keepdim=True),
                                             block2.bias.mean().view(1), padding=6, dilation=2)).squeeze(1) + first
    assert torch.allclose(net.blocks[:2](x.unsqueeze(1)).squeeze(1), second, atol=1e-6)


def test_mr_tcn_identity_init_passes_the_hrs_through():
    torch.manual_seed(0)
    net = MRTCN(dropout=0.0, identity_init=True).eval()
    hr = torch.tensor([[70.0, 75.0, 140.0, 72.0, 74.0, 73.0]])
    out = net(hr, torch.full_like(hr, 2.0))
    assert torch.allclose(out, hr, rtol=0.05)  # the TCN branches start at 0.1 x PyTorch's initialisation
    bins = MRTCN(bins=201)
    assert bins.logits(hr, torch.ones_like(hr)).shape == (1, 6, 201)
    assert ((bins(hr, torch.ones_like(hr)) >= 40) & (bins(hr, torch.ones_like(hr)) <= 240)).all()


# -- HR, SNR, losses, metrics --------------------------------------------------------------------------------
def _sine(bpm, fps=30.0, seconds=4.0, phase=0.3):
    t = np.arange(int(seconds * fps)) / fps
    return np.sin(2 * np.pi * bpm / 60 * t + phase)


def test_hr_is_the_zero_padded_spectral_peak_in_the_band_and_snr_follows_eq5():
    rng = np.random.default_rng(0)
    fps, bpms = 30.0, [48.0, 72.0, 95.5, 150.0, 210.0]
    pulses = np.stack([_sine(b, fps) + 0.2 * rng.normal(size=120) for b in bpms])
    # a strong 0.25 Hz respiration term outside the band must not win
    pulses[1] += 3 * _sine(15.0, fps)
    hr, snr = hr_from_pulse(torch.tensor(pulses), fps, nfft=2048)
    np.testing.assert_allclose(hr.numpy(), bpms, atol=60 * fps / 2048)  # within one zero-padded bin
    # numpy reference of Eq. 4-5
    for i, p in enumerate(pulses):
        power = np.abs(np.fft.rfft(p - p.mean(), 2048)) ** 2
        f = np.fft.rfftfreq(2048, 1 / fps)
        band = (f >= 0.7) & (f <= 4.0)
        f_max = f[band][np.argmax(power[band])]
        near = band & (np.abs(f - f_max) <= 6 / 60)
        assert hr[i].item() == pytest.approx(60 * f_max, abs=1e-3)
        assert snr[i].item() == pytest.approx(power[near].sum() / power[band & ~near].sum(), rel=1e-4)
    _, snr_noise = hr_from_pulse(torch.tensor(rng.normal(size=(1, 120))), fps)
    assert snr_noise.item() < snr.min().item()  # a clean pulse has the higher SNR (Eq. 5)
    # per-item frame rates in one batch
    two = torch.tensor(np.stack([_sine(60, 20.0, 4.0), _sine(60, 20.0, 4.0)]))
    hr2, _ = hr_from_pulse(two, torch.tensor([20.0, 40.0]))
    # (a 4 s window holds 4 periods: leakage from the negative frequency shifts the peak by ~1 bpm)
    assert hr2[0].item() == pytest.approx(60, abs=1.5) and hr2[1].item() == pytest.approx(2 * hr2[0].item(), abs=1e-3)


def test_soft_hr_approaches_the_hard_peak_and_carries_a_gradient():
    pulse = torch.tensor(_sine(84.0, 30.0, 4.0)[None], requires_grad=True)
    hard, _ = hr_from_pulse(pulse.detach(), 30.0)
    soft = soft_hr(pulse, 30.0, temperature=0.01)
    assert soft.item() == pytest.approx(hard.item(), abs=1.0)
    soft_hr(pulse, 30.0, temperature=0.1).sum().backward()
    assert torch.isfinite(pulse.grad).all() and pulse.grad.abs().sum() > 0


def test_negative_pearson_loss_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 90)), rng.normal(size=(4, 90))
    b[0] = 2 * a[0] + 1  # perfect affine match
    expected = np.mean([1 - stats.pearsonr(x, y)[0] for x, y in zip(a, b)])
    assert neg_pearson_loss(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(expected, abs=1e-6)
    assert neg_pearson_loss(torch.tensor(a[:1]), torch.tensor(-a[:1])).item() == pytest.approx(2.0, abs=1e-6)


def test_generalized_cross_entropy_matches_its_definition_and_limits():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    p = torch.softmax(logits, -1)[torch.arange(6), labels]
    assert generalized_cross_entropy(logits, labels, 0.7).item() == pytest.approx(((1 - p ** 0.7) / 0.7).mean().item(), rel=1e-6)
    assert generalized_cross_entropy(logits, labels, 1.0).item() == pytest.approx((1 - p).mean().item(), rel=1e-6)
    ce = nn.functional.cross_entropy(logits, labels).item()
    assert generalized_cross_entropy(logits, labels, 1e-4).item() == pytest.approx(ce, rel=1e-3)  # q -> 0: CE


def test_hr_errors_match_numpy_and_scipy():
    rng = np.random.default_rng(2)
    target = rng.uniform(55, 120, 50)
    pred = target + rng.normal(1.5, 4.0, 50)
    out = hr_errors(torch.tensor(pred), torch.tensor(target))
    err = pred - target
    assert out["mae"].item() == pytest.approx(np.abs(err).mean(), rel=1e-5)
    assert out["rmse"].item() == pytest.approx(np.sqrt((err ** 2).mean()), rel=1e-5)
    assert out["sd"].item() == pytest.approx(err.std(ddof=1), rel=1e-5)
    assert out["r"].item() == pytest.approx(stats.pearsonr(pred, target)[0], rel=1e-5)


def test_chrom_and_pos_cancel_an_intensity_change_that_fools_green_and_ica_finds_the_pulse():
    """Skin colour x (1 + pulse in the blood-volume direction + a stronger in-band intensity change on all channels
    alike): GREEN reads the intensity's 150 bpm, CHROM and POS (built to cancel it) read the 72 bpm pulse."""
    from lightning_modules.rppg_baselines import chrom_pulse, ica_pulse, pos_pulse

    rng = np.random.default_rng(3)
    fps, f = 30.0, 120
    t = np.arange(f) / fps
    skin = np.array([180.0, 130.0, 100.0])
    signature = np.array([0.33, 0.77, 0.53])  # the blood-volume pulse's relative strength in R, G, B
    pulse = np.sin(2 * np.pi * 72 / 60 * t)
    intensity = np.sin(2 * np.pi * 150 / 60 * t + 0.4)
    rgb = skin[None, :, None] * (1 + 0.004 * signature[None, :, None] * pulse + 0.006 * intensity)
    rgb = rgb + rng.normal(0, 0.02, (4, 3, f))
    green, _ = hr_from_pulse(torch.tensor(rgb[:, 1]), fps)
    assert (green - 150).abs().max() < 2
    for method in (chrom_pulse, pos_pulse):
        hr, _ = hr_from_pulse(torch.tensor(method(rgb, fps)), fps)
        assert (hr - 72).abs().max() < 2, method.__name__
    # ICA: the pulse and the intensity change are independent sources; one of the three unmixed sources is the
    # pulse, the other the intensity: the chosen (most peaked) source is one of them
    hr, _ = hr_from_pulse(torch.tensor(ica_pulse(rgb, fps)), fps)
    assert ((hr - 72).abs() < 2).logical_or((hr - 150).abs() < 2).all()


# -- the task --------------------------------------------------------------------------------------------------
def test_stage_schedule_and_no_mr_tcn_ablation():
    task = HRTrackTask(RPPGTCN(), MRTCN(), stage_epochs=(3, 2, 1))
    assert [task.stage_at(e) for e in range(8)] == [1, 1, 1, 2, 2, 3, 3, 3]
    assert task.rectifies
    plain = HRTrackTask(RPPGTCN(), None, stage_epochs=(3, 2, 1))
    assert [plain.stage_at(e) for e in range(6)] == [1] * 6 and not plain.rectifies
    with pytest.raises(ValueError, match="bin head"):
        HRTrackTask(RPPGTCN(), MRTCN(), mr_loss="gce")


def _batch(n_videos=2, n=5, f=80, fps=20.0):
    torch.manual_seed(0)
    t = torch.arange(f) / fps
    bpm = torch.linspace(60, 120, n_videos * n).view(n_videos, n)
    pulse = torch.sin(2 * torch.pi * bpm[..., None] / 60 * t)
    signal = torch.randn(n_videos, n, 38, f) * 0.3
    signal[:, :, :20] += pulse[:, :, None]
    return {"signal": signal, "pulse": pulse, "target": bpm, "valid": torch.ones(n_videos, n, dtype=torch.bool),
            "num_clips": torch.tensor([n, n - 2]), "sample_rate": torch.full((n_videos,), fps),
            "group": torch.arange(n_videos)}


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_trains_only_its_networks(stage):
    epochs = [0, 0, 0]
    epochs[stage - 1] = 1  # so that epoch 0 is in this stage
    gce = stage == 2
    task = HRTrackTask(RPPGTCN(), MRTCN(bins=201 if gce else None), stage_epochs=epochs,
                       mr_loss="gce" if gce else "l1")
    assert task.stage == stage
    task.freeze_for_stage(stage)
    loss = task.training_step(_batch(), 0)
    loss.backward()
    pulse_grads = [p.grad for p in task.pulse_net.parameters()]
    mr_grads = [p.grad for p in task.mr_net.parameters()]
    assert torch.isfinite(loss)
    assert all(g is not None for g in pulse_grads) == (stage != 2)
    assert any(g is not None and g.abs().sum() > 0 for g in mr_grads) == (stage != 1)


def test_rectify_runs_each_video_on_its_own_clips():
    task = HRTrackTask(RPPGTCN(), MRTCN(dropout=0.0)).eval()
    hr = torch.tensor([[70.0, 71.0, 72.0, 73.0], [90.0, 91.0, 0.0, 0.0]])
    out = task.rectify(hr, torch.ones_like(hr), torch.tensor([4, 2]))
    alone = task.mr_net(hr[1:, :2], torch.ones(1, 2))
    assert torch.allclose(out[1, :2], alone[0]) and (out[1, 2:] == 0).all()


def test_demo_learns_and_reloads(tmp_path):
    """A small version of the demo (7 synthetic videos of 12 s, batches of one video, 20 / 5 / 2 epochs): HR MAE
    far below the training-mean baseline and below GREEN's; the pulse loss falls; the checkpoint reloads."""
    import run

    small = ["--data.num_train", "4", "--data.num_val", "1", "--data.num_test", "2", "--data.seconds", "12",
             "--data.augment_factors", "[0.667]", "--data.batch_size", "1", "--model.stage_epochs", "[20, 5, 2]",
             "--trainer.max_epochs", "27", "--trainer.check_val_every_n_epoch", "27", "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    cli = run.main(["--config", DEMO, *small, "--runs_dir", str(tmp_path), "--run_id", "r"])
    run_dir = Path(cli.run_dir)
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    # seen here: MAE 1.3 (raw 0.9, GREEN 9.7, training mean 26.9), r 0.99
    assert metrics["test/mae"] < 0.25 * metrics["test/mae_mean_baseline"], metrics
    assert metrics["test/mae_raw"] < 0.5 * metrics["test/mae_green"] and metrics["test/r"] > 0.8, metrics
    assert {"test/mae_chrom", "test/mae_pos", "test/mae_ica"} <= set(metrics)  # the RGB baselines are scored
    assert (run_dir / "figures" / "test_hr_tracks.png").is_file()
    # the pulse loss fell: untrained vs trained rPPG-TCN on a training batch
    batch = next(iter(cli.datamodule.train_dataloader()))
    valid = batch["valid"]
    torch.manual_seed(0)
    with torch.no_grad():
        trained = neg_pearson_loss(cli.model.pulse_net.eval()(batch["signal"][valid]), batch["pulse"][valid])
        untrained = neg_pearson_loss(RPPGTCN().eval()(batch["signal"][valid]), batch["pulse"][valid])
    assert trained < 0.5 * untrained
    reloaded = HRTrackTask.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt").eval()
    test_batch = next(iter(cli.datamodule.test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(reloaded(test_batch)["hr"], cli.model.eval()(test_batch)["hr"])


@pytest.mark.slow
def test_shipped_demo_learns(tmp_path):
    """The demo as shipped (16 videos, 30 / 20 / 10 epochs, ~25 s CPU time): seen MAE 0.73 (GREEN 9.3, mean 23.6)."""
    import run

    cli = run.main(["--config", DEMO, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--runs_dir", str(tmp_path), "--run_id", "r"])
    metrics = json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"]
    assert metrics["test/mae"] < 3.0 and metrics["test/r"] > 0.95, metrics
    assert metrics["test/mae"] < 0.3 * metrics["test/mae_green"], metrics
    assert metrics["test/mae"] < 0.1 * metrics["test/mae_mean_baseline"], metrics
