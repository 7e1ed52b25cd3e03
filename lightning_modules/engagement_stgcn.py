"""Engagement measurement from facial landmarks with ST-GCNs (Abedi & Khan, ICPR 2024) and its ordinal stage.

- ``EngagementSTGCN``: input (B, C = 3 [x, y, z], T, N = 78 landmarks) -> BatchNorm1d over C * N -> ST-GCN layers
  3 -> 64 (no residual) -> 128 (residual) -> 256 (residual), temporal kernel 9, dropout 0.1 (Eq. 1,
  ``blocks.stgcn``) -> average pool over T and N -> Conv2d 256 -> K (1 x 1). The graph is the Delaunay
  triangulation of a reference face's (x, y) landmarks (``graph_reference``). For a binary task the head has one
  output channel (sigmoid): ``single_logit`` returns it as the two-class logits (0, z), whose softmax is
  (1 - sigmoid(z), sigmoid(z)) and whose cross-entropy is the BCE of the sigmoid output, so the classification
  task's metrics apply unchanged.
- ``OrdinalSTGCN``: the ordinal framework (Sec. 3.3): the trained K-class network's trunk (data BN + ST-GCN
  layers) loaded from its checkpoint and frozen, its head dropped, K - 1 new 1 x 1 conv heads, head i predicting
  P(y > i); ``forward`` returns the log of Eq. 2's class probabilities, ``binary_logits`` the heads' logits.
- ``OrdinalClassificationTask``: ``ClassificationTask`` whose training loss is the K - 1 heads' binary
  cross-entropies on the labels y_i = [y > i]; evaluation (accuracy, confusion matrix, AUROC) runs on Eq. 2's
  probabilities.
- Table 3 baselines on the flattened (T, 3 N) coordinates: ``LandmarkLSTM`` (4 layers, 256 hidden, FC 256 -> K)
  and ``LandmarkTCN`` (8 residual blocks of dilated causal convolutions, 64 filters, kernel 8, dropout 0.05).
- ``grad_cam``: the class activation map over (T, N) of the last ST-GCN layer (Fig. 1); ``GradCAMFigure`` draws it
  at test (a callback).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback
from torch import nn

from lightning_modules.blocks.stgcn import STGCNLayer, delaunay_adjacency
from lightning_modules.tasks.classification import ClassificationTask
from lightning_modules.utils import network_from_checkpoint

STAGE1_COMMAND = "python run.py --config experiments/engagement_stgcn/engagenet.yaml --data.init_args.data_dir D"


def reference_face(path: Optional[str] = None) -> np.ndarray:
    """(78, 2) (x, y) of the face whose Delaunay triangulation is the graph: a saved mean face (``.npy`` of shape
    (78, >= 2), e.g. the training set's mean from ``datamodules.face_landmarks.mean_face``) or, with None, the
    synthetic renderer's frontal neutral face (``datamodules.standins.synthetic_faces.canonical_face``)."""
    if path is None:
        from datamodules.standins.synthetic_faces import NUM_LANDMARKS, canonical_face

        return canonical_face()[:NUM_LANDMARKS, :2]
    face = np.load(path)
    if face.ndim != 2 or face.shape[1] < 2:
        raise ValueError(f"{path}: a reference face is (N, 2 or 3), got {face.shape}")
    return face[:, :2]


def landmark_adjacency(num_nodes: int = 78, graph_reference: Optional[str] = None,
                       hand_landmarks: bool = False) -> np.ndarray:
    """The face's Delaunay adjacency; with ``hand_landmarks`` block-diagonal with MediaPipe's 21-point hand skeleton
    (``HAND_CONNECTIONS``; the paper gives no hand graph: choice), nodes 78-98."""
    face = reference_face(graph_reference)
    if len(face) != num_nodes:
        raise ValueError(f"the reference face has {len(face)} landmarks, the network {num_nodes} nodes")
    adjacency = delaunay_adjacency(face)
    if not hand_landmarks:
        return adjacency
    from datamodules.face_landmarks import HAND_CONNECTIONS, NUM_HAND_LANDMARKS

    hand = np.zeros((NUM_HAND_LANDMARKS, NUM_HAND_LANDMARKS), np.float32)
    i, j = np.array(HAND_CONNECTIONS).T
    hand[i, j] = hand[j, i] = 1.0
    full = np.zeros((num_nodes + NUM_HAND_LANDMARKS,) * 2, np.float32)
    full[:num_nodes, :num_nodes], full[num_nodes:, num_nodes:] = adjacency, hand
    return full


class EngagementSTGCN(nn.Module):
    """The paper's ST-GCN (Sec. 4.2). Input (B, in_channels, T, num_nodes); output logits (B, num_classes).

    Args:
        num_classes: K (4 for EngageNet; 2 with ``single_logit`` for Online SE's one sigmoid output).
        in_channels: 3 (x, y, z) or 2 (Table 3's "only x and y").
        num_nodes: landmarks per frame (78).
        channels, residual: per ST-GCN layer (64/128/256; no residual in the first).
        temporal_kernel: Gamma (9; Table 3: 3, 15).
        dropout: after each layer's temporal convolution (0.1).
        edge_importance: learn Eq. 1's M per layer (N x N, ones at init).
        single_logit: one output channel z (binary, sigmoid); forward returns (0, z) (see the module doc).
        graph_reference: the reference face of the Delaunay graph (``reference_face``).
        hand_landmarks: 21 hand landmarks follow the face's (Table 3's last row): num_nodes + 21 nodes, the hand
            skeleton as their graph (``landmark_adjacency``).
        input_bn_momentum: the input BatchNorm's running-statistics momentum (PyTorch's and st-gcn's 0.1); None: a
            cumulative average, which estimates the fixed input distribution within a few steps where 0.1 needs
            ~100 (its running variance starts at 1, raw coordinates vary by ~1e-4): the short stand-in runs use it.
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 3, num_nodes: int = 78,
                 channels: Sequence[int] = (64, 128, 256), residual: Sequence[bool] = (False, True, True),
                 temporal_kernel: int = 9, dropout: float = 0.1, edge_importance: bool = True,
                 single_logit: bool = False, graph_reference: Optional[str] = None,
                 hand_landmarks: bool = False, input_bn_momentum: Optional[float] = 0.1):
        super().__init__()
        if len(channels) != len(residual):
            raise ValueError(f"channels {list(channels)} and residual {list(residual)} differ in length")
        if single_logit and num_classes != 2:
            raise ValueError(f"single_logit is a binary head: num_classes must be 2, got {num_classes}")
        self.num_classes, self.in_channels, self.num_nodes = num_classes, in_channels, num_nodes
        self.single_logit = single_logit
        adjacency = landmark_adjacency(num_nodes, graph_reference, hand_landmarks)
        num_nodes = len(adjacency)
        self.num_nodes = num_nodes
        self.data_bn = nn.BatchNorm1d(in_channels * num_nodes, momentum=input_bn_momentum)
        widths = [in_channels, *channels]
        self.layers = nn.ModuleList(
            STGCNLayer(widths[i], widths[i + 1], adjacency, temporal_kernel, 1, dropout, residual[i], edge_importance)
            for i in range(len(channels)))
        self.out_channels = widths[-1]
        self.head = nn.Conv2d(self.out_channels, 1 if single_logit else num_classes, kernel_size=1)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, n = x.shape
        if c != self.in_channels or n != self.num_nodes:
            raise ValueError(f"expected (B, {self.in_channels}, T, {self.num_nodes}) landmarks, got {tuple(x.shape)}")
        x = self.data_bn(x.permute(0, 3, 1, 2).reshape(b, n * c, t))  # st-gcn's (N, V*C, T) order
        return x.reshape(b, n, c, t).permute(0, 2, 3, 1)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The last ST-GCN layer's output (B, C, T, N)."""
        x = self.normalize_input(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pooled trunk features (B, C, 1, 1), the heads' input."""
        return self.activations(x).mean(dim=(2, 3), keepdim=True)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        z = self.head(features).flatten(1)
        return torch.cat([torch.zeros_like(z), z], dim=1) if self.single_logit else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


# ------------------------------------------------------------------------------------------------ ordinal
def ordinal_targets(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B,) class indices -> (B, K - 1) float binary labels y_i = [y > i], i = 0 .. K - 2."""
    thresholds = torch.arange(num_classes - 1, device=target.device)
    return (target.long()[:, None] > thresholds[None]).float()


def ordinal_probabilities(binary_logits: torch.Tensor) -> torch.Tensor:
    """Eq. 2 (Frank & Hall): p_i = sigmoid(head_i) = P(y > i); P(y = 0) = 1 - p_0, P(y = k) = p_{k-1} - p_k,
    P(y = K - 1) = p_{K-2}. Negative differences (heads that disagree) are clipped to 0 and the result
    renormalised (without clipping it already sums to 1). (B, K - 1) -> (B, K)."""
    p = torch.sigmoid(binary_logits.float())
    ones, zeros = torch.ones_like(p[:, :1]), torch.zeros_like(p[:, :1])
    above = torch.cat([ones, p], dim=1)  # P(y > k - 1), k = 0 .. K - 1
    below = torch.cat([p, zeros], dim=1)  # P(y > k)
    probs = (above - below).clamp_min(0.0)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


def _on_meta_device() -> bool:
    return torch.empty(0).device.type == "meta"


class OrdinalSTGCN(nn.Module):
    """The ordinal network (Sec. 3.3): the frozen trunk of a trained K-class ``EngagementSTGCN`` and K - 1 heads.

    Args:
        num_classes: K.
        trunk_checkpoint: the first stage's Lightning checkpoint (its ``network.*`` weights). Required, except when a
            config is only built on the meta device (config checks) or ``trunk`` carries trained weights.
        trunk: the first stage's architecture; None: rebuilt from the checkpoint's hyperparameters.
    """

    def __init__(self, num_classes: int = 4, trunk_checkpoint: Optional[str] = None,
                 trunk: Optional[EngagementSTGCN] = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"an ordinal task needs num_classes >= 2, got {num_classes}")
        if trunk_checkpoint:
            if not _on_meta_device():
                trunk = network_from_checkpoint(trunk_checkpoint, trunk, train_command=STAGE1_COMMAND)
        elif trunk is None:
            if not _on_meta_device():
                raise ValueError("OrdinalSTGCN needs trunk_checkpoint, the trained K-class ST-GCN's checkpoint "
                                 f"(best.ckpt/last.ckpt). Train it first: {STAGE1_COMMAND}; then pass "
                                 "--model.init_args.network.init_args.trunk_checkpoint runs/<experiment>/<run id>/"
                                 "checkpoints/last.ckpt")
            trunk = EngagementSTGCN(num_classes)
        if not isinstance(trunk, EngagementSTGCN):
            raise TypeError(f"the trunk must be an EngagementSTGCN, got {type(trunk).__name__}")
        trunk.head = None  # the K-class head is removed
        self.trunk = trunk
        for parameter in self.trunk.parameters():
            parameter.requires_grad_(False)
        self.trunk.eval()
        self.num_classes = num_classes
        self.heads = nn.Conv2d(trunk.out_channels, num_classes - 1, kernel_size=1)  # K - 1 heads of one channel

    def train(self, mode: bool = True) -> "OrdinalSTGCN":
        super().train(mode)
        self.trunk.eval()  # frozen: BatchNorm keeps the first stage's statistics, dropout off
        return self

    def binary_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K - 1): head i's logit of P(y > i)."""
        with torch.no_grad():
            features = self.trunk.features(x)
        return self.heads(features).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log of Eq. 2's class probabilities (B, K): softmax of it gives back the probabilities."""
        return ordinal_probabilities(self.binary_logits(x)).clamp_min(1e-12).log()


class OrdinalClassificationTask(ClassificationTask):
    """``ClassificationTask`` for the ordinal stage: the training loss is the sum over the K - 1 heads of their
    binary cross-entropy (mean over the batch) on y_i = [y > i]: as K - 1 separately trained networks, since the
    trunk is frozen and the heads share no parameter. Validation and test score Eq. 2's probabilities (the
    network's ``forward``); ``val/loss`` is their cross-entropy (the negative log-likelihood of the true class)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.multilabel or self.mixup_alpha > 0 or self.label_smoothing or self.criterion is not None:
            raise ValueError("the ordinal stage trains with its own BCE: no multilabel, mixup, smoothing or loss")
        if not hasattr(self.network, "binary_logits"):
            raise TypeError("the ordinal task needs a network with binary_logits (OrdinalSTGCN)")

    def ordinal_loss(self, binary_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        targets = ordinal_targets(target, self.num_classes)
        weight = None
        if self.class_weights is not None:  # per-sample weight of its class, as the multi-class CE
            weight = self.class_weights[target.long()][:, None].expand_as(targets)
        per_head = F.binary_cross_entropy_with_logits(binary_logits.float(), targets, weight=weight, reduction="none")
        return per_head.mean(0).sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x, y = batch[self.input_key], batch[self.target_key]
        loss = self.ordinal_loss(self.network.binary_logits(x), y)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss


# ------------------------------------------------------------------------------------------------ baselines
def _flatten_landmarks(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, N) -> (B, T, N * C), each frame's landmarks' coordinates side by side."""
    b, c, t, n = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, t, n * c)


class LandmarkLSTM(nn.Module):
    """Table 3's LSTM: the (T, 3 N) coordinate series through 4 unidirectional LSTM layers of 256 units, the last
    step's output through FC 256 -> K."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3, num_nodes: int = 78, hidden: int = 256,
                 num_layers: int = 4):
        super().__init__()
        self.lstm = nn.LSTM(in_channels * num_nodes, hidden, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(_flatten_landmarks(x))
        return self.fc(out[:, -1])


class _TemporalBlock(nn.Module):
    """Two dilated causal convolutions (ReLU, dropout) with a residual (1 x 1 conv when channels change)."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(cin, cout, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(cout, cout, kernel, dilation=dilation)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        out = self.dropout(F.relu(self.conv2(F.pad(out, (self.pad, 0)))))
        return F.relu(out + self.skip(x))


class LandmarkTCN(nn.Module):
    """Table 3's TCN (Bai et al.'s residual TCN): ``num_layers`` blocks with dilations 1, 2, 4, ..., ``filters``
    channels, ``kernel`` taps, ``dropout``; the last step's features through a linear layer to K."""

    def __init__(self, num_classes: int = 4, in_channels: int = 3, num_nodes: int = 78, filters: int = 64,
                 kernel: int = 8, num_layers: int = 8, dropout: float = 0.05):
        super().__init__()
        widths = [in_channels * num_nodes] + [filters] * num_layers
        self.blocks = nn.Sequential(*(_TemporalBlock(widths[i], widths[i + 1], kernel, 2 ** i, dropout)
                                      for i in range(num_layers)))
        self.fc = nn.Linear(filters, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(_flatten_landmarks(x).transpose(1, 2))
        return self.fc(out[:, :, -1])


# ------------------------------------------------------------------------------------------------ Grad-CAM
def grad_cam(network: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Grad-CAM over (T, N) of the last ST-GCN layer (Fig. 1): ReLU(sum_c alpha_c A_c) with alpha_c the mean
    gradient of the target class's score over (T, N). ``network``: an ``EngagementSTGCN`` (target logit) or an
    ``OrdinalSTGCN`` (target class's Eq. 2 log-probability); ``target`` None: the predicted class. (B, T, N)."""
    trunk = network.trunk if isinstance(network, OrdinalSTGCN) else network
    with torch.inference_mode(False), torch.enable_grad():  # also inside Lightning's test loop (inference mode)
        activations = trunk.activations(x.clone()).detach().requires_grad_(True)
        features = activations.mean(dim=(2, 3), keepdim=True)
        if isinstance(network, OrdinalSTGCN):
            scores = ordinal_probabilities(network.heads(features).flatten(1)).clamp_min(1e-12).log()
        else:
            scores = network.classify(features)
        target = scores.argmax(1) if target is None else target.long()
        selected = scores.gather(1, target[:, None]).sum()
        (gradient,) = torch.autograd.grad(selected, activations)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * activations).sum(1)).detach()


class GradCAMFigure(Callback):
    """At test, Fig. 1 for the first ``num_clips`` clips of the first test batch: each clip's Grad-CAM of its predicted
    class (``grad_cam``) as the landmarks of its mean face coloured by the map's mean over frames, and the map's mean
    over landmarks per frame; saved as ``figures/test_gradcam.png`` (and to W&B) by the task's ``log_figure``."""

    def __init__(self, num_clips: int = 3):
        super().__init__()
        self.num_clips = num_clips

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = batch[getattr(pl_module, "input_key", "signal")][:self.num_clips]
        cam = grad_cam(pl_module.network, x).cpu().numpy()  # (B, T, N)
        coords = x.detach().cpu().numpy()  # (B, C, T, N)
        figure, axes = plt.subplots(2, len(cam), figsize=(3.2 * len(cam), 5.5), squeeze=False)
        for i, clip_cam in enumerate(cam):
            present = np.abs(coords[i]).sum(axis=(0, 2)) > 0
            face = coords[i][:2, present].mean(axis=1) if present.any() else coords[i][:2].mean(axis=1)
            axes[0, i].scatter(face[0], -face[1], c=clip_cam.mean(0), cmap="jet", s=14)
            axes[0, i].set_title(f"clip {i}: CAM per landmark")
            axes[0, i].set_aspect("equal")
            axes[0, i].axis("off")
            axes[1, i].plot(clip_cam.mean(1))
            axes[1, i].set_xlabel("frame")
            axes[1, i].set_title("CAM per frame")
        figure.tight_layout()
        pl_module.log_figure("test/gradcam", figure)
