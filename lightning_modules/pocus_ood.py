"""POCUS-OOD (ICPR 2024): the base CNN of ref. [7], its multi-exit (MOOD-style) variant, a deep ensemble of
base CNNs, and the paper's OOD scores and metrics.

Scores are "ID-ness" (higher = more in-distribution): max-softmax, S = -E with the energy
E = -T logsumexp(f / T), the multi-level rule as min_k F_k(S_k) (F_k: empirical CDF of exit-k scores on the
training data) and the ensemble S = -U for U_var, U_wvar, U_epi. FPR at TPR t uses the threshold at which a
fraction t of the *training* scores is accepted (a quantile of the training scores, not the test ROC).
"""
from __future__ import annotations

import json
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import BinaryAUROC

from lightning_modules.blocks.init import init_keras


def _block(cin: int, cout: int, padding: str, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1 if padding == "same" else 0), nn.ReLU(inplace=True),
                         nn.Dropout(dropout), nn.MaxPool2d(2, 2))


def _spatial(size: int, padding: str, blocks: int) -> int:
    for _ in range(blocks):
        size = (size if padding == "same" else size - 2) // 2
    return size


class POCUSCNN(nn.Module):
    """5 x [Conv3x3 -> ReLU -> Dropout(0.2) -> MaxPool2] (32-64-128-128-128) -> Dropout(0.5) -> FC 512 -> ReLU
    -> Dropout(0.5) -> FC classes. ``init``: "keras" (Glorot-uniform weights, zero biases: the defaults of the
    Keras original; with PyTorch's defaults ("torch") the plain 7-layer ReLU stack does not leave the prior on
    the stand-in in 12 epochs). ``exit_after``: conv-block indices (1-based) followed by an extra exit
    [Conv3x3 128 -> ReLU -> MaxPool2 -> Flatten -> FC classes]; ``forward`` returns the final logits,
    ``forward_exits`` the list of all exits' logits (early exits first, final last)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, input_size: int = 180, padding: str = "same",
                 filters: Sequence[int] = (32, 64, 128, 128, 128), conv_dropout: float = 0.2, fc_dropout: float = 0.5,
                 hidden: int = 512, exit_after: Sequence[int] = (), init: str = "keras"):
        super().__init__()
        if padding not in ("same", "valid"):
            raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
        if init not in ("keras", "torch"):
            raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")
        chans = [in_channels, *filters]
        self.blocks = nn.ModuleList(_block(chans[i], chans[i + 1], padding, conv_dropout) for i in range(len(filters)))
        side = _spatial(input_size, padding, len(filters))
        if side < 1:
            raise ValueError(f"input_size {input_size} too small for {len(filters)} blocks with padding {padding}")
        self.head = nn.Sequential(nn.Dropout(fc_dropout), nn.Flatten(), nn.Linear(filters[-1] * side * side, hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(fc_dropout), nn.Linear(hidden, num_classes))
        self.exit_after = [int(k) for k in exit_after]
        exits = []
        for k in self.exit_after:
            s = _spatial(_spatial(input_size, padding, k), padding, 1)
            exits.append(nn.Sequential(nn.Conv2d(filters[k - 1], 128, 3, padding=1 if padding == "same" else 0),
                                       nn.ReLU(inplace=True), nn.MaxPool2d(2, 2), nn.Flatten(),
                                       nn.Linear(128 * s * s, num_classes)))
        self.exits = nn.ModuleList(exits)
        if init == "keras":  # the original is Keras: Glorot-uniform kernels, zero biases
            init_keras(self)

    def forward_exits(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in self.exit_after:
                outs.append(self.exits[self.exit_after.index(i)](x))
        outs.append(self.head(x))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_exits(x)[-1]


def multi_exit_loss(exit_logits: Sequence[torch.Tensor], target: torch.Tensor, exit_weights: Sequence[float],
                    class_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_k w_k CE_k (class-weighted); the paper: 0.5 CE(exit1) + 0.5 CE(exit2) + 1 CE(final)."""
    if len(exit_logits) != len(exit_weights):
        raise ValueError(f"{len(exit_logits)} exits but {len(exit_weights)} exit weights")
    return sum(w * F.cross_entropy(z, target, weight=class_weights) for w, z in zip(exit_weights, exit_logits))


class DeepEnsemble(nn.Module):
    """Members loaded from checkpoints (Lightning ``state_dict`` with ``network.`` prefix, or a bare state
    dict; ``checkpoints`` a list or its JSON string, as a study's ``{ckpts:member*}`` gives it); ``forward``
    returns the log of the mean member probability as logits, ``member_probs`` the stacked (N, B, C).

    Without checkpoints or ``members`` it holds ``n_members`` untrained base CNNs (configs are then built
    and checked without trained members) and ``from_checkpoints`` is False: ``POCUSOODTask`` refuses to
    score such an ensemble. ``n_members`` given with checkpoints must match their number."""

    def __init__(self, checkpoints: Sequence[str] | str = (), n_members: Optional[int] = None,
                 members: Optional[Sequence[nn.Module]] = None, in_channels: int = 1, num_classes: int = 3,
                 input_size: int = 180, padding: str = "same"):
        super().__init__()
        network_kwargs = dict(in_channels=in_channels, num_classes=num_classes, input_size=input_size, padding=padding)
        if isinstance(checkpoints, str):
            checkpoints = json.loads(checkpoints)
        nets = list(members or [])
        for path in checkpoints:
            state = torch.load(path, map_location="cpu", weights_only=False)
            state = state.get("state_dict", state)
            state = {k[len("network."):]: v for k, v in state.items() if k.startswith("network.")} or state
            net = POCUSCNN(**network_kwargs)
            net.load_state_dict(state)
            nets.append(net)
        self.from_checkpoints = bool(nets)
        if nets and n_members is not None and len(nets) != n_members:
            raise ValueError(f"DeepEnsemble: n_members {n_members} but {len(nets)} members/checkpoints given")
        if not nets:
            if not n_members:
                raise ValueError("DeepEnsemble needs members, checkpoints or n_members")
            nets = [POCUSCNN(**network_kwargs) for _ in range(n_members)]
        self.members = nn.ModuleList(nets)

    def member_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).softmax(-1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member_probs(x).mean(0).clamp_min(1e-12).log()


# ---------------------------------------------------------------- scores (higher = more in-distribution)
def softmax_score(logits: torch.Tensor) -> torch.Tensor:
    return logits.softmax(-1).amax(-1)


def energy_score(logits: torch.Tensor, temperature: float = 1e-3) -> torch.Tensor:
    """S = -E = T logsumexp(f / T)."""
    return temperature * torch.logsumexp(logits / temperature, dim=-1)


def ensemble_uncertainty(member_probs: torch.Tensor, kind: str) -> torch.Tensor:
    """member_probs (N, B, C). var: sum_c mean_n (f - F)^2; wvar: sum_c F_c mean_n (f - F)^2;
    epi: H(F) - mean_n H(f^(n)) (mutual information)."""
    mean = member_probs.mean(0)
    var = ((member_probs - mean) ** 2).mean(0)
    if kind == "var":
        return var.sum(-1)
    if kind == "wvar":
        return (mean * var).sum(-1)
    if kind == "epi":
        xlogx = lambda p: torch.where(p > 0, p * p.clamp_min(1e-30).log(), torch.zeros_like(p))
        return -xlogx(mean).sum(-1) + xlogx(member_probs).sum(-1).mean(0)
    raise ValueError(f"unknown ensemble uncertainty {kind!r} (var, wvar, epi)")


def empirical_cdf(train_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """F(s) = fraction of training scores <= s."""
    ref = torch.sort(train_scores.flatten().double()).values
    return torch.searchsorted(ref, scores.double(), right=True).float() / ref.numel()


def multi_level_score(exit_scores: Sequence[torch.Tensor], train_exit_scores: Sequence[torch.Tensor]) -> torch.Tensor:
    """min_k F_k(S_k): thresholding it at tau is 'S_k > F_k^-1(tau) at every exit', each exit rejecting the
    same training fraction."""
    return torch.stack([empirical_cdf(t, s) for s, t in zip(exit_scores, train_exit_scores)]).amin(0)


# ---------------------------------------------------------------- metrics
def train_quantile_threshold(train_scores: torch.Tensor, tpr: float) -> float:
    """The threshold accepting (score >= threshold) a fraction ``tpr`` of the training scores."""
    return float(torch.quantile(train_scores.double().flatten(), 1.0 - tpr))


def fpr_at_train_tpr(train_scores: torch.Tensor, ood_scores: torch.Tensor, tpr: float) -> float:
    """Fraction of OOD samples accepted as ID at the training-quantile threshold."""
    return float((ood_scores.double() >= train_quantile_threshold(train_scores, tpr)).float().mean())


def ood_auroc(id_scores: torch.Tensor, ood_scores: torch.Tensor) -> float:
    """ID = positive class; no sign flip (an AUROC below 0.5 is reported as is)."""
    scores = torch.cat([id_scores, ood_scores]).float()
    target = torch.cat([torch.ones_like(id_scores), torch.zeros_like(ood_scores)]).long()
    return float(BinaryAUROC()(scores, target))


def bootstrap_auroc_ci(id_scores: torch.Tensor, ood_scores: torch.Tensor, n: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the AUROC, resampling the ID set with replacement ``n`` times (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    m = id_scores.numel()
    aucs = [ood_auroc(id_scores[torch.randint(0, m, (m,), generator=gen)], ood_scores) for _ in range(n)]
    lo, hi = np.quantile(np.array(aucs), [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def leave_out_cancer_auc(p_malignant: torch.Tensor, labels: torch.Tensor, test_scores: torch.Tensor,
                         train_scores: torch.Tensor, leave_out: float, malignant: int = 2) -> float:
    """Malignant vs rest AUROC on the test samples kept at the threshold removing ``leave_out`` of the
    training data (score >= the ``leave_out`` quantile of the training scores)."""
    keep = torch.ones_like(test_scores, dtype=torch.bool) if leave_out <= 0 else \
        test_scores.double() >= train_quantile_threshold(train_scores, 1.0 - leave_out)
    target = (labels[keep] == malignant).long()
    if target.numel() == 0 or target.min() == target.max():
        return float("nan")
    return float(BinaryAUROC()(p_malignant[keep].float(), target))


# ---------------------------------------------------------------- the task
from lightning_modules.tasks.classification import ClassificationTask  # noqa: E402


class POCUSOODTask(ClassificationTask):
    """ClassificationTask with the paper's scorers and evaluation.

    Args (besides ClassificationTask's):
        scorer: ``softmax`` (max-softmax), ``energy`` (S = -E at ``temperature``, final exit), ``multilevel``
            (min_k F_k(S_k) over the exits' energies), or ``ens_var`` / ``ens_wvar`` / ``ens_epi`` (a
            DeepEnsemble network).
        exit_weights: multi-exit loss weights (early exits first); None: CE of the final output.
        tpr_levels, leave_out, bootstrap, bootstrap_seed: the FPR@TPR levels (training-score quantiles), the
            cancer-AUC leave-out fractions, the AUROC bootstrap resamples of the ID test set.
        malignant: the class index of the cancer-vs-rest AUC.
        checkpoint: "best" (``best.ckpt`` by the validation metric) or "last" (no monitor: the last epoch).
        score_exit: with ``scorer: energy``, score with this exit's energy (0 = the first early exit, -1 = the
            final output) instead of the final one: Table 4's per-exit rows.
    Logs ``test/<ood>/auroc_train``, ``.../auroc_ci_low|high``, ``.../fpr95_train``, ``.../fpr80_train`` and
    ``test/cancer_auc_lo<pct>`` next to ClassificationTask's ``test/<ood>/ood_*``.
    """

    def __init__(self, *args, scorer: str = "softmax", temperature: float = 1e-3,
                 exit_weights: Optional[list[float]] = None, tpr_levels: Sequence[float] = (0.95, 0.80),
                 leave_out: Sequence[float] = (0.0, 0.05, 0.20), bootstrap: int = 1000, bootstrap_seed: int = 0,
                 malignant: int = 2, checkpoint: str = "best", score_exit: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if scorer not in ("softmax", "energy", "multilevel", "ens_var", "ens_wvar", "ens_epi"):
            raise ValueError(f"unknown scorer {scorer!r}")
        if score_exit is not None and scorer != "energy":
            raise ValueError("score_exit (one exit's energy, Table 4) goes with scorer: energy")
        self.score_exit = score_exit
        if checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
        if checkpoint == "last":  # best.ckpt is then the last epoch's (no monitored metric): the card's choice
            self.monitor = None
        self.scorer, self.temperature, self.exit_weights = scorer, temperature, exit_weights
        self.tpr_levels, self.leave_out = list(tpr_levels), list(leave_out)
        self.bootstrap, self.bootstrap_seed, self.malignant = bootstrap, bootstrap_seed, malignant
        self._train_raw: Optional[list[torch.Tensor]] = None

    # -- training
    def on_fit_start(self) -> None:
        if self.scorer.startswith("ens_"):
            raise ValueError("the ensemble scorers test members trained one by one: train them with the base config "
                             "(experiments/pocus_ood/pocus_ensemble_study.yaml does both), then `run.py test` with "
                             "network DeepEnsemble(checkpoints=...)")
        super().on_fit_start()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not self.exit_weights:
            return super().training_step(batch, batch_idx)
        x, y = batch[self.input_key], batch[self.target_key].long()
        loss = multi_exit_loss(self.network.forward_exits(x), y, self.exit_weights, self.class_weights)
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    # -- scoring: raw per-exit / per-method ID-ness scores
    def raw_scores(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.scorer.startswith("ens_"):
            probs = self.network.member_probs(x)
            return probs.mean(0).clamp_min(1e-12).log(), [-ensemble_uncertainty(probs, self.scorer[4:])]
        if self.scorer == "multilevel":
            outs = self.network.forward_exits(x)
            return outs[-1], [energy_score(z, self.temperature) for z in outs]
        if self.score_exit is not None:  # one exit's energy (Table 4); classification stays on the final exit
            outs = self.network.forward_exits(x)
            return outs[-1], [energy_score(outs[self.score_exit], self.temperature)]
        logits = self(x)
        s = softmax_score(logits) if self.scorer == "softmax" else energy_score(logits, self.temperature)
        return logits, [s]

    def combine(self, raw: list[torch.Tensor]) -> torch.Tensor:
        if self.scorer == "multilevel" and self._train_raw is not None:
            return multi_level_score(raw, [t.to(raw[0].device) for t in self._train_raw])
        return raw[-1]

    def logits_and_features(self, x):
        logits, raw = self.raw_scores(x)
        return logits, self.combine(raw)

    def ood_score(self, logits, features=None):
        return -features.float()  # the framework's score is higher = more OOD

    # -- test
    @torch.no_grad()
    def _score_set(self, dataset) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        from torch.utils.data import DataLoader
        raws, probs, labels = [], [], []
        for batch in DataLoader(dataset, batch_size=64):
            logits, raw = self.raw_scores(batch[self.input_key].to(self.device))
            raws.append(torch.stack(raw).cpu()); probs.append(logits.softmax(-1).cpu())
            labels.append(batch[self.target_key].cpu())
        return list(torch.cat(raws, 1)), torch.cat(probs), torch.cat(labels)

    def on_test_start(self) -> None:
        if self.scorer.startswith("ens_") and not getattr(self.network, "from_checkpoints", False):
            raise ValueError("the ensemble scorers need DeepEnsemble(checkpoints=[...]) of trained members; this "
                             "ensemble was built untrained (no checkpoints)")
        super().on_test_start()
        was = self.training
        self.eval()
        dm = self.trainer.datamodule
        train_set = getattr(dm, "train_eval_set", None)
        if train_set is None:
            raise ValueError("POCUSOODTask needs a datamodule with train_eval_set (the training split, no augmentation)")
        self._train_raw = None
        self._train_raw, _, _ = self._score_set(train_set)
        self._train_scores = self.combine(self._train_raw).cpu()
        self._extra_sets = {"test": dm.test_set, **getattr(dm, "ood_test_sets", {})}
        self.train(was)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        raw, probs, labels = self._score_set(self._extra_sets["test"])
        id_scores = self.combine(raw).cpu()
        out = {}
        for lo in self.leave_out:
            out[f"test/cancer_auc_lo{round(lo * 100)}"] = leave_out_cancer_auc(
                probs[:, self.malignant], labels, id_scores, self._train_scores, lo, self.malignant)
        for name, ds in self._extra_sets.items():
            if name == "test":
                continue
            ood = self.combine(self._score_set(ds)[0]).cpu()
            out[f"test/{name}/auroc_train"] = ood_auroc(id_scores, ood)
            if self.bootstrap:
                lo_ci, hi_ci = bootstrap_auroc_ci(id_scores, ood, self.bootstrap, self.bootstrap_seed)
                out[f"test/{name}/auroc_ci_low"], out[f"test/{name}/auroc_ci_high"] = lo_ci, hi_ci
            for t in self.tpr_levels:
                out[f"test/{name}/fpr{round(t * 100)}_train"] = fpr_at_train_tpr(self._train_scores, ood, t)
        self.log_dict(out, add_dataloader_idx=False)


def sample_member_hparams(index: int, seed: int = 0) -> dict:
    """Table 2 hyperparameters of ensemble member ``index`` (deterministic): leave-out U(0, 0.15), lr
    log-uniform in [1e-4, 1e-3], Adam or RMSprop, epochs 25-85, batch size in {8, 16, 32, 64, 128}."""
    rng = np.random.default_rng([seed, index])
    return {"leave_out": float(rng.uniform(0.0, 0.15)), "lr": float(10 ** rng.uniform(-4, -3)),
            "optimizer": ["torch.optim.Adam", "torch.optim.RMSprop"][int(rng.integers(2))],
            "epochs": int(rng.integers(25, 86)), "batch_size": int(rng.choice([8, 16, 32, 64, 128]))}
