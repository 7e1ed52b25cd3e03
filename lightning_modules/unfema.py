"""UnFeMa (Pyatov & Sorokin, ICPR 2024): unsupervised feature matching for affine histology registration.

LoFTR's coarse level (ResNet-FPN 8/2 backbone, sine position encoding, self/cross transformer: kornia's parts) gives
a dual-softmax confidence matrix; mutual-nearest matches are refined by Soft Points (a softmax expectation over a
vicinity of each match, kornia's dsnt) and a confidence-weighted DLT turns them into an affine matrix, so the
registration loss reaches both the match coordinates and their confidences. At inference the source is tried at
4 rotations, the affine of each is fitted by RANSAC (scikit-image) and the one with the best global NCC is kept;
Perceptual Search (Sec. 3.2: VGG-19 feature NCC over a pyramid, with and without a matcher's affine) can replace
that search as the initial alignment. The Tables 1/2 baselines live in ``unfema_baselines.py``.

Convention (the registration family's): ``forward(moving, fixed)`` with moving = source I_S, fixed = target I_T,
returns ``theta`` (B, 2, 3), F.affine_grid's matrix (align_corners=True) from target to source coordinates, so
``warp(moving, affine_to_displacement(theta))`` is I_S o Lambda in the target frame.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from kornia.feature.loftr.backbone.resnet_fpn import ResNetFPN_8_2
from kornia.feature.loftr.loftr_module import LocalFeatureTransformer
from kornia.feature.loftr.utils.position_encoding import PositionEncodingSine
from kornia.geometry.subpix import spatial_expectation2d, spatial_softmax2d
from torch import nn

from lightning_modules.blocks.warp import affine_to_displacement, pixel_matrix_to_theta, theta_to_pixel_matrix, warp
from lightning_modules.losses.registration import global_ncc

INF = 1e9
#: the ResNet-FPN layers that only feed LoFTR's fine level, which UnFeMa drops (their checkpoint keys are skipped)
FINE_ONLY_LAYERS = ("layer2_outconv", "layer2_outconv2", "layer1_outconv", "layer1_outconv2")


class CoarseLoFTR(nn.Module):
    """LoFTR up to its coarse transformer: (image0, image1) -> transformed 1/8 features (B, L, C), (B, S, C).

    Built from kornia.feature.loftr's ResNetFPN_8_2, PositionEncodingSine and LocalFeatureTransformer; the FPN
    layers of the 1/2 map are removed (UnFeMa has no fine level), so every parameter is trained.

    Args:
        initial_dim, block_dims: ResNet-FPN widths (LoFTR: 128, [128, 196, 256]); d_model = block_dims[-1].
        nhead: attention heads; n_layers: how many [self, cross] pairs (LoFTR / UnFeMa: 4).
        attention: ``linear`` (LoFTR's, the portable default) or ``full``; the paper's QuadTree attention needs a
            CUDA extension that is not on PyPI and is not provided.
        temp_bug_fix: the sine encoding's corrected frequencies (the UnFeMa code sets it).
    """

    def __init__(self, initial_dim: int = 128, block_dims: Sequence[int] = (128, 196, 256), nhead: int = 8,
                 n_layers: int = 4, attention: Literal["linear", "full", "quadtree"] = "linear",
                 temp_bug_fix: bool = True):
        super().__init__()
        if attention == "quadtree":
            raise ValueError("QuadTree attention needs the QuadTreeAttention CUDA extension (not on PyPI); use "
                             "attention: linear (LoFTR's), the portable choice of this implementation")
        d_model = int(block_dims[-1])
        self.backbone = ResNetFPN_8_2({"initial_dim": initial_dim, "block_dims": list(block_dims)})
        for name in FINE_ONLY_LAYERS:
            delattr(self.backbone, name)
        self.pos_encoding = PositionEncodingSine(d_model, temp_bug_fix=temp_bug_fix)
        self.loftr_coarse = LocalFeatureTransformer({"d_model": d_model, "nhead": nhead, "attention": attention,
                                                     "layer_names": ["self", "cross"] * n_layers})

    def coarse_features(self, image: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.relu(b.bn1(b.conv1(image)))
        x = b.layer3(b.layer2(b.layer1(x)))
        return b.layer3_outconv(x)

    def forward(self, image0: torch.Tensor, image1: torch.Tensor):
        n = image0.shape[0]
        if image0.shape[2:] == image1.shape[2:]:  # one backbone pass (LoFTR's "faster & better BN convergence")
            feat0, feat1 = self.coarse_features(torch.cat([image0, image1])).split(n)
        else:
            feat0, feat1 = self.coarse_features(image0), self.coarse_features(image1)
        hw0, hw1 = tuple(feat0.shape[2:]), tuple(feat1.shape[2:])
        feat0 = self.pos_encoding(feat0).flatten(2).transpose(1, 2).contiguous()
        feat1 = self.pos_encoding(feat1).flatten(2).transpose(1, 2).contiguous()
        feat0, feat1 = self.loftr_coarse(feat0, feat1)
        return feat0, feat1, hw0, hw1

    def load_loftr_checkpoint(self, path: str | Path) -> None:
        """Load a LoFTR checkpoint (e.g. MegaDepth "outdoor", kornia's or the official ``loftr_outdoor.ckpt``) from a
        local file: backbone and coarse transformer; the fine level's weights are skipped."""
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no LoFTR checkpoint there. On the stand-in, train the matcher first (stage 0): python run.py "
                "--config experiments/unfema_pretrain_demo.yaml --run_id stage0, then pass "
                "runs/unfema_pretrain_demo/stage0/checkpoints/best.ckpt; on ANHIR, a local MegaDepth LoFTR checkpoint")
        state = torch.load(Path(path), map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        own = self.state_dict()
        loaded = {}
        for key, value in state.items():
            # "network.matcher.*": a Lightning checkpoint of MatchingPretext (experiments/unfema_pretrain_demo.yaml)
            key = key.removeprefix("network.").removeprefix("matcher.")
            if key in own:
                loaded[key] = value
            elif not key.startswith(("loftr_fine.", "fine_preprocess.")) and not any(
                    key.startswith(f"backbone.{name}.") for name in FINE_ONLY_LAYERS):
                raise KeyError(f"{path}: unexpected LoFTR key {key!r}")
        missing = sorted(set(own) - set(loaded))
        if missing:
            raise KeyError(f"{path}: LoFTR checkpoint lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        self.load_state_dict(loaded)


# -- coarse matching -----------------------------------------------------------------------------------------


def dual_softmax(feat0: torch.Tensor, feat1: torch.Tensor, temperature: float = 0.1):
    """LoFTR's dual-softmax (paper Eq. 5-6): S = <f0/sqrt(C), f1/sqrt(C)> / tau, P_c = softmax_i(S) softmax_j(S).
    Returns (S, P_c), each (B, L, S)."""
    scale = feat0.shape[-1] ** 0.5
    sim = torch.einsum("nlc,nsc->nls", feat0 / scale, feat1 / scale) / temperature
    return sim, F.softmax(sim, 1) * F.softmax(sim, 2)


def _border_mask(hw: tuple[int, int], border: int, device) -> torch.Tensor:
    h, w = hw
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    inside_r = (rows >= border) & (rows < h - border)
    inside_c = (cols >= border) & (cols < w - border)
    return (inside_r[:, None] & inside_c[None, :]).flatten()


def mutual_nearest_matches(conf: torch.Tensor, hw0, hw1, threshold: float = 0.2, border: int = 2):
    """Eq. 7-8: for every cell i of image 0 its best j; ``matched`` (B, L) where (i, j) is a mutual nearest
    neighbour with P_c >= threshold and neither cell within ``border`` cells of an edge. Returns (matched, j)."""
    row_max, j = conf.max(2)
    col_max = conf.max(1).values
    inside0 = _border_mask(hw0, border, conf.device)
    inside1 = _border_mask(hw1, border, conf.device)
    matched = (row_max > threshold) & (row_max == col_max.gather(1, j)) & inside0[None] & inside1[j]
    return matched, j


def vicinity_offsets(radius: int = 1, shape: Literal["horizontal", "square"] = "horizontal") -> list[tuple[int, int]]:
    """(dy, dx) of U_eps: the code's horizontal vicinity (y, x-eps..x+eps) or the full square."""
    span = range(-radius, radius + 1)
    if shape == "horizontal":
        return [(0, dx) for dx in span]
    return [(dy, dx) for dy in span for dx in span]


def _window_expectation(logits: torch.Tensor, offsets, radius: int):
    """Per match: softmax of ``logits`` (B, L, U) over the vicinity, as a (2r+1)^2 window -> kornia dsnt expectation
    of the offset (B, L, 2) as (dx, dy), and the probabilities (B, L, U)."""
    b, n, _ = logits.shape
    k = 2 * radius + 1
    window = logits.new_full((b * n, 1, k * k), -INF)
    slots = torch.tensor([(dy + radius) * k + (dx + radius) for dy, dx in offsets], device=logits.device)
    window[:, 0, slots] = logits.reshape(b * n, -1)
    probs = spatial_softmax2d(window.view(b * n, 1, k, k))
    offset = spatial_expectation2d(probs, normalized_coordinates=False).view(b, n, 2) - radius
    return offset, probs.flatten(2)[:, 0, slots].view(b, n, -1)


def soft_points(sim: torch.Tensor, conf: torch.Tensor, j: torch.Tensor, hw0, hw1, radius: int = 1,
                vicinity: Literal["horizontal", "square"] = "horizontal"):
    """Soft Points (Eq. 9-11) for every cell i of image 0 and its best cell j of image 1.

    i_hat = E over U(i) of softmax_i' S(i', j) of the coordinates, j_hat likewise over U(j) with i fixed; the soft
    confidence is the mean of E P_c(i', j) and E P_c(i, j'). Vicinity cells outside the image are left out.
    Returns coarse-grid coordinates (B, L, 2) and (B, L, 2) as (x, y), and the confidence (B, L).
    """
    b, n_i, n_j = sim.shape
    offsets = vicinity_offsets(radius, vicinity)
    dy = torch.tensor([o[0] for o in offsets], device=sim.device)
    dx = torch.tensor([o[1] for o in offsets], device=sim.device)
    i = torch.arange(n_i, device=sim.device)
    yi, xi = i // hw0[1], i % hw0[1]
    yj, xj = j // hw1[1], j % hw1[1]  # (B, L)

    def neighbours(y, x, hw):
        ny, nx = y.unsqueeze(-1) + dy, x.unsqueeze(-1) + dx
        inside = (ny >= 0) & (ny < hw[0]) & (nx >= 0) & (nx < hw[1])
        return (ny.clamp(0, hw[0] - 1) * hw[1] + nx.clamp(0, hw[1] - 1)), inside

    flat_sim, flat_conf = sim.flatten(1), conf.flatten(1)
    # image-0 side: S(i', j) for i' in U(i)
    ni, inside_i = neighbours(yi, xi, hw0)  # (L, U)
    index0 = ni.unsqueeze(0) * n_j + j.unsqueeze(-1)  # (B, L, U)
    logits0 = flat_sim.gather(1, index0.flatten(1)).view_as(index0).masked_fill(~inside_i, -INF)
    offset0, p0 = _window_expectation(logits0, offsets, radius)
    conf0 = (p0 * flat_conf.gather(1, index0.flatten(1)).view_as(index0)).sum(-1)
    # image-1 side: S(i, j') for j' in U(j)
    nj, inside_j = neighbours(yj, xj, hw1)  # (B, L, U)
    index1 = i.view(1, -1, 1) * n_j + nj
    logits1 = flat_sim.gather(1, index1.flatten(1)).view_as(index1).masked_fill(~inside_j, -INF)
    offset1, p1 = _window_expectation(logits1, offsets, radius)
    conf1 = (p1 * flat_conf.gather(1, index1.flatten(1)).view_as(index1)).sum(-1)
    points0 = torch.stack([xi, yi], -1).to(sim.dtype).unsqueeze(0) + offset0
    points1 = torch.stack([xj, yj], -1).to(sim.dtype) + offset1
    return points0, points1, 0.5 * (conf0 + conf1)


# -- weighted DLT --------------------------------------------------------------------------------------------


def _hartley(points: torch.Tensor, mask: torch.Tensor):
    """Masked Hartley normalisation of (B, N, 2): (B, 3, 3) matrix T and the normalised points (mean 0, RMS
    distance sqrt(2))."""
    weight = mask.to(points.dtype).unsqueeze(-1)
    count = weight.sum(1).clamp_min(1)
    centroid = (points * weight).sum(1) / count
    centred = points - centroid.unsqueeze(1)
    rms = torch.sqrt(((centred ** 2).sum(-1, keepdim=True) * weight).sum(1) / count + 1e-12)
    factor = math.sqrt(2.0) / rms.clamp_min(1e-12)  # (B, 1)
    matrix = torch.zeros(points.shape[0], 3, 3, device=points.device, dtype=points.dtype)
    matrix[:, 0, 0] = matrix[:, 1, 1] = factor[:, 0]
    matrix[:, :2, 2] = -factor * centroid
    matrix[:, 2, 2] = 1.0
    return matrix, centred * factor.unsqueeze(1)


def _finite_gradient(grad: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def weighted_affine_dlt(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor,
                        mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Confidence-weighted DLT (paper Eq. 12-13, the code's AffineTransform2D): the (B, 3, 3) affine with
    dst ~ A src from (B, N, 2) point sets, each pair of equations weighted by sqrt(w / max w); ``mask`` (B, N)
    leaves padded points out (also of the normalisation). Solved by the last right singular vector of W A after
    Hartley normalisation, then de-normalised. Differentiable in the points and the weights."""
    mask = torch.ones_like(weights, dtype=torch.bool) if mask is None else mask
    for tensor in (src, dst, weights):  # see the hook on the system below
        if tensor.requires_grad:
            tensor.register_hook(_finite_gradient)
    weights = torch.where(mask, weights, torch.zeros_like(weights))
    t_src, src_n = _hartley(src, mask)
    t_dst, dst_n = _hartley(dst, mask)
    one, zero = torch.ones_like(src_n[..., :1]), torch.zeros_like(src_n[..., :1])
    rows_x = torch.cat([src_n, one, zero, zero, zero, dst_n[..., :1]], -1)
    rows_y = torch.cat([zero, zero, zero, src_n, one, dst_n[..., 1:]], -1)
    # sqrt only of positive values: its gradient at 0 is infinite, and inf x 0 would poison the backward pass
    relative = (weights / weights.amax(1, keepdim=True).clamp_min(1e-12)).clamp_min(1e-12)
    scale = torch.where(mask & (weights > 0), torch.sqrt(relative), torch.zeros_like(relative)).unsqueeze(-1)
    system = torch.cat([rows_x * scale, rows_y * scale], 1)  # (B, 2N, 7)
    if system.requires_grad:
        # a degenerate pair (repeated singular values: collinear or coincident matches) has an undefined SVD
        # gradient; it is dropped (set to 0) instead of poisoning the weights with NaN
        system.register_hook(_finite_gradient)
    v = torch.linalg.svd(system, full_matrices=False).Vh[:, -1]  # (B, 7)
    last = v[:, 6:]
    last = torch.where(last.abs() < 1e-8, torch.full_like(last, 1e-8) * torch.where(last < 0, -1.0, 1.0), last)
    h = -v[:, :6] / last
    normalised = torch.cat([h.view(-1, 2, 3), torch.tensor([0.0, 0.0, 1.0], device=h.device, dtype=h.dtype)
                            .expand(h.shape[0], 1, 3)], 1)
    matrix = torch.linalg.solve(t_dst, normalised @ t_src)
    return matrix / matrix[:, 2:, 2:]


def rotation_matrix(angle_degrees: float, shape: Sequence[int], device=None) -> torch.Tensor:
    """(3, 3) pixel-coordinate rotation by ``angle`` about the image centre, (x, y) order."""
    h, w = shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    a = math.radians(angle_degrees)
    c, s = round(math.cos(a), 12), round(math.sin(a), 12)
    return torch.tensor([[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy], [0.0, 0.0, 1.0]],
                        device=device)


def ransac_affine(src: np.ndarray, dst: np.ndarray, threshold: float, max_trials: int = 1000,
                  seed: int = 0) -> Optional[np.ndarray]:
    """(3, 3) affine dst ~ A src by scikit-image's RANSAC (min 3 samples), refitted on the inliers; None when it
    cannot be estimated."""
    from skimage.measure import ransac
    from skimage.transform import AffineTransform

    if len(src) < 3:
        return None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, inliers = ransac((src, dst), AffineTransform, min_samples=3, residual_threshold=threshold,
                                max_trials=max_trials, rng=seed)
    if model is None or inliers is None or not np.all(np.isfinite(model.params)):
        return None
    return model.params


def rotation_search(moving: torch.Tensor, fixed: torch.Tensor, angles: Sequence[float],
                    estimate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The paper's inference: rotate the source by each of ``angles``, fit an affine with ``estimate(rotated, fixed)
    -> (B, 3, 3)`` pixel matrices (target -> rotated source), and keep per pair the composed affine whose warp has
    the best global NCC with the target. Returns theta (B, 2, 3) (identity where no angle scores)."""
    shape = tuple(fixed.shape[2:])
    best_theta = torch.eye(2, 3, device=fixed.device).repeat(fixed.shape[0], 1, 1)
    best_score = torch.full((fixed.shape[0],), -float("inf"), device=fixed.device)
    for angle in angles:
        rotation = rotation_matrix(angle, moving.shape[2:], moving.device).expand(moving.shape[0], 3, 3)
        theta_r = pixel_matrix_to_theta(rotation, moving.shape[2:])
        rotated = warp(moving, affine_to_displacement(theta_r, moving.shape[2:]))
        total = rotation @ estimate(rotated, fixed)  # target -> rotated source -> source
        theta = pixel_matrix_to_theta(total, shape, moving.shape[2:])
        score = global_ncc(warp(moving, affine_to_displacement(theta, shape)), fixed)
        better = score > best_score
        best_theta = torch.where(better.view(-1, 1, 1), theta, best_theta)
        best_score = torch.where(better, score, best_score)
    return best_theta


# -- the network ---------------------------------------------------------------------------------------------


class UnFeMa(nn.Module):
    """UnFeMa's matcher and affine estimator: ``forward(moving, fixed) -> theta`` (B, 2, 3).

    Training mode: soft matches -> weighted DLT (differentiable). Evaluation mode (``inference: ransac``): for each
    angle of ``angles`` the source is rotated, matched, an affine fitted by RANSAC, and the rotation + affine with the
    highest global NCC is kept (``inference: dlt`` uses the weighted DLT at angle 0 instead).

    Args:
        initial_dim, block_dims, nhead, n_layers, attention, temp_bug_fix: :class:`CoarseLoFTR`.
        temperature: tau of the dual softmax (0.1). threshold: theta_c (0.2). border: cells removed at edges (2).
        soft_radius: epsilon of Soft Points (1; 0 = hard coarse matches); vicinity: ``horizontal`` (the code's)
            or ``square``.
        train_coarse_percent: in training, at most this fraction of B x max(L, S) matches is kept, sampled at
            random over the batch (the code's 0.5). max_matches: per-pair cap of the DLT (5555).
        min_matches: a pair with fewer matches gets the identity (with no gradient).
        stride: image pixels per coarse cell (8).
        angles: the rotation search at inference (degrees). ransac_threshold: residual threshold in pixels.
        pretrained: a local LoFTR checkpoint to start from (MegaDepth "outdoor"); None = random initialisation.
        perceptual_search: a :class:`PerceptualSearch` that replaces the NCC rotation search at inference (the
            initial alignment of the paper's Fig. 2; its A_theta comes from this matcher); None = the rotation search.
    """

    def __init__(self, initial_dim: int = 128, block_dims: Sequence[int] = (128, 196, 256), nhead: int = 8,
                 n_layers: int = 4, attention: Literal["linear", "full", "quadtree"] = "linear",
                 temp_bug_fix: bool = True, temperature: float = 0.1, threshold: float = 0.2, border: int = 2,
                 soft_radius: int = 1, vicinity: Literal["horizontal", "square"] = "horizontal",
                 train_coarse_percent: float = 0.5, max_matches: int = 5555, min_matches: int = 3,
                 stride: int = 8, inference: Literal["ransac", "dlt"] = "ransac",
                 angles: Sequence[float] = (0.0, 90.0, 180.0, 270.0), ransac_threshold: float = 8.0,
                 ransac_trials: int = 1000, pretrained: Optional[str] = None,
                 perceptual_search: Optional[PerceptualSearch] = None):
        super().__init__()
        self.matcher = CoarseLoFTR(initial_dim, block_dims, nhead, n_layers, attention, temp_bug_fix)
        self.perceptual_search = perceptual_search
        if pretrained:
            self.matcher.load_loftr_checkpoint(pretrained)
        self.temperature, self.threshold, self.border = temperature, threshold, border
        self.soft_radius, self.vicinity = soft_radius, vicinity
        self.train_coarse_percent, self.max_matches, self.min_matches = train_coarse_percent, max_matches, min_matches
        self.stride = stride
        self.inference = inference
        self.angles = tuple(float(a) for a in angles)
        self.ransac_threshold, self.ransac_trials = ransac_threshold, ransac_trials

    def match(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Soft matches of every coarse cell of the source: pixel ``source_points``, ``target_points`` (B, L, 2)
        as (x, y), ``confidence`` (B, L), ``matched`` (B, L) bool, and ``conf_matrix`` (B, L, S)."""
        feat0, feat1, hw0, hw1 = self.matcher(moving, fixed)
        sim, conf = dual_softmax(feat0, feat1, self.temperature)
        matched, j = mutual_nearest_matches(conf, hw0, hw1, self.threshold, self.border)
        if self.soft_radius > 0:
            points0, points1, confidence = soft_points(sim, conf, j, hw0, hw1, self.soft_radius, self.vicinity)
        else:
            i = torch.arange(conf.shape[1], device=conf.device)
            points0 = torch.stack([i % hw0[1], i // hw0[1]], -1).to(sim.dtype).expand(conf.shape[0], -1, -1)
            points1 = torch.stack([j % hw1[1], j // hw1[1]], -1).to(sim.dtype)
            confidence = conf.gather(2, j.unsqueeze(-1)).squeeze(-1)
        return {"source_points": points0 * self.stride, "target_points": points1 * self.stride,
                "confidence": confidence, "matched": matched, "conf_matrix": conf}

    def _subsample(self, matched: torch.Tensor, n_cells: int) -> torch.Tensor:
        """Training: keep at most train_coarse_percent x B x max(L, S) matches over the batch, and at most
        max_matches per pair, at random."""
        keep = matched.clone()
        limit = int(matched.shape[0] * n_cells * self.train_coarse_percent) if self.training else None
        score = torch.rand(matched.shape, device=matched.device).masked_fill(~matched, 2.0)
        if limit is not None and int(matched.sum()) > limit:
            cut = score.flatten().kthvalue(limit).values
            keep &= score <= cut
        if int(keep.sum(1).max()) > self.max_matches:
            ranks = score.masked_fill(~keep, 2.0).argsort(1).argsort(1)
            keep &= ranks < self.max_matches
        return keep

    def dlt(self, matches: dict[str, torch.Tensor], fixed_shape, moving_shape) -> torch.Tensor:
        """theta (B, 2, 3) from the weighted DLT on target -> source points; identity where too few matches."""
        n_cells = max(matches["conf_matrix"].shape[1:])
        keep = self._subsample(matches["matched"], n_cells)
        valid = keep.sum(1) >= self.min_matches
        src, dst = matches["target_points"], matches["source_points"]
        weights = matches["confidence"]
        # invalid pairs solve a well-posed dummy system (3 corners mapped to themselves) so that the SVD and its
        # gradient stay finite; their result is replaced by the identity below
        corners = src.new_tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]) * 64.0
        dummy = torch.zeros_like(keep)
        dummy[:, :3] = True
        use = torch.where(valid.unsqueeze(1), keep, dummy)
        fill = lambda points: torch.where(  # noqa: E731
            (~valid).view(-1, 1, 1) & dummy.unsqueeze(-1),
            F.pad(corners, (0, 0, 0, points.shape[1] - 3)).unsqueeze(0).expand_as(points), points)
        matrix = weighted_affine_dlt(fill(src), fill(dst), torch.where(valid.unsqueeze(1), weights,
                                                                       torch.ones_like(weights)), use)
        theta = pixel_matrix_to_theta(matrix, fixed_shape, moving_shape)
        identity = torch.eye(2, 3, device=theta.device, dtype=theta.dtype).expand_as(theta)
        # identity + 0 * P_c keeps an all-invalid batch in the graph (the code's 0 * conf_matrix.mean())
        theta = torch.where(valid.view(-1, 1, 1), theta, identity + 0.0 * theta)
        return theta + 0.0 * matches["conf_matrix"].mean()

    @torch.no_grad()
    def search(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Inference: rotation search over ``angles`` with a RANSAC affine per angle; the best global NCC wins.
        With ``perceptual_search``: Perceptual Search (its A_theta from this matcher) pre-aligns the source, then one
        affine is fitted on the pre-aligned pair and composed with it."""
        if self.perceptual_search is None:
            return rotation_search(moving, fixed, self.angles, self.estimate)
        shape = tuple(fixed.shape[2:])
        initial = self.perceptual_search.search(moving, fixed, self.estimate)[0]
        theta = pixel_matrix_to_theta(initial, shape, moving.shape[2:])
        prealigned = warp(moving, affine_to_displacement(theta, shape))
        return pixel_matrix_to_theta(initial @ self.estimate(prealigned, fixed), shape, moving.shape[2:])

    def estimate(self, rotated: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """Pixel affines (B, 3, 3) target -> rotated source, by the weighted DLT or RANSAC on the matches."""
        shape = tuple(fixed.shape[2:])
        matches = self.match(rotated, fixed)
        if self.inference == "dlt":
            return theta_to_pixel_matrix(self.dlt(matches, shape, rotated.shape[2:]), shape, rotated.shape[2:])
        matrices = []
        for b in range(fixed.shape[0]):
            m = matches["matched"][b]
            fitted = ransac_affine(matches["target_points"][b][m].double().cpu().numpy(),
                                   matches["source_points"][b][m].double().cpu().numpy(),
                                   self.ransac_threshold, self.ransac_trials)
            matrices.append(torch.eye(3, dtype=torch.float64) if fitted is None else torch.from_numpy(fitted))
        return torch.stack(matrices).to(fixed.device, torch.float32)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.dlt(self.match(moving, fixed), fixed.shape[2:], moving.shape[2:])
        return self.search(moving, fixed)


# -- Perceptual Search (paper Sec. 3.2) ---------------------------------------------------------------------------

#: torchvision ``vgg19().features`` up to relu5_1 (configuration "E"); integers = conv widths, "M" = max-pool
VGG19_TO_RELU5_1 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
#: indices in ``features`` of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: the UnFeMa code's five slices (the
#: layers of FOMM / MRAA's pyramid perceptual loss, [21] of the paper)
VGG19_RELU_X_1 = (1, 6, 11, 20, 29)


class VGG19Features(nn.Module):
    """VGG-19 ``features`` up to relu5_1, returning relu1_1 ... relu5_1 (frozen).

    Layer indices are torchvision's (``features.<i>.weight``), so torchvision's ImageNet ``vgg19`` state dict loads
    from a local file (``weights``; later layers and the classifier are skipped). Grey inputs are repeated to RGB and
    normalised with the ImageNet mean and std, as the UnFeMa code does. **Without** ``weights`` the convolutions
    keep torchvision's random initialisation (Kaiming normal, fan_out): the perceptual distance is then one of
    random features, not the paper's ImageNet-trained ones (no download is possible here).
    """

    def __init__(self, weights: Optional[str] = None):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG19_TO_RELU5_1:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                conv = nn.Conv2d(channels, v, 3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(conv.bias)
                layers += [conv, nn.ReLU(inplace=False)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        if weights:
            self.load_torchvision(weights)
        self.requires_grad_(False)

    def load_torchvision(self, path: str | Path) -> None:
        state = torch.load(Path(path), map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        own = self.state_dict()
        loaded = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(loaded))
        if missing:
            raise KeyError(f"{path}: not a torchvision vgg19 state dict (lacks {missing[:3]})")
        self.load_state_dict(loaded)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        x = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image
        x = (x - self.mean) / self.std
        out = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG19_RELU_X_1:
                out.append(x)
        return out


def anti_alias_downsample(image: torch.Tensor, scale: float) -> torch.Tensor:
    """The UnFeMa / FOMM pyramid step: Gaussian blur (sigma = (1/scale - 1)/2, kernel 2 round(4 sigma) + 1, zero
    padding) then nearest resampling by ``scale``."""
    if scale == 1.0:
        return image
    from kornia.filters import gaussian_blur2d

    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    blurred = gaussian_blur2d(image, (size, size), (sigma, sigma), border_type="constant")
    return F.interpolate(blurred, scale_factor=(scale, scale))


def channel_ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Global NCC of every channel (B, C, H, W) x 2 -> (B, C)."""
    a, b = a.flatten(2), b.flatten(2)
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / torch.sqrt((a * a).sum(-1) * (b * b).sum(-1) + eps)


def perceptual_alignment_loss(source: torch.Tensor, target: torch.Tensor, vgg: VGG19Features,
                              scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125),
                              border: float = 0.1) -> torch.Tensor:
    """Paper Eq. 2, L_al = -sum over layers i, resolutions j and channels c of NCC(V_i^c(I_S,j), V_i^c(I_T,j)), per
    pair (B,). As the UnFeMa code: a ``border`` fraction of each side is zeroed in both images first, the pyramid is
    :func:`anti_alias_downsample`, and the channels of a layer are averaged (the code's ``ncc_global`` over the
    channel axis) while layers and scales are summed."""
    h, w = source.shape[2:]
    keep = torch.zeros(1, 1, h, w, device=source.device, dtype=source.dtype)
    bh, bw = int(border * h), int(border * w)
    keep[..., bh:h - bh, bw:w - bw] = 1.0
    source, target = source * keep, target * keep
    total = source.new_zeros(source.shape[0])
    for scale in scales:
        feats = vgg(torch.cat([anti_alias_downsample(source, scale), anti_alias_downsample(target, scale)]))
        for feat in feats:
            fs, ft = feat.split(source.shape[0])
            total = total - channel_ncc(fs, ft).mean(1)
    return total


class PerceptualSearch(nn.Module):
    """Perceptual Search (paper Sec. 3.2, Eq. 2-4): the initial rotation of a pair.

    For every phi of ``angles`` the source is rotated about the image centre (R_phi); its alignment loss L_al
    (:func:`perceptual_alignment_loss`) with the target is computed as it is and, when an affine ``estimate`` is
    available (the paper: LoFTR pre-trained on MegaDepth; here any ``estimate(rotated, fixed) -> (B, 3, 3)`` pixel
    matrix target -> rotated source, e.g. :meth:`UnFeMa.estimate` or ``matcher``), after that affine A_theta;
    L_s = min of the two (Eq. 3) and phi_hat = argmin over phi (Eq. 4).

    ``forward(moving, fixed) -> theta`` (B, 2, 3): the winning transform (R_phi, or R_phi o A_theta when that was the
    minimum), so it also serves as a standalone initial alignment in the registration task; :meth:`best_angles`
    gives phi_hat for pre-rotating training pairs (the paper's use).

    Args:
        angles: Phi (degrees; the paper's 0, 90, 180, 270). scales: the pyramid relative to the input (the paper: 6
            resolutions 1024 ... 32 of a 1024 input = 1 ... 1/32; keep the smallest >= 32 px). border: the fraction
            zeroed at each side (the code's 0.1). vgg_weights: a local torchvision ``vgg19`` state dict (None: random
            VGG features, see :class:`VGG19Features`). matcher: a module with ``estimate(rotated, fixed)`` (e.g. a
            pre-trained :class:`UnFeMa`) for A_theta; None and no ``estimate`` passed: rotations only.
    """

    def __init__(self, angles: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
                 scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125), border: float = 0.1,
                 vgg_weights: Optional[str] = None, matcher: Optional[nn.Module] = None):
        super().__init__()
        self.angles = tuple(float(a) for a in angles)
        self.scales, self.border = tuple(float(s) for s in scales), float(border)
        # frozen and rebuilt from vgg_weights (or the seed): kept out of the state dict, so a trained UnFeMa
        # checkpoint loads into a config that adds Perceptual Search, and checkpoints stay small
        self._vgg = [VGG19Features(vgg_weights)]
        self.matcher = matcher

    @property
    def vgg(self) -> VGG19Features:
        return self._vgg[0]

    def alignment_loss(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        vgg = self._vgg[0] = self._vgg[0].to(source.device)
        return perceptual_alignment_loss(source, target, vgg, self.scales, self.border)

    @torch.no_grad()
    def search(self, moving: torch.Tensor, fixed: torch.Tensor,
               estimate: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None):
        """(pixel matrix (B, 3, 3) target -> source of the winner, phi_hat (B,) in degrees, L_s of the winner (B,))."""
        restore = None
        if estimate is None and self.matcher is not None:
            restore = self.matcher.training
            self.matcher.eval()
            estimate = self.matcher.estimate
        shape = tuple(fixed.shape[2:])
        n = fixed.shape[0]
        best = torch.eye(3, device=fixed.device).repeat(n, 1, 1)
        best_loss = torch.full((n,), float("inf"), device=fixed.device)
        best_angle = torch.zeros(n, device=fixed.device)
        for angle in self.angles:
            rotation = rotation_matrix(angle, moving.shape[2:], moving.device).expand(n, 3, 3)
            candidates = [rotation]
            if estimate is not None:
                theta_r = pixel_matrix_to_theta(rotation, moving.shape[2:])
                rotated = warp(moving, affine_to_displacement(theta_r, moving.shape[2:]))
                candidates.append(rotation @ estimate(rotated, fixed).to(rotation.dtype))
            for candidate in candidates:
                theta = pixel_matrix_to_theta(candidate, shape, moving.shape[2:])
                loss = self.alignment_loss(warp(moving, affine_to_displacement(theta, shape)), fixed)
                better = loss < best_loss
                best = torch.where(better.view(-1, 1, 1), candidate, best)
                best_angle = torch.where(better, torch.full_like(best_angle, angle), best_angle)
                best_loss = torch.where(better, loss, best_loss)
        if restore:
            self.matcher.train()
        return best, best_angle, best_loss

    def best_angles(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """phi_hat (B,) in degrees (Eq. 4)."""
        return self.search(moving, fixed)[1]

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return pixel_matrix_to_theta(self.search(moving, fixed)[0], fixed.shape[2:], moving.shape[2:])


# -- self-supervised matching pre-training (stands in for the MegaDepth LoFTR weights) ---------------------------


def random_pixel_affines(n: int, shape: Sequence[int], generator: Optional[torch.Generator] = None,
                         max_rotation: float = 30.0, scale_range: Sequence[float] = (0.85, 1.15),
                         max_shear: float = 5.0, max_translation: float = 0.1, device=None) -> torch.Tensor:
    """(n, 3, 3) random pixel affines (target (x, y) -> source (x, y)) about the image centre."""
    h, w = shape
    uniform = lambda low, high, size=(n,): low + (high - low) * torch.rand(size, generator=generator)  # noqa: E731
    angle = torch.deg2rad(uniform(-max_rotation, max_rotation))
    scale = uniform(scale_range[0], scale_range[1], (n, 2))
    shear = torch.tan(torch.deg2rad(uniform(-max_shear, max_shear)))
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear_m = torch.eye(2).repeat(n, 1, 1)
    shear_m[:, 0, 1] = shear
    linear = rotation @ shear_m @ torch.diag_embed(scale)
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0])
    shift = uniform(-max_translation, max_translation, (n, 2)) * torch.tensor([float(w), float(h)])
    matrix = torch.eye(3).repeat(n, 1, 1)
    matrix[:, :2, :2] = linear
    matrix[:, :2, 2] = centre + shift - (linear @ centre)
    return matrix.to(device)


class MatchingPretext(nn.Module):
    """Self-supervised pre-training of UnFeMa's coarse matcher on synthetic affine pairs with known correspondences.

    Not in the paper: it stands in for the MegaDepth LoFTR weights that UnFeMa starts from (unavailable offline).
    Each image is matched against a copy of itself seen through a random affine (``random_pixel_affines``) and a
    random photometric change (gamma, contrast, Gaussian noise), so the correspondence of every coarse cell is
    known; the loss is LoFTR's coarse cross-entropy ``-log P_c(i, j_gt)`` over the cells whose true position lies
    inside the other image. ``forward(image) -> {"loss", "precision"}`` (precision: the fraction of those cells
    whose best match is their true cell), the interface of the self-supervised family
    (``lightning_modules.tasks.ssl_pretraining``); the checkpoint loads into ``UnFeMa(pretrained=...)``.

    Args: the matcher's (see :class:`CoarseLoFTR`); temperature as UnFeMa's; stride: pixels per coarse cell;
        max_rotation, scale_range, max_shear, max_translation: the random affine; gamma_range, noise_std: the
        photometric change of each view.
    """

    def __init__(self, initial_dim: int = 128, block_dims: Sequence[int] = (128, 196, 256), nhead: int = 8,
                 n_layers: int = 4, attention: Literal["linear", "full", "quadtree"] = "linear",
                 temp_bug_fix: bool = True, temperature: float = 0.1, stride: int = 8, max_rotation: float = 30.0,
                 scale_range: Sequence[float] = (0.85, 1.15), max_shear: float = 5.0, max_translation: float = 0.1,
                 gamma_range: Sequence[float] = (0.7, 1.4), noise_std: float = 0.03):
        super().__init__()
        self.matcher = CoarseLoFTR(initial_dim, block_dims, nhead, n_layers, attention, temp_bug_fix)
        self.temperature, self.stride = temperature, stride
        self.affine_args = dict(max_rotation=max_rotation, scale_range=tuple(scale_range), max_shear=max_shear,
                                max_translation=max_translation)
        self.gamma_range, self.noise_std = tuple(gamma_range), noise_std

    def _photometric(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        low, high = self.gamma_range
        gamma = low + (high - low) * torch.rand(n, 1, 1, 1, device=image.device)
        contrast = 0.8 + 0.4 * torch.rand(n, 1, 1, 1, device=image.device)
        out = image.clamp(0, 1) ** gamma * contrast + self.noise_std * torch.randn_like(image)
        return out.clamp(0, 1)

    def pairs(self, image: torch.Tensor):
        """(source, target, matrix): the target is the source through the pixel affine ``matrix`` (target -> source)."""
        shape = tuple(image.shape[2:])
        matrix = random_pixel_affines(image.shape[0], shape, device=image.device, **self.affine_args)
        theta = pixel_matrix_to_theta(matrix, shape)
        target = warp(image, affine_to_displacement(theta, shape))
        return self._photometric(image), self._photometric(target), matrix

    def ground_truth(self, matrix: torch.Tensor, hw0, hw1) -> tuple[torch.Tensor, torch.Tensor]:
        """For every coarse cell i of the source: its true cell j of the target (B, L) and whether it lies inside."""
        i = torch.arange(hw0[0] * hw0[1], device=matrix.device)
        points = torch.stack([i % hw0[1], i // hw0[1], torch.ones_like(i)], -1).to(matrix.dtype)
        points[:, :2] *= self.stride
        in_target = (torch.linalg.inv(matrix) @ points.T).transpose(1, 2)[..., :2] / self.stride  # (B, L, 2)
        cell = in_target.round().long()
        inside = (cell[..., 0] >= 0) & (cell[..., 0] < hw1[1]) & (cell[..., 1] >= 0) & (cell[..., 1] < hw1[0])
        j = cell[..., 1].clamp(0, hw1[0] - 1) * hw1[1] + cell[..., 0].clamp(0, hw1[1] - 1)
        return j, inside

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        source, target, matrix = self.pairs(image)
        feat0, feat1, hw0, hw1 = self.matcher(source, target)
        _, conf = dual_softmax(feat0, feat1, self.temperature)
        j, inside = self.ground_truth(matrix, hw0, hw1)
        p = conf.gather(2, j.unsqueeze(-1)).squeeze(-1)
        count = inside.sum().clamp_min(1)
        loss = -(torch.log(p.clamp_min(1e-6)) * inside).sum() / count
        precision = ((conf.argmax(2) == j) & inside).sum() / count
        return {"loss": loss, "precision": precision.detach()}


# -- baseline ------------------------------------------------------------------------------------------------


class SIFTAffine(nn.Module):
    """Table 1's SIFT baseline: OpenCV SIFT keypoints of the (rotated) source and the target, Lowe's ratio test,
    scikit-image RANSAC affine; the initial alignment is the same rotation search as UnFeMa's (the paper's
    "Exhaustive Search" is not specified further), the best global NCC wins. No parameters: evaluate it with
    ``python run.py test``. ``forward(moving, fixed) -> theta`` (B, 2, 3), the registration family's convention.

    Args: angles (degrees), ratio (Lowe's ratio test), ransac_threshold (pixels), ransac_trials.
    """

    def __init__(self, angles: Sequence[float] = (0.0, 90.0, 180.0, 270.0), ratio: float = 0.8,
                 ransac_threshold: float = 8.0, ransac_trials: int = 1000):
        super().__init__()
        self.angles = tuple(float(a) for a in angles)
        self.ratio, self.ransac_threshold, self.ransac_trials = ratio, ransac_threshold, ransac_trials

    def _keypoints(self, image: torch.Tensor):
        import cv2

        grey = (image[0].detach().float().clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
        points, descriptors = cv2.SIFT_create().detectAndCompute(grey, None)
        return np.array([p.pt for p in points], np.float64).reshape(-1, 2), descriptors

    def affine(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(3, 3) pixel affine target -> source of one (1, H, W) pair; the identity when it cannot be estimated."""
        import cv2

        src_points, src_desc = self._keypoints(moving)
        dst_points, dst_desc = self._keypoints(fixed)
        if src_desc is None or dst_desc is None or len(src_points) < 3 or len(dst_points) < 3:
            return torch.eye(3)
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dst_desc, src_desc, k=2)
        good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < self.ratio * p[1].distance]
        fitted = ransac_affine(dst_points[[m.queryIdx for m in good]], src_points[[m.trainIdx for m in good]],
                               self.ransac_threshold, self.ransac_trials)
        return torch.eye(3) if fitted is None else torch.from_numpy(fitted).float()

    @torch.no_grad()
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return rotation_search(moving, fixed, self.angles, lambda rotated, target: torch.stack(
            [self.affine(rotated[b], target[b]) for b in range(target.shape[0])]).to(target.device))
