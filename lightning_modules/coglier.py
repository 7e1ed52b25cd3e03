"""Coglier (ICPR 2024): detecting concept shifts in self-reported emotion labels with a Top-K subject-adaptive OOD
framework (Algorithm 1) around three EEG classifiers, written as TorchEEG defines them (the official code's
``utils/model.py``):

- ``CCNN`` (Yang et al. 2018): (bands, 9, 9) grid -> 4 x [ZeroPad(1, 2, 1, 2), Conv 4x4, ReLU] 4 -> 64 -> 128 -> 256
  -> 64 -> flatten 5184 -> Linear 1024 -> SELU -> Dropout -> Linear C;
- ``TSception`` (Ding et al. 2022): (1, electrodes, samples) -> three temporal convs (1, 0.5 / 0.25 / 0.125 fs),
  LeakyReLU, AvgPool(1, 8), concatenated in time, BN; spatial convs (E, 1) and (E/2, 1) stride (E/2, 1), AvgPool
  (1, 2), BN; fusion conv (3, 1), AvgPool (1, 4), BN; mean over time; FC 15 -> 32 -> ReLU -> Dropout -> C;
- ``DGCNN`` (Song et al. 2020): (electrodes, bands) -> BN over bands -> learnable adjacency A (xavier-normal;
  ReLU, D^-1/2 A D^-1/2) -> K graph convolutions summed (supports I, A, A^2, ... as TorchEEG), ReLU -> FC 64 -> ReLU
  -> FC C.

``CoglierTask`` is ``ClassificationTask`` with the code's recipe: Adam (weight decay 1e-4) at ``max_lr``, a linear
warm-up over ``warmup_epochs`` then one cosine decay to 0 over all steps (the code's CosineAnnealingWarmUpRestarts
with T_0 = total steps, T_up = 3 epochs; MONAI's ``WarmupCosineSchedule`` is the same curve), the checkpoint with
the lowest validation loss, and the paper's metrics: accuracy, the code's AUROC of one-hot predictions
(``test/auroc_onehot``) next to the probability AUROC, the datamodule's refinement rates (``test/rr``,
``test/test_rejection``) and, for the ODM, the sensitivity / specificity of the MSP threshold on the High-test (ID)
vs Low-Group (OOD) sets. ``coglier_tables`` turns a study's runs into the paper's Table 1 / Table 2 rows.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from monai.optimizers import WarmupCosineSchedule
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAUROC

from lightning_modules.batch import SIGNAL
from lightning_modules.tasks.classification import ClassificationTask


# ------------------------------------------------------------------------------------------------------------------
# Networks
# ------------------------------------------------------------------------------------------------------------------
class CCNN(nn.Module):
    """Continuous CNN on (B, in_channels, 9, 9) band grids -> logits (B, num_classes)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 4, grid_size: tuple[int, int] = (9, 9),
                 dropout: float = 0.5):
        super().__init__()
        widths = [in_channels, 64, 128, 256, 64]
        for i in range(4):
            self.add_module(f"conv{i + 1}", nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)),
                                                          nn.Conv2d(widths[i], widths[i + 1], 4), nn.ReLU()))
        self.lin1 = nn.Sequential(nn.Linear(grid_size[0] * grid_size[1] * 64, 1024), nn.SELU(), nn.Dropout(dropout))
        self.lin2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.lin2(self.lin1(x.flatten(1)))


class TSception(nn.Module):
    """TSception on raw windows (B, electrodes, samples) or (B, 1, electrodes, samples) -> logits (B, num_classes).

    ``sampling_rate`` sets the temporal kernels (0.5, 0.25, 0.125 s); the code passes 128 for every dataset, we pass
    the data's rate (a card choice)."""

    def __init__(self, num_classes: int = 2, num_electrodes: int = 14, sampling_rate: float = 128, num_T: int = 15,
                 num_S: int = 15, hid_channels: int = 32, dropout: float = 0.5, in_channels: int = 1):
        super().__init__()
        pool = 8
        self.Tception1, self.Tception2, self.Tception3 = (
            self._block(in_channels, num_T, (1, int(w * sampling_rate)), 1, pool) for w in (0.5, 0.25, 0.125))
        half = int(num_electrodes * 0.5)
        self.Sception1 = self._block(num_T, num_S, (num_electrodes, 1), 1, int(pool * 0.25))
        self.Sception2 = self._block(num_T, num_S, (half, 1), (half, 1), int(pool * 0.25))
        self.fusion_layer = self._block(num_S, num_S, (3, 1), 1, 4)
        self.BN_t, self.BN_s, self.BN_fusion = nn.BatchNorm2d(num_T), nn.BatchNorm2d(num_S), nn.BatchNorm2d(num_S)
        self.fc = nn.Sequential(nn.Linear(num_S, hid_channels), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(hid_channels, num_classes))

    @staticmethod
    def _block(cin: int, cout: int, kernel, stride, pool: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride), nn.LeakyReLU(), nn.AvgPool2d((1, pool), (1, pool)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x.unsqueeze(1)
        out = self.BN_t(torch.cat([self.Tception1(x), self.Tception2(x), self.Tception3(x)], dim=-1))
        out = self.BN_s(torch.cat([self.Sception1(out), self.Sception2(out)], dim=2))
        out = self.BN_fusion(self.fusion_layer(out))
        return self.fc(out.mean(dim=-1).flatten(1))


def normalize_adjacency(a: torch.Tensor) -> torch.Tensor:
    """D^-1/2 ReLU(A) D^-1/2 with D the row sums of ReLU(A) (TorchEEG's ``normalize_A``, not symmetrised)."""
    a = F.relu(a)
    d = (a.sum(dim=1) + 1e-10).rsqrt()
    return d[:, None] * a * d[None, :]


class DGCNN(nn.Module):
    """Dynamical graph CNN on (B, electrodes, bands) -> logits (B, num_classes)."""

    def __init__(self, num_classes: int = 2, num_electrodes: int = 14, in_channels: int = 4, num_layers: int = 2,
                 hid_channels: int = 32):
        super().__init__()
        self.BN1 = nn.BatchNorm1d(in_channels)
        self.weights = nn.ParameterList(nn.Parameter(nn.init.xavier_normal_(torch.empty(in_channels, hid_channels)))
                                        for _ in range(num_layers))
        self.fc1 = nn.Linear(num_electrodes * hid_channels, 64)
        self.fc2 = nn.Linear(64, num_classes)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_normal_(fc.weight)
            nn.init.zeros_(fc.bias)
        self.A = nn.Parameter(nn.init.xavier_normal_(torch.empty(num_electrodes, num_electrodes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.BN1(x.transpose(1, 2)).transpose(1, 2)
        adjacency = normalize_adjacency(self.A)
        support = torch.eye(adjacency.shape[0], device=x.device, dtype=x.dtype)
        out = 0
        for k, weight in enumerate(self.weights):  # supports I, A, A^2, ... (TorchEEG's generate_cheby_adj)
            if k > 0:
                support = adjacency if k == 1 else support @ adjacency
            out = out + support @ x @ weight
        return self.fc2(F.relu(self.fc1(F.relu(out).flatten(1))))


# ------------------------------------------------------------------------------------------------------------------
# Metrics and scoring
# ------------------------------------------------------------------------------------------------------------------
class OneHotPredictionAUROC(Metric):
    """The code's AUROC: sklearn ``roc_auc_score`` (macro one-vs-rest) of the **one-hot predicted labels** against
    the one-hot truth = ``MulticlassAUROC(average="macro")`` fed one-hot predictions. Classes absent from the
    targets are left out, as the code's ``OneHotEncoder`` fitted on the labels present does."""

    full_state_update = False

    def __init__(self, num_classes: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(probs.argmax(dim=-1))
        self.target.append(target.long())

    def compute(self) -> torch.Tensor:
        preds, target = torch.cat(self.preds), torch.cat(self.target)
        present = torch.unique(target)
        if len(present) < 2:
            return torch.tensor(float("nan"))
        onehot = F.one_hot(preds, self.num_classes).float()[:, present]
        remap = torch.searchsorted(present, target)
        return MulticlassAUROC(num_classes=len(present), average="macro", thresholds=None)(onehot, remap)


def load_classifier(checkpoint: str | Path) -> ClassificationTask:
    """A trained ``CoglierTask`` from its run's checkpoint (the network rebuilt from the saved config), on the CPU,
    in eval mode."""
    return CoglierTask.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()


@torch.inference_mode()
def msp(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> np.ndarray:
    """Maximum softmax probability of each item of ``dataset`` (its ``signal``) under ``model``."""
    out = [model(batch[SIGNAL]).float().softmax(dim=-1).amax(dim=-1)
           for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def threshold_sens_spec(id_msp: torch.Tensor, ood_msp: torch.Tensor, threshold: float) -> tuple[float, float]:
    """Table 2's pair at ``threshold``: sensitivity = share of ID (High-test) windows kept (MSP >= T),
    specificity = share of OOD (Low-Group) windows flagged (MSP < T)."""
    return float((id_msp >= threshold).float().mean()), float((ood_msp < threshold).float().mean())


# ------------------------------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------------------------------
class CoglierTask(ClassificationTask):
    """``ClassificationTask`` with Coglier's recipe and metrics (module docstring).

    Args:
        network, num_classes: the classifier.
        max_lr, weight_decay, warmup_epochs: Adam and the warm-up + cosine schedule (stepped every batch).
        odm_thresholds: MSP thresholds T at which an ODM run logs ``test/low/sens_T<T>`` and ``spec_T<T>``.
        Other arguments: ``ClassificationTask``'s (metrics, class_names ...).
    """

    def __init__(self, network: nn.Module, num_classes: int, max_lr: float = 1e-4, weight_decay: float = 1e-4,
                 warmup_epochs: int = 3, odm_thresholds: Optional[list[float]] = None, input_key: str = SIGNAL,
                 **kwargs: Any):
        super().__init__(network=network, num_classes=num_classes, input_key=input_key, **kwargs)
        self.save_config_hyperparameters()
        self.max_lr, self.weight_decay, self.warmup_epochs = max_lr, weight_decay, warmup_epochs
        self.odm_thresholds = [float(t) for t in (odm_thresholds or [])]
        self.monitor, self.monitor_mode = "val/loss", "min"
        self.auroc_onehot = OneHotPredictionAUROC(num_classes)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.max_lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        warmup = self.warmup_epochs * max(1, math.ceil(total / epochs))
        scheduler = WarmupCosineSchedule(optimizer, warmup_steps=warmup, t_total=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx == 0:
            self.auroc_onehot.update(self(batch[self.input_key]).detach(), batch[self.target_key])

    def on_test_epoch_end(self) -> None:
        if self._has_ood_loaders and self.odm_thresholds:
            scores, sources = self.test_ood_scores.compute()
            for i, (name, is_ood) in enumerate(self._test_loaders):
                if is_ood:
                    for t in self.odm_thresholds:
                        sens, spec = threshold_sens_spec(-scores[sources == 0], -scores[sources == i], t)
                        self.log_dict({f"test/{name}/sens_T{t:g}": sens, f"test/{name}/spec_T{t:g}": spec},
                                      add_dataloader_idx=False)
        super().on_test_epoch_end()
        self.log("test/auroc_onehot", self.auroc_onehot.compute())
        self.auroc_onehot.reset()
        refinement = getattr(getattr(self.trainer, "datamodule", None), "refinement", {}) or {}
        for key in ("rr", "test_rejection", "n_train_pool", "n_test"):
            if key in refinement:
                self.log(f"test/{key}", float(refinement[key]))


# ------------------------------------------------------------------------------------------------------------------
# Tables of a study (``analysis: lightning_modules.coglier:coglier_tables``)
# ------------------------------------------------------------------------------------------------------------------
def _pct(value: Optional[float]) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def coglier_tables(study_dir: str | Path, results: list[dict]) -> str:
    """Markdown: subject ranking and groups, Table 1 rows (RR, accuracy / AUROC on the retained test set, and on the
    whole test set), the baseline on each refined row's retained samples, and Table 2 (ODM sensitivity /
    specificity, MSP AUROC). Also written to ``<study_dir>/coglier_tables.md`` / ``.json``."""
    from datamodules.eeg_emotion import rank_groups

    study_dir = Path(study_dir)
    subjects, rows, odm = {}, [], None
    for record in results:
        run_dir = Path(record["run_dir"])
        config_path = run_dir / "config.yaml"
        if not config_path.is_file() or not record["metrics"]:
            continue
        import yaml

        data = (yaml.safe_load(config_path.read_text()).get("data") or {}).get("init_args") or {}
        metrics = record["metrics"]
        if data.get("stage") == "subject":
            subjects[str(data.get("subject"))] = metrics.get("test/acc")
        elif data.get("stage") == "odm":
            odm = (record["run"], data, metrics)
        else:
            rows.append((record["run"], data, metrics))
    lines, summary = [], {}
    if subjects:
        high, low = rank_groups({k: v for k, v in subjects.items() if v is not None},
                                *((odm[1].get("top_k", 0.85), odm[1].get("low_count")) if odm else (0.85, None)))
        ranked = sorted(subjects, key=lambda s: (-subjects[s], s))
        lines += ["### Subject-dependent accuracy (ranked)", "",
                  "| subject | " + " | ".join(ranked) + " |", "|---" * (len(ranked) + 1) + "|",
                  "| acc % | " + " | ".join(_pct(subjects[s]) for s in ranked) + " |", "",
                  f"High Group: {', '.join(high)}; Low Group: {', '.join(low)}", ""]
        summary["subjects"] = subjects
        summary["groups"] = {"high": high, "low": low}
    base = next((m for name, d, m in rows if not d.get("threshold") and d.get("potato_z") is None), None)
    lines += ["### Table 1: accuracy / AUROC (%) on the retained test samples", "",
              "| setting | RR % | test rejected % | acc / AUROC (one-hot) | AUROC (prob.) | acc on all test "
              "| baseline acc on the same retained samples |", "|---|---|---|---|---|---|---|"]
    for name, data, m in rows:
        t = data.get("threshold") or 0.0
        setting = f"RP = {data['potato_z']:g}" if data.get("potato_z") is not None else (f"T = {t:g}" if t else
                                                                                           "Baseline")
        same = base.get(f"test/T{int(round(t * 100)):03d}/acc") if base and t else None
        lines.append(f"| {setting} | {_pct(m.get('test/rr')) if t or data.get('potato_z') is not None else '–'} "
                     f"| {_pct(m.get('test/test_rejection'))} | {_pct(m.get('test/acc'))} / "
                     f"{_pct(m.get('test/auroc_onehot'))} | {_pct(m.get('test/auroc'))} "
                     f"| {_pct(m.get('test/all/acc', m.get('test/acc')))} | {_pct(same)} |")
        summary[name] = {k: m.get(k) for k in ("test/rr", "test/test_rejection", "test/acc", "test/auroc_onehot",
                                               "test/auroc", "test/all/acc")}
    if odm is not None:
        m = odm[2]
        pairs = sorted({k.split("_T", 1)[1] for k in m if k.startswith("test/low/sens_T")}, key=float)
        lines += ["", "### Table 2: ODM on High-test (ID) vs Low Group (OOD)", "",
                  f"MSP AUROC {m.get('test/low/ood_auroc', float('nan')):.3f}; High-test accuracy "
                  f"{_pct(m.get('test/acc'))} %", "", "| T | sensitivity | specificity |", "|---|---|---|"]
        for t in pairs:
            lines.append(f"| {t} | {m[f'test/low/sens_T{t}']:.2f} | {m[f'test/low/spec_T{t}']:.2f} |")
        summary["odm"] = {k: v for k, v in m.items() if k.startswith("test/low/")}
    text = "\n".join(lines) + "\n"
    (study_dir / "coglier_tables.md").write_text(text)
    (study_dir / "coglier_tables.json").write_text(json.dumps(summary, indent=2, default=str))
    return text
