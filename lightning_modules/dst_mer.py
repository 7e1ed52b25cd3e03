"""DST (ICPR 2024, "Micro-expression Recognition Based on Dual-Stream Spatiotemporal Transformer"): a dual-stream
spatial attention transformer (DSSAT) over motion-magnified frames (MI) and long-term optical-flow images (OF),
followed by a temporal transformer (TT), built on Former-DFER (Zhao & Liu 2021).

Input: a clip ``video`` (B, T, 6, H, W), T = 17 frames around the apex; channels 0-2 the magnified RGB frame,
3-5 the flow w.r.t. the clip's first frame as (u, v, magnitude) (``datamodules/micro_expression.py``).

- ``DST`` (the network, Fig. 1): per frame and stream a ResNet-18 stem (``conv1``/``bn1``/``maxpool``,
  ``layer1``-``layer3``, torchvision's layout: C = 256, 7 x 7 tokens at 112 px) plus a learnable position embedding
  (Eq. 1-2); ``n_spatial_encoders`` dual-stream encoders (Eq. 3-7: each stream's attention map from its own Q/K,
  applied to the *other* stream's values, the other stream's tokens as residual (``cross_residual``, as Eq. 4 is
  written), pre-LN MLP (Eq. 5)); a per-token FC fuses the two streams (Eq. 8, 2C -> C); ``g`` = ResNet-18
  ``layer4`` and global average pooling give one 512-d vector per frame (Eq. 9). The TT (Eq. 10-14): a class
  token, learnable position embedding, ``tt_depth`` pre-LN self-attention encoders, the class token classified.
  ``use_tt: false``: GAP over frames + FC (the "DSSAT" ablation rows). ``streams: [mi]`` or ``[of]``: the
  single-stream Former-DFER-style baseline (the same encoder with self-attention on one stream).
- ``DSTTask``: ``ClassificationTask`` (cross-entropy; UF1 = ``test/macro_f1``, UAR = ``test/balanced_acc``,
  Acc = ``test/acc``) that writes every test clip's prediction to ``<run>/predictions.csv`` and, with
  ``select_best: false`` (the paper: a fixed 100 epochs per LOSO fold), tests the last epoch's weights.
- ``pooled_loso``: the study hook that pools the predictions of all LOSO folds of an entry and scores them once
  (UF1, UAR, Acc: the MEGC convention the paper's tables follow).
- ``lbp_top_features``: the handcrafted LBP-TOP baseline's descriptor (``benchmarks/dst_mer_lbptop.py`` runs it with
  a linear SVM over the same LOSO folds).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.backbones import build_trunk
from lightning_modules.batch import GROUP, NAME, VIDEO
from lightning_modules.tasks.classification import ClassificationTask

STREAMS = ("mi", "of")
#: the channels of each stream in the 6-channel clip.
STREAM_CHANNELS = {"mi": slice(0, 3), "of": slice(3, 6)}


# ------------------------------------------------------------------------------------------------ CNN parts
class ResNetStem(nn.Module):
    """ResNet-18 up to ``layer3`` (the paper's "four convolutional blocks"; Former-DFER's stem), keys as
    torchvision's ``resnet18`` (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight`` ...)."""

    def __init__(self, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        trunk, _ = build_trunk("resnet18", in_channels, width)
        self.conv1, self.bn1, self.act, self.maxpool = trunk.conv1, trunk.bn1, trunk.act, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.out_channels = trunk.layer3[-1].conv2.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        return self.layer3(self.layer2(self.layer1(x)))


def resnet18_layer4(width: float = 1.0) -> nn.Module:
    """ResNet-18's ``layer4`` (256 -> 512, stride 2): the paper's g(.) in Eq. 9 (Former-DFER's)."""
    trunk, _ = build_trunk("resnet18", 3, width)
    return trunk.layer4


class FeedForward(nn.Sequential):
    """Linear(dim, hidden) - GELU - Dropout - Linear(hidden, dim) - Dropout (Former-DFER's / ViT's MLP)."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                         nn.Dropout(dropout))


# ------------------------------------------------------------------------------------------------ attention
class DualStreamAttention(nn.Module):
    """Eq. 3, 6, 7: per stream s, Q_s, K_s, V_s = LN(z_s) W_{Q,s}, W_{K,s}, W_{V,s} (no bias, ``heads`` heads of
    ``dim / heads``); stream s's output is softmax(Q_s K_s^T / sqrt(C')) V_other, then a per-stream output
    projection. With one stream, other = itself: plain multi-head self-attention."""

    def __init__(self, dim: int, heads: int, num_streams: int = 2, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads, self.num_streams = heads, num_streams
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_streams))
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim, bias=False) for _ in range(num_streams))
        self.proj = nn.ModuleList(nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout)) for _ in range(num_streams))

    def forward(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        qkv = []
        for s, z in enumerate(streams):
            B, N, C = z.shape
            q, k, v = self.qkv[s](self.norms[s](z)).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            qkv.append((q, k, v))
        out = []
        for s in range(self.num_streams):
            q, k, _ = qkv[s]
            v = qkv[(s + 1) % self.num_streams][2]  # the other stream's values (itself with one stream)
            y = F.scaled_dot_product_attention(q, k, v)  # softmax(Q K^T / sqrt(C')) V
            B, H, N, D = y.shape
            out.append(self.proj[s](y.transpose(1, 2).reshape(B, N, H * D)))
        return out


class DualStreamEncoder(nn.Module):
    """One spatial encoder (Eq. 4-5): z^_s = attention_s + z_other (``cross_residual``, as Eq. 4 is written) or
    + z_s; z_s = MLP_s(LN(z^_s)) + z^_s."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, num_streams: int = 2, dropout: float = 0.0,
                 cross_residual: bool = True):
        super().__init__()
        self.attention = DualStreamAttention(dim, heads, num_streams, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_streams))
        self.mlps = nn.ModuleList(FeedForward(dim, mlp_dim, dropout) for _ in range(num_streams))
        self.cross_residual = cross_residual

    def forward(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        n = len(streams)
        attended = self.attention(streams)
        residual = [streams[(s + 1) % n] for s in range(n)] if self.cross_residual else list(streams)
        hidden = [a + r for a, r in zip(attended, residual)]
        return [h + mlp(norm(h)) for h, mlp, norm in zip(hidden, self.mlps, self.norms)]


class TransformerEncoder(nn.Module):
    """``depth`` pre-LN self-attention encoders (Eq. 13-14): the temporal transformer's body."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(DualStreamEncoder(dim, heads, mlp_dim, num_streams=1, dropout=dropout,
                                                      cross_residual=False) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer([x])[0]
        return x


# ------------------------------------------------------------------------------------------------ the network
class DST(nn.Module):
    """Dual-stream spatiotemporal transformer (card "Model"; sizes the paper omits from Former-DFER).

    Args:
        num_classes: 5 (CASME II), 8 (SAMM), 3 (SMIC-HS, MEGC 2019 composite).
        num_frames: T = 17.
        img_size: input side (112; a multiple of 16: the stem gives img_size/16 tokens per side).
        streams: ``[mi, of]`` (DST) or one of them (the single-stream baseline).
        width: ResNet-18 width multiplier (1: C = 256 tokens, 512-d frame features; the CPU stand-in uses 0.25).
        n_spatial_encoders: N (3).
        spatial_heads, spatial_mlp_dim: S = 8 heads, MLP 512 (FD, at width 1; scaled with ``width`` if None).
        cross_residual: Eq. 4's residual from the other stream (True) or the same stream.
        use_tt: the temporal transformer (True) or GAP over frames + FC.
        tt_depth, tt_heads, tt_mlp_dim: 3 encoders, 8 heads, MLP 1024 (FD; MLP scaled with ``width`` if None).
        dropout: attention-output and MLP dropout (0).
        pretrained: a checkpoint (Lightning ``.ckpt`` of a DST task, e.g. the DFEW pre-training, or a state dict
            of this network) whose matching weights are loaded; the classifier is skipped when its class count
            differs. A torchvision ``resnet18`` state dict initialises both stems and ``layer4`` instead.
    """

    def __init__(self, num_classes: int = 5, num_frames: int = 17, img_size: int = 112,
                 streams: Sequence[str] = STREAMS, width: float = 1.0, n_spatial_encoders: int = 3,
                 spatial_heads: int = 8, spatial_mlp_dim: Optional[int] = None, cross_residual: bool = True,
                 use_tt: bool = True, tt_depth: int = 3, tt_heads: int = 8, tt_mlp_dim: Optional[int] = None,
                 dropout: float = 0.0, pretrained: Optional[str] = None):
        super().__init__()
        streams = [str(s).lower() for s in streams]
        if not streams or len(streams) > 2 or len(set(streams)) != len(streams) or set(streams) - set(STREAMS):
            raise ValueError(f"streams must be [mi, of], [mi] or [of], got {streams}")
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16 (the stem's stride), got {img_size}")
        if n_spatial_encoders < 1:
            raise ValueError(f"n_spatial_encoders must be >= 1, got {n_spatial_encoders}")
        self.streams, self.num_frames, self.use_tt = streams, num_frames, use_tt
        self.stems = nn.ModuleDict({s: ResNetStem(3, width) for s in streams})
        dim = self.stems[streams[0]].out_channels
        tokens = (img_size // 16) ** 2
        self.pos_embedding = nn.ParameterDict({s: nn.Parameter(torch.randn(1, tokens, dim) * 0.02) for s in streams})
        mlp = spatial_mlp_dim or max(1, int(round(512 * width)))
        self.encoders = nn.ModuleList(DualStreamEncoder(dim, spatial_heads, mlp, len(streams), dropout, cross_residual)
                                      for _ in range(n_spatial_encoders))
        self.fusion = nn.Linear(len(streams) * dim, dim) if len(streams) > 1 else nn.Identity()  # Eq. 8
        self.layer4 = resnet18_layer4(width)  # g(.) of Eq. 9
        feature_dim = self.layer4[-1].conv2.out_channels
        self.feature_dim = feature_dim
        if use_tt:
            self.cls_token = nn.Parameter(torch.randn(1, 1, feature_dim) * 0.02)
            self.temporal_pos = nn.Parameter(torch.randn(1, num_frames + 1, feature_dim) * 0.02)
            self.temporal = TransformerEncoder(feature_dim, tt_depth, tt_heads,
                                               tt_mlp_dim or max(1, int(round(1024 * width))), dropout)
            self.norm = nn.LayerNorm(feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        if pretrained:
            load_dst_weights(self, pretrained)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 6, H, W) -> (B, T, feature_dim): DSSAT, fusion and g + GAP for every frame (Eq. 1-9)."""
        B, T = video.shape[:2]
        frames = video.flatten(0, 1)
        tokens = []
        for s in self.streams:
            maps = self.stems[s](frames[:, STREAM_CHANNELS[s]])
            tokens.append(maps.flatten(2).transpose(1, 2) + self.pos_embedding[s])  # (BT, D, C)
        side = maps.shape[-1]
        for encoder in self.encoders:
            tokens = encoder(tokens)
        fused = self.fusion(torch.cat(tokens, dim=-1))  # (BT, D, C)
        feature_map = fused.transpose(1, 2).reshape(B * T, -1, side, side)
        return self.layer4(feature_map).mean((2, 3)).reshape(B, T, -1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[2] != 6:
            raise ValueError(f"DST expects a clip (B, T, 6, H, W) (MI + OF channels), got {tuple(video.shape)}")
        x = self.frame_features(video)
        if not self.use_tt:
            return self.head(x.mean(1))
        if x.shape[1] != self.num_frames:
            raise ValueError(f"the temporal transformer is built for {self.num_frames} frames, got {x.shape[1]}")
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.temporal_pos
        return self.head(self.norm(self.temporal(x))[:, 0])


def load_dst_weights(network: DST, path: str | os.PathLike) -> dict[str, list[str]]:
    """Load what matches from ``path`` (a task checkpoint, a DST state dict, or torchvision's ``resnet18`` weights
    into both stems and ``layer4``); returns {"loaded": [...], "skipped": [...]}."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    state = state.get("state_dict", state)
    state = {k.removeprefix("network."): v for k, v in state.items()}
    if "conv1.weight" in state:  # torchvision resnet18
        mapped = {}
        for key, value in state.items():
            if key.startswith("layer4."):
                mapped[key] = value
            elif key.startswith("fc."):
                mapped[key] = value  # the ImageNet classifier: reported as skipped
            else:
                for s in network.streams:
                    mapped[f"stems.{s}.{key}"] = value
        state = mapped
    own = network.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    network.load_state_dict(loadable, strict=False)
    return {"loaded": sorted(loadable), "skipped": sorted(set(state) - set(loadable))}


# ------------------------------------------------------------------------------------------------ the task
class DSTTask(ClassificationTask):
    """Classification of ``video`` clips with the paper's protocol: the last epoch's weights are tested
    (``select_best: false``; the paper trains a fixed 100 epochs per LOSO fold, without a validation split), and
    every test clip's prediction goes to ``<run>/predictions.csv`` (name, group = subject, target, prediction,
    class probabilities) for ``pooled_loso``. Other arguments: ``ClassificationTask``'s."""

    def __init__(self, network: nn.Module, num_classes: int = 5, select_best: bool = False, input_key: str = VIDEO,
                 **kwargs):
        super().__init__(network, num_classes, input_key=input_key, **kwargs)
        self.save_config_hyperparameters()
        self.select_best = select_best
        if not select_best:
            self.monitor = None  # run.py's checkpoint then keeps the latest epoch as best.ckpt
        self._predictions: list[dict] = []
        self._last_logits: Optional[torch.Tensor] = None

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        logits, features = super().logits_and_features(x)
        self._last_logits = logits  # test_step's logits, reused for the predictions file
        return logits, features

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._predictions = []

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().test_step(batch, batch_idx, dataloader_idx)
        if dataloader_idx != 0:
            return
        probs = self._scores(self._last_logits).detach().float().cpu()
        names = batch.get(NAME) or [str(i) for i in range(len(probs))]
        groups = batch.get(GROUP)
        for i, p in enumerate(probs):
            self._predictions.append({"name": names[i], "group": "" if groups is None else int(groups[i]),
                                      "target": int(batch[self.target_key][i]), "pred": int(p.argmax()),
                                      **{f"p{c}": f"{float(v):.6f}" for c, v in enumerate(p)}})

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self._trainer is None or not self._predictions:
            return
        rank = self.trainer.global_rank
        name = "predictions.csv" if self.trainer.world_size == 1 else f"predictions_rank{rank}.csv"
        os.makedirs(self.trainer.default_root_dir, exist_ok=True)
        write_predictions(Path(self.trainer.default_root_dir) / name, self._predictions)
        self._predictions = []


def write_predictions(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_predictions(run_dir: str | os.PathLike) -> tuple[list[int], list[int], int]:
    """(targets, predictions, number of classes) of one run's ``predictions*.csv``."""
    targets, preds, classes = [], [], 0
    for path in sorted(Path(run_dir).glob("predictions*.csv")):
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                targets.append(int(row["target"]))
                preds.append(int(row["pred"]))
                classes = max(classes, sum(1 for k in row if k.startswith("p") and k[1:].isdigit()))
    return targets, preds, classes


def pooled_scores(targets: Sequence[int], preds: Sequence[int], num_classes: int) -> dict[str, float]:
    """UF1 (macro F1), UAR (macro recall) and Acc of predictions pooled over folds (torchmetrics; a class with
    no sample and no prediction is left out of the macro means, as scikit-learn's ``labels=`` present classes)."""
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score, multiclass_recall

    t, p = torch.as_tensor(list(targets)), torch.as_tensor(list(preds))
    return {"uf1": float(multiclass_f1_score(p, t, num_classes, average="macro")),
            "uar": float(multiclass_recall(p, t, num_classes, average="macro")),
            "acc": float(multiclass_accuracy(p, t, num_classes, average="micro")), "n": int(len(t))}


def pooled_loso(study_dir: str | os.PathLike, results: list[dict]) -> str:
    """Study hook: per entry (LOSO folds pooled), UF1 / UAR / Acc over all the folds' test clips, next to the
    paper's ``test/macro_f1`` and ``test/acc``; also written to ``<study>/pooled.json``. Markdown."""
    import json

    entries: dict[str, dict] = {}
    for record in results:
        entry = entries.setdefault(record["entry"], {"targets": [], "preds": [], "classes": 0, "folds": 0,
                                                     "paper": {}})
        targets, preds, classes = read_predictions(record["run_dir"])
        if targets:
            entry["folds"] += 1
        entry["targets"] += targets
        entry["preds"] += preds
        entry["classes"] = max(entry["classes"], classes)
        entry["paper"] = entry["paper"] or record.get("paper") or {}
    pooled, lines = {}, ["| entry (LOSO pooled) | folds | clips | UF1 | UAR | Acc |", "|---|---|---|---|---|---|"]
    for name, entry in entries.items():
        if not entry["targets"]:
            continue
        scores = pooled_scores(entry["targets"], entry["preds"], entry["classes"])
        pooled[name] = {**scores, "folds": entry["folds"]}
        paper = entry["paper"]
        uf1 = f"{scores['uf1']:.4f}" + (f" (paper {paper['test/macro_f1']:.4g})" if "test/macro_f1" in paper else "")
        acc = f"{scores['acc']:.4f}" + (f" (paper {paper['test/acc']:.4g})" if "test/acc" in paper else "")
        lines.append(f"| {name} | {entry['folds']} | {scores['n']} | {uf1} | {scores['uar']:.4f} | {acc} |")
    Path(study_dir).mkdir(parents=True, exist_ok=True)
    (Path(study_dir) / "pooled.json").write_text(json.dumps(pooled, indent=2))
    return "\n".join(lines) if pooled else ""


# ------------------------------------------------------------------------------------------------ LBP-TOP baseline
def lbp_top_features(frames, blocks: int = 5, radius: int = 1, points: int = 8):
    """LBP-TOP (Zhao & Pietikainen 2007; Tables 2 and 4's handcrafted row) of a grey clip (T, H, W): scikit-image's
    non-rotation-invariant uniform LBP (``nri_uniform``: 59 codes for 8 neighbours) on the XY, XT and YT planes,
    histogrammed per plane type in each of ``blocks`` x ``blocks`` spatial blocks (each histogram sums to 1),
    concatenated: (blocks^2 * 3 * bins,) float32."""
    import numpy as np
    from skimage.feature import local_binary_pattern

    volume = np.asarray(frames, dtype=np.float32)
    T, H, W = volume.shape
    bins = points * (points - 1) + 3
    def lbp(plane):
        return local_binary_pattern(plane, points, radius, "nri_uniform")

    codes = {"xy": np.stack([lbp(volume[t]) for t in range(T)]),
             "xt": np.stack([lbp(volume[:, y, :]) for y in range(H)], 1),
             "yt": np.stack([lbp(volume[:, :, x]) for x in range(W)], 2)}
    rows, cols = np.array_split(np.arange(H), blocks), np.array_split(np.arange(W), blocks)
    features = []
    for r in rows:
        for c in cols:
            for plane in ("xy", "xt", "yt"):
                block = codes[plane][:, r[0]:r[-1] + 1, c[0]:c[-1] + 1]
                hist = np.bincount(block.astype(np.int64).ravel(), minlength=bins)[:bins].astype(np.float32)
                features.append(hist / max(hist.sum(), 1.0))
    return np.concatenate(features)
