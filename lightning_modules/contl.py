"""ConTL (ICPR 2024): cascading a 1-D CNN (local context), a Transformer encoder (global) and a two-layer
bidirectional "sLSTM" (sequential) on EEG differential-entropy features.

Sizes follow the official code (github.com/affctivai/ConTL, ``src/models.py``), as the card settles them:
x (B, 310) = 62 channels x 5 bands, flattened channel-major ->

1. Conv1d(1->64, k4, s2) -> Conv1d(64->64, k4, s2) -> LeakyReLU(0.01) -> BatchNorm1d -> Dropout(0.2): 310 -> 154 -> 76;
2. flatten (64*76 = 4864) -> Linear(4864 -> h = 50);
3. the code's ``unsqueeze(0)`` on a sequence-first Transformer: a **sequence of one token** (B tokens side by side);
4. TransformerEncoder(1 layer, d_model 50, 2 heads, feed-forward 2048, dropout 0.1, ReLU, post-norm);
5. LSTM1(50->8, bidirectional) over that length-1 sequence -> final states h1 (2, B, 8); LSTM2(8->8, bidirectional)
   reads h1 as a length-2 sequence (the two directions as time steps) -> h2 (2, B, 8); concat -> (B, 32);
6. Linear(32 -> M). Without the LSTM: Linear(50 -> M) on the Transformer output.

482,568 parameters for M = 4 (tested). ``seq_mode="tokens"`` is our option (not the paper's): the 76 CNN positions,
each projected 64 -> h, are the Transformer's tokens and LSTM1's time steps.
"""
from __future__ import annotations

import copy
from typing import Any, Literal, Optional

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from lightning_modules.batch import SIGNAL
from lightning_modules.tasks.classification import ClassificationTask


def _conv_length(n: int, kernel: int = 4, stride: int = 2) -> int:
    return (n - kernel) // stride + 1


class ConTL(nn.Module):
    """The ConTL network. Input (B, C, bands) or (B, C*bands) (or the code's (B, 1, 310)) -> logits (B, M).

    Args:
        num_classes: M.
        input_dim: the flattened feature length (310 = 62 x 5; DEAP is resized to 310 by the datamodule).
        hidden: h, the Linear's output and the Transformer width (50, the paper's Fig. 5 choice).
        nhead, dim_feedforward, transformer_dropout, num_transformer_layers: the encoder (PyTorch defaults
            except nhead = 2, as the code).
        lstm_hidden: units per direction of both LSTMs (8).
        conv_channels, kernel_size, stride, leaky_slope, cnn_dropout: the CNN (64, 4, 2, 0.01, 0.2).
        use_cnn, use_transformer, use_lstm: the ablations of Table 2. Without the CNN a Linear(input_dim -> h)
            feeds the Transformer (our reading: the code's ablation models are not released).
        seq_mode: "single" (the code: one token per sample) or "tokens" (the CNN positions as tokens).
    """

    def __init__(self, num_classes: int = 4, input_dim: int = 310, hidden: int = 50, nhead: int = 2,
                 dim_feedforward: int = 2048, transformer_dropout: float = 0.1, num_transformer_layers: int = 1,
                 lstm_hidden: int = 8, conv_channels: int = 64, kernel_size: int = 4, stride: int = 2,
                 leaky_slope: float = 0.01, cnn_dropout: float = 0.2, use_cnn: bool = True,
                 use_transformer: bool = True, use_lstm: bool = True,
                 seq_mode: Literal["single", "tokens"] = "single"):
        super().__init__()
        if seq_mode not in ("single", "tokens"):
            raise ValueError(f"seq_mode must be 'single' or 'tokens', got {seq_mode!r}")
        if seq_mode == "tokens" and not use_cnn:
            raise ValueError("seq_mode='tokens' takes its tokens from the CNN: needs use_cnn=True")
        self.input_dim, self.seq_mode = input_dim, seq_mode
        self.use_cnn, self.use_transformer, self.use_lstm = use_cnn, use_transformer, use_lstm
        length = _conv_length(_conv_length(input_dim, kernel_size, stride), kernel_size, stride)
        if use_cnn:
            self.cnn = nn.Sequential(
                nn.Conv1d(1, conv_channels, kernel_size, stride), nn.Conv1d(conv_channels, conv_channels, kernel_size, stride),
                nn.LeakyReLU(leaky_slope), nn.BatchNorm1d(conv_channels), nn.Dropout(cnn_dropout))
            in_features = conv_channels if seq_mode == "tokens" else conv_channels * length
        else:
            self.cnn = None
            in_features = input_dim
        self.cnn_length = length
        self.linear = nn.Linear(in_features, hidden)
        if use_transformer:
            layer = nn.TransformerEncoderLayer(d_model=hidden, nhead=nhead, dim_feedforward=dim_feedforward,
                                               dropout=transformer_dropout)
            self.transformer = nn.TransformerEncoder(layer, num_layers=num_transformer_layers,
                                                     enable_nested_tensor=False)
        else:
            self.transformer = None
        if use_lstm:
            self.lstm1 = nn.LSTM(hidden, lstm_hidden, bidirectional=True)
            self.lstm2 = nn.LSTM(lstm_hidden, lstm_hidden, bidirectional=True)
            self.fc = nn.Linear(4 * lstm_hidden, num_classes)
        else:
            self.lstm1 = self.lstm2 = None
            self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x = x.reshape(b, -1)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"ConTL expects {self.input_dim} features per sample, got {x.shape[1]}")
        if self.cnn is not None:
            x = self.cnn(x.unsqueeze(1))                      # (B, 64, 76)
            x = x.permute(2, 0, 1) if self.seq_mode == "tokens" else x.flatten(1).unsqueeze(0)
        else:
            x = x.unsqueeze(0)                                 # (1, B, 310)
        x = self.linear(x)                                     # (S, B, h), S = 1 (the code) or 76 (tokens)
        if self.transformer is not None:
            x = self.transformer(x)
        if self.lstm1 is None:
            return self.fc(x.mean(dim=0))
        _, (h1, _) = self.lstm1(x)                             # (2, B, 8)
        _, (h2, _) = self.lstm2(h1)                            # h1's directions as a length-2 sequence
        h = torch.cat([h1, h2], dim=-1)                        # (2, B, 16)
        return self.fc(h.permute(1, 0, 2).reshape(b, -1))      # (B, 32) -> (B, M)


class ConTLTask(ClassificationTask):
    """ClassificationTask with the ConTL recipe's model selection: the best checkpoint (and early stopping) on
    the validation loss (``monitor_metric="val/loss"``), not on accuracy. Everything else is the family's: the
    weighted F1 of the paper goes in through ``metrics`` (see experiments/contl/*.yaml). Defaults: input ``signal``,
    Adam."""

    def __init__(self, network: nn.Module, num_classes: int = 4, monitor_metric: str = "val/loss",
                 monitor_mode: Optional[str] = None, input_key: str = SIGNAL,
                 optimizer: OptimizerCallable = torch.optim.Adam, **kwargs: Any):
        super().__init__(network=network, num_classes=num_classes, input_key=input_key, optimizer=optimizer, **kwargs)
        self.monitor = monitor_metric
        self.monitor_mode = monitor_mode or ("min" if monitor_metric.endswith("loss") else "max")


class PatienceRestarts(L.Callback):
    """The official solver's early stopping (``src/solver.py``): when ``monitor`` has not improved for ``patience``
    validation epochs, reload the best model and optimiser state, reset the patience and go on; stop after the
    ``num_trials``-th exhaustion. The states are kept in memory (the code saves them to disk); the run's
    ``best.ckpt`` (the lowest validation loss) is what the test uses, as in the code.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int = 7, num_trials: int = 2):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience < 1 or num_trials < 1:
            raise ValueError("patience and num_trials must be >= 1")
        self.monitor, self.mode, self.patience, self.num_trials = monitor, mode, patience, num_trials
        self.best: Optional[float] = None
        self.wait = 0
        self.trials = 0
        self._best_model: Optional[dict] = None
        self._best_optim: Optional[list] = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        improved = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if improved:
            self.best, self.wait = value, 0
            self._best_model = copy.deepcopy(pl_module.state_dict())
            self._best_optim = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        self.trials += 1
        if self.trials >= self.num_trials:
            trainer.should_stop = True
            return
        pl_module.load_state_dict(self._best_model)
        for optimizer, state in zip(trainer.optimizers, self._best_optim):
            optimizer.load_state_dict(copy.deepcopy(state))
        self.wait = 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "trials": self.trials}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.wait, self.trials = state_dict["best"], state_dict["wait"], state_dict["trials"]
