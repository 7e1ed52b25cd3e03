"""Regression metrics on grouped predictions: segment predictions averaged per recording, then MAE/RMSE.

``RecordingLevelErrors`` is a torchmetrics Metric whose states are concatenated across processes, so
under DDP every rank's segments are gathered before segments are grouped into recordings (a
recording's segments may be split over ranks).
"""
from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.functional import mean_absolute_error, mean_squared_error
from torchmetrics.utilities import dim_zero_cat


def mean_per_group(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` (N, ...) within each distinct id of ``group_ids`` (N,) -> (sorted unique ids, means (G, ...))."""
    ids, inverse = torch.unique(group_ids, return_inverse=True)
    sums = torch.zeros((len(ids), *values.shape[1:]), dtype=torch.float64, device=values.device)
    sums.index_add_(0, inverse, values.double())
    counts = torch.bincount(inverse, minlength=len(ids)).double().view(-1, *[1] * (values.dim() - 1))
    return ids, (sums / counts).to(values.dtype)


def recording_scores(predictions: torch.Tensor, targets: torch.Tensor,
                     recording_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-recording (ids, mean prediction, target): the papers' "mean of the segment scores"."""
    ids, mean_predictions = mean_per_group(predictions, recording_ids)
    _, mean_targets = mean_per_group(targets, recording_ids)  # every segment carries its recording's label
    return ids, mean_predictions, mean_targets


class RecordingLevelErrors(Metric):
    """MAE and RMSE over recordings, each recording's prediction the mean of its segments' predictions.

    ``update(predictions, targets, recording_ids)`` takes per-segment values; ``compute()`` returns
    ``{"mae", "rmse", "segment_mae", "segment_rmse", "num_recordings", "num_segments"}`` (scalars), the
    per-recording ``"recording_predictions"`` and ``"recording_targets"`` (ordered by id) and, when
    ``baseline`` is given (a constant prediction, e.g. the training mean), ``"mae_baseline"``,
    ``"rmse_baseline"`` of predicting it for every recording.
    """

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("predictions", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("recording_ids", default=[], dist_reduce_fx="cat")

    def update(self, predictions: torch.Tensor, targets: torch.Tensor, recording_ids: torch.Tensor) -> None:
        self.predictions.append(predictions.detach().float().flatten())
        self.targets.append(targets.detach().float().flatten())
        self.recording_ids.append(recording_ids.detach().long().flatten())

    def compute(self, baseline: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        predictions, targets = dim_zero_cat(self.predictions), dim_zero_cat(self.targets)
        _, per_recording, recording_targets = recording_scores(predictions, targets, dim_zero_cat(self.recording_ids))
        out = {
            "mae": mean_absolute_error(per_recording, recording_targets),
            "rmse": mean_squared_error(per_recording, recording_targets, squared=False),
            "segment_mae": mean_absolute_error(predictions, targets),
            "segment_rmse": mean_squared_error(predictions, targets, squared=False),
            "num_recordings": torch.tensor(float(len(per_recording)), device=predictions.device),
            "num_segments": torch.tensor(float(len(predictions)), device=predictions.device),
            "recording_predictions": per_recording,
            "recording_targets": recording_targets,
        }
        if baseline is not None:
            constant = torch.full_like(recording_targets, float(baseline))
            out["mae_baseline"] = mean_absolute_error(constant, recording_targets)
            out["rmse_baseline"] = mean_squared_error(constant, recording_targets, squared=False)
        return out
