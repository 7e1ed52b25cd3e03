"""Tract-RLFormer (Joshi et al., ICPR 2024): tract-specific tractography with a Decision-Transformer policy
trained offline on a TD3 agent's roll-outs.

Networks (plain ``nn.Module``s):

- ``TractRLFormer``: the GPT-2-style decoder over <R_t, s_t, a_t> tokens (Decision Transformer, Chen et al. 2021):
  linear embeddings of the return-to-go (1 -> d), the state (334 -> d) and the action (3 -> d), a learned timestep
  embedding (``max_ep_len`` x d) added to all three tokens, LayerNorm, L pre-norm causal decoder blocks (one head,
  MLP 4d, ReLU, dropout 0.1), a final LayerNorm and the action head Linear(d -> 3) + tanh on each state token.
  The paper's network: d 128, 1 head, K 40, L 3 (pre-training) + 1 (fine-tuning) = 4 blocks; the official code
  also builds DT's state and return heads (unused by the loss): with them (``auxiliary_heads``) the 4-block network
  has 948,690 parameters (the card's ~0.95 M), without 905,475.
- ``MaskRefinementNet`` (MRM): the voxel classifier 322 -> 512 -> 256 -> 128 -> 1 (Linear, BatchNorm, Dropout 0.5,
  ReLU: the code's order), 331,521 parameters; ``mrm_features`` builds its 7 x (45 SH + ROI) inputs.
- the level-1 TD3 agent is the family's ``tasks.reinforcement.MLPActor`` / ``MLPCritic`` (1024-1024).

The training logic is the RL tractography family's (``lightning_modules/tasks/reinforcement.py``):
``TD3Task`` learns the level-1 policy, ``SequencePolicyTask`` trains this network on its roll-outs with Eq. 2 and
tracks with it at test time.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class CausalSelfAttention(nn.Module):
    """GPT-2's attention: one fused qkv projection, ``n_heads`` heads, an output projection, dropouts; causal, with
    a key padding mask (a padded query attends to itself alone so no row is empty)."""

    def __init__(self, dim: int, n_heads: int = 1, dropout: float = 0.1):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=-1)
        q, k, v = (t.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2) for t in (q, k, v))
        allowed = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        if key_valid is not None:
            allowed = allowed & (key_valid[:, None, :] | torch.eye(n, dtype=torch.bool, device=x.device))
            allowed = allowed[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, n, d)))


class DecoderBlock(nn.Module):
    """GPT-2 block: x + attn(ln_1(x)); x + mlp(ln_2(x)), MLP d -> inner -> d."""

    def __init__(self, dim: int, n_heads: int = 1, inner: Optional[int] = None, dropout: float = 0.1,
                 activation: str = "relu"):
        super().__init__()
        inner = inner or 4 * dim
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, n_heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        act = {"relu": nn.ReLU(), "gelu": nn.GELU()}[activation]
        self.mlp = nn.Sequential(nn.Linear(dim, inner), act, nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_valid)
        return x + self.mlp(self.ln_2(x))


class TractRLFormer(nn.Module):
    """The Decision-Transformer policy (see the module docstring).

    ``forward(returns (B, K, 1), states (B, K, S), actions (B, K, 3), timesteps (B, K) long, mask (B, K) bool)``
    -> predicted actions (B, K, 3) in [-1, 1]: the prediction at step t reads R_<=t, s_<=t, a_<t.

    ``state_mean``/``state_std`` (buffers, saved in checkpoints) z-score the states (the official code's
    normalisation; the training task sets them from the roll-outs). ``add_block()`` appends a fresh decoder block
    (fine-tuning: a 4th block on a 3-block pre-trained network) and ``freeze_all_but_last(n)`` leaves only the last
    ``n`` blocks trainable (the code's fine-tuning).
    """

    def __init__(self, state_dim: int = 334, act_dim: int = 3, hidden_size: int = 128, n_layers: int = 4,
                 n_heads: int = 1, inner_size: Optional[int] = None, dropout: float = 0.1, activation: str = "relu",
                 max_ep_len: int = 530, context_length: int = 40, auxiliary_heads: bool = False):
        super().__init__()
        self.state_dim, self.act_dim = state_dim, act_dim
        self.context_length, self.max_ep_len = context_length, max_ep_len
        self.block_args = dict(dim=hidden_size, n_heads=n_heads, inner=inner_size, dropout=dropout,
                               activation=activation)
        self.embed_timestep = nn.Embedding(max_ep_len, hidden_size)
        self.embed_return = nn.Linear(1, hidden_size)
        self.embed_state = nn.Linear(state_dim, hidden_size)
        self.embed_action = nn.Linear(act_dim, hidden_size)
        self.embed_ln = nn.LayerNorm(hidden_size)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(DecoderBlock(**self.block_args) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(hidden_size)
        self.predict_action = nn.Sequential(nn.Linear(hidden_size, act_dim), nn.Tanh())
        if auxiliary_heads:  # the official code's (unused) DT heads
            self.predict_state = nn.Linear(hidden_size, state_dim)
            self.predict_return = nn.Linear(hidden_size, 1)
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))

    def add_block(self) -> None:
        ref = next(self.parameters())
        self.blocks.append(DecoderBlock(**self.block_args).to(ref.device, ref.dtype))

    def freeze_all_but_last(self, n: int) -> None:
        """Only the last ``n`` decoder blocks train (the fine-tuning of the official code)."""
        for p in self.parameters():
            p.requires_grad_(False)
        for block in list(self.blocks)[len(self.blocks) - n:]:
            for p in block.parameters():
                p.requires_grad_(True)

    def set_state_statistics(self, mean, std) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=self.state_mean.dtype))
        self.state_std.copy_(torch.as_tensor(std, dtype=self.state_std.dtype).clamp_min(1e-6))

    def forward(self, returns: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, k = states.shape[:2]
        states = (states - self.state_mean) / self.state_std
        time = self.embed_timestep(timesteps.clamp(0, self.max_ep_len - 1))
        tokens = torch.stack([self.embed_return(returns) + time, self.embed_state(states) + time,
                              self.embed_action(actions) + time], dim=2).reshape(b, 3 * k, -1)
        x = self.embed_dropout(self.embed_ln(tokens))
        valid = None if mask is None else mask.bool().repeat_interleave(3, dim=1)
        for block in self.blocks:
            x = block(x, valid)
        x = self.ln_f(x).view(b, k, 3, -1)
        return self.predict_action(x[:, :, 1])  # the action from the state token


class MaskRefinementNet(nn.Module):
    """MRM: voxel-wise keep probability logit from 7 x (45 SH + 1 ROI) features (the voxel and its 6 face
    neighbours). Hidden layers Linear -> BatchNorm -> Dropout -> ReLU (the official code's order; the paper lists
    ReLU, BatchNorm, Dropout). Returns logits (B, ``out_features``): 1 is the paper's (a sigmoid gives the keep
    probability); with 2 the classification family trains it as a two-class classifier (softmax over two logits =
    a sigmoid of their difference, the same model with 129 more parameters), since torchmetrics' multi-label
    metrics need at least two labels."""

    def __init__(self, in_features: int = 322, hidden: tuple[int, ...] = (512, 256, 128), dropout: float = 0.5,
                 out_features: int = 1):
        super().__init__()
        layers, width = [], in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.Dropout(dropout), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mrm_features(sh: np.ndarray, roi: np.ndarray, voxels: Optional[np.ndarray] = None) -> np.ndarray:
    """MRM inputs: for each voxel (default: every ROI voxel) its SH and ROI value and those of its 6 face
    neighbours (zeros outside the volume): (N, 7 x (C + 1)) float32, ordered centre, +x, -x, +y, -y, +z, -z."""
    data = np.concatenate([sh, roi[..., None].astype(sh.dtype)], axis=-1).astype(np.float32)
    padded = np.pad(data, ((1, 1), (1, 1), (1, 1), (0, 0)))
    voxels = np.argwhere(roi) if voxels is None else np.asarray(voxels)
    offsets = np.array([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]])
    idx = voxels[:, None, :] + offsets[None] + 1
    return padded[idx[..., 0], idx[..., 1], idx[..., 2]].reshape(len(voxels), -1)


def count_decision_transformer(hidden_size: int = 128, state_dim: int = 334, n_layers: int = 4,
                               max_ep_len: int = 530, auxiliary_heads: bool = True) -> int:
    """Closed-form parameter count of ``TractRLFormer`` (checks the module, and the paper's size without building)."""
    d = hidden_size
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    embeddings = max_ep_len * d + 2 * d + (state_dim * d + d) + (3 * d + d) + 2 * d
    heads = 2 * d + 3 * d + 3 + (d * state_dim + state_dim + d + 1 if auxiliary_heads else 0)
    return n_layers * block + embeddings + heads


