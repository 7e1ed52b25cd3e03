"""TransMorph baseline (Chen et al., MedIA 2022) as the FNOReg paper ran it, 2D and 3D.

Follows the official code (junyuchen245/TransMorph_Transformer_for_Medical_Image_Registration,
``TransMorph/models/TransMorph.py`` for 3D and the RaFD ``TransMorph2D`` variant that the FNOReg code
imports for 2D; both vendored in anac0der/fnoreg ``baseline_models/transmorph``). Written here without
timm; the encoder is a dimension-generic Swin Transformer laid out like TransMorph's
(Swin-Transformer-Semantic-Segmentation lineage):

  PatchEmbed      conv k=s=patch (bias) -> LayerNorm
  4 stages        depth_i x SwinBlock(dim_i): x + DropPath(W-MSA(LN(x))); x + DropPath(MLP(LN(x)))
                  (no qkv bias, relative position bias table per block, every second block shifted
                  by window // 2), then PatchMerging (LN(2^d C) -> Linear(2^d C, 2C), no bias)
                  except after the last stage; each stage output goes through its own LayerNorm.
  conv skips      c1 = ConvIN(2 -> C/2) on AvgPool(3, 2, 1)(x), c2 = ConvIN(2 -> 16) on x
  decoder         5 DecoderBlocks [up x2 (bi/trilinear) -> concat skip -> 2 x (conv 3 no bias, IN, LeakyReLU)]
                  8C->4C (+4C), 4C->2C (+2C), 2C->C (+C), C->C/2 (+c1), C/2->16 (+c2)
  head            conv 3 (16 -> d), N(0, 1e-5) weights, zero bias: displacement in voxels.

Parameter counts (``count_parameters``):
- 3D ``get_3DTransMorph_config`` (embed 96, depths (2,2,4,2), heads (4,4,8,8), window (5,6,7), no qkv
  bias, reg_head_chan 16): 46,771,251 (TransMorph paper 46.77M; FNOReg Table 2 46.8M).
- 2D ``get_2DTransMorph_config`` (same widths; the FNOReg scripts set window = img_size // 32 = (5, 6)):
  31,005,506 (FNOReg Table 1 31.0M).

Differences from the reference, none affecting parameters:
- Attention uses ``F.scaled_dot_product_attention`` with the relative position bias (+ shift mask of
  -100) as an additive mask; mathematically the reference's softmax(q k^T * d^-1/2 + B + M) v.
- Inputs whose sizes are not multiples of ``patch_size * 2**3`` (32) are zero-padded at their end and
  the field is cropped back; the reference needs multiples of 32 (its decoder concatenations fail
  otherwise, which is why FNOReg could not train it at 80x96; here 80x96 is padded to 96x96).
- A window larger than a feature map along some axis is clipped to the map along that axis, with no
  shift there (Swin / Video-Swin rule; the reference zero-pads the map up to the window instead).
  A window equal to the map is kept and shifted, as in the reference, so paper sizes run exactly the
  reference computation. The bias for a clipped window reads the matching offsets of the full table.
- Shifts are per axis: an axis whose window is 1 (or clipped) is not shifted while the others are
  (the reference disables the shift on every axis when any shift is 0; this never happens at paper sizes).
- The reference crops window padding only when the first two axes were padded (a 3D crash when only
  the last axis needs padding); here the crop is unconditional.
- Output: voxel displacement converted to normalised units (project contract), channel i along spatial
  dim i (the reference's SpatialTransformer adds channel i to the dim-i index grid, the same convention).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock
from monai.networks.layers import Conv, DropPath, Pool
from torch import nn

from lightning_modules.blocks.init import init_small_output
from lightning_modules.blocks.padding import pad_to_multiple
from lightning_modules.blocks.warp import voxels_to_normalised

__all__ = [
    "TransMorph",
    "SwinEncoder",
    "SwinTransformerBlock",
    "WindowAttention",
    "PatchMerging",
    "window_partition",
    "window_reverse",
    "shifted_window_mask",
    "TRANSMORPH_WINDOW",
]

# The FNOReg scripts set window = img_size // 32: (160, 192) -> (5, 6); (160, 192, 224) -> (5, 6, 7).
TRANSMORPH_WINDOW = {2: (5, 6), 3: (5, 6, 7)}
# Value the reference puts on attention logits between tokens from different shifted regions.
MASK_VALUE = -100.0


def _tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or min(out) < 1:
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {value!r}")
    return out


def window_partition(x: torch.Tensor, window: Sequence[int]) -> torch.Tensor:
    """(B, *S, C) with each S_i divisible by window_i -> (B, num_windows, prod(window), C).

    Windows are numbered in row-major order of the window grid, as in the reference.
    """
    b, *sizes, c = x.shape
    nd = len(sizes)
    shape = [b]
    for s, w in zip(sizes, window):
        shape += [s // w, w]
    x = x.reshape(*shape, c)
    grid_dims = [1 + 2 * i for i in range(nd)]
    inner_dims = [2 + 2 * i for i in range(nd)]
    x = x.permute(0, *grid_dims, *inner_dims, 2 * nd + 1)
    return x.reshape(b, -1, math.prod(window), c)


def window_reverse(windows: torch.Tensor, window: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B, num_windows, prod(window), C) -> (B, *sizes, C)."""
    b, c = windows.shape[0], windows.shape[-1]
    nd = len(sizes)
    grid = [s // w for s, w in zip(sizes, window)]
    x = windows.reshape(b, *grid, *window, c)
    order = [0]
    for i in range(nd):
        order += [1 + i, 1 + nd + i]
    x = x.permute(*order, 2 * nd + 1)
    return x.reshape(b, *sizes, c)


def shifted_window_mask(sizes: Sequence[int], window: Sequence[int], shift: Sequence[int],
                        device: torch.device | None = None) -> torch.Tensor:
    """Additive mask (num_windows, N, N) for shifted-window attention on a (padded) map of ``sizes``.

    After the cyclic shift, each axis with shift s > 0 splits into regions [0, -w), [-w, -s), [-s, end);
    tokens from different regions must not attend to each other (logit + ``MASK_VALUE``).
    """
    labels = torch.zeros(*sizes, device=device)
    per_axis = [
        (slice(0, -w), slice(-w, -s), slice(-s, None)) if s > 0 else (slice(None),)
        for w, s in zip(window, shift)
    ]
    for count, region in enumerate(itertools.product(*per_axis)):
        labels[region] = count
    label_windows = window_partition(labels[None, ..., None], window)[0, ..., 0]  # (nW, N)
    different = label_windows.unsqueeze(1) != label_windows.unsqueeze(2)
    return torch.zeros(different.shape, device=device).masked_fill(different, MASK_VALUE)


def _effective_window(sizes: Sequence[int], window: Sequence[int], shifted: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Clip the window to maps smaller than it (no shift along those axes); otherwise shift by window // 2."""
    eff_window, eff_shift = [], []
    for s, w in zip(sizes, window):
        if s < w:
            eff_window.append(s)
            eff_shift.append(0)
        else:
            eff_window.append(w)
            eff_shift.append(w // 2 if shifted else 0)
    return tuple(eff_window), tuple(eff_shift)


class WindowAttention(nn.Module):
    """Window multi-head self-attention with a learned relative position bias (one table per block).

    The table has prod(2 w_i - 1) rows (one per relative offset in the configured window) and one column
    per head, laid out like the reference's (row-major over offsets), so its weights are interchangeable.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], qkv_bias: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = tuple(window_size)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros(math.prod(2 * w - 1 for w in self.window_size), num_heads))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self._index_cache: tuple | None = None  # not a buffer: derived, and not in the state dict

    def relative_position_index(self, window: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
        """(N, N) rows of the bias table for a window of size ``window`` (<= the configured one)."""
        coords = torch.stack(torch.meshgrid(*[torch.arange(w, device=device) for w in window], indexing="ij"))
        coords = coords.flatten(1)  # (d, N)
        relative = coords[:, :, None] - coords[:, None, :]  # (d, N, N), query minus key
        index = torch.zeros_like(relative[0])
        for axis, full in enumerate(self.window_size):
            index = index * (2 * full - 1) + relative[axis] + (full - 1)
        return index

    def relative_position_bias(self, window: Sequence[int]) -> torch.Tensor:
        n = math.prod(window)
        device = self.relative_position_bias_table.device
        # Inference-mode tensors cannot be saved for backward: never reuse one made under inference_mode
        # (Lightning validation) in a training step.
        key = (tuple(window), device, torch.is_inference_mode_enabled())
        if self._index_cache is None or self._index_cache[0] != key:  # keep the last one: same every call
            self._index_cache = (key, self.relative_position_index(window, device))
        index = self._index_cache[1]
        bias = self.relative_position_bias_table[index.reshape(-1)].reshape(n, n, self.num_heads)
        return bias.permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor, window: Sequence[int], mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, num_windows, N, C); mask: (num_windows, N, N) additive, or None."""
        b, nw, n, c = x.shape
        head_dim = c // self.num_heads
        # 4D (batch*windows, heads, N, head_dim) so that SDPA can use its fused kernels on GPU.
        qkv = self.qkv(x).reshape(b * nw, n, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias(window)  # (heads, N, N)
        if mask is None:
            bias = bias.unsqueeze(0)
        else:
            bias = bias + mask.unsqueeze(1)  # (nW, heads, N, N)
            if b > 1:
                bias = bias.expand(b, -1, -1, -1, -1).reshape(b * nw, self.num_heads, n, n)
        # Default scale head_dim ** -0.5 = the reference's qk_scale=None.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        out = out.transpose(1, 2).reshape(b, nw, n, c)
        return self.proj(out)


class SwinTransformerBlock(nn.Module):
    """Pre-norm Swin block on channels-last maps (B, *S, C): (shifted) window attention, then MLP."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int], shifted: bool = False,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shifted = shifted
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window_size, qkv_bias=qkv_bias)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), dropout_rate=0.0, act="GELU", dropout_mode="swin")
        self._mask_cache: tuple | None = None  # (key, mask) of the last call; sizes rarely change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = tuple(x.shape[1:-1])
        axes = tuple(range(1, len(sizes) + 1))
        window, shift = _effective_window(sizes, self.window_size, self.shifted)

        h = self.norm1(x)
        # Zero-pad each axis at its end to a multiple of the window (after the norm, as the reference).
        extra = [(-s) % w for s, w in zip(sizes, window)]
        if any(extra):
            pads = [0, 0]  # channels
            for e in reversed(extra):
                pads += [0, e]
            h = F.pad(h, pads)
        padded = tuple(h.shape[1:-1])

        mask = None
        if any(shift):
            h = torch.roll(h, shifts=tuple(-s for s in shift), dims=axes)
            key = (padded, window, shift, h.device, torch.is_inference_mode_enabled())
            if self._mask_cache is None or self._mask_cache[0] != key:
                self._mask_cache = (key, shifted_window_mask(padded, window, shift, device=h.device))
            mask = self._mask_cache[1]
        h = window_reverse(self.attn(window_partition(h, window), window, mask), window, padded)
        if any(shift):
            h = torch.roll(h, shifts=shift, dims=axes)
        if any(extra):
            h = h[(slice(None),) + tuple(slice(0, s) for s in sizes)]

        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Concatenate each 2^d neighbourhood (reference order), LayerNorm(2^d C), Linear(2^d C -> 2C, no bias).

    In 3D this is the reference's ``reduce_factor=pat_merg_rf=4`` (8C -> 2C); the 2D reference always
    maps 4C -> 2C.
    """

    # Offsets in the reference's concatenation order.
    OFFSETS = {
        2: ((0, 0), (1, 0), (0, 1), (1, 1)),
        3: ((0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)),
    }

    def __init__(self, spatial_dims: int, dim: int):
        super().__init__()
        self.offsets = self.OFFSETS[spatial_dims]
        self.norm = nn.LayerNorm(2 ** spatial_dims * dim)
        self.reduction = nn.Linear(2 ** spatial_dims * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[1:-1]
        if any(s % 2 for s in sizes):  # odd maps: zero-pad at the end, as the reference
            pads = [0, 0]
            for s in reversed(sizes):
                pads += [0, s % 2]
            x = F.pad(x, pads)
        parts = [x[(slice(None),) + tuple(slice(o, None, 2) for o in offset)] for offset in self.offsets]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinEncoder(nn.Module):
    """TransMorph's Swin Transformer: patch embedding, stages of Swin blocks with patch merging in between,
    and one LayerNorm per stage output. Returns the normed stage outputs as (B, C_i, *S_i), finest first.
    """

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_size: Sequence[int], patch_size: Sequence[int],
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_path_rate: float = 0.3):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.patch_embed = Conv[Conv.CONV, spatial_dims](in_channels, embed_dim, kernel_size=tuple(patch_size),
                                                         stride=tuple(patch_size))
        self.patch_norm = nn.LayerNorm(embed_dim)
        # Stochastic depth rises linearly over all blocks (reference rule).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        start = 0
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            dim = self.num_features[i]
            self.stages.append(nn.Sequential(*[
                SwinTransformerBlock(dim, heads, window_size, shifted=bool(j % 2), mlp_ratio=mlp_ratio,
                                     qkv_bias=qkv_bias, drop_path=rates[start + j])
                for j in range(depth)
            ]))
            start += depth
            self.norms.append(nn.LayerNorm(dim))
            if i < len(depths) - 1:
                self.downsamples.append(PatchMerging(spatial_dims, dim))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        x = self.patch_norm(x.movedim(1, -1))  # channels-last from here on
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            outs.append(self.norms[i](x).movedim(-1, 1).contiguous())
            if i < len(self.downsamples):
                x = self.downsamples[i](x)
        return outs


def _conv_in_lrelu(spatial_dims: int, in_channels: int, out_channels: int) -> Convolution:
    # Reference Conv{2,3}dReLU with use_batchnorm=False: conv 3 (no bias) -> InstanceNorm (no affine) -> LeakyReLU(0.01).
    return Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, norm="instance", act="leakyrelu",
                       adn_ordering="NA", bias=False)


class DecoderBlock(nn.Module):
    """Upsample x2 (bi/trilinear, align_corners=False) -> concat skip -> 2 x conv-IN-LeakyReLU."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, skip_channels: int = 0):
        super().__init__()
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.conv1 = _conv_in_lrelu(spatial_dims, in_channels + skip_channels, out_channels)
        self.conv2 = _conv_in_lrelu(spatial_dims, out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode=self.mode, align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip.to(x.dtype)], dim=1)
        return self.conv2(self.conv1(x))


class TransMorph(nn.Module):
    """TransMorph: Swin Transformer encoder + convolutional decoder predicting a dense displacement.

    ``forward(moving, fixed)``: inputs (B, 1, *spatial), concatenated as ``[moving, fixed]`` (the reference's
    ``model(torch.cat([moving, fixed], 1))``); returns (B, spatial_dims, *spatial) float32 in normalised
    units (align_corners=True), channel i along spatial dim i.

    Defaults are the official configuration (``get_3DTransMorph_config`` / 2D ``get_2DTransMorph_config``)
    with the FNOReg window img_size // 32: 31,005,506 params in 2D, 46,771,251 in 3D.

    Args:
        spatial_dims: 2 or 3.
        embed_dim: channels after patch embedding (C); stage i has C * 2**i channels. Must be even.
        depths, num_heads: Swin blocks and heads per stage; exactly 4 stages (the decoder is built for 4).
        window_size: attention window (int or one per axis); ``None`` = (5, 6) in 2D, (5, 6, 7) in 3D.
        patch_size: patch embedding size (int or per axis); the total stride is patch_size * 8.
        mlp_ratio, qkv_bias, drop_path_rate: Swin settings (reference: 4, False, 0.3).
        reg_head_channels: width of the last decoder block and of the full-resolution conv skip (16).
        conv_skip, trans_skip: the reference's ``if_convskip`` / ``if_transskip``.
        in_channels: 2 (moving and fixed).

    Sizes that are not multiples of the total stride (32 by default) are zero-padded at their end inside
    the network and the displacement is cropped back.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 4, 2),
        num_heads: Sequence[int] = (4, 4, 8, 8),
        window_size: int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path_rate: float = 0.3,
        reg_head_channels: int = 16,
        conv_skip: bool = True,
        trans_skip: bool = True,
        in_channels: int = 2,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        depths, num_heads = tuple(depths), tuple(num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"TransMorph's decoder needs exactly 4 stages, got depths={depths}, num_heads={num_heads}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (the decoder uses embed_dim // 2), got {embed_dim}")
        for i, heads in enumerate(num_heads):
            if (embed_dim * 2 ** i) % heads:
                raise ValueError(f"stage {i} width {embed_dim * 2 ** i} is not divisible by num_heads[{i}]={heads}")
        window = TRANSMORPH_WINDOW[spatial_dims] if window_size is None else window_size
        self.window_size = _tuple(window, spatial_dims, "window_size")
        self.patch_size = _tuple(patch_size, spatial_dims, "patch_size")
        self.spatial_dims = spatial_dims
        self.conv_skip = conv_skip
        self.trans_skip = trans_skip
        # Patch embedding then three 2x patch mergings; padding to a common multiple keeps every
        # decoder concatenation aligned.
        self.size_multiples = tuple(p * 2 ** (len(depths) - 1) for p in self.patch_size)
        self.size_multiple = math.lcm(*self.size_multiples)

        c = embed_dim
        self.encoder = SwinEncoder(spatial_dims, in_channels, c, depths, num_heads, self.window_size,
                                   self.patch_size, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                   drop_path_rate=drop_path_rate)
        t = trans_skip
        self.up0 = DecoderBlock(spatial_dims, 8 * c, 4 * c, 4 * c if t else 0)
        self.up1 = DecoderBlock(spatial_dims, 4 * c, 2 * c, 2 * c if t else 0)
        self.up2 = DecoderBlock(spatial_dims, 2 * c, c, c if t else 0)
        self.up3 = DecoderBlock(spatial_dims, c, c // 2, c // 2 if conv_skip else 0)
        self.up4 = DecoderBlock(spatial_dims, c // 2, reg_head_channels, reg_head_channels if conv_skip else 0)
        if conv_skip:
            self.avg_pool = Pool[Pool.AVG, spatial_dims](kernel_size=3, stride=2, padding=1)
            self.c1 = _conv_in_lrelu(spatial_dims, in_channels, c // 2)
            self.c2 = _conv_in_lrelu(spatial_dims, in_channels, reg_head_channels)
        self.reg_head = Conv[Conv.CONV, spatial_dims](reg_head_channels, spatial_dims, kernel_size=3, padding=1)
        init_small_output(self.reg_head)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        if len(set(self.size_multiples)) == 1:
            return pad_to_multiple(x, self.size_multiples[0])
        spatial = x.shape[2:]
        crop = (slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)
        pads: list[int] = []
        for n, m in zip(reversed(spatial), reversed(self.size_multiples)):
            pads += [0, (-n) % m]
        return F.pad(x, pads), crop

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        if moving.ndim != self.spatial_dims + 2 or moving.shape != fixed.shape:
            raise ValueError(f"expected moving and fixed of equal shape (B, 1, *{self.spatial_dims} sizes), "
                             f"got {tuple(moving.shape)} and {tuple(fixed.shape)}")
        x = torch.cat([moving, fixed], dim=1)
        spatial = tuple(x.shape[2:])
        x, crop = self._pad(x)

        if self.conv_skip:
            f4 = self.c1(self.avg_pool(x))  # 1/2 resolution
            f5 = self.c2(x)  # full resolution
        else:
            f4 = f5 = None
        feats = self.encoder(x)  # 1/4, 1/8, 1/16, 1/32
        f1, f2, f3 = (feats[2], feats[1], feats[0]) if self.trans_skip else (None, None, None)
        h = self.up0(feats[3], f1)
        h = self.up1(h, f2)
        h = self.up2(h, f3)
        h = self.up3(h, f4)
        h = self.up4(h, f5)
        flow_voxels = self.reg_head(h)[crop]
        return voxels_to_normalised(flow_voxels, spatial)
