"""Music source separation by magnitude masking: the task family of Chandna et al.'s CNN (and kin).

Batches (lightning_modules/batch.py; datamodules/dsd100.py): training ``{"mixture": (B, samples), "sources":
(B, S, samples)}`` (the task's ``input_key``/``target_key``), each excerpt exactly T STFT frames long;
evaluation ``{"mixture": (1, n), "sources": (1, S, n), "name", "sample_rate"}``, one whole track. The STFT runs on the batch (on the accelerator). A network maps a
mixture magnitude chunk (B, T, F) to masked source magnitudes (B, S, T, F). A full track is separated
by sliding T-frame chunks every ``chunk_stride`` frames, averaging the overlapping outputs, and
resynthesising each source with the mixture's phase (the authors' code).

``estimator`` also gives the two reference points as runnable baselines (``python run.py test``):
``"mixture"`` (the mixture as every source's estimate: the lower bound) and ``"oracle_irm"`` (the ideal
ratio mask |S_n| / sum_k |S_k| from the true sources: the upper bound of this mask family).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import Metric
from torchmetrics.aggregation import CatMetric

from lightning_modules import batch as keys
from lightning_modules.blocks.stft import STFT
from lightning_modules.callbacks import AudioStemWriter, default_writer
from lightning_modules.losses.separation import SOURCES, chandna_discriminative_loss
from lightning_modules.metrics.separation import BSS_METRICS, si_sdr, track_bss_scores
from lightning_modules.tasks.base import BaseTask


class SeparationTask(BaseTask):
    """Train a masking network with Chandna's discriminative loss; evaluate whole tracks with BSS Eval.

    Args:
        network: ``forward(mixture_magnitude (B, T, F)) -> (B, S, T, F)`` with ``time_context`` = T;
            may be None for the baselines.
        estimator: ``"network"``, or a baseline: ``"mixture"``, ``"oracle_irm"``.
        n_fft, hop_length, window: the STFT (paper: Hann 1024 / 256 at 44.1 kHz).
        mag_scale: magnitudes are multiplied by this before the network and divided out after it (the
            code's ``scale_factor`` 0.3); the same in training and separation.
        chunk_stride: frames between the chunks a track is cut into at separation time (the code: 5).
        alpha, beta, beta_vocals, loss_reduction: Chandna's loss (losses/separation.py).
        eval_window_seconds, eval_hop_seconds: BSS Eval windows (SiSEC 2016: 30 s / 15 s).
        bss_eval: compute BSS Eval images v3 at test time (SI-SDR is always computed).
        eval_chunk_batch: chunks per network call when separating a track (memory bound).
        figure_every_n_epochs: validation spectrogram figures every n epochs (0: never, also at test time).
        scheduler_interval: ``epoch`` or ``step``: when an injected ``lr_scheduler`` steps.
        loss: ``loss(estimates, targets) -> scalar`` on scaled magnitudes (B, S, T, F) in place of Chandna's
            loss (None: Chandna's, from ``alpha``/``beta``/``beta_vocals``/``loss_reduction``).
        metrics: extra torchmetrics (e.g. ``torchmetrics.audio.SignalDistortionRatio``), updated per track with
            the estimates and the references, (1, S, samples), logged as ``val/<name>`` and ``test/<name>``.
        input_key, target_key: the batch keys of the mixture and the sources.

    ``python run.py predict`` writes each track's stems to ``<run folder>/separated/<track>/<source>.wav``
    (``callbacks.AudioStemWriter``).
    """

    monitor = "val/si_sdr"
    monitor_mode = "max"

    def __init__(self, network: Optional[nn.Module] = None,
                 estimator: Literal["network", "mixture", "oracle_irm"] = "network",
                 n_fft: int = 1024, hop_length: int = 256, window: str = "hann", mag_scale: float = 0.3,
                 chunk_stride: int = 5, alpha: float = 0.001, beta: float = 0.01, beta_vocals: float = 0.03,
                 loss_reduction: Literal["sum", "mean"] = "sum", eval_window_seconds: float = 30.0,
                 eval_hop_seconds: float = 15.0, bss_eval: bool = True, eval_chunk_batch: int = 256,
                 figure_every_n_epochs: int = 5,
                 optimizer: OptimizerCallable = torch.optim.Adadelta,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", loss: Optional[nn.Module] = None,
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.MIXTURE,
                 target_key: str = keys.SOURCES):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if estimator == "network" and network is None:
            raise ValueError('estimator "network" needs a network')
        self.save_config_hyperparameters()
        self.network = network
        self.estimator = estimator
        self.stft = STFT(n_fft, hop_length, window)
        self.mag_scale, self.chunk_stride = mag_scale, chunk_stride
        self.loss_weights = dict(alpha=alpha, beta=beta, beta_vocals=beta_vocals, reduction=loss_reduction)
        self.eval_window_seconds, self.eval_hop_seconds = eval_window_seconds, eval_hop_seconds
        self.bss_eval, self.eval_chunk_batch = bss_eval, eval_chunk_batch
        self.loss_fn = loss
        self.input_key, self.target_key = input_key, target_key
        self.init_extra_metrics(metrics)
        self.sources = SOURCES
        self.val_values = nn.ModuleDict({name: CatMetric() for name in ("si_sdr", "si_sdr_mixture")})
        test_names = [f"{m}_{s}" for m in (*BSS_METRICS, "si_sdr", "si_sdr_mixture") for s in SOURCES]
        self.test_values = nn.ModuleDict({name: CatMetric() for name in test_names})

    def setup(self, stage: str) -> None:
        # Soft masks and ReLU decoders leave many denormal floats, which x86 CPUs process ~100x slower:
        # flushing them to zero made a CPU training step 2.5x faster (benchmarks/separation_speed.py).
        torch.set_flush_denormal(True)

    @property
    def time_context(self) -> int:
        return self.network.time_context

    def forward(self, mixture_magnitude: torch.Tensor) -> torch.Tensor:
        return self.network(mixture_magnitude)

    # -- training ---------------------------------------------------------------------------------
    def chunk_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        keys.require(batch, self.input_key, self.target_key, task=type(self).__name__)
        mixture = self.mag_scale * self.stft.magnitude(batch[self.input_key], center=False)  # (B, T, F)
        targets = self.mag_scale * self.stft.magnitude(batch[self.target_key], center=False)  # (B, S, T, F)
        if mixture.shape[1] != self.time_context:
            raise ValueError(f"training excerpts give {mixture.shape[1]} frames but the network takes T = "
                             f"{self.time_context}: set the data's n_fft/hop_length/chunk_frames to the model's")
        if self.loss_fn is not None:
            return {"loss": self.loss_fn(self(mixture), targets)}
        return chandna_discriminative_loss(self(mixture), targets, **self.loss_weights)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.chunk_losses(batch)
        batch_size = batch[self.input_key].shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch_size)
        for name in ("sq", "diff", "other", "othervocals"):
            if name in terms:  # Chandna's loss terms
                self.log(f"train/loss_{name}", terms[name], batch_size=batch_size)
        return terms["loss"]

    # -- separation -------------------------------------------------------------------------------
    @torch.no_grad()
    def separate_magnitudes(self, mixture_magnitude: torch.Tensor) -> torch.Tensor:
        """(frames, F) -> (S, frames, F): the network on T-frame chunks every ``chunk_stride`` frames,
        overlapping outputs averaged (the tail is zero-padded to a whole chunk)."""
        frames, bins = mixture_magnitude.shape
        T, stride = self.time_context, self.chunk_stride
        padded_frames = T + max(0, math.ceil((frames - T) / stride)) * stride
        padded = torch.nn.functional.pad(self.mag_scale * mixture_magnitude, (0, 0, 0, padded_frames - frames))
        starts = torch.arange(0, padded_frames - T + 1, stride, device=padded.device)
        total = padded.new_zeros(len(self.sources), padded_frames, bins)
        count = padded.new_zeros(padded_frames)
        offsets = torch.arange(T, device=padded.device)
        for batch_starts in starts.split(self.eval_chunk_batch):
            index = (batch_starts[:, None] + offsets).reshape(-1)  # (b * T,)
            estimates = self(padded[index].reshape(-1, T, bins)).float()  # (b, S, T, F)
            total.index_add_(1, index, estimates.transpose(0, 1).reshape(len(self.sources), -1, bins))
            count.index_add_(0, index, torch.ones_like(index, dtype=count.dtype))
        return (total / count[:, None])[:, :frames] / self.mag_scale

    @torch.no_grad()
    def separate(self, mixture: torch.Tensor, sources: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A mono track (n,) -> source estimates (S, n); ``sources`` (S, n) only for the oracle."""
        if self.estimator == "mixture":
            return mixture.expand(len(self.sources), -1).clone()
        spectrum = self.stft(mixture)  # (frames, F), centred frames
        magnitude, phase = spectrum.abs(), spectrum.angle()
        if self.estimator == "oracle_irm":
            if sources is None:
                raise ValueError("the oracle ratio mask needs the true sources")
            source_magnitudes = self.stft.magnitude(sources)
            estimates = source_magnitudes / (source_magnitudes.sum(0, keepdim=True) + 1e-8) * magnitude
        else:
            estimates = self.separate_magnitudes(magnitude)
        return self.stft.inverse(estimates, phase.expand_as(estimates), mixture.shape[-1])

    # -- evaluation -------------------------------------------------------------------------------
    def _separate_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys.require(batch, self.input_key, self.target_key, task=type(self).__name__)
        if batch[self.input_key].shape[0] != 1:
            raise ValueError("evaluation batches hold one whole track (batch size 1)")
        mixture, references = batch[self.input_key][0], batch[self.target_key][0]
        return mixture, references, self.separate(mixture, references)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        mixture, references, estimates = self._separate_batch(batch)
        self.val_values["si_sdr"].update(si_sdr(estimates, references).mean())
        self.val_values["si_sdr_mixture"].update(si_sdr(mixture.expand_as(references), references).mean())
        self.update_extra_metrics("val", estimates[None], references[None])
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/separation_epoch{self.current_epoch:03d}",
                            separation_figure(self.stft, mixture, references, estimates, self.sources))

    def on_validation_epoch_end(self) -> None:
        model, mixture = (torch.nanmean(self.val_values[k].compute().float()) for k in ("si_sdr", "si_sdr_mixture"))
        self.log("val/si_sdr", model, prog_bar=True)
        self.log("val/si_sdr_improvement", model - mixture)
        for metric in self.val_values.values():
            metric.reset()
        self.log_extra_metrics("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        mixture, references, estimates = self._separate_batch(batch)
        values = {"si_sdr": si_sdr(estimates, references),
                  "si_sdr_mixture": si_sdr(mixture.expand_as(references), references)}
        if self.bss_eval:
            values.update(track_bss_scores(references, estimates, int(batch[keys.SAMPLE_RATE][0]),
                                           self.eval_window_seconds, self.eval_hop_seconds))
        for metric, per_source in values.items():
            for source, value in zip(self.sources, per_source):
                self.test_values[f"{metric}_{source}"].update(value)
        self.update_extra_metrics("test", estimates[None], references[None])
        if batch_idx == 0 and self.trainer.is_global_zero and self.figure_every_n_epochs > 0:
            self.log_figure("test/separation", separation_figure(self.stft, mixture, references, estimates,
                                                                 self.sources))

    def on_test_epoch_end(self) -> None:
        # Per source: mean +- std over tracks (the paper's table); overall: the mean over sources.
        metrics = (*(BSS_METRICS if self.bss_eval else ()), "si_sdr", "si_sdr_mixture")
        per_track = {metric: [self.test_values[f"{metric}_{source}"].compute().double().reshape(-1)
                              for source in self.sources] for metric in metrics}
        self.log_mean_std("test", {f"{metric}_{source}": values for metric in metrics
                                   for source, values in zip(self.sources, per_track[metric])})
        for metric in metrics:
            self.log(f"test/{metric}", torch.nanmean(torch.stack(per_track[metric])).float())
        improvement = torch.stack(per_track["si_sdr"]) - torch.stack(per_track["si_sdr_mixture"])
        self.log("test/si_sdr_improvement", torch.nanmean(improvement).float())
        self.log("test/num_tracks", float(per_track["si_sdr"][0].numel()))
        for metric in self.test_values.values():
            metric.reset()
        self.log_extra_metrics("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Separate a track: ``{"sources": (1, S, n), "name": [track], "sample_rate": (1,)}`` (the writer saves
        the stems as WAV, float, at the track's rate)."""
        keys.require(batch, self.input_key, keys.SAMPLE_RATE, task=type(self).__name__)
        mixture = batch[self.input_key][0]
        sources = batch[self.target_key][0] if self.target_key in batch else None
        estimates = self.separate(mixture, sources)
        name = batch[keys.NAME][0] if keys.NAME in batch else f"track{batch_idx:04d}"
        return {keys.SOURCES: estimates[None], keys.NAME: [name], keys.SAMPLE_RATE: batch[keys.SAMPLE_RATE][:1]}

    def configure_callbacks(self):
        return default_writer(self._trainer, AudioStemWriter(self.sources, "separated"))

    def configure_optimizers(self):
        if self.network is None:
            raise ValueError(f'estimator "{self.estimator}" has nothing to train: run `python run.py test`')
        return super().configure_optimizers()


def separation_figure(stft: STFT, mixture, references, estimates, sources):
    """Log-magnitude spectrograms: the mixture, then each source's reference and estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def log_spec(audio):
        return 20 * np.log10(stft.magnitude(audio.float()).T.cpu().numpy() + 1e-4)

    figure, axes = plt.subplots(len(sources) + 1, 2, figsize=(10, 2.0 * (len(sources) + 1)), squeeze=False)
    mix = log_spec(mixture)
    vmax = mix.max()
    for ax in axes[0]:
        ax.imshow(mix, origin="lower", aspect="auto", vmin=vmax - 80, vmax=vmax, cmap="magma")
        ax.set_title("mixture")
    for row, name in enumerate(sources, start=1):
        for col, (audio, kind) in enumerate(((references[row - 1], "reference"), (estimates[row - 1], "estimate"))):
            axes[row, col].imshow(log_spec(audio), origin="lower", aspect="auto", vmin=vmax - 80, vmax=vmax,
                                  cmap="magma")
            axes[row, col].set_title(f"{name} {kind}")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.tight_layout()
    return figure
