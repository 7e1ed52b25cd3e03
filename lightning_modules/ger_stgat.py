"""GER-STGAT: spatial-temporal graph attention for video group emotion recognition (ICPR 2024).

Input (precomputed, frozen extractors; ``datamodules.group_video_features``): per video T sampled frames, up to N = 8
faces per frame (detector-confidence order, no tracking) with a face feature each (VGGFace fc7, 4096-d), a face mask,
and one holistic frame feature (ResNet-50 pooled ``layer4``, 2048-d). The batch carries them as a dict under
``group_video``: ``faces`` (B, T, N, Df), ``face_mask`` (B, T, N) bool, ``frames`` (B, T, Dh).

- Facial branch (Sec. 3.3): nodes ``[x_1^1 .. x_N^1, g^1, x_1^2, .., g^T]`` (T (N + 1)), the pseudo group node g^t
  initialised to the mean of frame t's faces (Eq. 8; zeros without faces). ``facial_adjacency``: serial (Eq. 3-7),
  parallel (Eq. 9: phi fills the lower triangle, within-frame face blocks stay full) or parallel without pseudo nodes
  (Table 3). A 2-layer GAT (hidden/output 1024), readout g'^T (no-pseudo: mean of all valid nodes) -> Linear(., 3).
- Holistic branch (Sec. 3.4): T frame nodes, node t receives from every s <= t (causal; Eq. 10 as the text reads it),
  a 2-layer GAT, readout h'^T -> Linear(., 3).
- Fusion (Eq. 15): p = alpha softmax(y_f) + (1 - alpha) softmax(y_h). ``forward`` returns log p, so softmax of it is
  p and the classification task's metrics score the fused decision.
- ``GroupEmotionTask``: L = L_f + L_h (Eq. 13, 14: each branch's cross-entropy on its own logits; the branches share
  no parameters, so the sum trains each on its own loss), evaluation of the fused output plus each branch's accuracy
  (``val/acc_facial``, ``test/acc_holistic`` ...: Table 1's columns).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.blocks.gat import DenseGAT
from lightning_modules.tasks.classification import ClassificationTask

GROUP_VIDEO = "group_video"
GraphMode = Literal["parallel", "serial", "parallel_no_pseudo"]
Branches = Literal["both", "facial", "holistic"]


def facial_adjacency(frames: int, faces: int, mode: GraphMode = "parallel") -> Tensor:
    """Bool (V, V) adjacency of the facial graph, row = receiver (A[i, j]: i aggregates from j), self loops included.

    ``serial`` (Eq. 3-7): faces of frame t fully connected; g^t <- x^t and itself; x^{t+1} <- g^t.
    ``parallel`` (Eq. 9): the serial graph with every lower-triangular entry set (each node receives from every node
    of smaller index), V = T (N + 1). ``parallel_no_pseudo``: the same on the T N faces alone.
    """
    if mode not in ("parallel", "serial", "parallel_no_pseudo"):
        raise ValueError(f"graph mode must be parallel, serial or parallel_no_pseudo, got {mode!r}")
    per = faces if mode == "parallel_no_pseudo" else faces + 1
    v = frames * per
    adjacency = torch.zeros(v, v, dtype=torch.bool)
    for t in range(frames):
        s = t * per
        adjacency[s:s + faces, s:s + faces] = True  # A^t = 1 (N x N), self loops included
        if mode != "parallel_no_pseudo":
            g = s + faces
            adjacency[g, s:g + 1] = True  # g^t <- x^t, g^t
            if t + 1 < frames:
                adjacency[g + 1:g + 1 + faces, g] = True  # x^{t+1} <- g^t
    if mode != "serial":
        adjacency |= torch.ones(v, v, dtype=torch.bool).tril()  # phi: the lower triangle set to 1
    return adjacency


def holistic_adjacency(frames: int) -> Tensor:
    """Bool (T, T): frame node t receives from every frame s <= t (causal, self loops included)."""
    return torch.ones(frames, frames, dtype=torch.bool).tril()


class FacialGraphBranch(nn.Module):
    """The facial spatial-temporal graph and its GAT; ``forward`` -> logits (B, K)."""

    def __init__(self, face_dim: int = 4096, hidden: int = 1024, num_classes: int = 3, num_layers: int = 2,
                 heads: int = 1, dropout: float = 0.5, graph_mode: GraphMode = "parallel"):
        super().__init__()
        facial_adjacency(1, 1, graph_mode)  # checks the mode
        self.graph_mode = graph_mode
        self.gat = DenseGAT(face_dim, hidden, hidden, num_layers=num_layers, heads=heads, dropout=dropout)
        self.classifier = nn.Linear(hidden, num_classes)  # W of Eq. 13
        self._adjacency: dict[tuple, Tensor] = {}

    def adjacency(self, frames: int, faces: int, device: torch.device) -> Tensor:
        key = (frames, faces, str(device))
        if key not in self._adjacency:
            self._adjacency[key] = facial_adjacency(frames, faces, self.graph_mode).to(device)
        return self._adjacency[key]

    def nodes(self, faces: Tensor, face_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Node features (B, V, D) in the paper's order and the node mask (B, V)."""
        b, t, n, d = faces.shape
        mask = face_mask.bool()
        faces = faces * mask.unsqueeze(-1).to(faces.dtype)
        if self.graph_mode == "parallel_no_pseudo":
            return faces.reshape(b, t * n, d), mask.reshape(b, t * n)
        count = mask.sum(-1, keepdim=True).clamp_min(1).to(faces.dtype)
        group = faces.sum(2) / count  # Eq. 8: mean of the frame's faces (zeros without faces)
        x = torch.cat([faces, group.unsqueeze(2)], dim=2).reshape(b, t * (n + 1), d)
        node_mask = torch.cat([mask, torch.ones_like(mask[..., :1])], dim=2).reshape(b, t * (n + 1))
        return x, node_mask

    def features(self, faces: Tensor, face_mask: Tensor) -> Tensor:
        x, node_mask = self.nodes(faces, face_mask)
        out = self.gat(x, self.adjacency(faces.shape[1], faces.shape[2], faces.device), node_mask)
        if self.graph_mode == "parallel_no_pseudo":
            weights = node_mask.unsqueeze(-1).to(out.dtype)  # mean of every updated (present) node
            return (out * weights).sum(1) / weights.sum(1).clamp_min(1)
        return out[:, -1]  # g'^T

    def forward(self, faces: Tensor, face_mask: Tensor) -> Tensor:
        return self.classifier(self.features(faces, face_mask))


class HolisticGraphBranch(nn.Module):
    """The causal frame graph and its GAT; ``forward`` -> logits (B, K)."""

    def __init__(self, frame_dim: int = 2048, hidden: int = 1024, num_classes: int = 3, num_layers: int = 2,
                 heads: int = 1, dropout: float = 0.5):
        super().__init__()
        self.gat = DenseGAT(frame_dim, hidden, hidden, num_layers=num_layers, heads=heads, dropout=dropout)
        self.classifier = nn.Linear(hidden, num_classes)  # P of Eq. 14

    def forward(self, frames: Tensor) -> Tensor:
        adjacency = holistic_adjacency(frames.shape[1]).to(frames.device)
        return self.classifier(self.gat(frames, adjacency)[:, -1])  # h'^T


class GERSTGAT(nn.Module):
    """The two branches and their late fusion (Eq. 15). ``forward(batch_input) -> log fused probabilities``.

    Args:
        num_classes: 3 (positive, neutral, negative).
        face_dim, frame_dim: the extractors' feature sizes (4096 VGGFace fc7, 2048 ResNet-50).
        hidden: GAT hidden and output size (1024).
        num_layers, heads, dropout: GAT layers (2), heads (1, not given: choice), dropout (0.5, choice).
        graph_mode: the facial graph (parallel for the main results; serial, parallel_no_pseudo: Table 3).
        alpha: fusion weight of the facial branch (0.5 VGAF, 0.3 GECV).
        branches: "both", or one branch alone ("facial"/"holistic": Table 1's single-cue columns, Table 3).
    """

    def __init__(self, num_classes: int = 3, face_dim: int = 4096, frame_dim: int = 2048, hidden: int = 1024,
                 num_layers: int = 2, heads: int = 1, dropout: float = 0.5, graph_mode: GraphMode = "parallel",
                 alpha: float = 0.5, branches: Branches = "both"):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if branches not in ("both", "facial", "holistic"):
            raise ValueError(f"branches must be both, facial or holistic, got {branches!r}")
        self.alpha, self.branches = alpha, branches
        self.facial = FacialGraphBranch(face_dim, hidden, num_classes, num_layers, heads, dropout,
                                        graph_mode) if branches != "holistic" else None
        self.holistic = HolisticGraphBranch(frame_dim, hidden, num_classes, num_layers, heads,
                                            dropout) if branches != "facial" else None

    def branch_logits(self, x: dict) -> dict[str, Tensor]:
        out = {}
        if self.facial is not None:
            out["facial"] = self.facial(x["faces"], x["face_mask"])
        if self.holistic is not None:
            out["holistic"] = self.holistic(x["frames"])
        return out

    def fuse(self, logits: dict[str, Tensor]) -> Tensor:
        """log of Eq. 15's fused probabilities (a single branch: its log-softmax)."""
        if len(logits) == 1:
            return F.log_softmax(next(iter(logits.values())).float(), dim=-1)
        p_f, p_h = logits["facial"].float().softmax(-1), logits["holistic"].float().softmax(-1)
        p = self.alpha * p_f + (1 - self.alpha) * p_h
        return p.clamp_min(1e-12).log()

    def forward(self, x: dict) -> Tensor:
        return self.fuse(self.branch_logits(x))


class GroupEmotionTask(ClassificationTask):
    """``ClassificationTask`` training each branch with its own cross-entropy (L = L_f + L_h) and scoring the fused
    output (``val/acc``, ``test/acc``, per-class recall with ``per_class_metrics``) plus each branch alone
    (``val/acc_facial``, ``val/acc_holistic``, ``test/...``). The network must have ``branch_logits`` and ``fuse``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("input_key", GROUP_VIDEO)
        super().__init__(*args, **kwargs)
        if self.multilabel or self.mixup_alpha > 0:
            raise ValueError("GroupEmotionTask is multi-class without mixup")
        names = [b for b in ("facial", "holistic") if getattr(self.network, b, None) is not None]
        self.branch_accuracy = nn.ModuleDict({f"{stage}_{b}": MulticlassAccuracy(self.num_classes, average="micro")
                                              for stage in ("val", "test") for b in names})

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        target = batch[self.target_key].long()
        logits = self.network.branch_logits(batch[self.input_key])
        losses = {name: self.loss(value, self.soft_targets(target)) for name, value in logits.items()}
        loss = sum(losses.values())
        size = target.shape[0]
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    def _branch_update(self, stage: str, batch: dict) -> Tensor:
        logits = self.network.branch_logits(batch[self.input_key])
        for name, value in logits.items():
            self.branch_accuracy[f"{stage}_{name}"].update(value, batch[self.target_key].long())
        return self.network.fuse(logits)

    def forward(self, x):
        return self.network(x)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        fused = self._branch_update("val", batch)
        self._update(self.val_evaluation, batch, fused)
        self.log("val/loss", self.loss(fused, self.soft_targets(batch[self.target_key])), batch_size=fused.shape[0])

    def on_validation_epoch_end(self) -> None:
        self._log_branches("val")
        super().on_validation_epoch_end()

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:
            self._branch_update("test", batch)
        super().test_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_branches("test")
        super().on_test_epoch_end()

    def _log_branches(self, stage: str) -> None:
        for key, metric in self.branch_accuracy.items():
            if key.startswith(stage + "_") and metric.update_count:
                self.log(f"{stage}/acc_{key.split('_', 1)[1]}", metric.compute(), add_dataloader_idx=False)
                metric.reset()


class FaceMeanLSTM(nn.Module):
    """Facial baseline (VGAFNet-style): per frame the mean of its faces' features, an LSTM over the T frames, the last
    state -> Linear(., K). Same input and ``branch_logits``/``fuse`` interface as ``GERSTGAT`` (one "facial" branch)."""

    def __init__(self, num_classes: int = 3, face_dim: int = 4096, hidden: int = 512, num_layers: int = 1,
                 dropout: float = 0.5):
        super().__init__()
        self.lstm = nn.LSTM(face_dim, hidden, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.facial = nn.Linear(hidden, num_classes)
        self.holistic = None

    def branch_logits(self, x: dict) -> dict[str, Tensor]:
        mask = x["face_mask"].bool().unsqueeze(-1).to(x["faces"].dtype)
        frames = (x["faces"] * mask).sum(2) / mask.sum(2).clamp_min(1)
        out, _ = self.lstm(frames)
        return {"facial": self.facial(self.drop(out[:, -1]))}

    def fuse(self, logits: dict[str, Tensor]) -> Tensor:
        return F.log_softmax(logits["facial"].float(), dim=-1)

    def forward(self, x: dict) -> Tensor:
        return self.fuse(self.branch_logits(x))
