"""The learning-based baselines of UnFeMa's Tables 1 and 2 (Pyatov & Sorokin, ICPR 2024), from their authors' code.

* :class:`DeepHistRegAffine`: the affine stage of DeepHistReg (Wodzinski & Mueller, CMPB 2021), the code's
  ``networks/affine_network_simple.py``: the source and the target concatenated (2 channels) -> 7x7 stride-2 conv ->
  six residual "forward layers" (GroupNorm with one group per channel, PReLU) -> two stride-2 convs -> global average
  pooling -> Linear(256, 6) = the affine matrix.
* :class:`LARHIAffine`: "Learning-based affine registration of histological images" (Wodzinski & Mueller, WBIR
  2020), the code's ``networks/affine_network_attention.py``: both images unfolded into non-overlapping patches
  (224 px), a Siamese ResNet-like extractor per patch, the pair's features concatenated and pooled per patch, a 3D
  convolution over (channels x patch grid) that relates the patches, a 2D conv, global pooling and an MLP -> 6.
* :class:`ExhaustiveSearch`: the initial alignment both run before the network (the code's
  ``rotation_alignment.iterative_search``): centroid translation, then a rotation about the target's centroid swept
  over 360 degrees in 2-degree steps; the best global NCC wins (kept as is when the pair already has NCC > 0.75).

Both networks are trained without labels by the global NCC of the warped source (the code's ``ncc_loss_global``,
Adam lr 1e-4 decayed x0.995 per epoch): ``losses.registration.GlobalNCCLoss`` in the registration task. They return
``theta`` (B, 2, 3) in the registration family's convention (F.affine_grid, align_corners=True, target -> source),
composed with the exhaustive search's transform when ``prealign`` is on (the search runs without gradient, as the
code's preprocessing).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from lightning_modules.blocks.warp import affine_to_displacement, pixel_matrix_to_theta, theta_to_pixel_matrix, warp
from lightning_modules.losses.registration import global_ncc


# -- initial alignment -----------------------------------------------------------------------------------------


def intensity_centroid(image: torch.Tensor) -> torch.Tensor:
    """Centre of mass (B, 2) as pixel (x, y) of non-negative (B, 1, H, W) images (the image centre if all zero)."""
    h, w = image.shape[2:]
    weight = image[:, 0].clamp_min(0).double()
    total = weight.sum((1, 2))
    ys = torch.arange(h, device=image.device, dtype=torch.float64)
    xs = torch.arange(w, device=image.device, dtype=torch.float64)
    cx = (weight.sum(1) * xs).sum(1) / total.clamp_min(1e-12)
    cy = (weight.sum(2) * ys).sum(1) / total.clamp_min(1e-12)
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], device=image.device, dtype=torch.float64)
    out = torch.stack([cx, cy], -1)
    return torch.where((total > 0).unsqueeze(-1), out, centre).float()


def rotation_about(angle_degrees: float, centre: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) pixel rotations by ``angle`` about per-sample centres (B, 2) as (x, y)."""
    a = math.radians(angle_degrees)
    c, s = math.cos(a), math.sin(a)
    matrix = torch.eye(3, device=centre.device).repeat(centre.shape[0], 1, 1)
    matrix[:, 0, :2] = torch.tensor([c, -s])
    matrix[:, 1, :2] = torch.tensor([s, c])
    matrix[:, :2, 2] = centre - torch.einsum("bij,bj->bi", matrix[:, :2, :2], centre)
    return matrix


class ExhaustiveSearch(nn.Module):
    """DeepHistReg's initial alignment: ``forward(moving, fixed) -> theta`` (B, 2, 3), no parameters.

    The source is translated so that its intensity centroid lands on the target's, then rotated about the target's
    centroid by each angle of ``range(0, 360, step)``; the candidate (the identity included) with the highest
    global NCC with the target wins. A pair whose NCC already exceeds ``skip_ncc`` keeps the identity (the code's
    early exit at NCC 0.75).
    """

    def __init__(self, step: float = 2.0, skip_ncc: float = 0.75):
        super().__init__()
        self.step, self.skip_ncc = float(step), float(skip_ncc)

    def pixel_matrix(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) pixel matrix target -> source of the best candidate."""
        shape = tuple(fixed.shape[2:])
        n = fixed.shape[0]
        centre_s, centre_t = intensity_centroid(moving), intensity_centroid(fixed)
        translation = torch.eye(3, device=fixed.device).repeat(n, 1, 1)
        translation[:, :2, 2] = centre_s - centre_t  # target pixel x -> source x + (c_s - c_t)
        best = torch.eye(3, device=fixed.device).repeat(n, 1, 1)
        best_score = torch.full((n,), -float("inf"), device=fixed.device)
        done = torch.zeros(n, dtype=torch.bool, device=fixed.device)
        candidates = [best] + [translation @ rotation_about(angle, centre_t)
                               for angle in torch.arange(0.0, 360.0, self.step).tolist()]
        for k, candidate in enumerate(candidates):
            theta = pixel_matrix_to_theta(candidate, shape, moving.shape[2:])
            score = global_ncc(warp(moving, affine_to_displacement(theta, shape)), fixed)
            better = (score > best_score) & ~done
            best = torch.where(better.view(-1, 1, 1), candidate, best)
            best_score = torch.where(better, score, best_score)
            if k == 0:  # the identity first: a pair already aligned (NCC > skip_ncc) keeps it
                done = score > self.skip_ncc
        return best

    @torch.no_grad()
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return pixel_matrix_to_theta(self.pixel_matrix(moving, fixed), fixed.shape[2:], moving.shape[2:])


# -- DeepHistReg's building blocks -----------------------------------------------------------------------------


class ForwardLayer(nn.Module):
    """The code's Forward_Layer: two 3x3 conv-GroupNorm(C groups)-PReLU with a residual; ``pool`` doubles the
    channels at stride 2 (padding 3, as the code) with a strided conv on the skip path."""

    def __init__(self, channels: int, pool: bool = False):
        super().__init__()
        self.pool = pool
        out = 2 * channels if pool else channels
        stride, padding = (2, 3) if pool else (1, 1)
        if pool:
            self.pool_layer = nn.Sequential(nn.Conv2d(channels, out, 3, stride=2, padding=3))
        self.layer = nn.Sequential(
            nn.Conv2d(channels, out, 3, stride=stride, padding=padding), nn.GroupNorm(out, out), nn.PReLU(),
            nn.Conv2d(out, out, 3, stride=1, padding=1), nn.GroupNorm(out, out), nn.PReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.pool_layer(x) if self.pool else x) + self.layer(x)


def _conv_norm_act(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(cout, cout), nn.PReLU()]


def _identity_head(linear: nn.Linear) -> None:
    """Start at the identity transform (zero weights, identity bias); the code keeps PyTorch's default init."""
    nn.init.zeros_(linear.weight)
    with torch.no_grad():
        linear.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))


def code_key(key: str) -> str:
    """A state-dict key of the authors' DeepHistReg code (``Affine_Network``) -> ours."""
    key = key.removeprefix("feature_extractor.").removeprefix("attention_network.")
    key = key.replace("regression_network.fc.", "fc.")
    if key.startswith("layer_"):
        index, rest = key[len("layer_"):].split(".", 1)
        key = f"layers.{int(index) - 1}.{rest}"
    return key


class _PrealignedAffine(nn.Module):
    """Shared by both baselines: optional exhaustive search (no gradient), then the network on the pre-aligned
    source; the two transforms composed into one theta."""

    def __init__(self, prealign: bool, search_step: float):
        super().__init__()
        self.search = ExhaustiveSearch(search_step) if prealign else None

    def load_code_state_dict(self, state: dict) -> None:
        """Load weights saved by the authors' code (``torch.save(model.state_dict())``), keys mapped by
        :func:`code_key` (DeepHistReg's single Linear ``fc.0`` becomes our ``fc``)."""
        mapped = {code_key(k): v for k, v in state.items()}
        if isinstance(getattr(self, "fc", None), nn.Linear):
            mapped = {k.replace("fc.0.", "fc."): v for k, v in mapped.items()}
        self.load_state_dict(mapped)

    def regress(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if self.search is None:
            return self.regress(moving, fixed)
        shape = tuple(fixed.shape[2:])
        with torch.no_grad():
            initial = self.search.pixel_matrix(moving, fixed)
            prealigned = warp(moving, affine_to_displacement(pixel_matrix_to_theta(initial, shape, moving.shape[2:]),
                                                             shape))
        theta = self.regress(prealigned, fixed)  # target -> pre-aligned source
        total = initial @ theta_to_pixel_matrix(theta, shape, shape)  # -> source
        return pixel_matrix_to_theta(total, shape, moving.shape[2:])


class DeepHistRegAffine(_PrealignedAffine):
    """DeepHistReg's affine network (``forward(moving, fixed) -> theta`` (B, 2, 3)).

    Args:
        width: channels of the first conv (64 in the code; the rest doubles from it: 64-128-128-256-256-512-1024,
            then 512 and 256 before the pooling).
        prealign: run :class:`ExhaustiveSearch` first (the framework's preprocessing); search_step in degrees.
        identity_init: start at the identity (zero last layer, identity bias); False = PyTorch's default init
            (the code's).
    """

    def __init__(self, width: int = 64, prealign: bool = True, search_step: float = 2.0, identity_init: bool = True):
        super().__init__(prealign, search_step)
        w = width
        self.input_layer = nn.Sequential(nn.Conv2d(2, w, 7, stride=2, padding=3))
        self.layers = nn.Sequential(ForwardLayer(w, True), ForwardLayer(2 * w), ForwardLayer(2 * w, True),
                                    ForwardLayer(4 * w), ForwardLayer(4 * w, True), ForwardLayer(8 * w, True))
        self.last_layer = nn.Sequential(*_conv_norm_act(16 * w, 8 * w), *_conv_norm_act(8 * w, 4 * w),
                                        nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(4 * w, 6)
        if identity_init:
            _identity_head(self.fc)

    def regress(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        x = self.last_layer(self.layers(self.input_layer(torch.cat([moving, fixed], 1))))
        return self.fc(x.flatten(1)).view(-1, 2, 3)


class LARHIAffine(_PrealignedAffine):
    """LARHI's patch-based affine network (``forward(moving, fixed) -> theta`` (B, 2, 3)).

    Each image is zero-padded (centred) to a multiple of ``patch_size`` and unfolded into non-overlapping patches;
    a shared extractor (7x7 stride-2 conv to ``width``, forward layers doubling to 8 x width) embeds every patch,
    the source's and target's embeddings are concatenated and reduced per patch (two stride-2 conv-GN-PReLU to
    256 channels, average pool), a Conv3d with kernel (256, 3, 3) over the (feature, grid row, grid col)
    volume relates the patches, a 3x3 conv and global pooling give one 256 vector, and an MLP (256-256-6) the
    affine. The code processes one pair at a time; here the batch is vectorised (same result per pair).

    Args:
        patch_size: side of the patches (224 in the code). width: first conv channels (32 in the code).
        prealign, search_step, identity_init: as :class:`DeepHistRegAffine`.
    """

    def __init__(self, patch_size: int = 224, width: int = 32, prealign: bool = True, search_step: float = 2.0,
                 identity_init: bool = True):
        super().__init__(prealign, search_step)
        w = width
        self.patch_size = int(patch_size)
        self.input_layer = nn.Sequential(nn.Conv2d(1, w, 7, stride=2, padding=3))
        self.layers = nn.Sequential(ForwardLayer(w, True), ForwardLayer(2 * w, True), ForwardLayer(4 * w, True),
                                    ForwardLayer(8 * w))
        self.feature_combiner = nn.Sequential(*_conv_norm_act(16 * w, 256), *_conv_norm_act(256, 256),
                                              nn.AdaptiveAvgPool2d(1))
        self.attention_module = nn.Sequential(nn.Conv3d(1, 256, kernel_size=(256, 3, 3), padding=(0, 1, 1)),
                                              nn.GroupNorm(256, 256), nn.PReLU())
        self.compose_module = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.GroupNorm(256, 256), nn.PReLU(),
                                            nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Sequential(nn.Linear(256, 256), nn.PReLU(), nn.Linear(256, 6))
        if identity_init:
            _identity_head(self.fc[-1])

    def unfold(self, image: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 1, H, W) -> patches (B * gh * gw, 1, p, p) in row-major grid order, and the grid (gh, gw)."""
        p = self.patch_size
        h, w = image.shape[2:]
        gh, gw = math.ceil(h / p), math.ceil(w / p)
        pad_y, pad_x = gh * p - h, gw * p - w
        image = nn.functional.pad(image, (pad_x // 2, pad_x - pad_x // 2, pad_y // 2, pad_y - pad_y // 2))
        patches = image.unfold(2, p, p).unfold(3, p, p)  # (B, 1, gh, gw, p, p)
        return patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 1, p, p), (gh, gw)

    def embed(self, patches: torch.Tensor) -> torch.Tensor:
        return self.layers(self.input_layer(patches))

    def regress(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        n = moving.shape[0]
        patches_s, (gh, gw) = self.unfold(moving)
        patches_t, _ = self.unfold(fixed)
        features = self.embed(torch.cat([patches_s, patches_t])).split(patches_s.shape[0])
        x = self.feature_combiner(torch.cat(features, 1)).view(n, gh, gw, 256).permute(0, 3, 1, 2)
        x = self.attention_module(x.unsqueeze(1))[:, :, 0]  # (B, 256, gh, gw)
        return self.fc(self.compose_module(x).flatten(1)).view(-1, 2, 3)


# -- TAHIR ------------------------------------------------------------------------------------------------------


class TAHIRAffine(nn.Module):
    """TAHIR (Pyatov & Sorokin, ICPR 2022) as UnFeMa describes it: the matches of LoFTR pre-trained on MegaDepth
    (coarse and fine levels, off the shelf: kornia's LoFTR) -> RANSAC affine, for each source rotation of ``angles``;
    the rotation + affine with the best global NCC wins (the inference UnFeMa adopts from it). No training:
    ``python run.py test``. ``forward(moving, fixed) -> theta`` (B, 2, 3).

    Args:
        weights: a local LoFTR checkpoint (kornia's ``loftr_outdoor.ckpt`` or the official one, keys ``matcher.*``
            or bare); None = random LoFTR weights (only to exercise the pipeline: no download here).
        angles (degrees), ransac_threshold (pixels), ransac_trials: as :class:`lightning_modules.unfema.UnFeMa`.
        temp_bug_fix: the sine encoding of the checkpoint (False for the MegaDepth "outdoor" weights).
    """

    def __init__(self, weights: str | None = None, angles: Sequence[float] = (0.0, 90.0, 180.0, 270.0),
                 ransac_threshold: float = 8.0, ransac_trials: int = 1000, temp_bug_fix: bool = False):
        super().__init__()
        from kornia.feature import LoFTR
        from kornia.feature.loftr.loftr import default_cfg

        config = {**default_cfg, "coarse": {**default_cfg["coarse"], "temp_bug_fix": temp_bug_fix}}
        self.loftr = LoFTR(pretrained=None, config=config)
        if weights:
            state = torch.load(weights, map_location="cpu", weights_only=False)
            state = state.get("state_dict", state)
            self.loftr.load_state_dict({k.removeprefix("matcher."): v for k, v in state.items()})
        self.loftr.requires_grad_(False)
        self.angles = tuple(float(a) for a in angles)
        self.ransac_threshold, self.ransac_trials = ransac_threshold, ransac_trials

    def estimate(self, rotated: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(B, 3, 3) RANSAC affines target -> rotated source from LoFTR's fine matches (identity where none)."""
        from lightning_modules.unfema import ransac_affine

        out = self.loftr({"image0": fixed, "image1": rotated})
        matrices = []
        for b in range(fixed.shape[0]):
            chosen = out["batch_indexes"] == b
            fitted = ransac_affine(out["keypoints0"][chosen].double().cpu().numpy(),
                                   out["keypoints1"][chosen].double().cpu().numpy(), self.ransac_threshold,
                                   self.ransac_trials)
            matrices.append(torch.eye(3, dtype=torch.float64) if fitted is None else torch.from_numpy(fitted))
        return torch.stack(matrices).to(fixed.device, torch.float32)

    @torch.no_grad()
    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        from lightning_modules.unfema import rotation_search

        self.loftr.eval()
        return rotation_search(moving, fixed, self.angles, self.estimate)


__all__: Sequence[str] = ("ExhaustiveSearch", "DeepHistRegAffine", "LARHIAffine", "ForwardLayer", "TAHIRAffine", "code_key",
                          "intensity_centroid", "rotation_about")
