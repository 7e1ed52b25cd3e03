"""HR-TRACK (Birla et al., ICPR 2024): heart-rate monitoring from face video with two temporal convolution
networks.

* ``RPPGTCN`` (Fig. 3) maps a clip's 20 selected ROI green traces + 18 action-unit intensities (38 x f) to a pulse
  (f,): block 1 is a Conv2d of seven 38 x 7 filters (no padding across the 38 rows, "same" in time) averaged over
  the filters ("average pooling in one direction") and a ReLU; blocks 2 and 3 are residual TCN blocks (seven 1 x 7
  filters, dilation 2 then 4, averaged, ReLU, skip connection). 1,981 parameters with biases.
* ``MRTCN`` (Fig. 4) maps the (HR, SNR) sequence of a video's n clips (2 x n) to rectified HRs (n,): the same
  pattern with five 2 x 5 filters, then two non-causal TCN blocks (five 1 x 5 filters, dilation 2 and 4). 115
  parameters.
* ``PulseLSTM``: the "LSTM-exp" ablation's replacement of rPPG-TCN.
* ``HRTrackTask``: the three-stage recipe of Sect. 3.2 in one fit (``stage_epochs``): rPPG-TCN alone with the
  negative Pearson loss; MR-TCN on the frozen rPPG-TCN's hard-argmax HRs and SNRs; both jointly (HR by soft-argmax,
  so the HR loss reaches rPPG-TCN), at ``stage3_lr``. Evaluation reports per-clip HR MAE / RMSE / SD / Pearson r
  (bpm), the rPPG-TCN HR before rectification (``*_raw``), the GREEN baseline (mean of the selected traces) and the
  training-mean HR (the trivial baseline).

Averaging a linear convolution's filter outputs before the ReLU equals one convolution with the averaged kernel, so
each block computes what a single filter would; the filter counts are the paper's and set the parameter counts.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import CatMetric

from lightning_modules import batch as keys
# clip-sequence batches: ``signal`` (B, n, C, f), per-clip HR ``target`` (B, n), frame rate ``sample_rate`` (B,),
# beside these four (lightning_modules/batch.py)
from lightning_modules.batch import NUM_CLIPS, PULSE, RGB, VALID
from lightning_modules.losses.rppg import generalized_cross_entropy, neg_pearson_loss
from lightning_modules.metrics.rppg import hr_errors, hr_from_pulse, soft_hr
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.regression import TrainingMeanBaseline



class AveragedConvBlock(nn.Module):
    """Conv (``filters`` kernels) -> mean over the filters -> ReLU, + the block input when ``residual`` (then with
    dropout on the branch before the sum, as in Bai et al.'s TCN blocks). The paper gives dropout 0.1 but not its
    place; a first (non-residual) block has none: there it would drop the only path of the signal, and under
    MR-TCN's L1 loss the train-time 1/(1-p) rescaling biases the HR scale at test time (-10 % on the stand-in)."""

    def __init__(self, conv: nn.Module, dropout: float = 0.1, residual: bool = False):
        super().__init__()
        self.conv = conv
        self.dropout = nn.Dropout(dropout) if residual else nn.Identity()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.conv(x).mean(1, keepdim=True)))
        if isinstance(self.conv, nn.Conv2d):
            out = out.squeeze(2)  # (B, 1, 1, f) -> (B, 1, f)
        return out + x if self.residual else out


def _tcn_block(filters: int, kernel: int, dilation: int, dropout: float) -> AveragedConvBlock:
    conv = nn.Conv1d(1, filters, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    return AveragedConvBlock(conv, dropout, residual=True)


class RPPGTCN(nn.Module):
    """rPPG-TCN (Fig. 3): (B, in_rows, f) ROI traces + AUs -> (B, f) pulse.

    Args:
        in_rows: 38 = 20 traces + 18 AUs (20 without AUs: the "Without-AUs" ablation).
        filters, kernel: seven filters of width 7 in every block.
        dilations: of the two residual TCN blocks (2, 4).
        dropout: 0.1 (placement not given: in the residual blocks' branches, see ``AveragedConvBlock``).
    """

    def __init__(self, in_rows: int = 38, filters: int = 7, kernel: int = 7, dilations: Sequence[int] = (2, 4),
                 dropout: float = 0.1):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"'same' padding needs an odd kernel, got {kernel}")
        self.in_rows = in_rows
        first = nn.Conv2d(1, filters, (in_rows, kernel), padding=(0, kernel // 2))
        self.blocks = nn.Sequential(AveragedConvBlock(first, dropout),
                                    *(_tcn_block(filters, kernel, d, dropout) for d in dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] != self.in_rows:
            raise ValueError(f"RPPGTCN expects (B, {self.in_rows}, f) inputs, got {tuple(x.shape)}")
        return self.blocks(x.unsqueeze(1)).squeeze(1)


class PulseLSTM(nn.Module):
    """The "LSTM-exp" ablation: a bidirectional LSTM over the 38 x f inputs and a linear read-out per frame."""

    def __init__(self, in_rows: int = 38, hidden: int = 16, layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.in_rows = in_rows
        self.lstm = nn.LSTM(in_rows, hidden, layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.transpose(1, 2))
        return self.head(self.dropout(out)).squeeze(-1)


class MRTCN(nn.Module):
    """MR-TCN (Fig. 4): a video's clip HRs (bpm) and SNRs (linear) (B, n) -> rectified HRs (B, n) in bpm.

    Inputs are scaled inside: HR / ``hr_scale`` and SNR in dB / 10; the output is multiplied by ``hr_scale``.
    ``use_snr`` False drops the SNR row (the "Without-SNR" ablation: 1 x 5 first filters). ``bins`` adds a
    per-clip classification head over ``bins`` one-bpm classes from ``bin_low`` (the card's GCE option): the
    HR is then the most likely class, and ``logits`` gives the scores for the GCE loss.
    ``identity_init`` (not in the paper, which gives no initialisation; our choice) starts the network as the
    identity on the HR row: the first block's filters take the centre HR tap, the TCN blocks' filters are PyTorch's
    default initialisation x 0.1, so rectification starts from "no change" instead of a random map of the HRs.
    """

    def __init__(self, filters: int = 5, kernel: int = 5, dilations: Sequence[int] = (2, 4), dropout: float = 0.1,
                 use_snr: bool = True, hr_scale: float = 100.0, bins: Optional[int] = None, bin_low: float = 40.0,
                 identity_init: bool = True):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"'same' padding needs an odd kernel, got {kernel}")
        self.use_snr, self.hr_scale, self.bin_low = use_snr, hr_scale, bin_low
        rows = 2 if use_snr else 1
        first = nn.Conv2d(1, filters, (rows, kernel), padding=(0, kernel // 2))
        self.blocks = nn.Sequential(AveragedConvBlock(first, dropout),
                                    *(_tcn_block(filters, kernel, d, dropout) for d in dilations))
        self.head = None if bins is None else nn.Conv1d(1, bins, 1)
        if identity_init:
            with torch.no_grad():
                first.weight.zero_()
                first.weight[:, 0, 0, kernel // 2] = 1.0
                first.bias.zero_()
                for block in self.blocks[1:]:
                    block.conv.weight.mul_(0.1)
                    block.conv.bias.mul_(0.1)

    def _features(self, hr: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        rows = [hr.float() / self.hr_scale]
        if self.use_snr:
            rows.append(torch.log10(snr.float().clamp_min(1e-6)))  # dB / 10
        return self.blocks(torch.stack(rows, 1).unsqueeze(1))  # (B, 1, n)

    def logits(self, hr: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        """(B, n, bins) class scores (with ``bins`` only)."""
        if self.head is None:
            raise RuntimeError("MRTCN was built without a bin head (bins=None)")
        return self.head(self._features(hr, snr)).transpose(1, 2)

    def forward(self, hr: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.bin_low + self.logits(hr, snr).argmax(-1).to(hr.dtype)
        return self.hr_scale * self._features(hr, snr).squeeze(1)


class HRTrackTask(TrainingMeanBaseline, BaseTask):
    """HR-TRACK's training and evaluation on clip sequences (one batch item = one video's n clips).

    Args:
        pulse_net: clip inputs (N, C, f) -> pulses (N, f) (``RPPGTCN``, ``PulseLSTM``).
        mr_net: ``MRTCN`` or None (the "Without-MRTCN" ablation: the rPPG-TCN's HRs are the output).
        stage_epochs: epochs of stage 1 (rPPG-TCN), 2 (MR-TCN, rPPG-TCN frozen) and 3 (joint); the paper's
            200 / 100 / 50. Epochs after their sum stay in stage 3; without ``mr_net`` every epoch is stage 1.
        stage3_lr: learning rate of the joint stage (not given: 1e-4); stages 1-2 use the optimiser's.
        mr_loss: "l1" (bpm / ``hr_scale``, our reading of the paper's real-valued output) or "gce" (the Generalized
            Cross Entropy the paper cites, on an ``MRTCN(bins=...)`` head; the target's bin is round(HR) - bin_low).
        gce_q: GCE's q.
        nfft, band, snr_window_bpm: HR and SNR estimation (Eq. 4-5): zero-padded FFT size, HR band in Hz, the
            +- window around the peak in bpm.
        soft_temperature: of the soft-argmax HR in stage 3.
        hr_scale: HR losses are L1 on HR / hr_scale.
        num_traces: the input's first rows that are ROI traces (the GREEN baseline averages them).
        rgb_baselines: unsupervised baselines scored at test from the batch's ``rgb`` (when the data gives it):
            any of "chrom", "pos", "ica" (``lightning_modules.rppg_baselines``), logged as ``test/<metric>_<name>``.
        figure: a test figure of true and predicted HR along the first test videos.
    """

    monitor = None  # the paper trains fixed epochs: the final weights are tested (run.py falls back to last.ckpt)
    monitor_mode = "min"

    def __init__(self, pulse_net: nn.Module, mr_net: Optional[nn.Module] = None,
                 stage_epochs: Sequence[int] = (200, 100, 50), stage3_lr: float = 1e-4,
                 mr_loss: Literal["l1", "gce"] = "l1", gce_q: float = 0.7, nfft: int = 2048,
                 band: Sequence[float] = (0.7, 4.0), snr_window_bpm: float = 6.0, soft_temperature: float = 0.1,
                 hr_scale: float = 100.0, num_traces: int = 20,
                 rgb_baselines: Sequence[str] = ("chrom", "pos", "ica"), figure: bool = True,
                 optimizer: OptimizerCallable = torch.optim.Adam, lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", input_key: str = keys.SIGNAL,
                 target_key: str = keys.TARGET, pulse_key: str = PULSE, valid_key: str = VALID,
                 num_clips_key: str = NUM_CLIPS, fps_key: str = keys.SAMPLE_RATE):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval)
        if len(stage_epochs) != 3 or min(stage_epochs) < 0:
            raise ValueError(f"stage_epochs must be three epoch counts >= 0, got {stage_epochs}")
        if mr_loss not in ("l1", "gce"):
            raise ValueError(f"mr_loss must be 'l1' or 'gce', got {mr_loss!r}")
        if mr_loss == "gce" and getattr(mr_net, "head", None) is None:
            raise ValueError("mr_loss 'gce' needs an MRTCN with a bin head (bins: 201)")
        self.save_config_hyperparameters()
        self.pulse_net, self.mr_net = pulse_net, mr_net
        self.stage_epochs = [int(e) for e in stage_epochs]
        self.stage3_lr, self.mr_loss, self.gce_q = stage3_lr, mr_loss, gce_q
        self.nfft, self.band, self.snr_window_bpm = nfft, tuple(band), snr_window_bpm
        self.soft_temperature, self.hr_scale, self.figure = soft_temperature, hr_scale, figure
        self.num_traces = num_traces
        unknown = set(rgb_baselines) - {"chrom", "pos", "ica"}
        if unknown:
            raise ValueError(f"rgb_baselines must be among chrom, pos, ica; got {sorted(unknown)}")
        self.rgb_baselines = list(rgb_baselines)
        self.input_key, self.target_key, self.pulse_key = input_key, target_key, pulse_key
        self.valid_key, self.num_clips_key, self.fps_key = valid_key, num_clips_key, fps_key
        self.register_buffer("train_target_mean", torch.tensor(float("nan")))
        self._stage: Optional[int] = None
        self._base_lrs: list[float] = []
        names = ("hr", "hr_raw", "hr_green", "target", "video", *(f"hr_{b}" for b in self.rgb_baselines))
        self.outputs = nn.ModuleDict({stage: nn.ModuleDict({name: CatMetric() for name in names})
                                      for stage in ("val", "test")})

    # -- stages -------------------------------------------------------------------------------------------
    def stage_at(self, epoch: int) -> int:
        if self.mr_net is None:
            return 1
        s1, s2, _ = self.stage_epochs
        return 1 if epoch < s1 else 2 if epoch < s1 + s2 else 3

    @property
    def stage(self) -> int:
        return self.stage_at(self.current_epoch if self._trainer is not None else 0)

    @property
    def rectifies(self) -> bool:
        """Whether evaluation passes the HRs through MR-TCN (it has been, or is being, trained)."""
        if self.mr_net is None:
            return False
        if self._trainer is not None and self.trainer.state.fn == "fit":  # training and validation during fit
            return self.stage >= 2
        return self.stage_epochs[1] + self.stage_epochs[2] > 0

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.optimizer_parameters())
        self._base_lrs = [group["lr"] for group in optimizer.param_groups]
        return self.with_scheduler(optimizer)

    def freeze_for_stage(self, stage: int) -> None:
        """Stage 1 trains rPPG-TCN, stage 2 MR-TCN (rPPG-TCN frozen), stage 3 both."""
        self.pulse_net.requires_grad_(stage != 2)
        if self.mr_net is not None:
            self.mr_net.requires_grad_(stage != 1)

    def on_train_epoch_start(self) -> None:
        stage = self.stage
        if stage == self._stage:
            return
        self._stage = stage
        self.freeze_for_stage(stage)
        s1, s2, _ = self.stage_epochs
        first_epoch = {1: 0, 2: s1, 3: s1 + s2}[stage]
        for optimizer in self.trainer.optimizers:
            if self.current_epoch == first_epoch:  # not when a run resumes mid-stage
                optimizer.state.clear()  # a fresh Adam per stage, as three separate trainings would have
            for group, lr in zip(optimizer.param_groups, self._base_lrs or [g["lr"] for g in optimizer.param_groups]):
                group["lr"] = self.stage3_lr if stage == 3 else lr

    # -- forward ------------------------------------------------------------------------------------------
    def pulses(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, C, f) -> (B, n, f)."""
        return self.pulse_net(x.flatten(0, 1)).view(*x.shape[:2], -1)

    def rectify(self, hr: torch.Tensor, snr: torch.Tensor, num_clips: torch.Tensor, logits: bool = False):
        """MR-TCN over each video's existing clips (padding excluded, so "same" padding sees the video's ends)."""
        outs = []
        for b in range(hr.shape[0]):
            n = int(num_clips[b])
            fn = self.mr_net.logits if logits else self.mr_net
            out = fn(hr[b:b + 1, :n], snr[b:b + 1, :n])[0]
            pad = (0, 0, 0, hr.shape[1] - n) if logits else (0, hr.shape[1] - n)
            outs.append(F.pad(out, pad))
        return torch.stack(outs)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Per-clip HRs (B, n): ``hr`` (rectified when MR-TCN is in use), ``hr_raw`` (rPPG-TCN's), ``snr``."""
        x = batch[self.input_key]
        fps = batch[self.fps_key].to(x.device).float()[:, None].expand(x.shape[:2])
        hr_raw, snr = hr_from_pulse(self.pulses(x), fps, self.nfft, self.band, self.snr_window_bpm)
        num_clips = batch.get(self.num_clips_key, torch.full((x.shape[0],), x.shape[1]))
        hr = self.rectify(hr_raw, snr, num_clips) if self.rectifies else hr_raw
        return {"hr": hr, "hr_raw": hr_raw, "snr": snr}

    # -- training -----------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        keys.require(batch, self.input_key, self.target_key, self.pulse_key, self.valid_key, self.fps_key,
                     task=type(self).__name__)
        x, valid, stage = batch[self.input_key], batch[self.valid_key].bool(), self.stage
        ref = batch[self.pulse_key]
        if stage == 1:
            loss = neg_pearson_loss(self.pulse_net(x[valid]), ref[valid])
            self.log("train/loss_pulse", loss, batch_size=int(valid.sum()))
        else:
            self.pulse_net.train(stage == 3)  # frozen (and without dropout) in stage 2
            fps = batch[self.fps_key].float()[:, None].expand(x.shape[:2])
            num_clips = batch.get(self.num_clips_key, torch.full((x.shape[0],), x.shape[1]))
            with torch.set_grad_enabled(stage == 3):
                pulse = self.pulses(x)
            hr, snr = hr_from_pulse(pulse.detach(), fps, self.nfft, self.band, self.snr_window_bpm)
            if stage == 3:
                hr = soft_hr(pulse, fps, self.nfft, self.band, self.soft_temperature)
            target = batch[self.target_key].float()
            if self.mr_loss == "gce":
                scores = self.rectify(hr, snr, num_clips, logits=True)[valid]
                bins = (target[valid].round() - self.mr_net.bin_low).long().clamp(0, scores.shape[-1] - 1)
                loss = generalized_cross_entropy(scores, bins, self.gce_q)
            else:
                loss = F.l1_loss(self.rectify(hr, snr, num_clips)[valid] / self.hr_scale,
                                 target[valid] / self.hr_scale)
            self.log("train/loss_hr", loss, batch_size=int(valid.sum()))
            if stage == 3:
                pulse_loss = neg_pearson_loss(pulse[valid], ref[valid])
                self.log("train/loss_pulse", pulse_loss, batch_size=int(valid.sum()))
                loss = loss + pulse_loss
        self.log("train/loss", loss, prog_bar=True, batch_size=int(valid.sum()))
        self.log("train/stage", float(stage))
        return loss

    # -- evaluation ---------------------------------------------------------------------------------------
    def _evaluate(self, stage: str, batch: dict) -> None:
        keys.require(batch, self.input_key, self.target_key, self.valid_key, self.fps_key, task=type(self).__name__)
        out = self(batch)
        valid = batch[self.valid_key].bool()
        x = batch[self.input_key]
        # GREEN baseline: the mean of the selected traces (the first rows of the input, AUs excluded)
        fps = batch[self.fps_key].to(x.device).float()[:, None].expand(x.shape[:2])
        green, _ = hr_from_pulse(x[:, :, :self.num_traces].mean(2), fps, self.nfft, self.band)
        video = batch.get(keys.GROUP, torch.arange(x.shape[0], device=x.device))
        video = video.to(x.device)[:, None].expand(x.shape[:2])
        metrics = self.outputs[stage]
        for name, value in (("hr", out["hr"]), ("hr_raw", out["hr_raw"]), ("hr_green", green),
                            ("target", batch[self.target_key]), ("video", video)):
            metrics[name].update(value[valid].float())
        if stage == "test" and RGB in batch:
            from lightning_modules.rppg_baselines import BASELINES

            rgb = batch[RGB][valid].detach().cpu().double().numpy()
            fps_valid = fps[valid].cpu()
            for name in self.rgb_baselines:
                hr = torch.zeros(len(rgb))
                for rate in fps_valid.unique():  # the baselines take one frame rate at a time
                    rows = (fps_valid == rate).numpy()
                    pulse = torch.from_numpy(BASELINES[name](rgb[rows], float(rate)))
                    hr[torch.from_numpy(rows)] = hr_from_pulse(pulse, float(rate), self.nfft, self.band)[0]
                metrics[f"hr_{name}"].update(hr.to(x.device))

    def _log_errors(self, stage: str) -> dict[str, torch.Tensor]:
        metrics = self.outputs[stage]
        values = {name: metric.compute() for name, metric in metrics.items() if metric.update_called}
        for metric in metrics.values():
            metric.reset()
        if "target" not in values:  # no batch this epoch
            return values
        target = values["target"]
        logged = {}
        pairs = [("", "hr"), ("_raw", "hr_raw"), ("_green", "hr_green")]
        pairs += [(f"_{b}", f"hr_{b}") for b in self.rgb_baselines
                  if f"hr_{b}" in values and values[f"hr_{b}"].numel() == target.numel()]
        for suffix, name in pairs:
            for metric, value in hr_errors(values[name], target).items():
                logged[f"{stage}/{metric}{suffix}"] = value
        if torch.isfinite(self.train_target_mean):
            baseline = torch.full_like(target, float(self.train_target_mean))
            logged[f"{stage}/mae_mean_baseline"] = hr_errors(baseline, target)["mae"]
            logged[f"{stage}/rmse_mean_baseline"] = hr_errors(baseline, target)["rmse"]
        logged[f"{stage}/num_clips"] = torch.tensor(float(target.numel()))
        self.log_dict(logged, prog_bar=stage == "val")
        return values

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        if self.trainer.sanity_checking:
            self._refresh_train_target_mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_errors("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        values = self._log_errors("test")
        if self.figure and self.trainer.is_global_zero and "target" in values and values["target"].numel():
            self.log_figure("test/hr_tracks", hr_track_figure(values))

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        out = self(batch)
        return {"hr": out["hr"], "hr_raw": out["hr_raw"], "snr": out["snr"]}


def hr_track_figure(values: dict[str, torch.Tensor], videos: int = 4):
    """True, rPPG-TCN and rectified HR along the clips of the first test videos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    video = values["video"].cpu()
    starts = [0] + [i for i in range(1, len(video)) if video[i] != video[i - 1]] + [len(video)]
    count = min(videos, len(starts) - 1)
    figure, axes = plt.subplots(count, 1, figsize=(7, 2.0 * count), squeeze=False)
    for k in range(count):
        s, e = starts[k], starts[k + 1]
        ax = axes[k, 0]
        ax.plot(values["target"][s:e].cpu(), "k-", label="reference")
        ax.plot(values["hr_raw"][s:e].cpu(), "x", label="rPPG-TCN")
        ax.plot(values["hr"][s:e].cpu(), ".-", label="HR-TRACK")
        ax.set_ylabel("HR (bpm)")
    axes[-1, 0].set_xlabel("clip")
    axes[0, 0].legend(fontsize=7)
    figure.tight_layout()
    return figure
