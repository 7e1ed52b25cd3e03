"""ASDA (Wang et al., Interspeech 2025): a differential-attention ViT on log-mel patches, pre-trained on
AudioSet EAT/data2vec-2.0 style (EMA teacher, 16 masked students, CNN decoder), fine-tuned with a linear head.

Plain nn.Modules (no Lightning): ``SpectrogramFrontEnd`` (waveform -> normalised Kaldi fbank),
``ASDAEncoder`` (patch embed + fixed sin-cos positions + CLS + post-norm differential-attention blocks),
``CNNDecoder2d``, ``ASDAPretrainingModel`` (student, decoder and EMA teacher; forward returns the losses) and
``ASDAClassifier`` (encoder + LayerNorm + linear head, SpecAugment and roll augmentation while training).
The Lightning side is ``tasks.ssl_pretraining.SelfDistillationPretraining`` and
``tasks.classification.ClassificationTask``. Layouts and sizes: shared/specs/asda_differential_attention.md.
"""
from __future__ import annotations

import copy
import os
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.blocks.kaldi_fbank import KaldiFbank
from lightning_modules.blocks.vit import PatchEmbed, PostNormBlock, sincos_pos_embed
from lightning_modules.losses.ssl_distillation import frame_loss, layer_averaged_targets, utterance_loss

#: (mean, std) of the fbank per dataset, as the official code normalises: (x - mean) / (2 std).
FBANK_STATS = {"audioset": (-4.268, 4.569), "esc50": (-6.627, 5.359), "speech_commands": (-6.846, 5.565)}


class SpectrogramFrontEnd(nn.Module):
    """(B, samples) 16 kHz waveforms -> (B, 1, target_length, num_mel_bins) normalised log-mel fbank.

    Mean removal, Kaldi fbank (25 ms Hann window every 10 ms, 128 mel bins), zero-padding or cropping to
    ``target_length`` frames, then ``(x - norm_mean) / (2 norm_std)`` (AudioSet 1024 frames, ESC-50 512,
    Speech Commands 128; statistics in FBANK_STATS). Runs in float32, on the batch, on the model's device.
    """

    def __init__(self, sample_rate: int = 16000, num_mel_bins: int = 128, target_length: int = 1024,
                 norm_mean: float = -4.268, norm_std: float = 4.569, window_type: str = "hanning"):
        super().__init__()
        self.fbank = KaldiFbank(sample_rate, num_mel_bins, window_type=window_type)
        self.num_mel_bins, self.target_length = num_mel_bins, target_length
        self.norm_mean, self.norm_std = norm_mean, norm_std

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        waveform = waveform.float()
        fbank = self.fbank(waveform - waveform.mean(dim=-1, keepdim=True))
        missing = self.target_length - fbank.shape[1]
        fbank = F.pad(fbank, (0, 0, 0, missing)) if missing > 0 else fbank[:, : self.target_length]
        return ((fbank - self.norm_mean) / (2 * self.norm_std))[:, None]


class ASDAEncoder(nn.Module):
    """The (differential-attention) ViT encoder. ViT-B as in the paper: D 768, 12 blocks, 8 heads, MLP 3.5.

    ``embed`` turns a (B, 1, T, F) fbank into (B, L, D) patch tokens with positions; ``forward`` runs the
    blocks on the tokens kept by ``keep_index`` (all when None) with the CLS token inserted, and returns
    the final tokens and each block's FFN output (the teacher targets), CLS included at ``cls_index``.

    Args:
        target_length, num_mel_bins, patch_size: the input grid ((T/16) x (F/16) patches: AudioSet 64 x 8).
        pos_embed: fixed sin-cos code of the flattened patch index ("1d", the paper's words) or of the
            (time, frequency) patch position ("2d", the official code).
        differential, lambda_init, learnable_lambda, head_norm, out_scale: see DifferentialAttention
            (lambda_init 0 or differential=False: the ViT/EAT ablation of Table 3).
        cls_position: "head" (paper) or "middle" (Table 2's middle CLS token).
        drop_path: stochastic depth, rising linearly to this rate over the blocks (fine-tuning: 0.1).
    """

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 8, mlp_ratio: float = 3.5,
                 patch_size: int = 16, target_length: int = 1024, num_mel_bins: int = 128,
                 pos_embed: Literal["1d", "2d"] = "1d", differential: bool = True, lambda_init: Optional[float] = 0.3,
                 learnable_lambda: bool = False, head_norm: str = "per_head", out_scale: Optional[float] = 0.95,
                 cls_position: Literal["head", "middle"] = "head", drop_path: float = 0.0, drop: float = 0.0,
                 attn_drop: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.embed_dim, self.depth = embed_dim, depth
        self.patch_embed = PatchEmbed(patch_size, 1, embed_dim)
        self.grid = self.patch_embed.grid(target_length, num_mel_bins)
        self.register_buffer("pos_embed", sincos_pos_embed(embed_dim, self.grid, pos_embed)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_position = cls_position
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)  # post-norm net: the embeddings are normalised
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            PostNormBlock(embed_dim, num_heads, mlp_ratio, differential=differential, lambda_init=lambda_init,
                          learnable_lambda=learnable_lambda, layer_index=i + 1, head_norm=head_norm,
                          out_scale=out_scale, drop=drop, attn_drop=attn_drop, drop_path=rates[i], norm_eps=norm_eps)
            for i in range(depth)])
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(fbank)
        return self.norm(tokens + self.pos_embed[:, : tokens.shape[1]])

    def cls_index(self, num_tokens: int) -> int:
        return 0 if self.cls_position == "head" else num_tokens // 2

    def forward(self, tokens: torch.Tensor, keep_index: Optional[torch.Tensor] = None):
        """tokens (B, L, D) from ``embed``; keep_index (B, K) sorted indices of the visible tokens.

        Returns ``(x, layer_outputs)``: (B, K+1, D) and a list of the blocks' (B, K+1, D) FFN outputs.
        """
        if keep_index is not None:
            tokens = torch.gather(tokens, 1, keep_index[..., None].expand(-1, -1, tokens.shape[-1]))
        at = self.cls_index(tokens.shape[1])
        cls = self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        x = torch.cat([tokens[:, :at], cls, tokens[:, at:]], dim=1)
        layer_outputs = []
        for block in self.blocks:
            x, ffn_out = block(x)
            layer_outputs.append(ffn_out)
        return x, layer_outputs

    def split_cls(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K+1, D) -> CLS (B, D), patch tokens (B, K, D)."""
        at = self.cls_index(x.shape[1] - 1)
        return x[:, at], torch.cat([x[:, :at], x[:, at + 1:]], dim=1)


def num_visible(length: int, mask_prob: float) -> int:
    return max(1, int(length * (1.0 - mask_prob)))


def inverse_block_mask(batch: int, grid: tuple[int, int], mask_prob: float = 0.8, mask_length: int = 5,
                       mask_prob_adjust: float = 0.07, device=None, generator: Optional[torch.Generator] = None):
    """data2vec 2.0 ``compute_block_mask_2d(inverse_mask=True, require_same_masks=True)``, vectorised.

    Blocks of mask_length x mask_length patches (clipped at the edges) around
    ``int(L (1 - mask_prob + mask_prob_adjust) / mask_length^2)`` random centres are the *visible*
    patches; each clip then keeps exactly ``int(L (1 - mask_prob))`` of them (random ones dropped from
    the blocks if too many, random others added if too few). Returns a (B, L) bool mask, True = masked.
    """
    rows, cols = grid
    length = rows * cols
    keep_prob = 1.0 - mask_prob
    keep = torch.zeros(batch, length, device=device)
    num_centres = int(length * (keep_prob + mask_prob_adjust) / mask_length ** 2)
    if num_centres > 0:
        centres = torch.randint(0, length, (batch, num_centres), device=device, generator=generator)
        offsets = torch.arange(mask_length, device=device) - mask_length // 2
        ys = (centres // cols)[..., None, None] + offsets[:, None]
        xs = (centres % cols)[..., None, None] + offsets[None, :]
        index = ys.clamp(0, rows - 1) * cols + xs.clamp(0, cols - 1)
        keep.scatter_(1, index.reshape(batch, -1), 1.0)
    num_keep = num_visible(length, mask_prob)
    score = keep + torch.rand(batch, length, device=device, generator=generator)  # block members first
    kept = score.topk(num_keep, dim=1).indices
    return torch.ones(batch, length, dtype=torch.bool, device=device).scatter_(1, kept, False)


class CNNDecoder2d(nn.Module):
    """data2vec 2.0 / EAT Decoder2d: the full patch grid (masked slots already filled) through
    ``layers`` x [Conv2d(k, groups) -> LayerNorm (no affine) -> GELU] with residuals, then Linear(D, D)."""

    def __init__(self, dim: int = 768, grid: tuple[int, int] = (64, 8), layers: int = 6, groups: int = 16,
                 kernel_size: int = 3):
        super().__init__()
        self.grid = tuple(grid)
        self.convs = nn.ModuleList(
            [nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups) for _ in range(layers)])
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        x = tokens.transpose(1, 2).reshape(b, d, *self.grid)
        for conv in self.convs:
            y = F.layer_norm(conv(x).permute(0, 2, 3, 1), (d,)).permute(0, 3, 1, 2)
            x = x + F.gelu(y)
        return self.proj(x.flatten(2).transpose(1, 2))


class ASDAPretrainingModel(nn.Module):
    """Student encoder + CNN decoder + EMA teacher; ``forward(waveform)`` returns the losses.

    The teacher (a copy of the student, updated only by ``update_teacher``) embeds the full clip; its
    12 blocks' FFN outputs give the targets Y (instance norm per layer, averaged, LayerNorm). Each clip
    is cloned ``clone_batch`` times with different inverse block masks (the "16 students"); the student
    encodes only the visible ~20 % of patches (+ CLS), the decoder fills the masked slots with
    N(0, mask_noise_std) and predicts Y there. Loss = utterance_weight * L_utt + L_frame (paper eq. 4-6,
    normalised as the official code, see losses/ssl_distillation.py).
    """

    def __init__(self, encoder: ASDAEncoder, frontend: Optional[SpectrogramFrontEnd] = None, decoder_layers: int = 6,
                 decoder_groups: int = 16, decoder_kernel_size: int = 3, clone_batch: int = 16, mask_prob: float = 0.8,
                 mask_length: int = 5, mask_prob_adjust: float = 0.07, mask_noise_std: float = 0.01,
                 utterance_weight: float = 0.5):
        super().__init__()
        self.frontend = frontend if frontend is not None else SpectrogramFrontEnd()
        self.student = encoder
        self.decoder = CNNDecoder2d(encoder.embed_dim, encoder.grid, decoder_layers, decoder_groups, decoder_kernel_size)
        self.teacher = copy.deepcopy(encoder).requires_grad_(False)
        self.clone_batch, self.mask_prob, self.mask_length = clone_batch, mask_prob, mask_length
        self.mask_prob_adjust, self.mask_noise_std = mask_prob_adjust, mask_noise_std
        self.utterance_weight = utterance_weight

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never drops paths or units
        return self

    @torch.no_grad()
    def targets(self, fbank: torch.Tensor) -> torch.Tensor:
        x, layer_outputs = self.teacher(self.teacher.embed(fbank))
        patches = [self.teacher.split_cls(out)[1] for out in layer_outputs]
        return layer_averaged_targets(patches)

    def forward(self, waveform: torch.Tensor) -> dict[str, torch.Tensor]:
        fbank = self.frontend(waveform)
        targets = self.targets(fbank)  # (B, L, D)
        tokens = self.student.embed(fbank).repeat_interleave(self.clone_batch, dim=0)
        targets = targets.repeat_interleave(self.clone_batch, dim=0)
        students, length, dim = tokens.shape
        mask = inverse_block_mask(students, self.student.grid, self.mask_prob, self.mask_length,
                                  self.mask_prob_adjust, device=tokens.device)
        num_keep = num_visible(length, self.mask_prob)  # the same for every clip: no host sync needed
        keep_index = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :num_keep]
        x, _ = self.student(tokens, keep_index)
        cls, visible = self.student.split_cls(x)
        filled = torch.randn(students, length, dim, device=x.device, dtype=visible.dtype) * self.mask_noise_std
        filled = filled.scatter(1, keep_index[..., None].expand(-1, -1, dim), visible)
        prediction = self.decoder(filled)
        out = {"frame_loss": frame_loss(prediction, targets, mask),
               "utterance_loss": utterance_loss(cls, targets)}
        out["loss"] = self.utterance_weight * out["utterance_loss"] + out["frame_loss"]
        out["target_std"] = targets.detach().float().std(dim=1).mean()
        return out

    @torch.no_grad()
    def figure(self, waveform: torch.Tensor):
        """The first clip's fbank and one student's visible patches (the masking the student sees)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fbank = self.frontend(waveform[:1].float())[0, 0].cpu()
        mask = inverse_block_mask(1, self.student.grid, self.mask_prob, self.mask_length, self.mask_prob_adjust)[0]
        patch = self.student.patch_embed.patch_size
        visible = (~mask).view(*self.student.grid).float().repeat_interleave(patch, 0).repeat_interleave(patch, 1)
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        axes[0].imshow(fbank.T, origin="lower", aspect="auto", cmap="magma")
        axes[0].set_title("log-mel fbank (normalised)")
        shown = fbank[: visible.shape[0], : visible.shape[1]].clone()
        shown[visible == 0] = float("nan")  # masked patches blank
        axes[1].imshow(shown.T, origin="lower", aspect="auto", cmap="magma")
        axes[1].set_title(f"one student's visible patches ({int((~mask).sum())} of {mask.numel()})")
        for ax in axes:
            ax.set_xlabel("frame")
            ax.set_ylabel("mel bin")
        figure.tight_layout()
        return figure

    @torch.no_grad()
    def update_teacher(self, decay: float) -> None:
        """teacher <- decay * teacher + (1 - decay) * student, over every parameter (the whole encoder)."""
        student = [p.detach() for p in self.student.parameters()]
        teacher = list(self.teacher.parameters())
        torch._foreach_lerp_(teacher, [s.to(t.dtype) for s, t in zip(student, teacher)], 1.0 - decay)

    def parameter_layer_id(self, name: str) -> int:
        return 0


def spec_augment(fbank: torch.Tensor, freq_ratio: float, time_ratio: float) -> torch.Tensor:
    """One frequency and one time mask per clip (torchaudio Frequency/TimeMasking semantics: width uniform
    in [0, ratio * size), random start), set to 0 = the normalised mean. (B, 1, T, F) on any device."""
    b, _, frames, bins = fbank.shape
    keep = torch.ones(b, frames, bins, dtype=torch.bool, device=fbank.device)
    for axis, size, ratio in ((2, bins, freq_ratio), (1, frames, time_ratio)):
        if ratio <= 0:
            continue
        width = (torch.rand(b, device=fbank.device) * int(ratio * size)).floor()
        start = (torch.rand(b, device=fbank.device) * (size - width)).floor()
        position = torch.arange(size, device=fbank.device)
        hit = (position >= start[:, None]) & (position < (start + width)[:, None])  # (B, size)
        keep &= ~(hit[:, None, :] if axis == 2 else hit[:, :, None])
    return fbank * keep[:, None]


def roll_and_gain(waveform: torch.Tensor) -> torch.Tensor:
    """The official code's roll_aug: a random circular shift and a gain ~ Beta(10, 10) + 0.5 per clip."""
    b, n = waveform.shape
    shift = torch.randint(0, n, (b, 1), device=waveform.device)
    index = (torch.arange(n, device=waveform.device) - shift) % n
    gain = torch.distributions.Beta(10.0, 10.0).sample((b, 1)).to(waveform.device) + 0.5
    return torch.gather(waveform, 1, index) * gain


class ASDAClassifier(nn.Module):
    """Fine-tuning network: front end -> encoder (all patches) -> CLS (or mean of patches) -> LN -> Linear.

    Args:
        encoder, frontend: as in pre-training (the front end holds this dataset's target length and stats).
        num_classes: 527 (AudioSet), 35 (Speech Commands V2), 50 (ESC-50).
        pooling: "cls" (paper) or "mean" (Table 2's mean pooling).
        specaug_freq_ratio, specaug_time_ratio: SpecAugment mask widths while training (the paper's
            "masking ratio 0.2"; ESC-50 0.4 in the code).
        roll_aug: random circular shift and gain of the waveform while training.
        fbank_noise: add U(0, 1) * U(0, 0.1) noise to the fbank while training (the code's SPC-2 noise).
        pretrained: a pre-training checkpoint (Lightning .ckpt of SelfDistillationPretraining or a state
            dict): its ``pretrained_part`` ("student" or "teacher") encoder initialises this encoder.
    """

    def __init__(self, encoder: ASDAEncoder, num_classes: int, frontend: Optional[SpectrogramFrontEnd] = None,
                 pooling: Literal["cls", "mean"] = "cls", specaug_freq_ratio: float = 0.2,
                 specaug_time_ratio: float = 0.2, roll_aug: bool = True, fbank_noise: bool = False,
                 pretrained: Optional[str] = None, pretrained_part: Literal["student", "teacher"] = "student"):
        super().__init__()
        self.frontend = frontend if frontend is not None else SpectrogramFrontEnd()
        self.encoder = encoder
        self.pooling = pooling
        self.head_norm = nn.LayerNorm(encoder.embed_dim)
        self.head = nn.Linear(encoder.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        self.specaug_freq_ratio, self.specaug_time_ratio = specaug_freq_ratio, specaug_time_ratio
        self.roll_aug, self.fbank_noise = roll_aug, fbank_noise
        if pretrained and self.head.weight.device.type != "meta":  # meta: counting parameters, no weights
            self.load_pretrained(pretrained, pretrained_part)

    def load_pretrained(self, path: str, part: str = "student") -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"pre-training checkpoint not found: {path}. Pre-train first (experiments/asda/pretrain_as2m.yaml "
                "--run_id pretrained writes runs/asda_pretrain_as2m/pretrained/checkpoints/last.ckpt), or pass "
                "--model.network.init_args.pretrained PATH ('': from scratch).")
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        prefix = next((p for p in (f"network.{part}.", f"{part}.") if any(k.startswith(p) for k in state)), None)
        if prefix is None:
            raise KeyError(f"{path} holds no '{part}' encoder weights")
        encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        self.encoder.load_state_dict(encoder_state)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if self.training and self.roll_aug:
            waveform = roll_and_gain(waveform)
        fbank = self.frontend(waveform)
        if self.training:
            fbank = spec_augment(fbank, self.specaug_freq_ratio, self.specaug_time_ratio)
            if self.fbank_noise:
                fbank = fbank + torch.rand_like(fbank) * torch.rand(fbank.shape[0], 1, 1, 1, device=fbank.device) / 10
        x, _ = self.encoder(self.encoder.embed(fbank))
        cls, patches = self.encoder.split_cls(x)
        pooled = cls if self.pooling == "cls" else patches.mean(dim=1)
        return self.head(self.head_norm(pooled))

    # layer-wise learning-rate decay: embeddings 0, block i -> i + 1, head depth + 1
    @property
    def num_layers(self) -> int:
        return self.encoder.depth + 1

    def parameter_layer_id(self, name: str) -> int:
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith("encoder."):
            return 0
        return self.num_layers

