"""Guided-SET-DCL (Harb et al., "Colon Segmentation Using Guided Sequential Episodic Training and Contrastive
Learning", ICPR 2024): a support/query sSE U-Net with AAS-DCL's prior embedding, dual contrastive learning and
iterative refinement, guided by the MRF initial colon label (``lightning_modules/setdcl_mrf.py``).

The network follows the released model (class ``AAS_DCL_w_ini``; the paper's "ResNet101 pre-trained on MS-COCO"
sentence is a leftover of SSL-ALPNet's configuration): a support (conditioner) branch on the support slice and its
mask (4 channels) and a query branch (the grayscale slice tiled to 3 channels) with shared convolutions, the support's
spatial squeeze & excitation (sSE, Roy et al.) recalibrating the query after every max-pool, at the bottleneck and after
every decoder stage; the prior embedding ``sim_prior`` at the bottleneck gives the enhanced query feature x5_sq for the
contrastive losses; the head's prediction is refined ``refine_iters`` times, keeping the prediction whose similarity to
the support mask agrees best (lowest MSE) with the encoder-level support/query feature similarity.

Contrastive losses (``infonce``: info-nce-pytorch semantics, the positive inside the denominator, vectors L2-normalised,
tau 0.1), returned unweighted by ``forward`` when negatives are given; ``tasks.episodic_segmentation`` weighs them:

- CPCL: the query prototype (MAP of x5_sq under the MRF mask when guided, else global average pooling as in AAS-DCL)
  against the support's colon prototype (positive) and the unrelated slices' prototypes (negatives);
- PPCL: the same query prototype against each local colon prototype of the support (4x4 grid on the bottleneck;
  positives) with the unrelated slices' local prototypes and the support's local background prototypes as negatives;
- CCL: sSE-attended, grid-pooled bottleneck vectors of query vs support (positives, paired by cell) with those of each
  unrelated slice as negatives.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: the released model's widths (32 ... 512 at a 16x16 bottleneck for 256x256 slices)
SETDCL_FEATURES = (32, 64, 128, 256, 512)


def infonce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float = 0.1,
            negative_mode: Literal["unpaired", "paired"] = "unpaired") -> torch.Tensor:
    """InfoNCE as ``info_nce.InfoNCE`` (info-nce-pytorch): query/positive (N, D); negatives (M, D) shared by every
    query (``unpaired``) or (N, M, D) per query (``paired``). Mean over the N queries of
    ``-q.p / tau + log(exp(q.p / tau) + sum_i exp(q.n_i / tau))`` on L2-normalised vectors."""
    query, positive, negatives = (F.normalize(x, dim=-1) for x in (query, positive, negatives))
    positive_logit = (query * positive).sum(-1, keepdim=True)
    if negative_mode == "unpaired":
        negative_logits = query @ negatives.transpose(-2, -1)
    else:
        negative_logits = (query.unsqueeze(1) @ negatives.transpose(-2, -1)).squeeze(1)
    logits = torch.cat([positive_logit, negative_logits], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def conv_bn_relu(ch_in: int, ch_out: int, kernel_size: int = 5) -> list[nn.Module]:
    return [nn.Conv2d(ch_in, ch_out, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(ch_out),
            nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    """``conv_block``: 2 x [Conv 5x5 + BN + ReLU] (``layers`` convolutions; ``conv_ori_ch`` is ``layers=1``)."""

    def __init__(self, ch_in: int, ch_out: int, layers: int = 2) -> None:
        modules = []
        for i in range(layers):
            modules += conv_bn_relu(ch_in if i == 0 else ch_out, ch_out)
        super().__init__(*modules)


class UpConv(nn.Sequential):
    """``up_conv``: nearest upsampling x2 and 3 x [Conv 5x5 + BN + ReLU]."""

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2), *conv_bn_relu(ch_in, ch_out), *conv_bn_relu(ch_out, ch_out),
                         *conv_bn_relu(ch_out, ch_out))


class SpatialSE(nn.Module):
    """Spatial squeeze & excitation from another tensor: ``other * sigmoid(conv1x1(x))`` (Roy et al.; the support's
    attention recalibrates the query)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        return other * torch.sigmoid(self.conv(x))


def resize_mask(mask: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    mask = mask.float()
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))


def masked_average(features: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Masked average pooling v = sum(y f) / sum(y): features (B, C, h, w), mask (B, 1, H, W) -> (B, C)."""
    mask = resize_mask(mask, features.shape[-2:])
    return (features * mask).sum((-2, -1)) / (mask.sum((-2, -1)) + eps)


def minmax(x: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Min-max normalisation per sample over every other axis."""
    flat = x.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (x - low.view(shape)) / (high - low + eps).view(shape)


def min_max_local(pooled: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid cells of one sample's pooled foreground share (g*g,): foreground cells (share >= ratio * max, > 0) and
    background cells (share below the mean)."""
    fg = (pooled >= ratio * pooled.max()) & (pooled > 0)
    bg = pooled < pooled.mean()
    if not bg.any():  # a uniform share: no cell is below the mean
        bg = pooled <= pooled.min()
    return fg, bg


class SETDCLNet(nn.Module):
    """The two-branch sSE U-Net of (Guided-)SET-DCL / AAS-DCL (see the module docstring).

    Args:
        in_channels: channels of a slice (1 for CT); tiled to ``query_channels`` for the query branch (the code's 3).
        features: widths of the 5 levels (bottleneck last); the input side must be divisible by 16.
        num_classes: output classes (2: background, colon).
        refine_iters: iterative-refinement steps (I = 5).
        guidance: ``mrf``: the query prototype pools the enhanced query feature under the initial label (``prior``)
            (Guided-SET-DCL, Guided-AAS-DCL); ``none``: global average pooling (SET-DCL, AAS-DCL).
        grid: local-prototype grid on the bottleneck (4x4 in training).
        local_fg_ratio: a grid cell is a local colon prototype when its colon share is >= this times the largest.
        temperature: the InfoNCE temperature tau.
    """

    def __init__(self, in_channels: int = 1, features: Sequence[int] = SETDCL_FEATURES, num_classes: int = 2,
                 refine_iters: int = 5, guidance: Literal["mrf", "none"] = "mrf", grid: int = 4,
                 local_fg_ratio: float = 0.8, temperature: float = 0.1, query_channels: int = 3) -> None:
        super().__init__()
        if guidance not in ("mrf", "none"):
            raise ValueError(f"guidance must be 'mrf' or 'none', got {guidance!r}")
        f1, f2, f3, f4, f5 = (int(f) for f in features)
        self.in_channels, self.query_channels = in_channels, max(in_channels, query_channels)
        self.refine_iters, self.guidance, self.grid = refine_iters, guidance, grid
        self.local_fg_ratio, self.temperature = local_fg_ratio, temperature
        self.Maxpool = nn.MaxPool2d(2, 2)
        self.Conv1 = ConvBlock(self.query_channels, f1)
        self.Conv1_ = ConvBlock(self.query_channels + 1, f1)  # support image (tiled) + its mask
        self.Conv2, self.Conv3, self.Conv4 = ConvBlock(f1, f2), ConvBlock(f2, f3), ConvBlock(f3, f4)
        self.Conv5 = ConvBlock(f4, f5, layers=1)  # bottleneck (conv_ori_ch)
        self.sSE1, self.sSE2, self.sSE3, self.sSE4, self.sSE5 = (SpatialSE(c) for c in (f1, f2, f3, f4, f5))
        self.Up5, self.Up_conv5 = UpConv(f5, f4), ConvBlock(2 * f4, f4)
        self.Up4, self.Up_conv4 = UpConv(f4, f3), ConvBlock(2 * f3, f3)
        self.Up3, self.Up_conv3 = UpConv(f3, f2), ConvBlock(2 * f2, f2)
        self.Up2, self.Up_conv2 = UpConv(f2, f1), ConvBlock(2 * f1, f1)
        self.conv_fusion = ConvBlock(f5 + f5 + 1, f5, layers=1)  # x5_q || (similarity map, prototype) -> x5_sq
        self.getCorrConv = ConvBlock(2 * f1, f1, layers=1)
        self.conv_fusion_ = ConvBlock(f1 + f1 + 1, f1, layers=1)
        self.Conv_1x1 = nn.Sequential(nn.Conv2d(f1, f1, 3, padding=1), nn.ReLU(inplace=True),
                                      nn.Conv2d(f1, num_classes, 1))
        for module in self.modules():  # the code's initialize_weights: Kaiming normal convolutions, unit BN
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # -- pieces ----------------------------------------------------------------------------------
    def _tile(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[1] == self.query_channels:
            return image
        if self.query_channels % image.shape[1]:
            raise ValueError(f"cannot tile {image.shape[1]} channels to {self.query_channels}")
        return image.repeat(1, self.query_channels // image.shape[1], 1, 1)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """The query encoder without attention (the unrelated slices): the bottleneck feature."""
        x = self.Conv1(self._tile(image))
        for conv in (self.Conv2, self.Conv3, self.Conv4, self.Conv5):
            x = conv(self.Maxpool(x))
        return x

    @staticmethod
    def prototypes(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(foreground, background) masked-average prototypes (B, C)."""
        mask = mask.float()
        return masked_average(features, mask), masked_average(features, 1 - mask)

    def sim_prior(self, support: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """AAS-DCL's prior embedding: the min-max normalised per-pixel cosine similarity between the mask-weighted
        support feature and the query feature, and the sum of the support's colon and background prototypes broadcast:
        (B, C + 1, h, w)."""
        mask_small = resize_mask(mask, query.shape[-2:], mode="nearest")
        similarity = minmax(F.cosine_similarity(support * mask_small, query, dim=1, eps=1e-7))
        fg, bg = self.prototypes(support, mask)
        prototype = (fg + bg)[..., None, None].expand(-1, -1, *query.shape[-2:])
        return torch.cat([similarity[:, None], prototype], dim=1)

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """CCL's context vectors: sSE5 self-attention, average pooling to the grid: (B, grid^2, C)."""
        x = self.sSE5(x, x)
        x = F.adaptive_avg_pool2d(x, self.grid)
        return x.flatten(2).transpose(1, 2)

    def local_prototypes(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample's local prototypes on the grid: features (C, h, w), mask (1, H, W) -> (fg (n, C), bg (m, C))."""
        pooled_features = F.adaptive_avg_pool2d(features[None], self.grid)[0].flatten(1).T  # (g*g, C)
        small = resize_mask(mask[None], features.shape[-2:], mode="nearest")
        share = F.adaptive_avg_pool2d(small, self.grid).flatten()  # (g*g,)
        fg, bg = min_max_local(share, self.local_fg_ratio)
        return pooled_features[fg], pooled_features[bg]

    def query_prototype(self, x5_sq: torch.Tensor, prior: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, C): MAP under the initial label (guided; GAP where a prior is empty or absent) or GAP."""
        gap = x5_sq.mean((-2, -1))
        if self.guidance == "none" or prior is None:
            return gap
        has_prior = prior.flatten(1).amax(1) > 0
        return torch.where(has_prior[:, None], masked_average(x5_sq, prior), gap)

    def contrastive_losses(self, x5: torch.Tensor, x5_sq: torch.Tensor, support_mask: torch.Tensor,
                           prior: Optional[torch.Tensor], negatives: torch.Tensor,
                           negative_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """CPCL, PPCL and CCL (unweighted), averaged over the batch. negatives: (B, N, C, h, w) bottleneck features,
        negative_mask (B, N, 1, H, W)."""
        tau = self.temperature
        query = self.query_prototype(x5_sq, prior)
        support_fg, _ = self.prototypes(x5, support_mask)
        q_context, s_context = self.context(x5_sq), self.context(x5)
        cpcl, ppcl, ccl = [], [], []
        for b in range(len(x5)):
            negative_fg = masked_average(negatives[b], negative_mask[b])  # (N, C)
            cpcl.append(infonce(query[b:b + 1], support_fg[b:b + 1], negative_fg, tau))
            s_fg_local, s_bg_local = self.local_prototypes(x5[b], support_mask[b])
            n_terms, sample_ppcl = 0, x5.new_zeros(())
            for n in range(len(negatives[b])):
                u_fg_local, u_bg_local = self.local_prototypes(negatives[b, n], negative_mask[b, n])
                pool = torch.cat([u_fg_local, s_bg_local, u_bg_local])
                if len(s_fg_local) and len(pool):
                    sample_ppcl = sample_ppcl + sum(infonce(query[b:b + 1], p[None], pool, tau) for p in s_fg_local)
                    n_terms += len(s_fg_local)
            ppcl.append(sample_ppcl / max(n_terms, 1))
            n_context = self.context(negatives[b])  # (N, g*g, C)
            ccl.append(torch.stack([infonce(q_context[b], s_context[b], n_context[n], tau)
                                    for n in range(len(n_context))]).mean())
        return {"cpcl": torch.stack(cpcl).mean(), "ppcl": torch.stack(ppcl).mean(), "ccl": torch.stack(ccl).mean()}

    def feature_similarity(self, support: Sequence[torch.Tensor], query: Sequence[torch.Tensor],
                           size: Sequence[int]) -> torch.Tensor:
        """Mean over encoder levels of the per-pixel support/query cosine similarity at full size, min-max:
        (B, H, W)."""
        maps = [F.interpolate(F.cosine_similarity(s, q, dim=1, eps=1e-7)[:, None], size=tuple(size), mode="nearest")
                for s, q in zip(support, query)]
        return minmax(torch.cat(maps, 1).mean(1))

    @staticmethod
    def _consistency(probabilities: torch.Tensor, support_onehot: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample MSE between the (min-max) similarity of the prediction with the support mask and ``target``."""
        similarity = minmax(F.cosine_similarity(probabilities, support_onehot, dim=1, eps=1e-7))
        return ((similarity - target) ** 2).flatten(1).mean(1)

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, support_image: torch.Tensor, support_mask: torch.Tensor, query_image: torch.Tensor,
                query_prior: Optional[torch.Tensor] = None, negative_image: Optional[torch.Tensor] = None,
                negative_mask: Optional[torch.Tensor] = None) -> dict:
        """Episode -> ``{"probabilities": (B, K, H, W) softmax, "consistency_mse": (B,), "losses": {cpcl, ppcl, ccl}}``
        (losses only with negatives). Images (B, C, H, W), masks (B, 1, H, W) 0/1, negatives (B, N, C, H, W) and
        (B, N, 1, H, W)."""
        support_mask = support_mask.float()
        x1 = self.Conv1_(torch.cat([self._tile(support_image), support_mask], 1))
        x1_q = self.Conv1(self._tile(query_image))
        support_levels, query_levels = [x1], [x1_q]
        x, x_q = x1, x1_q
        for sse, conv in ((self.sSE1, self.Conv2), (self.sSE2, self.Conv3), (self.sSE3, self.Conv4),
                          (self.sSE4, self.Conv5)):
            x, x_q = self.Maxpool(x), self.Maxpool(x_q)
            x_q = sse(x, x_q)
            x, x_q = conv(x), conv(x_q)
            support_levels.append(x)
            query_levels.append(x_q)
        x5, x5_q = x, self.sSE5(x, x_q)
        query_levels[-1] = x5_q
        x5_sq = self.conv_fusion(torch.cat([x5_q, self.sim_prior(x5, x5_q, support_mask)], 1))
        out: dict = {}
        if negative_image is not None and negative_image.shape[1] > 0:
            b, n = negative_image.shape[:2]
            negatives = self.encode(negative_image.flatten(0, 1)).unflatten(0, (b, n))
            out["losses"] = self.contrastive_losses(x5, x5_sq, support_mask, query_prior, negatives, negative_mask)
        d, d_q = x5, x5_q
        stages = ((self.Up5, self.Up_conv5, self.sSE4), (self.Up4, self.Up_conv4, self.sSE3),
                  (self.Up3, self.Up_conv3, self.sSE2), (self.Up2, self.Up_conv2, self.sSE1))
        for level, (up, conv, sse) in zip((3, 2, 1, 0), stages):
            d = conv(torch.cat([support_levels[level], up(d)], 1))
            d_q = conv(torch.cat([query_levels[level], up(d_q)], 1))
            d_q = sse(d, d_q)
        probabilities = torch.softmax(self.Conv_1x1(d_q), 1)
        support_onehot = torch.cat([1 - support_mask, support_mask], 1)
        target = self.feature_similarity(support_levels, query_levels, support_mask.shape[-2:])
        best_mse = self._consistency(probabilities, support_onehot, target)
        prediction = probabilities
        for _ in range(self.refine_iters):
            d_q_ = self.getCorrConv(torch.cat([d_q * prediction[:, :1], d_q * prediction[:, 1:2]], 1))
            fused = self.conv_fusion_(torch.cat([d_q_, self.sim_prior(d, d_q_, support_mask)], 1))
            prediction = torch.softmax(self.Conv_1x1(fused), 1)
            mse = self._consistency(prediction, support_onehot, target)
            better = mse <= best_mse
            probabilities = torch.where(better[:, None, None, None], prediction, probabilities)
            best_mse = torch.where(better, mse, best_mse)
        out["probabilities"] = probabilities
        out["consistency_mse"] = best_mse
        return out
