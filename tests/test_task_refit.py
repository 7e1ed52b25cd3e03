"""The task families on BaseTask: every existing argument keeps its default, batch keys are configurable, and a
config can inject a loss and torchmetrics (parsed by LightningCLI from YAML/dicts; values against the reference
libraries: MONAI, torch, scikit-learn, SciPy, scikit-image, NumPy)."""
import inspect
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import Metric, PearsonCorrCoef

from lightning_modules.blocks.warp import warp
from lightning_modules.tasks.reconstruction import (AdversarialReconstructionTask, DiffusionReconstructionTask,
                                                    ReconstructionTask)
from lightning_modules.tasks.registration import RegistrationTask
from lightning_modules.tasks.regression import RegressionTask
from lightning_modules.tasks.segmentation import SegmentationTask
from lightning_modules.tasks.separation import SeparationTask
from lightning_modules.tasks.ssl_pretraining import SelfDistillationPretraining

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter:UserWarning")

# The init arguments (and defaults) before the refit, which 208 experiment YAMLs set: they must all stay.
REQUIRED = inspect.Parameter.empty
OLD_ARGUMENTS = {
    SegmentationTask: dict(network=REQUIRED, num_classes=1, bce_weight=0.5, dice_weight=1.0, dice_smooth=1e-5,
                           output_weights=None, metric_aggregation="micro", threshold=0.5, monitor_metric="val/dice",
                           figure_every_n_epochs=1, num_figure_samples=4, optimizer=torch.optim.Adam,
                           lr_scheduler=None, scheduler_interval="epoch"),
    RegistrationTask: dict(network=REQUIRED, smooth_weight=0.01, seg_weight=0.0, seg_num_classes=None, train_scale=1.0,
                           figure_every_n_epochs=1, optimizer=torch.optim.Adam, lr_scheduler=None),
    RegressionTask: dict(network=REQUIRED, loss="rmse", loss_bin_edges=None, loss_weights=None, clamp_range=None,
                         input_key="audio", huber_delta=1.0, figure=True, optimizer=torch.optim.Adam, lr_scheduler=None),
    ReconstructionTask: dict(network=REQUIRED, loss="l1", figure_every_n_epochs=1, optimizer=torch.optim.Adam,
                             lr_scheduler=None),
    AdversarialReconstructionTask: dict(network=REQUIRED, discriminator=REQUIRED, adversarial_weight=0.01, loss="l1",
                                        figure_every_n_epochs=1, optimizer=torch.optim.Adam, lr_scheduler=None),
    DiffusionReconstructionTask: dict(network=REQUIRED, train_steps=100, inference_steps=1000, rounds=4,
                                      variance="fixed_large", sampler="ddpm", ddim_steps=50, ddim_eta=0.0,
                                      clip_denoised=True, clip_range=(-1.0, 1.0), report_single_round=True,
                                      sample_seed=0, figure_every_n_epochs=1, optimizer=torch.optim.AdamW,
                                      lr_scheduler=None),
    SeparationTask: dict(network=None, estimator="network", n_fft=1024, hop_length=256, window="hann", mag_scale=0.3,
                         chunk_stride=5, alpha=0.001, beta=0.01, beta_vocals=0.03, loss_reduction="sum",
                         eval_window_seconds=30.0, eval_hop_seconds=15.0, bss_eval=True, eval_chunk_batch=256,
                         figure_every_n_epochs=5, optimizer=torch.optim.Adadelta, lr_scheduler=None),
    SelfDistillationPretraining: dict(network=REQUIRED, ema_decay=0.9998, ema_end_decay=0.99999,
                                      ema_anneal_end_step=100_000, scheduler_interval="step", input_key="audio",
                                      optimizer=torch.optim.AdamW, lr_scheduler=None),
}


@pytest.mark.parametrize("task", list(OLD_ARGUMENTS), ids=lambda t: t.__name__)
def test_every_existing_argument_keeps_its_default(task):
    parameters = inspect.signature(task.__init__).parameters
    for name, default in OLD_ARGUMENTS[task].items():
        assert name in parameters, name
        assert parameters[name].default == default, name
    old = list(OLD_ARGUMENTS[task])
    assert [name for name in parameters if name in OLD_ARGUMENTS[task]] == old  # same order: positional calls work
    for name in set(parameters) - set(old) - {"self"}:  # new arguments are optional
        assert parameters[name].default is not REQUIRED, name


def _lambda_scheduler(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@pytest.mark.parametrize("make, interval, figures", [
    (lambda **kw: SegmentationTask(nn.Conv2d(3, 1, 1), **kw), "epoch", 1),
    (lambda **kw: RegistrationTask(nn.Conv2d(2, 2, 1), **kw), "epoch", 1),
    (lambda **kw: ReconstructionTask(nn.Conv2d(1, 1, 1), **kw), "epoch", 1),
    (lambda **kw: SeparationTask(nn.Linear(2, 2), **kw), "epoch", 5),
    (lambda **kw: SelfDistillationPretraining(nn.Linear(2, 2), **kw), "step", 1),
])
def test_scheduler_interval_and_figure_cadence_reach_the_base(make, interval, figures):
    task = make(lr_scheduler=_lambda_scheduler)
    assert task.configure_optimizers()["lr_scheduler"]["interval"] == interval
    assert task.figure_every_n_epochs == figures
    other = "step" if interval == "epoch" else "epoch"
    assert make(lr_scheduler=_lambda_scheduler, scheduler_interval=other).configure_optimizers()[
        "lr_scheduler"]["interval"] == other


def test_batch_keys_are_configurable_and_a_missing_key_says_which():
    task = SegmentationTask(nn.Conv2d(3, 1, 1), input_key="ct", target_key="organs")
    image, mask = torch.randn(2, 3, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert task._inputs({"ct": image, "organs": mask})[0] is image
    with pytest.raises(KeyError, match=r"needs batch keys \['ct', 'organs'\].*input_key"):
        task._inputs({"image": image, "mask": mask})
    registration = RegistrationTask(nn.Identity(), fixed_key="a", moving_key="b")
    fixed, moving = torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4)
    assert registration.images({"a": fixed, "b": moving}) == (fixed, moving)
    with pytest.raises(KeyError, match="fixed_seg"):
        registration.labels({"a": fixed, "b": moving})


# -- config-injected losses and metrics, through LightningCLI's parser ----------------------------------------
TRAINER = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
           "enable_model_summary": False}


def _cli_model(class_path: str, init_args: dict, tmp_path=None):
    """The model LightningCLI builds from this config (from a YAML file when ``tmp_path`` is given)."""
    config = {"trainer": TRAINER, "model": {"class_path": class_path, "init_args": init_args}}
    args = config
    if tmp_path is not None:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        args = ["--config", str(path)]
    cli = LightningCLI(LightningModule, None, subclass_mode_model=True, run=False, args=args,
                       save_config_callback=None)
    return cli.model


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the trainers' default_root_dir: figures land there


def _trainer():
    return Trainer(**TRAINER)


def _conv(in_channels, out_channels):
    return {"class_path": "torch.nn.Conv2d", "init_args": {"in_channels": in_channels, "out_channels": out_channels,
                                                          "kernel_size": 3, "padding": 1}}


def test_segmentation_loss_and_metrics_from_yaml(tmp_path):
    from monai.losses import DiceCELoss
    from sklearn.metrics import f1_score, jaccard_score

    torch.manual_seed(0)
    model = _cli_model("lightning_modules.tasks.segmentation.SegmentationTask", {
        "network": _conv(3, 1),
        "loss": {"class_path": "monai.losses.DiceCELoss", "init_args": {"sigmoid": True}},
        "metrics": {"f1": {"class_path": "torchmetrics.classification.BinaryF1Score"},
                    "jaccard": {"class_path": "torchmetrics.classification.BinaryJaccardIndex"}}}, tmp_path)
    assert isinstance(model.loss_fn, DiceCELoss)
    logits, mask = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    out = model.losses([logits], mask)
    assert set(out) == {"loss"}
    assert out["loss"].item() == pytest.approx(DiceCELoss(sigmoid=True)(logits, mask).item(), rel=1e-6)

    generator = torch.Generator().manual_seed(1)
    batches = [{"image": torch.randn(2, 3, 8, 8, generator=generator),
                "mask": (torch.rand(2, 1, 8, 8, generator=generator) > 0.5).float()} for _ in range(3)]
    metrics = _trainer().validate(model, DataLoader(batches, batch_size=None))[0]
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([(torch.sigmoid(model(b["image"])) > 0.5).flatten() for b in batches]).numpy()
    truth = torch.cat([b["mask"].flatten() for b in batches]).numpy()
    assert 0.1 < metrics["val/f1"] < 0.9
    assert metrics["val/f1"] == pytest.approx(f1_score(truth, predicted), abs=1e-6)
    assert metrics["val/jaccard"] == pytest.approx(jaccard_score(truth, predicted), abs=1e-6)
    assert metrics["val/dice"] == pytest.approx(metrics["val/f1"], abs=1e-6)  # micro Dice is the pixel F1


def test_injected_metrics_survive_validate_then_fit():
    """trainer.validate resets metrics under inference mode; fit's no-grad validation must still update them
    (BaseTask resets the injected metrics at each run's start, in that run's mode)."""
    torch.manual_seed(0)
    model = _cli_model("lightning_modules.tasks.segmentation.SegmentationTask", {
        "network": _conv(3, 1), "metrics": {"f1": {"class_path": "torchmetrics.classification.BinaryF1Score"}}})
    batches = [{"image": torch.randn(2, 3, 8, 8), "mask": (torch.rand(2, 1, 8, 8) > 0.5).float()} for _ in range(2)]
    loader = DataLoader(batches, batch_size=None)
    first = _trainer().validate(model, loader)[0]["val/f1"]
    trainer = Trainer(**{**TRAINER, "max_epochs": 1, "limit_train_batches": 1})
    trainer.fit(model, loader, loader)
    assert 0.0 <= trainer.callback_metrics["val/f1"] <= 1.0 and 0.0 <= first <= 1.0


def test_multiclass_segmentation_with_a_monai_loss():
    from monai.losses import DiceCELoss

    model = _cli_model("lightning_modules.tasks.segmentation.SegmentationTask", {
        "network": _conv(3, 4), "num_classes": 4,
        "loss": {"class_path": "monai.losses.DiceCELoss", "init_args": {"softmax": True, "to_onehot_y": True}}})
    logits, labels = torch.randn(2, 4, 8, 8), torch.randint(0, 4, (2, 1, 8, 8))
    expected = DiceCELoss(softmax=True, to_onehot_y=True)(logits, labels)
    assert model.losses([logits], labels)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def _segments(num_recordings=6, per_recording=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scores = torch.rand(num_recordings, generator=generator) * 40
    features = torch.randn(num_recordings * per_recording, 3, generator=generator)
    groups = torch.arange(num_recordings).repeat_interleave(per_recording)
    targets = scores[groups]
    features[:, 0] += targets / 10  # a learnable signal, so the correlation is not ~0
    return [{"audio": features[i:i + 5], "target": targets[i:i + 5], "group": groups[i:i + 5]}
            for i in range(0, len(groups), 5)]


def test_regression_loss_and_recording_level_metrics():
    from scipy.stats import pearsonr

    torch.manual_seed(0)
    model = _cli_model("lightning_modules.tasks.regression.RegressionTask", {
        "network": {"class_path": "torch.nn.Linear", "init_args": {"in_features": 3, "out_features": 1}},
        "loss": {"class_path": "torch.nn.SmoothL1Loss", "init_args": {"beta": 2.0}}, "figure": False,
        "metrics": {"pearson": {"class_path": "torchmetrics.PearsonCorrCoef"},
                    "mse": {"class_path": "torchmetrics.MeanSquaredError"}}})
    prediction, target = torch.randn(5) * 3, torch.randn(5) * 3
    assert model.compute_loss(prediction, target).item() == pytest.approx(
        F.smooth_l1_loss(prediction, target, beta=2.0).item(), rel=1e-6)

    batches = _segments()
    metrics = _trainer().validate(model, DataLoader(batches, batch_size=None))[0]
    with torch.no_grad():
        segment = torch.cat([model(b["audio"]) for b in batches]).numpy()
    groups = torch.cat([b["group"] for b in batches]).numpy()
    targets = torch.cat([b["target"] for b in batches]).numpy()
    per_recording = np.array([segment[groups == g].mean() for g in np.unique(groups)])
    recording_targets = np.array([targets[groups == g][0] for g in np.unique(groups)])
    assert metrics["val/pearson"] == pytest.approx(pearsonr(per_recording, recording_targets)[0], abs=1e-5)
    assert metrics["val/mse"] == pytest.approx(np.mean((per_recording - recording_targets) ** 2), rel=1e-5)
    assert metrics["val/rmse"] == pytest.approx(math.sqrt(metrics["val/mse"]), rel=1e-5)  # the built-in agrees
    with pytest.raises(ValueError, match="named losses"):
        RegressionTask(nn.Linear(3, 1), loss=nn.L1Loss(), loss_bin_edges=[14], loss_weights=[2.0, 1.0])


def test_reconstruction_loss_and_metrics():
    from monai.losses import SSIMLoss
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

    torch.manual_seed(0)
    model = _cli_model("lightning_modules.tasks.reconstruction.ReconstructionTask", {
        "network": _conv(1, 1), "figure_every_n_epochs": 0,
        "loss": {"class_path": "monai.losses.SSIMLoss", "init_args": {"spatial_dims": 2, "data_range": 1.0}},
        "metrics": {"psnr_global": {"class_path": "torchmetrics.image.PeakSignalNoiseRatio",
                                    "init_args": {"data_range": 1.0}},
                    "mse": {"class_path": "torchmetrics.MeanSquaredError"}}})
    prediction, target = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    assert model.reconstruction_loss(prediction, target).item() == pytest.approx(
        SSIMLoss(spatial_dims=2, data_range=1.0)(prediction, target).item(), rel=1e-6)

    generator = torch.Generator().manual_seed(2)
    batches = []
    for _ in range(2):
        target = torch.rand(3, 1, 16, 16, generator=generator)
        batches.append({"image": target + 0.1 * torch.randn(3, 1, 16, 16, generator=generator), "target": target})
    trainer = _trainer()
    metrics = trainer.test(model, DataLoader(batches, batch_size=None))[0]
    with torch.no_grad():
        outputs = torch.cat([model(b["image"]) for b in batches]).numpy()
    targets = torch.cat([b["target"] for b in batches]).numpy()
    assert metrics["test/mse"] == pytest.approx(mean_squared_error(targets, outputs), rel=1e-5)
    assert metrics["test/psnr_global"] == pytest.approx(peak_signal_noise_ratio(targets, outputs, data_range=1.0),
                                                         rel=1e-5)
    # The built-in per-slice PSNR (max-normalised per slice) is a different number: both are logged.
    assert "test/psnr" in metrics and "test/psnr_std" in metrics and metrics["test/num_slices"] == 6


def test_string_losses_still_parse():
    model = _cli_model("lightning_modules.tasks.reconstruction.ReconstructionTask",
                       {"network": _conv(1, 1), "loss": "mse"})
    assert model.loss_name == "mse" and model.loss_fn is None
    prediction, target = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    assert torch.equal(model.reconstruction_loss(prediction, target), F.mse_loss(prediction, target))


class TinyMasker(nn.Module):
    """Masks the mixture magnitude into 4 sources; ``time_context`` frames per chunk, as SeparationTask expects."""

    time_context = 5

    def __init__(self, bins: int = 33):
        super().__init__()
        self.masks = nn.Linear(bins, 4 * bins)

    def forward(self, magnitude):
        batch, frames, bins = magnitude.shape
        masks = torch.sigmoid(self.masks(magnitude)).reshape(batch, frames, 4, bins).transpose(1, 2)
        return masks * magnitude[:, None]


def test_separation_loss_and_metrics():
    torch.manual_seed(0)
    model = _cli_model("lightning_modules.tasks.separation.SeparationTask", {
        "network": {"class_path": "tests.test_task_refit.TinyMasker"}, "n_fft": 64, "hop_length": 16,
        "figure_every_n_epochs": 0, "loss": {"class_path": "torch.nn.MSELoss"},
        "metrics": {"si_sdr_tm": {"class_path": "torchmetrics.audio.ScaleInvariantSignalDistortionRatio"}}})
    # Training: the injected loss on the scaled magnitudes of 5-frame excerpts (64 + 4 * 16 samples).
    batch = {"mixture": torch.randn(2, 128), "sources": torch.randn(2, 4, 128)}
    magnitude = 0.3 * model.stft.magnitude(batch["mixture"], center=False)
    targets = 0.3 * model.stft.magnitude(batch["sources"], center=False)
    with torch.no_grad():
        expected = F.mse_loss(model(magnitude), targets)
        assert set(model.chunk_losses(batch)) == {"loss"}
        assert model.chunk_losses(batch)["loss"].item() == pytest.approx(expected.item(), rel=1e-6)

    generator = torch.Generator().manual_seed(3)
    tracks = []
    for _ in range(2):
        sources = torch.randn(1, 4, 600, generator=generator)
        tracks.append({"mixture": sources.sum(1), "sources": sources, "sample_rate": torch.tensor([8000])})
    metrics = _trainer().validate(model, DataLoader(tracks, batch_size=None))[0]

    def si_sdr(estimate, reference):  # the definition (Le Roux et al. 2019), without mean removal (zero_mean=False)
        projection = (estimate @ reference) / (reference @ reference) * reference
        return 10 * np.log10((projection @ projection) / ((estimate - projection) @ (estimate - projection)))

    values = []
    for track in tracks:
        estimates = model.separate(track["mixture"][0]).double().numpy()
        values += [si_sdr(e, r) for e, r in zip(estimates, track["sources"][0].double().numpy())]
    assert metrics["val/si_sdr_tm"] == pytest.approx(np.mean(values), abs=1e-4)  # every source of every track
    assert metrics["val/si_sdr_tm"] < -3  # the untrained masks are far from the sources: not a trivial match


def test_registration_similarity_and_label_metrics():
    from monai.losses import LocalNormalizedCrossCorrelationLoss
    from sklearn.metrics import f1_score

    model = RegistrationTask(ConstantShift(), similarity=LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=3),
                             figure_every_n_epochs=0)
    generator = torch.Generator().manual_seed(4)
    fixed, moving = torch.rand(2, 1, 12, 12, generator=generator), torch.rand(2, 1, 12, 12, generator=generator)
    out = model.losses({"fixed": fixed, "moving": moving})
    expected = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=3)(warp(moving, out["displacement"]),
                                                                                  fixed)
    assert out["similarity"].item() == pytest.approx(expected.item(), rel=1e-6)

    # Metrics through the CLI, on warped moving labels vs fixed labels.
    model = _cli_model("lightning_modules.tasks.registration.RegistrationTask", {
        "network": {"class_path": "tests.test_task_refit.ConstantShift"}, "figure_every_n_epochs": 0,
        "metrics": {"f1": {"class_path": "torchmetrics.classification.MulticlassF1Score",
                           "init_args": {"num_classes": 3, "average": "macro"}}}})
    labels = torch.randint(0, 3, (2, 2, 1, 12, 12), generator=generator)
    pairs = [{"fixed": fixed, "moving": moving, "fixed_seg": labels[0], "moving_seg": labels[1]}]
    metrics = _trainer().validate(model, DataLoader(pairs, batch_size=None))[0]
    warped = model._warp_labels(labels[1], model(moving, fixed))
    assert not torch.equal(warped, labels[1])
    assert metrics["val/f1"] == pytest.approx(
        f1_score(labels[0].flatten().numpy(), warped.flatten().numpy(), average="macro"), abs=1e-6)


class ConstantShift(nn.Module):
    """A constant displacement (normalised units): a known warp."""

    def forward(self, moving, fixed):
        return torch.full((moving.shape[0], 2, *moving.shape[2:]), 0.25)


def test_log_mean_std_skips_nan_samples_and_keeps_float64_sums():
    """The papers' mean +- std over test cases (tracks, slices, pairs): NaN cases skipped, one case has std 0."""
    task = ReconstructionTask(nn.Conv2d(1, 1, 1))
    logged = {}
    task.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    values = torch.tensor([1.0, 3.0, float("nan")], dtype=torch.float64) + 1e-9
    task.log_mean_std("test", {"sdr": values, "one": torch.tensor([5.0]), "none": torch.tensor([float("nan")])})
    assert logged["test/sdr"].dtype == torch.float32
    assert logged["test/sdr"].item() == pytest.approx(2.0) and logged["test/sdr_std"].item() == pytest.approx(math.sqrt(2))
    assert logged["test/one"].item() == 5.0 and logged["test/one_std"].item() == 0.0
    assert math.isnan(logged["test/none"].item())
    # float64 values are reduced in float64 and rounded once (float32 cannot tell 1e7 + 0.3 from 1e7)
    close = 1e7 + torch.tensor([0.3, 0.7, 0.3, 0.7], dtype=torch.float64)
    task.log_mean_std("test", {"psnr": close})
    assert logged["test/psnr_std"].item() == pytest.approx(float(np.std(close.numpy(), ddof=1)), rel=1e-6)
    task.log_mean_std("test", {"nmse": close}, std=False)
    assert "test/nmse" in logged and "test/nmse_std" not in logged


def test_injected_loss_and_metrics_come_back_from_a_checkpoint(tmp_path):
    from monai.losses import DiceCELoss
    from torchmetrics.classification import BinaryF1Score

    model = _cli_model("lightning_modules.tasks.segmentation.SegmentationTask", {
        "network": _conv(3, 1), "loss": {"class_path": "monai.losses.DiceCELoss", "init_args": {"sigmoid": True}},
        "metrics": {"f1": {"class_path": "torchmetrics.classification.BinaryF1Score"}}})
    trainer = _trainer()
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    again = SegmentationTask.load_from_checkpoint(tmp_path / "model.ckpt")
    assert isinstance(again.loss_fn, DiceCELoss) and again.loss_fn.dice.sigmoid
    assert isinstance(again.extra_metrics["test"]["f1"], BinaryF1Score)


class RecordingCount(Metric):
    """How many (prediction, target) pairs it was given: doubles if the values were synced twice."""

    def __init__(self):
        super().__init__()
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    def update(self, predictions, targets):
        self.count += predictions.numel()

    def compute(self):
        return self.count


def _regression_ddp_worker(rank, world_size, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world_size)
    task = RegressionTask(nn.Linear(3, 1), metrics={"recordings": RecordingCount(), "pearson": PearsonCorrCoef()})
    batches = _segments()
    for batch in batches[rank::world_size]:  # a recording's segments end up on both ranks
        task.val_errors.update(task(batch["audio"]).detach(), batch["target"], batch["group"])
    errors = task.val_errors.compute()
    task.update_extra_metrics("val", errors["recording_predictions"], errors["recording_targets"])
    values = task.extra_metrics["val"].compute()
    queue.put((rank, int(values["val/recordings"]), float(values["val/pearson"]),
               errors["recording_predictions"].tolist(), errors["recording_targets"].tolist()))
    torch.distributed.destroy_process_group()


def test_recording_level_metrics_count_each_recording_once_under_ddp():
    from scipy.stats import pearsonr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = torch.multiprocessing.get_context("spawn").SimpleQueue()
    torch.multiprocessing.start_processes(_regression_ddp_worker, args=(2, port, queue), nprocs=2,
                                          start_method="spawn")
    for _, recordings, pearson, predictions, targets in sorted(queue.get() for _ in range(2)):
        assert recordings == 6  # the 6 recordings, gathered once (not once per process)
        assert pearson == pytest.approx(pearsonr(predictions, targets)[0], abs=1e-5)
