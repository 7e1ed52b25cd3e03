"""Losses for weak (point) supervision of segmentation: partial cross-entropy over annotated pixels and the boundary
loss on signed distance maps (Kervadec et al. 2019; intensity-aware maps: PointBL, ICPR 2024).

Point labels are (B, 1, *S) int64 with the class on annotated pixels and ``ignore_index`` (-1) elsewhere
(``datamodules/point_labels.py``); distance maps (B, K, *S) float, negative inside the annotation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PartialCrossEntropy(nn.Module):
    """-sum over annotated pixels of log softmax[class] / number of annotated pixels, counting only the pixels of
    ``classes`` (default: every class but 0, as the paper's ``CrossEntropy(idc=[1, 2, 3])``); 0 without any."""

    def __init__(self, classes: Optional[Sequence[int]] = None, ignore_index: int = -1) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(k) for k in classes]
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        labels = points[:, 0].long()
        annotated = labels != self.ignore_index
        if self.classes is None:
            annotated &= labels != 0
        else:
            annotated &= torch.isin(labels, torch.tensor(self.classes, device=labels.device))
        log_probabilities = F.log_softmax(logits.float(), dim=1)
        picked = log_probabilities.gather(1, labels.clamp(min=0)[:, None])[:, 0]
        count = annotated.sum()
        return -(picked * annotated).sum() / count.clamp(min=1)


class BoundaryLoss(nn.Module):
    """Mean over (batch, ``classes``, pixels) of softmax probability x signed distance (the official
    ``SurfaceLoss``: a mean, maps not normalised); default classes: all but the background."""

    def __init__(self, classes: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        self.classes = None if classes is None else [int(k) for k in classes]

    def forward(self, logits: torch.Tensor, distance_maps: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        classes = self.classes if self.classes is not None else list(range(1, logits.shape[1]))
        return (probabilities[:, classes] * distance_maps[:, classes].float()).mean()


class PointBoundaryLoss(nn.Module):
    """``partial CE + alpha * boundary loss`` (PointBL Eq. 5); ``alpha = 0``: the partial CE alone (lower bound);
    ``crf``: a ``DenseCRFLoss`` added to it (the CRF-loss baseline, which needs the image).

    ``terms(logits, points, distance_maps, image)`` returns ``{"loss", "pce", "boundary", "crf"}`` (those used).
    """

    def __init__(self, alpha: float = 1.0, classes: Optional[Sequence[int]] = None, ignore_index: int = -1,
                 crf: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.crf = crf
        self.partial_ce = PartialCrossEntropy(classes, ignore_index)
        self.boundary = BoundaryLoss(classes)

    def terms(self, logits: torch.Tensor, points: torch.Tensor, distance_maps: Optional[torch.Tensor] = None,
              image: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        pce = self.partial_ce(logits, points)
        out = {"loss": pce, "pce": pce}
        if self.alpha != 0.0:
            if distance_maps is None:
                raise ValueError("the boundary loss (alpha > 0) needs the batch's distance maps")
            out["boundary"] = self.boundary(logits, distance_maps)
            out["loss"] = out["loss"] + self.alpha * out["boundary"]
        if self.crf is not None:
            if image is None:
                raise ValueError("the CRF loss needs the image")
            out["crf"] = self.crf(logits, image)
            out["loss"] = out["loss"] + out["crf"]
        return out

    def forward(self, logits: torch.Tensor, points: torch.Tensor, distance_maps: Optional[torch.Tensor] = None,
                image: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.terms(logits, points, distance_maps, image)["loss"]


class DenseCrossEntropy(nn.Module):
    """Plain cross-entropy on a dense (B, 1, *S) label map: the full-supervision upper bound, and the validation
    loss of weakly supervised runs (validation sets are fully annotated)."""

    def forward(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), mask[:, 0].long())


class _DenseCRFEnergy(torch.autograd.Function):
    """sum_k s_k^T W (1 - s_k) with the dense Gaussian affinity W_ij = exp(-|f_i - f_j|^2 / 2) of features f, built
    ``chunk`` rows at a time and never stored (its gradient is W (1 - 2 s_k), W being symmetric)."""

    @staticmethod
    def _affinity_product(features: torch.Tensor, values: torch.Tensor, chunk: int) -> torch.Tensor:
        out = torch.empty_like(values)
        for start in range(0, features.shape[0], chunk):
            w = torch.exp(-0.5 * torch.cdist(features[start:start + chunk], features).square())
            out[start:start + chunk] = w @ values
        return out

    @staticmethod
    def forward(ctx, probabilities: torch.Tensor, features: torch.Tensor, chunk: int) -> torch.Tensor:
        ctx.save_for_backward(probabilities, features)
        ctx.chunk = chunk
        return (probabilities * _DenseCRFEnergy._affinity_product(features, 1 - probabilities, chunk)).sum()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        probabilities, features = ctx.saved_tensors
        grad = _DenseCRFEnergy._affinity_product(features, 1 - 2 * probabilities, ctx.chunk)
        return grad_output * grad, None, None


class DenseCRFLoss(nn.Module):
    """The DenseCRF loss of Tang et al. (ECCV 2018), the paper's CRF-loss baseline: ``weight x sum over images and
    classes of S_k^T W (1 - S_k)`` with the dense bilateral Gaussian kernel W on (intensity / sigma_rgb, position /
    sigma_xy), computed exactly (chunked O(N^2), no permutohedral lattice) on images and softmax outputs resized by
    ``scale``. ``intensity_scale`` maps the input image to the 0-255 range sigma_rgb is meant for."""

    def __init__(self, weight: float = 2e-9, sigma_rgb: float = 15.0, sigma_xy: float = 100.0, scale: float = 0.5,
                 intensity_scale: float = 255.0, chunk: int = 4096) -> None:
        super().__init__()
        self.weight, self.sigma_rgb, self.sigma_xy = float(weight), float(sigma_rgb), float(sigma_xy)
        self.scale, self.intensity_scale, self.chunk = float(scale), float(intensity_scale), int(chunk)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        probabilities = torch.softmax(logits.float(), dim=1)
        image = image.float() * self.intensity_scale
        if self.scale != 1.0:
            probabilities = F.interpolate(probabilities, scale_factor=self.scale, mode="bilinear", align_corners=False)
            image = F.interpolate(image, scale_factor=self.scale, mode="bilinear", align_corners=False)
        height, width = image.shape[2:]
        ys, xs = torch.meshgrid(torch.arange(height, device=image.device), torch.arange(width, device=image.device),
                                indexing="ij")
        # positions in the original resolution's pixels (the kernel's sigma_xy is meant for it)
        position = torch.stack([ys, xs], -1).reshape(-1, 2).float() / self.scale / self.sigma_xy
        total = logits.new_zeros((), dtype=torch.float32)
        for b in range(image.shape[0]):
            colour = image[b].reshape(image.shape[1], -1).T / self.sigma_rgb
            features = torch.cat([colour, position], 1).contiguous()
            total = total + _DenseCRFEnergy.apply(probabilities[b].reshape(probabilities.shape[1], -1).T.contiguous(),
                                                  features, self.chunk)
        return self.weight * total
