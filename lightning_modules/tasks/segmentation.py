"""Semantic segmentation, 2D or 3D, binary or multi-class: the task family of SACA-UNet, UNet-GCN, SFRSeg-Net,
SMDGC, ...

Batches are dicts (lightning_modules/batch.py) with the image (B, C, *S) float under ``input_key``
(``image``), the mask (B, 1, *S) (float 0/1 for binary, long labels for multi-class) under ``target_key``
(``mask``) and optionally ``name`` (list of file stems, used by ``predict``); *S is (H, W) or (H, W, D).
A network maps the image to logits (B, K, *S), K = 1 for binary; it may return a list/tuple of
logits (main output first, then side outputs for deep supervision, possibly at lower resolution).

Volumes larger than the training patch are inferred by sliding windows (``roi_size``: MONAI's
``SlidingWindowInferer``, Gaussian-weighted overlaps). Test-time post-processing (``postprocessing``: e.g.
SMDGC's graph cuts) refines each test sample's class probabilities on the CPU; every post-processor's
prediction is scored like the network's, under ``test/<name>/...``, with its wall time per sample.

Multi-label (``multilabel=True``, e.g. optic disc and cup, which overlap): K independent sigmoid channels, the
mask (B, K, *S) float multi-hot; every channel is scored as a class (``test/dice/<name>`` with ``class_names``, one
name per channel, no background) and predicted as ``<name>_<label>.png`` (0/255).

Several test sets (``BaseDataModule.test_sets``, e.g. one per unseen domain): the first loader logs ``test/...``,
each further one ``test/<set name>/...`` (its own metrics, all-background baseline and overlay figure).

Slices of volumes (2-D datasets whose items carry ``volume`` and ``slice_index``, optionally ``spacing``; batch.py,
e.g. Synapse, ACDC): every validation and test set's slice predictions are also restacked per volume and scored in
3-D with MONAI (``SliceVolumes``, ``volume_scores``): ``val/dice_3d``, ``test/dice_3d`` (mean over volumes of the
mean over foreground classes, ``_std`` over volumes), ``test/hd95_3d`` (in the units of ``spacing``; voxels without
it) and, with several foreground classes, ``test/dice_3d/<class>``, ``test/hd95_3d/<class>``; ``test/num_volumes``.
This is the TransUNet protocol (Dice and HD95 per case and organ, then the mean). 3-D scores are gathered on one
process (evaluate on a single device).

``python run.py predict`` writes each predicted mask as ``<run folder>/predictions/<name>.png`` (binary:
0/255; multi-class: the labels; volumes: ``<name>.nii.gz``) through ``callbacks.MaskPNGWriter``.
"""
from __future__ import annotations

import time
import warnings
from collections import defaultdict
from typing import Any, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import CatMetric, MeanMetric, Metric

from lightning_modules import batch as keys
from lightning_modules.callbacks import MaskPNGWriter, default_writer
from lightning_modules.losses.segmentation import SegmentationLoss
from lightning_modules.metrics.segmentation import (METRIC_NAMES, HausdorffDistance95, SegmentationMetrics,
                                                    hard_prediction)
from lightning_modules.tasks.base import BaseTask


class SegmentationPostprocessor:
    """Test-time refinement of one sample's prediction (numpy, CPU), e.g. a graph cut on the class probabilities.

    ``__call__(probabilities (K, *S) float32 (softmax; binary: [1 - p, p]), image (C, *S) float32)`` returns
    the (*S) integer label map, or ``(labels, stats)`` with ``stats`` a dict of floats named in ``stat_names``
    (logged as ``test/<name>/<stat>`` mean and std). A post-processor with ``requires_fit = True`` gets
    ``fit(train_loader)`` once before testing (e.g. class intensity models fitted on the training labels).
    """

    requires_fit: bool = False
    stat_names: tuple[str, ...] = ()

    def fit(self, loader) -> None:
        """Fit on the training set's batches (only called when ``requires_fit``)."""

    def __call__(self, probabilities: np.ndarray, image: np.ndarray) -> Any:
        raise NotImplementedError


def volume_scores(prediction: np.ndarray, target: np.ndarray, num_classes: int,
                  spacing: Optional[np.ndarray] = None, hd95: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per foreground class 3D Dice and HD95 (MONAI) of one (H, W, D) label volume: two (K - 1,) arrays, NaN where
    the class is absent from the ground truth (Dice) or from either map (HD95)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance

    one_hot = [F.one_hot(torch.as_tensor(np.asarray(x), dtype=torch.long), num_classes).movedim(-1, 0)[None]
               for x in (prediction, target)]
    dice = compute_dice(one_hot[0], one_hot[1], include_background=False, ignore_empty=True)[0].numpy()
    distances = np.full(num_classes - 1, np.nan)
    if hd95:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI warns about a class absent from one of the maps (NaN/inf)
            value = compute_hausdorff_distance(one_hot[0], one_hot[1], include_background=False, percentile=95,
                                               spacing=None if spacing is None else [float(s) for s in spacing])
        distances = value[0].numpy().astype(np.float64)
        distances[~np.isfinite(distances)] = np.nan
    return dice.astype(np.float64), distances


class SliceVolumes:
    """2-D slice predictions and masks gathered per volume (batch keys ``volume``, ``slice_index``, optionally
    ``spacing`` (3,) of the restacked (H, W, D) grid), restacked along the last axis in slice order and scored per
    volume with :func:`volume_scores`. Held as uint8 numpy on the CPU."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
        self.spacing: dict[str, np.ndarray] = {}

    @staticmethod
    def applies(batch: dict, prediction: torch.Tensor) -> bool:
        """Whether ``batch`` holds slices of volumes (2-D labels (B, 1, H, W) with ``volume`` and ``slice_index``)."""
        return keys.VOLUME in batch and keys.SLICE_INDEX in batch and prediction.dim() == 4 and prediction.shape[1] == 1

    def update(self, batch: dict, prediction: torch.Tensor, mask: torch.Tensor) -> None:
        predictions = prediction[:, 0].to(torch.uint8).cpu().numpy()
        masks = mask[:, 0].to(torch.uint8).cpu().numpy()
        spacing = batch.get(keys.SPACING)
        for i, volume in enumerate(batch[keys.VOLUME]):
            self.slices[volume][int(batch[keys.SLICE_INDEX][i])] = (predictions[i], masks[i])
            if spacing is not None:
                self.spacing[volume] = np.asarray(spacing[i].detach().cpu() if torch.is_tensor(spacing[i])
                                                  else spacing[i], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.slices)

    def score(self, num_classes: int, hd95: bool) -> tuple[np.ndarray, np.ndarray]:
        """(V, K - 1) Dice and HD95 per volume (sorted by name) and foreground class."""
        dices, distances = [], []
        for volume in sorted(self.slices):
            entry = self.slices[volume]
            order = sorted(entry)
            prediction = np.stack([entry[z][0] for z in order], axis=-1)
            target = np.stack([entry[z][1] for z in order], axis=-1)
            dice, distance = volume_scores(prediction, target, max(2, num_classes), self.spacing.get(volume), hd95)
            dices.append(dice)
            distances.append(distance)
        return np.stack(dices), np.stack(distances)

    def reset(self) -> None:
        self.slices.clear()
        self.spacing.clear()


class SegmentationTask(BaseTask):
    """Loss ``bce_weight * CE + dice_weight * (1 - soft Dice)`` (or an injected ``loss``);
    Dice/IoU/sensitivity/precision/specificity (plus any injected ``metrics``).

    Args:
        network: ``forward(image) -> logits`` or a list/tuple of logits (main first).
        num_classes: 1 = binary (sigmoid); K > 1 = K classes including background (softmax).
        bce_weight, dice_weight, dice_smooth: the loss (see ``losses.segmentation.SegmentationLoss``).
        output_weights: loss weight of each output when the network returns several (main first);
            ``None``: only one output expected, or equal weights averaging all outputs.
        metric_aggregation: ``micro`` (pixel counts summed over the set) or ``per_image`` (mean of
            per-image values); see ``metrics.segmentation``.
        threshold: binary decision threshold on the sigmoid.
        monitor_metric: the validation metric that selects ``best.ckpt`` (``val/dice`` or ``val/iou``,
            maximised; ``val/loss`` minimised).
        figure_every_n_epochs: validation overlay figures every n epochs (0: never; test always draws one).
        num_figure_samples: images per overlay figure.
        scheduler_interval: ``epoch`` or ``step``: when an injected ``lr_scheduler`` steps.
        loss: ``loss(logits (B, K, H, W), mask (B, 1, H, W)) -> scalar`` in place of the built-in loss, e.g.
            ``monai.losses.DiceCELoss(sigmoid=True)``; None: the built-in from ``bce_weight``/``dice_weight``/
            ``dice_smooth``. ``output_weights`` apply to it alike.
        metrics: extra torchmetrics, updated with the hard prediction and the mask, both int64 (B, 1, *S),
            logged as ``val/<name>`` and ``test/<name>``.
        input_key, target_key: the batch keys of the image and the mask.
        class_names: multi-class: a name per class (background first); the test logs every metric per
            foreground class, ``test/<metric>/<class>``, and per-image mean/std ``test/dice_per_image/<class>``.
        hd95: also the 95th-percentile Hausdorff distance at test (``test/hd95``, per class with ``class_names``).
        spacing: voxel size for ``hd95`` (``None``: 1 per axis).
        roi_size: sliding-window inference at validation, test and predict with windows of this size (the
            training patch) whenever the input's spatial shape differs from it; ``None``: whole inputs.
        sw_batch_size, sw_overlap, sw_mode: windows per forward pass, their overlap, and how overlapping windows
            are blended (``gaussian`` or ``constant``), as MONAI's ``SlidingWindowInferer``.
        postprocessing: ``{name: SegmentationPostprocessor}`` run on each test sample (see that class); each
            is scored as ``test/<name>/<metric>`` with ``test/<name>/seconds`` (wall time per sample); first test
            loader only; not with ``multilabel``.
        multilabel: ``num_classes`` independent sigmoid channels (masks (B, K, *S) multi-hot float); ``class_names``
            then names the K channels (no background).
        volume_metrics: restack slices per ``volume`` and score them in 3-D when the batches carry ``volume`` and
            ``slice_index`` (see the module docstring; exclusive classes only, not with ``multilabel``).
        hd95_3d: the 3-D scores at test include HD95 (``test/hd95_3d``); ``None``: as ``hd95``.
    """

    monitor = "val/dice"
    monitor_mode = "max"

    def __init__(self, network: nn.Module, num_classes: int = 1, bce_weight: float = 0.5,
                 dice_weight: float = 1.0, dice_smooth: float = 1e-5,
                 output_weights: Optional[Sequence[float]] = None,
                 metric_aggregation: Literal["micro", "per_image"] = "micro", threshold: float = 0.5,
                 monitor_metric: str = "val/dice", figure_every_n_epochs: int = 1, num_figure_samples: int = 4,
                 optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", loss: Optional[nn.Module] = None,
                 metrics: Optional[dict[str, Metric]] = None, input_key: str = keys.IMAGE,
                 target_key: str = keys.MASK, class_names: Optional[Sequence[str]] = None, hd95: bool = False,
                 spacing: Optional[Sequence[float]] = None, roi_size: Optional[Sequence[int]] = None,
                 sw_batch_size: int = 2, sw_overlap: float = 0.25,
                 sw_mode: Literal["gaussian", "constant"] = "gaussian",
                 postprocessing: Optional[dict[str, SegmentationPostprocessor]] = None, multilabel: bool = False,
                 volume_metrics: bool = True, hd95_3d: Optional[bool] = None):
        super().__init__(optimizer=optimizer, lr_scheduler=lr_scheduler, scheduler_interval=scheduler_interval,
                         figure_every_n_epochs=figure_every_n_epochs)
        if monitor_metric not in ("val/loss", "val/dice_3d", *(f"val/{name}" for name in METRIC_NAMES)):
            raise ValueError(f"monitor_metric must be val/loss, val/dice_3d or val/<{'|'.join(METRIC_NAMES)}>, "
                             f"got {monitor_metric}")
        if monitor_metric == "val/dice_3d" and (not volume_metrics or multilabel):
            raise ValueError("monitor_metric val/dice_3d needs volume_metrics (and exclusive classes)")
        self.save_config_hyperparameters()
        self.network = network
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.metric_aggregation = metric_aggregation
        self.threshold = threshold
        self.output_weights = None if output_weights is None else [float(w) for w in output_weights]
        self.monitor = monitor_metric
        self.monitor_mode = "min" if monitor_metric == "val/loss" else "max"
        self.num_figure_samples = num_figure_samples
        self.input_key, self.target_key = input_key, target_key
        self.loss_fn = loss if loss is not None else SegmentationLoss(bce_weight, dice_weight, num_classes=num_classes,
                                                                      smooth=dice_smooth, multilabel=multilabel)
        self.init_extra_metrics(metrics)
        self.val_loss = MeanMetric()
        self.val_metrics = SegmentationMetrics(num_classes, metric_aggregation, multilabel)
        self.test_metrics = SegmentationMetrics(num_classes, metric_aggregation, multilabel)
        # The trivial baseline every demo must beat: predict background everywhere.
        self.test_metrics_all_background = SegmentationMetrics(num_classes, metric_aggregation, multilabel)
        if multilabel and class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"multi-label class_names needs {num_classes} names (one per channel), "
                             f"got {list(class_names)}")
        if not multilabel and class_names is not None and len(class_names) != max(2, num_classes):
            raise ValueError(f"class_names needs {max(2, num_classes)} names (background first), got {list(class_names)}")
        if multilabel and postprocessing:
            raise ValueError("test-time postprocessing works on exclusive classes, not with multilabel")
        self.class_names = None if class_names is None else [str(name) for name in class_names]
        self.roi_size = None if roi_size is None else tuple(int(r) for r in roi_size)
        self.sw_batch_size, self.sw_overlap, self.sw_mode = sw_batch_size, sw_overlap, sw_mode
        self.postprocessors = dict(postprocessing or {})
        for name, postprocessor in self.postprocessors.items():
            if not isinstance(postprocessor, SegmentationPostprocessor):
                raise TypeError(f"postprocessing[{name!r}] must be a SegmentationPostprocessor, got {type(postprocessor)}")
        hd = (lambda: HausdorffDistance95(num_classes, spacing, multilabel)) if hd95 else None
        self._hd95_spacing, self._hd95 = spacing, hd95  # further test sets build their own HD95 metrics
        self.test_hd95 = hd() if hd else None
        self.postprocessed_metrics = nn.ModuleDict({name: SegmentationMetrics(num_classes, metric_aggregation)
                                                    for name in self.postprocessors})
        self.postprocessed_hd95 = nn.ModuleDict({name: hd() for name in self.postprocessors} if hd else {})
        self.postprocessed_stats = nn.ModuleDict({
            name: nn.ModuleDict({stat: CatMetric() for stat in ("seconds", *postprocessor.stat_names)})
            for name, postprocessor in self.postprocessors.items()})
        self.volume_metrics = volume_metrics and not multilabel
        self.hd95_3d = hd95 if hd95_3d is None else hd95_3d
        self._volumes: dict[str, SliceVolumes] = {}  # per stage prefix (val, test, test/<set>)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Main logits (B, K, H, W)."""
        return _as_outputs(self.network(image))[0]

    # -- loss ---------------------------------------------------------------------------------------
    def losses(self, outputs: Sequence[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        weights = self.output_weights or [1.0 / len(outputs)] * len(outputs)
        if len(weights) != len(outputs):
            raise ValueError(f"network returned {len(outputs)} outputs but output_weights has {len(weights)}")
        total, main_terms = 0.0, None
        for weight, logits in zip(weights, outputs):
            if logits.shape[2:] != mask.shape[2:]:  # side outputs at a coarser scale
                mode = "trilinear" if mask.dim() == 5 else "bilinear"
                logits = F.interpolate(logits, size=mask.shape[2:], mode=mode, align_corners=False)
            terms = self._loss_terms(logits, mask)
            main_terms = main_terms or terms
            total = total + weight * terms["loss"]
        out = {"loss": total}
        if "ce" in main_terms:  # the built-in loss's parts (of the main output)
            out.update(ce=main_terms["ce"], dice_loss=main_terms["dice"])
        return out

    def _loss_terms(self, logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if isinstance(self.loss_fn, SegmentationLoss):
            return self.loss_fn.terms(logits, mask)
        return {"loss": self.loss_fn(logits, mask)}

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        keys.require(batch, self.input_key, self.target_key, task=type(self).__name__)
        return batch[self.input_key], batch[self.target_key]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, mask = self._inputs(batch)
        out = self.losses(_as_outputs(self.network(image)), mask)
        for name, value in out.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=image.shape[0])
        return out["loss"]

    # -- evaluation ---------------------------------------------------------------------------------
    def _outputs(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The network's outputs on whole inputs, or its main output stitched from sliding windows."""
        if self.roi_size is None or tuple(image.shape[2:]) == self.roi_size:
            return _as_outputs(self.network(image))
        from monai.inferers import SlidingWindowInferer

        if len(self.roi_size) != image.dim() - 2:
            raise ValueError(f"roi_size {self.roi_size} does not match inputs of spatial shape {tuple(image.shape[2:])}")
        inferer = SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=self.sw_batch_size,
                                       overlap=self.sw_overlap, mode=self.sw_mode)
        return [inferer(image, lambda window: _as_outputs(self.network(window))[0])]

    def _predict(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        outputs = self._outputs(image)
        return outputs, hard_prediction(outputs[0], self.num_classes, self.threshold, self.multilabel)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        image, mask = self._inputs(batch)
        outputs, prediction = self._predict(image)
        if len(outputs) == 1 and self.output_weights is not None and len(self.output_weights) > 1:
            loss = self._loss_terms(outputs[0], mask)["loss"]  # sliding windows stitch the main output only
        else:
            loss = self.losses(outputs, mask)["loss"]
        self.val_loss.update(loss, weight=image.shape[0])
        self.val_metrics.update(prediction, mask)
        self.update_extra_metrics("val", prediction, mask.long())
        self._gather_volumes("val", batch, prediction, mask)
        if batch_idx == 0 and self.figure_due():
            self.log_figure(f"val/overlay_epoch{self.current_epoch:03d}", overlay_figure(
                image, mask, prediction, batch.get(keys.NAME), self.num_figure_samples))

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute())
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "dice")
        self.val_loss.reset()
        self.val_metrics.reset()
        self.log_extra_metrics("val")
        self._log_volume_scores("val", hd95=False)

    def on_test_start(self) -> None:
        # Further test loaders (the datamodule's test_sets): their own metrics, logged as test/<name>/...
        count = len(self.trainer.num_test_batches) if self._trainer is not None else 1
        names = list(getattr(getattr(self.trainer, "datamodule", None), "test_loader_names", []))
        if len(names) != count:
            names = ["test", *(f"test_{i}" for i in range(1, count))]
        self._test_loader_names = names
        new = lambda: SegmentationMetrics(self.num_classes, self.metric_aggregation, self.multilabel)  # noqa: E731
        self.test_set_metrics = nn.ModuleDict({name: nn.ModuleDict({"metrics": new(), "all_background": new()})
                                               for name in names[1:]}).to(self.device)
        hd = lambda: HausdorffDistance95(self.num_classes, self._hd95_spacing, self.multilabel)  # noqa: E731
        self.test_set_hd95 = nn.ModuleDict({name: hd() for name in names[1:]} if self._hd95 else {}).to(self.device)
        to_fit = [p for p in self.postprocessors.values() if p.requires_fit]
        if to_fit:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or getattr(datamodule, "train_set", None) is None:
                raise RuntimeError("a test-time post-processor fits on the training set, but the datamodule has none")
            for postprocessor in to_fit:
                postprocessor.fit(datamodule.train_dataloader())

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx > 0:
            return self._test_step_further_set(batch, batch_idx, self._test_loader_names[dataloader_idx])
        image, mask = self._inputs(batch)
        outputs, prediction = self._predict(image)
        self.test_metrics.update(prediction, mask)
        if self.test_hd95 is not None:
            self.test_hd95.update(prediction, mask)
        self.test_metrics_all_background.update(torch.zeros_like(prediction), mask)
        self.update_extra_metrics("test", prediction, mask.long())
        self._gather_volumes("test", batch, prediction, mask)
        if self.postprocessors:
            self._postprocess(outputs[0], image, mask)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure("test/overlay", overlay_figure(image, mask, prediction, batch.get(keys.NAME),
                                                           self.num_figure_samples))

    def _test_step_further_set(self, batch: dict, batch_idx: int, name: str) -> None:
        image, mask = self._inputs(batch)
        _, prediction = self._predict(image)
        self.test_set_metrics[name]["metrics"].update(prediction, mask)
        self.test_set_metrics[name]["all_background"].update(torch.zeros_like(prediction), mask)
        if name in self.test_set_hd95:
            self.test_set_hd95[name].update(prediction, mask)
        self._gather_volumes(f"test/{name}", batch, prediction, mask)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self.log_figure(f"test/{name}/overlay", overlay_figure(image, mask, prediction, batch.get(keys.NAME),
                                                                   self.num_figure_samples))

    # -- per-volume scores of slice datasets ---------------------------------------------------------
    def _gather_volumes(self, prefix: str, batch: dict, prediction: torch.Tensor, mask: torch.Tensor) -> None:
        if self.volume_metrics and SliceVolumes.applies(batch, prediction):
            self._volumes.setdefault(prefix, SliceVolumes()).update(batch, prediction, mask)

    def _log_volume_scores(self, prefix: str, hd95: bool) -> None:
        volumes = self._volumes.pop(prefix, None)
        if not volumes:
            return
        dice, distance = volumes.score(self.num_classes, hd95)
        classes = self.foreground_names() or [f"class{k}" for k in range(1, dice.shape[1] + 1)]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a class absent from a volume (or all): NaN
            per_volume = {"dice_3d": np.nanmean(dice, 1)}
            if hd95:
                per_volume["hd95_3d"] = np.nanmean(distance, 1)
            if prefix == "val":
                self.log("val/dice_3d", float(np.nanmean(per_volume["dice_3d"])), prog_bar=True)
                return
        self.log(f"{prefix}/num_volumes", float(len(dice)))
        values = {name: torch.from_numpy(value) for name, value in per_volume.items()}
        if dice.shape[1] > 1:  # per foreground class, over the volumes
            values.update({f"dice_3d/{name}": torch.from_numpy(dice[:, k]) for k, name in enumerate(classes)})
            if hd95:
                values.update({f"hd95_3d/{name}": torch.from_numpy(distance[:, k]) for k, name in enumerate(classes)})
        self.log_mean_std(prefix, values)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, K, *S) class probabilities (binary: [1 - p, p])."""
        logits = logits.float()
        if self.multilabel:
            return torch.sigmoid(logits)
        if self.num_classes == 1:
            foreground = torch.sigmoid(logits)
            return torch.cat([1 - foreground, foreground], dim=1)
        return torch.softmax(logits, dim=1)

    def _postprocess(self, logits: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> None:
        probabilities = self.probabilities(logits).cpu().numpy()
        images = image.detach().float().cpu().numpy()
        for name, postprocessor in self.postprocessors.items():
            labels = []
            for sample_probabilities, sample_image in zip(probabilities, images):
                start = time.perf_counter()
                out = postprocessor(sample_probabilities, sample_image)
                seconds = time.perf_counter() - start
                sample_labels, stats = out if isinstance(out, tuple) else (out, {})
                labels.append(torch.as_tensor(np.asarray(sample_labels, dtype=np.int64)))
                for stat, value in {"seconds": seconds, **stats}.items():
                    self.postprocessed_stats[name][stat].update(torch.tensor([float(value)], dtype=torch.float64))
            prediction = torch.stack(labels)[:, None].to(mask.device)
            self.postprocessed_metrics[name].update(prediction, mask)
            if name in self.postprocessed_hd95:
                self.postprocessed_hd95[name].update(prediction, mask)

    def _log_test_metrics(self, prefix: str, metrics: SegmentationMetrics,
                          hd95: Optional[HausdorffDistance95]) -> torch.Tensor:
        for name, value in metrics.compute().items():
            self.log(f"{prefix}/{name}", value)
        per_image = metrics.per_image_values()
        # {prefix}/{dice,iou}_per_image (mean over images) and {prefix}/{dice,iou}_per_image_std
        self.log_mean_std(prefix, {f"{name}_per_image": per_image[name] for name in ("dice", "iou")})
        classes = self.foreground_names()
        if classes:
            for name, values in metrics.compute_per_class().items():
                for class_name, value in zip(classes, values):
                    self.log(f"{prefix}/{name}/{class_name}", value.float())
            dice = metrics.per_image_class_values()["dice"]
            self.log_mean_std(prefix, {f"dice_per_image/{c}": dice[:, i] for i, c in enumerate(classes)})
        if hd95 is not None:
            distances = hd95.per_image_class_values()
            self.log_mean_std(prefix, {"hd95": distances.nanmean(1) if distances.numel() else distances.flatten()})
            if classes:
                self.log_mean_std(prefix, {f"hd95/{c}": distances[:, i] for i, c in enumerate(classes)})
            hd95.reset()
        metrics.reset()
        return per_image["dice"]

    def foreground_names(self) -> Optional[list[str]]:
        """Names of the scored classes (multi-class: without background; multi-label: every channel, ``label<k>``
        without ``class_names``); None for binary, or multi-class without ``class_names``."""
        if self.multilabel:
            return self.class_names or [f"label{k}" for k in range(self.num_classes)]
        return self.class_names[1:] if self.class_names and self.num_classes > 1 else None

    def on_test_epoch_end(self) -> None:
        for prefix in list(self._volumes):
            self._log_volume_scores(prefix, hd95=self.hd95_3d)
        per_image_dice = self._log_test_metrics("test", self.test_metrics, self.test_hd95)
        baseline = self.test_metrics_all_background.compute()
        self.log("test/dice_all_background", baseline["dice"])
        self.log("test/iou_all_background", baseline["iou"])
        self.log("test/num_images", float(per_image_dice.numel()))
        self.test_metrics_all_background.reset()
        for name, metrics in getattr(self, "test_set_metrics", {}).items():
            count = self._log_test_metrics(f"test/{name}", metrics["metrics"], self.test_set_hd95[name]
                                           if name in self.test_set_hd95 else None).numel()
            baseline = metrics["all_background"].compute()
            self.log(f"test/{name}/dice_all_background", baseline["dice"])
            self.log(f"test/{name}/iou_all_background", baseline["iou"])
            self.log(f"test/{name}/num_images", float(count))
            metrics["all_background"].reset()
        for name in self.postprocessors:
            self._log_test_metrics(f"test/{name}", self.postprocessed_metrics[name], self.postprocessed_hd95[name]
                                   if name in self.postprocessed_hd95 else None)
            for stat, metric in self.postprocessed_stats[name].items():
                values = metric.compute() if metric.update_count else torch.zeros(0, dtype=torch.float64)
                self.log_mean_std(f"test/{name}", {stat: values})
                metric.reset()
        self.log_extra_metrics("test")

    # -- prediction ---------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """``{"mask": hard prediction (B, 1, *S) int64, "name": file stems}`` (the writer saves the files)."""
        keys.require(batch, self.input_key, task=type(self).__name__)
        _, prediction = self._predict(batch[self.input_key])
        names = batch.get(keys.NAME) or [f"batch{batch_idx:05d}_{i:03d}" for i in range(len(prediction))]
        return {keys.MASK: prediction, keys.NAME: list(names)}

    def configure_callbacks(self):  # 2D masks as PNG, volumes as NIfTI
        if self.multilabel:  # one 0/255 PNG per channel
            return default_writer(self._trainer, MaskPNGWriter("predictions", scale=255,
                                                               label_names=self.foreground_names()))
        return default_writer(self._trainer, MaskPNGWriter("predictions", scale=255 if self.num_classes == 1 else 1))


def _as_outputs(output) -> list[torch.Tensor]:
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _display_image(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) normalised tensor -> (H, W[, 3]) array in [0, 1] for display (min-max per image); RGB from 3+
    channels, else the first channel."""
    array = image.detach().float().cpu().numpy()
    array = (array - array.min()) / max(float(array.max() - array.min()), 1e-8)
    return array[0] if array.shape[0] < 3 else np.moveaxis(array[:3], 0, -1)  # 1 or 2 channels: the first


def central_slices(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volumes (B, C, H, W, D) -> the slice along D with the most ground-truth foreground (the middle one when the
    mask is empty), per sample, as (B, C, H, W); 2D inputs pass through."""
    if image.dim() != 5:
        return image, mask, prediction
    foreground = (mask > 0).any(1).flatten(1, 2).sum(1)  # (B, D); multi-label: any channel
    index = torch.where(foreground.max(1).values > 0, foreground.argmax(1),
                        torch.full_like(foreground[:, 0], image.shape[-1] // 2))
    pick = lambda x: torch.stack([x[i, ..., int(index[i])] for i in range(len(x))])  # noqa: E731
    return pick(image), pick(mask), pick(prediction)


def overlay_figure(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor,
                   names: Optional[Sequence[str]] = None, num_samples: int = 4):
    """Image with the ground-truth contour (green) and the predicted contour (red), one panel per image
    (volumes: the slice with the most ground-truth foreground; multi-label masks (B, K, ...): every channel's
    contour)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, mask, prediction = central_slices(image, mask, prediction)
    count = max(1, min(num_samples, image.shape[0]))
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(_display_image(image[i]), cmap="gray")
        for masks_i, colour in ((mask[i], "lime"), (prediction[i], "red")):
            for mask_i in masks_i:  # one channel (labels), or every channel of a multi-label mask
                mask_i = mask_i.detach().float().cpu().numpy()
                if mask_i.max() > mask_i.min():
                    ax.contour(mask_i, levels=np.arange(0.5, mask_i.max() + 0.5), colors=colour, linewidths=1.0)
        ax.set_title(str(names[i]) if names else f"#{i}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("ground truth (green), prediction (red)", fontsize=9)
    figure.tight_layout()
    return figure
