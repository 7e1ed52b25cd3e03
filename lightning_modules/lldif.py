"""LLDif (Wang, Zhang & Sankaranarayana, ICPR 2024): diffusion models for low-light facial expression recognition.

Three runs, one after another (each a ``run.py`` config; the later ones load the earlier checkpoints by path):

0. ``LAClip`` (label-aware CLIP, Sec. 3.1): an image encoder I_e (patch tokens + a global feature), a feature
   learner F_l (MLP) giving the caption-space f_c^I and label-space f_l^I embeddings, and text-side embeddings of
   the templated caption f_c^t and label prompt f_l^t of each class. Trained with a label-aware symmetric InfoNCE
   (f_c^I <-> f_c^t; same-label pairs are all positives) plus the label alignment (cross-entropy over the scaled
   cosines of f_l^I to the class prompts; these cosines are its logits, so its accuracy is a zero-shot read-out).
1. ``LLDifS1``: LA-CLIP frozen; PNET_S1 (Eq. 1: cross-attention of [f_c^I, f_l^I, f_l^t(label)] over I_e's tokens,
   then an MLP) gives the embedding prior Z in R^C, which modulates every block of the LLformer (Eq. 2). Loss: CE
   (Eq. 13). Stage 1 sees the label (through f_l^t): its accuracy is an oracle, not a result.
2. ``LLDifS2``: LA-CLIP + PNET_S1 frozen (the teacher Z); PNET_S2 (Eq. 15, DiffIR's CPEN) encodes the image into
   x_s2; a 4-step diffusion over Z (Eq. 14, 16) with the denoiser eps_theta(concat(x_s2, t, Z'_t)) regenerates Z'_0
   from Z_T = q(Z_T | Z) ("insert noise", training) or N(0, I) (inference: no label); LLformer initialised from
   stage 1. Loss CE (Table 5's best row) or CE + KL (Eq. 17-18, ``loss: total``); ``diffusion: false`` is Table 5's
   V1 (PNET_S2 regresses Z directly).

LLformer = DTNet (a U-Net of Restormer-style transformer blocks: Z-modulated LayerNorm (Eq. 2), transposed channel
attention DMNet (Eq. 3), gated depthwise FFN DGNet (Eq. 4)) + DLNet (Eq. 5-9: window cross-attention from landmark
features (queries) to image features (keys/values), relative position bias, MLP) + fusion of the three scales into
3 x s^2 tokens, ViT blocks (Eq. 10-12), mean token -> classes. The paper gives no sizes; defaults follow DiffIR and
POSTER++ (docs/papers/lldif.md).

Networks are plain ``nn.Module`` s called as ``network(image, label=None, landmarks=None) -> (logits, aux_losses)``;
``LLDifTask`` (``ClassificationTask``) adds the auxiliary losses to the cross-entropy, feeds the label only to
networks that need it (``needs_label``), and logs the mean max-softmax confidence per test loader (Fig. 6).
"""
from __future__ import annotations

import math
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from lightning_modules.batch import LANDMARKS, require
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.utils import network_from_checkpoint


LACLIP_COMMAND = "python run.py --config experiments/lldif_demo_laclip.yaml"
S1_COMMAND = "python run.py --config experiments/lldif_demo_s1.yaml --model.init_args.network.init_args." \
             "laclip_checkpoint runs/lldif_demo_laclip/<run id>/checkpoints/best.ckpt"


# ---------------------------------------------------------------------------------------------------------------
# losses
def label_aware_clip_loss(image_embed: torch.Tensor, text_embed: torch.Tensor, labels: torch.Tensor,
                          logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE between image and caption embeddings (B, D) where every same-label pair is a positive
    (the captions are class templates, so two images of one class share their caption): the cross-entropy of each
    row's (and column's) softmax against the uniform distribution over its positives. With distinct labels it is
    CLIP's loss, (CE(S, I) + CE(S^T, I)) / 2 with S = scale * cos."""
    image_embed, text_embed = F.normalize(image_embed, dim=-1), F.normalize(text_embed, dim=-1)
    logits = logit_scale * image_embed @ text_embed.t()
    positives = (labels[:, None] == labels[None, :]).float()
    targets = positives / positives.sum(1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


def prior_kl_loss(z_teacher: torch.Tensor, z_student: torch.Tensor) -> torch.Tensor:
    """Eq. 17: sum_i Z_norm(i) log(Z_norm(i) / Z'_norm(i)) with both priors softmax-normalised over C, averaged
    over the batch."""
    return F.kl_div(F.log_softmax(z_student.float(), -1), F.log_softmax(z_teacher.float(), -1), log_target=True,
                    reduction="batchmean")


# ---------------------------------------------------------------------------------------------------------------
# landmark heatmaps
def landmark_heatmaps(landmarks: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, K, size, size) Gaussian heatmaps of normalised (x, y) landmarks (B, K, 2), ``sigma`` in pixels of a
    ``size`` map; NaN landmarks (absent) give empty maps."""
    grid = (torch.arange(size, device=landmarks.device, dtype=landmarks.dtype) + 0.5) / size
    present = torch.isfinite(landmarks).all(-1)
    points = torch.nan_to_num(landmarks)
    dx = (grid[None, None, None, :] - points[..., 0, None, None]) * size
    dy = (grid[None, None, :, None] - points[..., 1, None, None]) * size
    maps = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))
    return maps * present[..., None, None]


# ---------------------------------------------------------------------------------------------------------------
# DTNet blocks (Eq. 2-4; Restormer / DiffIR)
class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DMNet(nn.Module):
    """Eq. 3: transposed (channel) self-attention. 1x1 conv + 3x3 depthwise conv -> Q, K, V; per head
    A = softmax(K Q / alpha) in R^{C'' x C''} (Q, K L2-normalised over pixels, alpha a learnable temperature per
    head); output W_c (A V) by a 1x1 conv (the residual is added by the block)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.project_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1) * self.temperature).softmax(-1)
        return self.project_out((attention @ v).reshape(b, c, h, w))


class DGNet(nn.Module):
    """Eq. 4: gated depthwise FFN, GELU(W_d^1 W_c^1 F') * W_d^2 W_c^2 F' then a 1x1 projection (expansion 2.66)."""

    def __init__(self, dim: int, expansion: float = 2.66):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.project_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class PriorModulation(nn.Module):
    """Eq. 2: F' = W_1 Z * LN(F) + W_2 Z (Z the prior (B, C_z), applied per channel)."""

    def __init__(self, dim: int, prior_dim: int):
        super().__init__()
        self.norm = ChannelLayerNorm(dim)
        self.kernel = nn.Linear(prior_dim, dim * 2, bias=False)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        scale, shift = self.kernel(z)[..., None, None].chunk(2, dim=1)
        return self.norm(x) * scale + shift


class DTBlock(nn.Module):
    """One DTNet transformer block: F + DMNet(mod(F)), then + DGNet(mod(.)) (DiffIR modulates both halves)."""

    def __init__(self, dim: int, heads: int, prior_dim: int, expansion: float = 2.66):
        super().__init__()
        self.mod1, self.attn = PriorModulation(dim, prior_dim), DMNet(dim, heads)
        self.mod2, self.ffn = PriorModulation(dim, prior_dim), DGNet(dim, expansion)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.mod1(x, z))
        return x + self.ffn(self.mod2(x, z))


class DTStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, prior_dim: int, expansion: float):
        super().__init__()
        self.blocks = nn.ModuleList(DTBlock(dim, heads, prior_dim, expansion) for _ in range(depth))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, z)
        return x


class DTNet(nn.Module):
    """Fig. 3: patch embedding (``patch_size`` stride conv), a 3-level U-Net of DTBlocks (Restormer's pixel-
    (un)shuffle down/up sampling, skip concatenation + 1x1 reduction); returns the decoder outputs F1 (s), F2 (s/2)
    and the bottleneck F3 (s/4), s = img_size / patch_size, with ``dims`` channels."""

    def __init__(self, in_channels: int, dims: Sequence[int], depths: Sequence[int], heads: Sequence[int],
                 prior_dim: int, patch_size: int, expansion: float = 2.66):
        super().__init__()
        d1, d2, d3 = dims
        self.patch_embed = nn.Conv2d(in_channels, d1, patch_size, stride=patch_size)
        self.enc1 = DTStage(d1, depths[0], heads[0], prior_dim, expansion)
        self.down12 = nn.Sequential(nn.Conv2d(d1, d2 // 4, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.enc2 = DTStage(d2, depths[1], heads[1], prior_dim, expansion)
        self.down23 = nn.Sequential(nn.Conv2d(d2, d3 // 4, 3, padding=1, bias=False), nn.PixelUnshuffle(2))
        self.bottleneck = DTStage(d3, depths[2], heads[2], prior_dim, expansion)
        self.up32 = nn.Sequential(nn.Conv2d(d3, d2 * 4, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.reduce2 = nn.Conv2d(d2 * 2, d2, 1, bias=False)
        self.dec2 = DTStage(d2, depths[1], heads[1], prior_dim, expansion)
        self.up21 = nn.Sequential(nn.Conv2d(d2, d1 * 4, 3, padding=1, bias=False), nn.PixelShuffle(2))
        self.reduce1 = nn.Conv2d(d1 * 2, d1, 1, bias=False)
        self.dec1 = DTStage(d1, depths[0], heads[0], prior_dim, expansion)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e1 = self.enc1(self.patch_embed(x), z)
        e2 = self.enc2(self.down12(e1), z)
        f3 = self.bottleneck(self.down23(e2), z)
        f2 = self.dec2(self.reduce2(torch.cat([self.up32(f3), e2], 1)), z)
        f1 = self.dec1(self.reduce1(torch.cat([self.up21(f2), e1], 1)), z)
        return f1, f2, f3


# ---------------------------------------------------------------------------------------------------------------
# DLNet (Eq. 5-9; POSTER++'s window cross-attention)
class WindowCrossAttention(nn.Module):
    """Eq. 5-7 on one ``window`` x ``window`` window: Q from landmark tokens, K, V from image tokens,
    softmax(Q K^T / sqrt(d) + b) V with Swin's learned relative position bias b, output projection W_O."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim * 2), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("bias_index", relative[..., 0] * (2 * window - 1) + relative[..., 1], persistent=False)

    def forward(self, landmark_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = image_tokens.shape
        h = self.heads
        q = self.q(landmark_tokens).reshape(b, n, h, d // h).transpose(1, 2)
        k, v = self.kv(image_tokens).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        bias = self.bias_table[self.bias_index.reshape(-1)].reshape(n, n, h).permute(2, 0, 1)
        attention = (q @ k.transpose(-2, -1) * self.scale + bias).softmax(-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(b, n, d))


class DLBlock(nn.Module):
    """Eq. 8-9: X' = MHCA(X_fl -> X_ll) + X_ll; X'' = MLP(LN(X')) + X' (one window per map)."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowCrossAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, landmark_map: torch.Tensor, image_map: torch.Tensor) -> torch.Tensor:
        b, c, h, w = image_map.shape
        x = image_map.flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm_q(landmark_map.flatten(2).transpose(1, 2)), self.norm_kv(x))
        x = x + self.mlp(self.norm2(x))
        return x.transpose(1, 2).reshape(b, c, h, w)


class LandmarkEncoder(nn.Module):
    """X_fl at the three scales. POSTER++ takes them from a frozen pre-trained MobileFaceNet landmark network;
    offline (no weights) a small trainable CNN pyramid encodes 68 Gaussian landmark heatmaps (``heatmaps``) or, where a
    dataset has no landmarks, the image itself (``image``, as the landmark network does)."""

    def __init__(self, source: Literal["heatmaps", "image"], in_channels: int, num_landmarks: int,
                 dims: Sequence[int], patch_size: int, sigma: float):
        super().__init__()
        d1, d2, d3 = dims
        self.source, self.patch_size, self.sigma = source, patch_size, sigma
        if source == "heatmaps":
            self.stem = nn.Sequential(nn.Conv2d(num_landmarks, d1, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(d1, d1, 3, padding=1))
        elif source == "image":
            self.stem = nn.Sequential(nn.Conv2d(in_channels, d1, patch_size, stride=patch_size), nn.GELU(),
                                      nn.Conv2d(d1, d1, 3, padding=1))
        else:
            raise ValueError(f"landmark_input must be 'heatmaps' or 'image', got {source!r}")
        self.down2 = nn.Sequential(nn.GELU(), nn.Conv2d(d1, d2, 3, stride=2, padding=1))
        self.down3 = nn.Sequential(nn.GELU(), nn.Conv2d(d2, d3, 3, stride=2, padding=1))

    def forward(self, image: torch.Tensor, landmarks: Optional[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.source == "heatmaps":
            if landmarks is None:
                raise KeyError(f"landmark_input 'heatmaps' needs the batch key '{LANDMARKS}' (B, K, 2); use "
                               "landmark_input: image for datasets without landmarks")
            size = image.shape[-1] // self.patch_size
            x = landmark_heatmaps(landmarks.to(image.dtype), size, self.sigma / self.patch_size)
        else:
            x = image
        x1 = self.stem(x)
        x2 = self.down2(x1)
        return x1, x2, self.down3(x2)


class FusionHead(nn.Module):
    """Eq. 10-12: x_k = concat(F_k, O_k); x1 through two stride-2 3x3 convs, x2 through one, x3 a 1x1 conv, all to
    ``embed_dim`` at the coarsest scale; 3 s^2 tokens (+ a learned position embedding), ViT blocks (MSA + MLP,
    pre-norm), mean token, LayerNorm, linear classifier."""

    def __init__(self, dims: Sequence[int], grid: int, embed_dim: int, depth: int, heads: int, mlp_ratio: float,
                 num_classes: int, dropout: float = 0.0):
        super().__init__()
        d1, d2, d3 = dims
        self.x1 = nn.Sequential(nn.Conv2d(2 * d1, 2 * d1, 3, stride=2, padding=1), nn.GELU(),
                                nn.Conv2d(2 * d1, embed_dim, 3, stride=2, padding=1))
        self.x2 = nn.Conv2d(2 * d2, embed_dim, 3, stride=2, padding=1)
        self.x3 = nn.Conv2d(2 * d3, embed_dim, 1)
        self.pos = nn.Parameter(torch.zeros(1, 3 * grid * grid, embed_dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(embed_dim, heads, int(embed_dim * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.x1(x1).flatten(2), self.x2(x2).flatten(2), self.x3(x3).flatten(2)], 2)
        tokens = self.blocks(tokens.transpose(1, 2) + self.pos)
        return self.head(self.norm(tokens.mean(1)))


class LLformer(nn.Module):
    """DTNet + DLNet + fusion head: ``forward(image, z, landmarks) -> logits``.

    Args:
        img_size: input side (linked from the data); must be divisible by 4 * ``patch_size``.
        num_classes: expression classes (linked from the task).
        in_channels: image channels.
        patch_size: DTNet's patch embedding stride (4: 112 -> 28 / 14 / 7).
        dims, depths, heads: channels, blocks and DMNet heads of the three levels.
        prior_dim: C, the size of the prior Z.
        expansion: DGNet's hidden expansion.
        landmark_input: DLNet's X_fl from landmark ``heatmaps`` (batch key ``landmarks``) or from the ``image``.
        num_landmarks, landmark_sigma: heatmap channels, Gaussian sigma in input pixels.
        dl_heads: heads of DLNet's cross-attention per level.
        embed_dim, vit_depth, vit_heads, mlp_ratio, dropout: the fusion ViT.
    """

    def __init__(self, img_size: int = 112, num_classes: int = 7, in_channels: int = 3, patch_size: int = 4,
                 dims: Sequence[int] = (64, 128, 256), depths: Sequence[int] = (2, 2, 2),
                 heads: Sequence[int] = (1, 2, 4), prior_dim: int = 256, expansion: float = 2.66,
                 landmark_input: Literal["heatmaps", "image"] = "image", num_landmarks: int = 68,
                 landmark_sigma: float = 2.0, dl_heads: Sequence[int] = (2, 4, 8), embed_dim: int = 768,
                 vit_depth: int = 2, vit_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        if img_size % (4 * patch_size):
            raise ValueError(f"img_size {img_size} must be divisible by 4 * patch_size = {4 * patch_size}")
        if len(dims) != 3 or len(depths) != 3 or len(heads) != 3 or len(dl_heads) != 3:
            raise ValueError("dims, depths, heads and dl_heads take one value per level (3)")
        grid = img_size // patch_size
        self.img_size, self.num_classes, self.prior_dim = img_size, num_classes, prior_dim
        self.dtnet = DTNet(in_channels, dims, depths, heads, prior_dim, patch_size, expansion)
        self.landmarks = LandmarkEncoder(landmark_input, in_channels, num_landmarks, dims, patch_size, landmark_sigma)
        self.dlnet = nn.ModuleList(DLBlock(d, h, grid // 2 ** k) for k, (d, h) in enumerate(zip(dims, dl_heads)))
        self.head = FusionHead(dims, grid // 4, embed_dim, vit_depth, vit_heads, mlp_ratio, num_classes, dropout)

    def forward(self, image: torch.Tensor, z: torch.Tensor, landmarks: Optional[torch.Tensor] = None) -> torch.Tensor:
        features = self.dtnet(image, z)
        landmark_features = self.landmarks(image, landmarks)
        fused = [torch.cat([f, block(lm, f)], 1) for f, lm, block in zip(features, landmark_features, self.dlnet)]
        return self.head(*fused)


# ---------------------------------------------------------------------------------------------------------------
# LA-CLIP (stage 0)
class ImageEncoder(nn.Module):
    """I_e: a conv stack (stride 2 per stage, GroupNorm: batch-independent like CLIP's LayerNorms; BatchNorm's running
    statistics of the very dark inputs left the evaluation-mode encoder at chance on the stand-in) -> patch tokens
    (B, N, widths[-1]) and a global feature (their mean). Stands in for CLIP's image tower (no CLIP weights offline;
    docs/papers/lldif.md)."""

    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        layers, previous = [], in_channels
        for width in widths:
            layers += [nn.Conv2d(previous, width, 3, stride=2, padding=1), nn.GroupNorm(min(8, width), width),
                       nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(min(8, width), width), nn.GELU()]
            previous = width
        self.features = nn.Sequential(*layers)
        self.dim = previous

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.features(image).flatten(2).transpose(1, 2)
        return tokens, tokens.mean(1)


class LAClip(nn.Module):
    """Label-aware CLIP (stage 0). ``forward(image, label) -> (label logits, {"clip": InfoNCE})`` (the label only
    in training); ``encode`` gives what PNET_S1 reads.

    Args:
        img_size: input side (linked; only checked); num_classes: classes (linked).
        in_channels: image channels.
        widths: I_e's stage widths (each halves the resolution).
        text_dim: the joint embedding size of f_c and f_l.
        clip_weight: weight of the InfoNCE term (the label alignment is the task's CE on the returned logits).
    """

    needs_label = False

    def __init__(self, img_size: int = 112, num_classes: int = 7, in_channels: int = 3,
                 widths: Sequence[int] = (64, 128, 256, 512), text_dim: int = 512, clip_weight: float = 1.0):
        super().__init__()
        if img_size % 2 ** len(widths):
            raise ValueError(f"img_size {img_size} must be divisible by 2^{len(widths)}")
        self.img_size, self.num_classes, self.clip_weight = img_size, num_classes, clip_weight
        self.image_encoder = ImageEncoder(in_channels, widths)
        self.feature_learner = nn.Sequential(nn.Linear(self.image_encoder.dim, text_dim), nn.GELU(),
                                             nn.Linear(text_dim, 2 * text_dim))
        # T_e of the templated caption ("a dark low-light photo of a {class} face") and label prompt ("{class}")
        self.caption_embeddings = nn.Embedding(num_classes, text_dim)
        self.label_embeddings = nn.Embedding(num_classes, text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.token_dim, self.text_dim = self.image_encoder.dim, text_dim

    def encode(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens, pooled = self.image_encoder(image)
        f_c, f_l = self.feature_learner(pooled).chunk(2, dim=-1)
        return {"tokens": tokens, "f_c": f_c, "f_l": f_l}

    def label_text(self, label: torch.Tensor) -> torch.Tensor:
        """f_l^t of the labels (B, text_dim), normalised."""
        return F.normalize(self.label_embeddings(label), dim=-1)

    def label_logits(self, f_l: torch.Tensor) -> torch.Tensor:
        scale = self.logit_scale.exp().clamp(max=100)
        return scale * F.normalize(f_l, dim=-1) @ F.normalize(self.label_embeddings.weight, dim=-1).t()

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None,
                landmarks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = self.encode(image)
        logits = self.label_logits(out["f_l"])
        aux = {}
        if label is not None and self.training and self.clip_weight > 0:
            scale = self.logit_scale.exp().clamp(max=100)
            aux["clip"] = self.clip_weight * label_aware_clip_loss(out["f_c"], self.caption_embeddings(label), label,
                                                                   scale)
        return logits, aux


# ---------------------------------------------------------------------------------------------------------------
# PNETs and the latent diffusion
class PNetS1(nn.Module):
    """Eq. 1: queries [f_c^I, f_l^I (, f_l^t of the label)] cross-attend over I_e's tokens (residual), flattened,
    MLP -> Z (B, prior_dim)."""

    def __init__(self, token_dim: int, text_dim: int, prior_dim: int, heads: int = 4, uses_label: bool = True):
        super().__init__()
        self.uses_label = uses_label
        queries = 3 if uses_label else 2
        self.query = nn.Linear(text_dim, prior_dim)
        self.key_value = nn.Linear(token_dim, prior_dim)
        self.attention = nn.MultiheadAttention(prior_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(prior_dim)
        self.mlp = nn.Sequential(nn.Linear(queries * prior_dim, prior_dim), nn.LeakyReLU(0.1),
                                 nn.Linear(prior_dim, prior_dim))

    def forward(self, f_c: torch.Tensor, f_l: torch.Tensor, tokens: torch.Tensor,
                label_text: Optional[torch.Tensor] = None) -> torch.Tensor:
        queries = [f_c, f_l] + ([label_text] if self.uses_label else [])
        q = self.query(torch.stack(queries, 1))
        kv = self.key_value(tokens)
        q = self.norm(q + self.attention(q, kv, kv, need_weights=False)[0])
        return self.mlp(q.flatten(1))


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.1),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class PNetS2(nn.Module):
    """Eq. 15, DiffIR's CPEN_S2: PixelUnshuffle(4) -> conv -> ``num_res`` ResBlocks -> convs n -> 2n -> 2n -> 4n
    (LeakyReLU 0.1) -> global average pool -> MLP to ``prior_dim`` (conv, residual and linear layers)."""

    def __init__(self, in_channels: int = 3, n_feats: int = 64, num_res: int = 6, prior_dim: int = 256,
                 unshuffle: int = 4):
        super().__init__()
        layers = [nn.PixelUnshuffle(unshuffle), nn.Conv2d(in_channels * unshuffle ** 2, n_feats, 3, padding=1),
                  nn.LeakyReLU(0.1)]
        layers += [ResBlock(n_feats) for _ in range(num_res)]
        layers += [nn.Conv2d(n_feats, n_feats * 2, 3, padding=1), nn.LeakyReLU(0.1),
                   nn.Conv2d(n_feats * 2, n_feats * 2, 3, padding=1), nn.LeakyReLU(0.1),
                   nn.Conv2d(n_feats * 2, n_feats * 4, 3, padding=1), nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1)]
        self.encoder = nn.Sequential(*layers)
        self.mlp = nn.Sequential(nn.Linear(n_feats * 4, prior_dim), nn.LeakyReLU(0.1),
                                 nn.Linear(prior_dim, prior_dim), nn.LeakyReLU(0.1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.encoder(image).flatten(1))


class Denoiser(nn.Module):
    """eps_theta(concat(x_s2, t, Z'_t)) (DiffIR): Linear(2C + 1 -> C) + LeakyReLU, ``num_res`` residual
    Linear + LeakyReLU blocks; t enters as t / (10 T)."""

    def __init__(self, prior_dim: int = 256, num_res: int = 1, timesteps: int = 4):
        super().__init__()
        self.max_period = timesteps * 10
        self.inp = nn.Sequential(nn.Linear(2 * prior_dim + 1, prior_dim), nn.LeakyReLU(0.1))
        self.res = nn.ModuleList(nn.Sequential(nn.Linear(prior_dim, prior_dim), nn.LeakyReLU(0.1))
                                 for _ in range(num_res))

    def forward(self, z: torch.Tensor, t: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        t = (t.float() / self.max_period)[:, None].to(z.dtype)
        x = self.inp(torch.cat([condition, t, z], -1))
        for block in self.res:
            x = x + block(x)
        return x


class PriorDiffusion(nn.Module):
    """Eq. 14 and 16 over a (B, C) prior with T steps, beta linear from ``beta_start`` to ``beta_end`` (DiffIR's
    0.1 -> 0.99; the same as MONAI's ``linear_beta`` schedule). ``eps``: the network predicts the noise and a step is
    Z_{t-1} = (Z_t - eps (1 - alpha_t) / sqrt(1 - abar_t)) / sqrt(alpha_t) (Eq. 16 with abar_t in the root, the
    standard DDPM mean); ``x0``: it predicts Z_0 and a step is the posterior mean (DiffIR). Steps are deterministic
    (no posterior noise), indices t = T-1 .. 0."""

    def __init__(self, timesteps: int = 4, beta_start: float = 0.1, beta_end: float = 0.99,
                 parameterization: Literal["eps", "x0"] = "eps"):
        super().__init__()
        if parameterization not in ("eps", "x0"):
            raise ValueError(f"parameterization must be 'eps' or 'x0', got {parameterization!r}")
        self.timesteps, self.parameterization = timesteps, parameterization
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        for name, value in (("betas", betas), ("alphas", alphas), ("alphas_cumprod", abar),
                            ("alphas_cumprod_prev", abar_prev)):
            self.register_buffer(name, value.float(), persistent=False)

    def q_sample(self, z0: torch.Tensor, t: int, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Eq. 14 at step index t: sqrt(abar_t) Z + sqrt(1 - abar_t) eps."""
        noise = torch.randn_like(z0) if noise is None else noise
        return self.alphas_cumprod[t].sqrt() * z0 + (1 - self.alphas_cumprod[t]).sqrt() * noise

    def step(self, model_output: torch.Tensor, t: int, z_t: torch.Tensor) -> torch.Tensor:
        """Z_{t-1} from Z_t and the network's output at step index t."""
        alpha, beta = self.alphas[t], self.betas[t]
        abar, abar_prev = self.alphas_cumprod[t], self.alphas_cumprod_prev[t]
        if self.parameterization == "eps":
            return (z_t - model_output * (1 - alpha) / (1 - abar).sqrt()) / alpha.sqrt()
        return (beta * abar_prev.sqrt() * model_output + (1 - abar_prev) * alpha.sqrt() * z_t) / (1 - abar)

    def sample(self, denoiser: nn.Module, condition: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """Run every reverse step from Z_T = ``z_t`` (gradients flow when enabled)."""
        for t in reversed(range(self.timesteps)):
            steps = torch.full((z_t.shape[0],), t, device=z_t.device, dtype=torch.long)
            z_t = self.step(denoiser(z_t, steps, condition), t, z_t)
        return z_t


# ---------------------------------------------------------------------------------------------------------------
# stage 1 and stage 2 networks
def _on_meta_device() -> bool:
    return torch.empty(0).device.type == "meta"


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class LLDifS1(nn.Module):
    """Stage 1: frozen LA-CLIP -> PNET_S1 -> Z -> LLformer. ``forward(image, label, landmarks) -> (logits, {})``.

    Args:
        laclip_checkpoint: stage 0's Lightning checkpoint (best.ckpt; its ``network.*`` weights, the architecture
            from its hyperparameters unless ``laclip`` is given). Required unless ``laclip`` is given.
        laclip: LA-CLIP's architecture (an ``LAClip``), for a run without a checkpoint (tests, meta builds).
        uses_label: PNET_S1 also reads the ground-truth label's prompt embedding f_l^t (the card's default: Z is a
            joint image-label prior); False: Eq. 1 literally.
        pnet_heads: PNET_S1's attention heads.
        img_size, num_classes, in_channels, prior_dim, **llformer: the ``LLformer`` 's arguments.
    """

    needs_label = True

    def __init__(self, laclip_checkpoint: Optional[str] = None, laclip: Optional[nn.Module] = None,
                 uses_label: bool = True, pnet_heads: int = 4, img_size: int = 112, num_classes: int = 7,
                 in_channels: int = 3, prior_dim: int = 256, patch_size: int = 4,
                 dims: Sequence[int] = (64, 128, 256), depths: Sequence[int] = (2, 2, 2),
                 heads: Sequence[int] = (1, 2, 4), expansion: float = 2.66,
                 landmark_input: Literal["heatmaps", "image"] = "image", num_landmarks: int = 68,
                 landmark_sigma: float = 2.0, dl_heads: Sequence[int] = (2, 4, 8), embed_dim: int = 768,
                 vit_depth: int = 2, vit_heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.needs_label = uses_label
        if _on_meta_device():  # config checks build every model on the meta device: no checkpoint to read
            laclip = laclip if laclip is not None else LAClip(img_size, num_classes, in_channels)
        elif laclip_checkpoint:
            laclip = network_from_checkpoint(laclip_checkpoint, laclip, train_command=LACLIP_COMMAND)
        elif laclip is None:
            raise ValueError("LLDifS1 needs laclip_checkpoint, stage 0's LA-CLIP checkpoint (best.ckpt). Train it "
                             f"first: {LACLIP_COMMAND}; then pass "
                             "--model.init_args.network.init_args.laclip_checkpoint "
                             "runs/<experiment>/<run id>/checkpoints/best.ckpt")
        if laclip.num_classes != num_classes:
            raise ValueError(f"LA-CLIP has {laclip.num_classes} classes, stage 1 {num_classes}")
        self.laclip = _freeze(laclip)
        self.pnet_s1 = PNetS1(laclip.token_dim, laclip.text_dim, prior_dim, pnet_heads, uses_label)
        self.llformer = LLformer(img_size, num_classes, in_channels, patch_size, dims, depths, heads, prior_dim,
                                 expansion, landmark_input, num_landmarks, landmark_sigma, dl_heads, embed_dim,
                                 vit_depth, vit_heads, mlp_ratio, dropout)

    def train(self, mode: bool = True) -> "LLDifS1":
        super().train(mode)
        self.laclip.eval()  # frozen
        return self

    def prior(self, image: torch.Tensor, label: Optional[torch.Tensor]) -> torch.Tensor:
        """Z = PNET_S1(F_l(x), I_e(x) (, f_l^t(label)))."""
        with torch.no_grad():
            out = self.laclip.encode(image)
            label_text = None
            if self.pnet_s1.uses_label:
                if label is None:
                    raise ValueError("stage 1 with uses_label reads the ground-truth label")
                label_text = self.laclip.label_text(label)
        return self.pnet_s1(out["f_c"], out["f_l"], out["tokens"], label_text)

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None,
                landmarks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.llformer(image, self.prior(image, label), landmarks), {}


class LLDifS2(nn.Module):
    """Stage 2: PNET_S2 + the T-step prior diffusion regenerate Z for the LLformer (initialised from stage 1); the
    stage-1 LA-CLIP and PNET_S1 are frozen and give the teacher Z (training only). ``forward(image, label,
    landmarks) -> (logits, aux)``: ``aux`` holds ``kl`` with ``loss: total``; the label is used only in training.

    Args:
        s1_checkpoint: stage 1's Lightning checkpoint (best.ckpt); the architecture from its hyperparameters unless
            ``s1`` is given. Required unless ``s1`` is given.
        s1: stage 1's network (an ``LLDifS1``), for a run without a checkpoint (tests, meta builds).
        diffusion: regenerate Z by the diffusion (True) or regress it with PNET_S2 alone (Table 5's V1, False).
        timesteps, beta_start, beta_end, parameterization: the diffusion (T = 4, betas 0.1 -> 0.99, ``eps``).
        insert_noise: training starts the reverse process from q(Z_T | Z) (True, the paper's "insert noise") or from
            the noise-free sqrt(abar_T) Z (False, Table 5's V3).
        loss: ``ce`` (Table 5's best row) or ``total`` (CE + KL of Eq. 17-18, weighted ``kl_weight``).
        n_feats, pnet_res, unshuffle: PNET_S2's width, ResBlocks and pixel-unshuffle factor.
        denoiser_res: the denoiser's residual MLP blocks.
        img_size, num_classes: linked; checked against stage 1.
    """

    needs_label = False

    def __init__(self, s1_checkpoint: Optional[str] = None, s1: Optional[nn.Module] = None, diffusion: bool = True,
                 timesteps: int = 4, beta_start: float = 0.1, beta_end: float = 0.99,
                 parameterization: Literal["eps", "x0"] = "eps", insert_noise: bool = True,
                 loss: Literal["ce", "total"] = "ce", kl_weight: float = 1.0, n_feats: int = 64, pnet_res: int = 6,
                 unshuffle: int = 4, denoiser_res: int = 1, img_size: int = 112, num_classes: int = 7,
                 in_channels: int = 3):
        super().__init__()
        if loss not in ("ce", "total"):
            raise ValueError(f"loss must be 'ce' or 'total', got {loss!r}")
        if _on_meta_device():  # config checks: the default stage-1 architecture stands in for the checkpoint's
            s1 = s1 if s1 is not None else LLDifS1(laclip=LAClip(img_size, num_classes, in_channels),
                                                   img_size=img_size, num_classes=num_classes, in_channels=in_channels)
        elif s1_checkpoint:
            s1 = network_from_checkpoint(s1_checkpoint, s1, train_command=S1_COMMAND)
        elif s1 is None:
            raise ValueError("LLDifS2 needs s1_checkpoint, stage 1's checkpoint (best.ckpt). Train it first: "
                             f"{S1_COMMAND}; then pass --model.init_args.network.init_args.s1_checkpoint "
                             "runs/<experiment>/<run id>/checkpoints/best.ckpt")
        if s1.llformer.num_classes != num_classes or s1.llformer.img_size != img_size:
            raise ValueError(f"stage 1 was built for {s1.llformer.num_classes} classes at {s1.llformer.img_size} px, "
                             f"stage 2 for {num_classes} at {img_size}")
        prior_dim = s1.llformer.prior_dim
        self.teacher_uses_label = s1.pnet_s1.uses_label
        self.laclip, self.pnet_s1 = _freeze(s1.laclip), _freeze(s1.pnet_s1)
        self.llformer = s1.llformer
        self.pnet_s2 = PNetS2(in_channels, n_feats, pnet_res, prior_dim, unshuffle)
        self.use_diffusion, self.insert_noise = diffusion, insert_noise
        self.loss_name, self.kl_weight = loss, kl_weight
        self.denoiser = Denoiser(prior_dim, denoiser_res, timesteps) if diffusion else None
        self.diffusion = PriorDiffusion(timesteps, beta_start, beta_end, parameterization) if diffusion else None

    def train(self, mode: bool = True) -> "LLDifS2":
        super().train(mode)
        self.laclip.eval()
        self.pnet_s1.eval()
        return self

    @torch.no_grad()
    def teacher_prior(self, image: torch.Tensor, label: Optional[torch.Tensor]) -> torch.Tensor:
        out = self.laclip.encode(image)
        label_text = self.laclip.label_text(label) if self.teacher_uses_label else None
        return self.pnet_s1(out["f_c"], out["f_l"], out["tokens"], label_text)

    def prior(self, image: torch.Tensor, z_teacher: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Z'_0: from q(Z_T | Z_teacher) (or sqrt(abar_T) Z without inserted noise) when a teacher prior is given,
        else from N(0, I) (inference)."""
        condition = self.pnet_s2(image)
        if not self.use_diffusion:
            return condition
        t_last = self.diffusion.timesteps - 1
        if z_teacher is None:
            z_t = torch.randn_like(condition)
        elif self.insert_noise:
            z_t = self.diffusion.q_sample(z_teacher, t_last)
        else:
            z_t = self.diffusion.alphas_cumprod[t_last].sqrt() * z_teacher
        return self.diffusion.sample(self.denoiser, condition, z_t)

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None,
                landmarks: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teach = self.training and label is not None
        z_teacher = self.teacher_prior(image, label) if teach and (self.use_diffusion or self.loss_name == "total") \
            else None
        z = self.prior(image, z_teacher if self.use_diffusion else None)
        aux = {}
        if teach and self.loss_name == "total":
            aux["kl"] = self.kl_weight * prior_kl_loss(z_teacher, z)
        return self.llformer(image, z, landmarks), aux


# ---------------------------------------------------------------------------------------------------------------
class LLDifTask(ClassificationTask):
    """``ClassificationTask`` for the LLDif networks: loss = cross-entropy of the logits (Eq. 13; for LA-CLIP the
    label alignment) + the network's auxiliary terms (LA-CLIP's InfoNCE, stage 2's KL), each also logged as
    ``train/<name>``; the label reaches the network in training (LA-CLIP's InfoNCE, stage 1's prior, stage 2's
    teacher) and in evaluation only where it ``needs_label`` (stage 1's prior), landmarks when the batch has them.
    Test logs the mean max-softmax confidence per test loader (``test/confidence``, ``test/<name>/confidence``,
    Fig. 6) besides the family's metrics; a datamodule's ``normal_light`` test set scores the normal-light images.

    Args: those of ``ClassificationTask``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.multilabel or self.mixup_alpha > 0:
            raise ValueError("LLDifTask is multi-class without mixup")
        self.test_confidence = nn.ModuleDict({"test": MeanMetric()})

    def _network_outputs(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        label = None
        if self.training or getattr(self.network, "needs_label", False):  # training: losses, teachers
            require(batch, self.target_key, task=f"{type(self.network).__name__} (it reads the label)")
            label = batch[self.target_key].long()
        return self.network(batch[self.input_key], label, batch.get(LANDMARKS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[0]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, aux = self._network_outputs(batch)
        ce = self.loss(logits, self.soft_targets(batch[self.target_key]))
        loss = ce + sum(aux.values()) if aux else ce
        size = logits.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        if aux:
            self.log("train/ce", ce, batch_size=size)
            for name, value in aux.items():
                self.log(f"train/{name}", value, batch_size=size)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, _ = self._network_outputs(batch)
        self._update(self.val_evaluation, batch, logits)
        self.log("val/loss", self.loss(logits, self.soft_targets(batch[self.target_key])), batch_size=logits.shape[0])

    def on_test_start(self) -> None:
        super().on_test_start()
        self.test_confidence = nn.ModuleDict({name: MeanMetric() for name, is_ood in self._test_loaders
                                              if not is_ood}).to(self.device)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name, is_ood = self._test_loaders[dataloader_idx]
        if is_ood:
            raise ValueError("LLDifTask has no out-of-distribution test sets")
        logits, _ = self._network_outputs(batch)
        self._update(self.test_evaluations[name], batch, logits)
        self.test_confidence[name].update(logits.float().softmax(-1).amax(-1))

    def on_test_epoch_end(self) -> None:
        for i, (name, _) in enumerate(self._test_loaders):
            prefix = "test/" if i == 0 else f"test/{name}/"
            self.log(f"{prefix}confidence", self.test_confidence[name].compute(), add_dataloader_idx=False)
            self.test_confidence[name].reset()
        super().on_test_epoch_end()

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._scores(self._network_outputs(batch)[0])


__all__ = ["LAClip", "LLDifS1", "LLDifS2", "LLDifTask", "LLformer", "PNetS1", "PNetS2", "Denoiser", "PriorDiffusion",
           "label_aware_clip_loss", "prior_kl_loss", "landmark_heatmaps"]
