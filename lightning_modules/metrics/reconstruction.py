"""Per-slice PSNR, SSIM and NMSE as DiffCMR computes them (scikit-image on each slice, data_range =
the ground truth's max), batched in torch so evaluation stays on the device.

scikit-image's SSIM (7x7 uniform window, sample covariance N/(N-1), mean over the window-valid
region) is written out here because torchmetrics' SSIM takes one data range for the whole batch,
not one per slice, and its uniform-window variant neither crops nor corrects the covariance like
scikit-image; tests check both functions against scikit-image on the same inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _flat(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H*W) in float64 (the metrics are reductions of small numbers)."""
    return image.reshape(image.shape[0], -1).double()


def slice_data_range(target: torch.Tensor) -> torch.Tensor:
    """The paper's data range: each ground-truth slice's maximum, shape (B,)."""
    return _flat(target).amax(dim=1)


def psnr_per_slice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``10 log10(max(gt)^2 / MSE)`` per slice (skimage ``peak_signal_noise_ratio(gt, pred, data_range=gt.max())``)."""
    mse = (_flat(prediction) - _flat(target)).pow(2).mean(dim=1)
    return 10.0 * torch.log10(slice_data_range(target).pow(2) / mse)


def nmse_per_slice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||gt - pred||^2 / ||gt||^2`` per slice (fastMRI's NMSE)."""
    target_flat = _flat(target)
    return (_flat(prediction) - target_flat).pow(2).sum(dim=1) / target_flat.pow(2).sum(dim=1)


def ssim_per_slice(prediction: torch.Tensor, target: torch.Tensor, window: int = 7,
                   k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """scikit-image's ``structural_similarity(gt, pred, data_range=gt.max())`` per slice, shape (B,).

    Uniform ``window`` x ``window`` means, sample (co)variances (N/(N-1)), and the mean of the SSIM
    map over the pixels whose window lies inside the image (skimage crops (window-1)/2 at each edge).
    """
    if prediction.ndim == 3:
        prediction, target = prediction[:, None], target[:, None]
    x, y = prediction.double(), target.double()
    data_range = slice_data_range(target)[:, None, None, None]
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    n = window * window
    cov_norm = n / (n - 1)
    mean = lambda image: F.avg_pool2d(image, window, stride=1)  # noqa: E731 (valid region only)
    mu_x, mu_y = mean(x), mean(y)
    var_x = cov_norm * (mean(x * x) - mu_x * mu_x)
    var_y = cov_norm * (mean(y * y) - mu_y * mu_y)
    cov_xy = cov_norm * (mean(x * y) - mu_x * mu_y)
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3))


def reconstruction_metrics(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{"psnr", "ssim", "nmse"}``, each (B,) float64."""
    return {"psnr": psnr_per_slice(prediction, target), "ssim": ssim_per_slice(prediction, target),
            "nmse": nmse_per_slice(prediction, target)}
