"""The reinforcement-learning tractography family: an agent tracks streamlines in an fODF environment
(``tasks/tracking_env.py``), and is scored by tracking a bundle at test time.

- ``TractographyTask``: what every tracking policy shares. Test: bidirectional tracking from the datamodule's test
  seeds (batches ``{"subject": (B,), "seed": (B, 3)}``) with ``tracking_policy()`` and with the ``baselines``
  (``det``: peak following, ``prob``: fODF sampling, ``straight``: a random first direction then straight on,
  ``random``), optional
  FSS-style cleaning (streamlines farther than ``clean_mdf_mm`` from every reference streamline dropped), then per
  subject the streamlines' voxel mask vs the reference bundle mask: ``test/dice``, ``test/overlap``,
  ``test/overreach`` (mean +- std over subjects), ``test/streamlines``, and ``test/<baseline>/...``; each
  tractogram is written as ``tractograms/<subject>_<policy>.trk`` in the run folder (dipy's StatefulTractogram).
- ``TD3Task``: Track-to-Learn's TD3 (Fujimoto et al. 2018) with manual optimisation. Each training batch is a
  batch of seeds (episodes): the actor tracks them all at once with Gaussian exploration noise, the transitions go
  to a replay buffer on the device, then ``updates_per_rollout`` TD3 updates (twin critics, target policy
  smoothing, delayed actor and target updates). Validation tracks the validation seeds without noise:
  ``val/return`` (mean episode return, the checkpoint metric) and ``val/length``.
- ``SequencePolicyTask``: an offline sequence policy (the Decision Transformer of Tract-RLFormer) trained on a
  level-1 agent's roll-outs (windows ``{"returns", "states", "actions", "timesteps", "mask"}``) with the 5-step
  angular loss (Eq. 2); ``val/angular_error`` (degrees) with the repeat-the-previous-action baseline beside it;
  tracks autoregressively at test time conditioned on a target return. ``init_from`` loads a pre-trained checkpoint
  (non-strict: blocks it lacks stay fresh) and ``freeze_pretrained`` trains only the fresh blocks (fine-tuning).

The datamodule (``datamodules.tractography.TractographyDataModule``) owns the subjects and the environment's
settings: the task asks it for ``make_env(index, device)``.
"""
from __future__ import annotations

import os
from typing import Literal, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from lightning_modules.losses.tractography import multi_step_angular_loss, step_angles
from lightning_modules.metrics.tractography import bundle_scores, streamlines_to_mask
from lightning_modules.tasks.base import BaseTask
from lightning_modules.tasks.tracking_env import (FeedForwardPolicy, FODFSampler, PeakFollower, RandomPolicy,
                                                  StraightLinePolicy, TrackingEnv, rollout, track)

#: batch keys of the family: seeds to track from, and offline trajectory windows
SUBJECT, SEED = "subject", "seed"
RETURNS, STATES, ACTIONS, TIMESTEPS, STEP_MASK = "returns", "states", "actions", "timesteps", "mask"
BASELINES = ("det", "prob", "straight", "random")


class MLPActor(nn.Module):
    """Track-to-Learn's actor: state -> hidden (ReLU) ... -> 3, tanh."""

    def __init__(self, state_dim: int = 334, action_dim: int = 3, hidden: Sequence[int] = (1024, 1024)):
        super().__init__()
        layers, width = [], state_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, action_dim), nn.Tanh())

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class MLPCritic(nn.Module):
    """Q(s, a): (state, action) -> hidden (ReLU) ... -> 1, optionally tanh (the paper's critic, after [21])."""

    def __init__(self, state_dim: int = 334, action_dim: int = 3, hidden: Sequence[int] = (1024, 1024),
                 output_tanh: bool = False):
        super().__init__()
        layers, width = [], state_dim + action_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        layers.append(nn.Linear(width, 1))
        if output_tanh:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=-1)).squeeze(-1)


class TractographyTask(BaseTask):
    """Test-time tracking and bundle scoring shared by every tracking policy (see the module docstring)."""

    monitor = "val/return"
    monitor_mode = "max"

    def __init__(self, baselines: Sequence[str] = ("det", "straight"), clean_mdf_mm: Optional[float] = None,
                 save_tractograms: bool = True, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 1):
        super().__init__(optimizer, lr_scheduler, scheduler_interval, figure_every_n_epochs)
        unknown = set(baselines) - set(BASELINES)
        if unknown:
            raise ValueError(f"unknown baselines {sorted(unknown)}: choose from {BASELINES}")
        self.baselines = list(baselines)
        self.clean_mdf_mm = clean_mdf_mm
        self.save_tractograms = save_tractograms
        self._envs: dict[int, TrackingEnv] = {}
        self._tracked: dict[str, dict[int, list]] = {}

    # -- environments -------------------------------------------------------------------------------------
    @property
    def datamodule(self):
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "make_env"):
            raise RuntimeError(f"{type(self).__name__} tracks in the environments of a TractographyDataModule "
                               "(datamodules/tractography.py): pass one to the Trainer")
        return datamodule

    def env(self, subject: int) -> TrackingEnv:
        env = self._envs.get(subject)
        if env is None or env.device != self.device:
            env = self._envs[subject] = self.datamodule.make_env(subject, self.device)
        return env

    def by_subject(self, batch: dict):
        """(subject index, seeds) for each subject in a seed batch."""
        subjects = torch.as_tensor(batch[SUBJECT])
        for subject in torch.unique(subjects).tolist():
            yield subject, batch[SEED][(subjects == subject).to(batch[SEED].device)]

    # -- what a policy provides ---------------------------------------------------------------------------
    def tracking_policy(self, env: TrackingEnv):
        """The policy that tracks at test time (a ``tracking_env.Policy``)."""
        raise NotImplementedError

    def baseline_policy(self, name: str, env: TrackingEnv):
        generator = torch.Generator().manual_seed(0)
        return {"det": lambda: PeakFollower(env), "prob": lambda: FODFSampler(env, generator=generator),
                "straight": lambda: StraightLinePolicy(env.n_previous, generator),
                "random": lambda: RandomPolicy(generator)}[name]()

    # -- test ------------------------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._tracked = {name: {} for name in ["policy", *self.baselines]}

    def test_step(self, batch: dict, batch_idx: int) -> None:
        for subject, seeds in self.by_subject(batch):
            env = self.env(subject)
            policies = {"policy": self.tracking_policy(env)}
            policies.update({name: self.baseline_policy(name, env) for name in self.baselines})
            for name, policy in policies.items():
                self._tracked[name].setdefault(subject, []).extend(track(env, policy, seeds))

    def on_test_epoch_end(self) -> None:
        dm = self.datamodule
        subjects = dm.indices("test") if hasattr(dm, "indices") else []  # every rank loops over all (DDP reduce)
        subjects = subjects or sorted({s for lines in self._tracked.values() for s in lines})
        for name, per_subject in self._tracked.items():
            scores = {"dice": [], "overlap": [], "overreach": [], "streamlines": []}
            for subject in subjects:
                info = dm.get_subject(subject)
                lines = per_subject.get(subject, [])
                if self.clean_mdf_mm is not None and info.reference:
                    lines = clean_by_mdf(lines, info.reference, self.clean_mdf_mm, info.affine)
                if self.save_tractograms and self.trainer.is_global_zero:
                    save_tractogram(lines, info, os.path.join(self.trainer.default_root_dir, "tractograms",
                                                              f"{info.name}_{name}.trk"))
                mask = torch.as_tensor(streamlines_to_mask(lines, info.shape), device=self.device)
                if self.trainer.world_size > 1:
                    mask = self.trainer.strategy.reduce(mask.float(), reduce_op="sum") > 0
                count = torch.tensor(float(len(lines)), device=self.device)
                if self.trainer.world_size > 1:
                    count = self.trainer.strategy.reduce(count, reduce_op="sum")
                scores["streamlines"].append(float(count))
                if info.bundle_mask is not None:
                    for key, value in bundle_scores(mask.cpu().numpy(), info.bundle_mask).items():
                        scores[key].append(value)
            prefix = "test" if name == "policy" else f"test/{name}"
            self.log_mean_std(prefix, {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items() if v})
        self._tracked = {}


def clean_by_mdf(lines: list, reference: list, threshold_mm: float, affine: np.ndarray, n_points: int = 20) -> list:
    """FSS-style cleaning: keep the streamlines whose minimum MDF distance (mm, both resampled to ``n_points``)
    to the reference streamlines is at most ``threshold_mm`` (dipy's ``bundles_distances_mdf``)."""
    from dipy.tracking.streamline import bundles_distances_mdf, set_number_of_points

    if not lines:
        return lines
    to_mm = lambda ls: [np.asarray(l, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3] for l in ls]  # noqa: E731
    a = set_number_of_points(to_mm(lines), n_points)
    b = set_number_of_points(to_mm(reference), n_points)
    distances = bundles_distances_mdf(a, b).min(axis=1)
    return [line for line, d in zip(lines, distances) if d <= threshold_mm]


def save_tractogram(lines: list, subject, path: str) -> str:
    """Write voxel-space streamlines as .trk in the subject's space (dipy StatefulTractogram, ``Space.VOX``)."""
    import nibabel as nib
    from dipy.io.stateful_tractogram import Space, StatefulTractogram
    from dipy.io.streamline import save_trk

    os.makedirs(os.path.dirname(path), exist_ok=True)
    reference = nib.Nifti1Image(np.zeros(subject.shape, dtype=np.uint8), subject.affine)
    sft = StatefulTractogram([np.asarray(l, dtype=np.float32) for l in lines], reference, Space.VOX)
    save_trk(sft, path, bbox_valid_check=False)
    return path


class ReplayBuffer:
    """A ring buffer of transitions (s, a, r, s', done) on the module's device."""

    def __init__(self, capacity: int, state_dim: int, action_dim: int = 3):
        self.capacity, self.state_dim, self.action_dim = capacity, state_dim, action_dim
        self.size = self.position = 0
        self.data: Optional[dict] = None

    def _allocate(self, device) -> None:
        c, s = self.capacity, self.state_dim
        self.data = {"state": torch.zeros(c, s, device=device),
                     "action": torch.zeros(c, self.action_dim, device=device),
                     "reward": torch.zeros(c, device=device), "next_state": torch.zeros(c, s, device=device),
                     "done": torch.zeros(c, device=device)}

    def add(self, **batch: torch.Tensor) -> None:
        n = len(batch["state"])
        if self.data is None or self.data["state"].device != batch["state"].device:
            self._allocate(batch["state"].device)
        if n >= self.capacity:
            batch = {k: v[-self.capacity:] for k, v in batch.items()}
            n = self.capacity
        index = (self.position + torch.arange(n, device=batch["state"].device)) % self.capacity
        for key, value in batch.items():
            self.data[key][index] = value.to(self.data[key].dtype)
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> dict:
        index = torch.randint(0, self.size, (n,), generator=generator).to(self.data["state"].device)
        return {k: v[index] for k, v in self.data.items()}


class TD3Task(TractographyTask):
    """TD3 on the tracking environment (see the module docstring).

    Args:
        actor, critic: the networks (two critics are built from ``critic``'s configuration by deep copy; the
            targets likewise).
        gamma: discount (the paper: 0.776); tau: target averaging; action_noise: exploration std (the paper's
            sigma 0.334); target_noise, noise_clip: target policy smoothing; policy_delay: critic updates per actor
            update.
        replay_size, replay_batch_size: the buffer and the update batch; updates_per_rollout: TD3 updates per
            batch of episodes (None: one per environment step of the batch, Track-to-Learn's cadence);
            warmup_transitions: no update before the buffer holds this many.
    """

    def __init__(self, actor: nn.Module, critic: nn.Module, gamma: float = 0.776, tau: float = 0.005,
                 action_noise: float = 0.334, target_noise: float = 0.2, noise_clip: float = 0.5,
                 policy_delay: int = 2, replay_size: int = 1_000_000, replay_batch_size: int = 4096,
                 updates_per_rollout: Optional[int] = None, warmup_transitions: int = 0,
                 baselines: Sequence[str] = ("det", "straight"), clean_mdf_mm: Optional[float] = None,
                 save_tractograms: bool = True, optimizer: OptimizerCallable = torch.optim.Adam,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "epoch", figure_every_n_epochs: int = 1):
        super().__init__(baselines, clean_mdf_mm, save_tractograms, optimizer, lr_scheduler, scheduler_interval,
                         figure_every_n_epochs)
        self.save_config_hyperparameters()
        import copy

        self.automatic_optimization = False
        self.actor = actor
        self.critic_1, self.critic_2 = critic, copy.deepcopy(critic)
        self.target_actor = copy.deepcopy(actor).requires_grad_(False)
        self.target_critic_1 = copy.deepcopy(critic).requires_grad_(False)
        self.target_critic_2 = copy.deepcopy(critic).requires_grad_(False)
        for layer in self.critic_2.modules():  # an independent initialisation of the twin
            if layer is not self.critic_2 and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        self.target_critic_2.load_state_dict(self.critic_2.state_dict())
        self.gamma, self.tau = gamma, tau
        self.action_noise, self.target_noise, self.noise_clip = action_noise, target_noise, noise_clip
        self.policy_delay = policy_delay
        self.replay_batch_size, self.updates_per_rollout = replay_batch_size, updates_per_rollout
        self.warmup_transitions = warmup_transitions
        self.state_dim = next(p for p in actor.parameters()).shape[1]
        self.buffer = ReplayBuffer(replay_size, self.state_dim)
        self.updates = 0

    def configure_optimizers(self):
        actor_opt = self.optimizer_factory(self.actor.parameters())
        critic_opt = self.optimizer_factory(list(self.critic_1.parameters()) + list(self.critic_2.parameters()))
        return [actor_opt, critic_opt]

    def tracking_policy(self, env: TrackingEnv):
        return FeedForwardPolicy(self.actor)

    @torch.no_grad()
    def collect(self, batch: dict) -> tuple[float, float]:
        """Roll out the noisy actor from the batch's seeds; transitions into the buffer. Returns (mean episode
        return, env steps taken)."""
        returns, steps = [], 0
        for subject, seeds in self.by_subject(batch):
            env = self.env(subject)
            run = rollout(env, FeedForwardPolicy(self.actor, self.action_noise), seeds, keep_states=True)
            valid = torch.arange(run.actions.shape[1], device=self.device)[None] < run.transitions[:, None]
            self.buffer.add(state=run.states[valid], action=run.actions[valid], reward=run.rewards[valid],
                            next_state=run.next_states[valid], done=run.done[valid].float())
            returns.append(run.returns)
            steps = max(steps, run.actions.shape[1])
        return float(torch.cat(returns).mean()), steps

    def td3_update(self) -> dict[str, torch.Tensor]:
        actor_opt, critic_opt = self.optimizers()
        b = self.buffer.sample(self.replay_batch_size)
        with torch.no_grad():
            noise = (torch.randn_like(b["action"]) * self.target_noise).clamp(-self.noise_clip, self.noise_clip)
            next_action = (self.target_actor(b["next_state"]) + noise).clamp(-1, 1)
            target_q = torch.min(self.target_critic_1(b["next_state"], next_action),
                                 self.target_critic_2(b["next_state"], next_action))
            target = b["reward"] + self.gamma * (1 - b["done"]) * target_q
        critic_loss = (F.mse_loss(self.critic_1(b["state"], b["action"]), target)
                       + F.mse_loss(self.critic_2(b["state"], b["action"]), target))
        critic_opt.zero_grad()
        self.manual_backward(critic_loss)
        critic_opt.step()
        out = {"critic_loss": critic_loss.detach()}
        self.updates += 1
        if self.updates % self.policy_delay == 0:
            actor_loss = -self.critic_1(b["state"], self.actor(b["state"])).mean()
            actor_opt.zero_grad()
            self.manual_backward(actor_loss)
            actor_opt.step()
            with torch.no_grad():
                for net, target_net in ((self.actor, self.target_actor), (self.critic_1, self.target_critic_1),
                                        (self.critic_2, self.target_critic_2)):
                    for p, tp in zip(net.parameters(), target_net.parameters()):
                        tp.lerp_(p, self.tau)
            out["actor_loss"] = actor_loss.detach()
        return out

    def training_step(self, batch: dict, batch_idx: int) -> None:
        mean_return, steps = self.collect(batch)
        self.log("train/return", mean_return, prog_bar=True, batch_size=len(batch[SEED]))
        if self.buffer.size < max(self.warmup_transitions, 1):
            return
        logs: dict[str, list] = {}
        for _ in range(self.updates_per_rollout or steps):
            for key, value in self.td3_update().items():
                logs.setdefault(key, []).append(value)
        self.log_dict({f"train/{k}": torch.stack(v).mean() for k, v in logs.items()}, batch_size=len(batch[SEED]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        for subject, seeds in self.by_subject(batch):
            run = rollout(self.env(subject), FeedForwardPolicy(self.actor), seeds)
            self.log("val/return", run.returns.mean(), batch_size=len(seeds))
            self.log("val/length", run.transitions.float().mean(), batch_size=len(seeds))


class DecisionTransformerPolicy:
    """Autoregressive tracking with a sequence policy (``TractRLFormer``'s forward signature): every alive
    streamline keeps its last K (R, s, a) steps; R_0 = ``target_return`` / ``rtg_scale``, R_{t+1} = R_t - r_t /
    ``rtg_scale`` (Decision Transformer evaluation). All episodes of a roll-out step together, so the window of the
    alive ones ends at the current step t."""

    def __init__(self, network: nn.Module, target_return: float = 300.0, rtg_scale: float = 100.0,
                 context_length: Optional[int] = None):
        self.network = network
        self.target_return, self.rtg_scale = target_return, rtg_scale
        self.k = context_length or network.context_length

    def start(self, n: int, device: torch.device) -> None:
        k, s = self.k, self.network.state_dim
        self.states = torch.zeros(n, k, s, device=device)
        self.actions = torch.zeros(n, k, 3, device=device)
        self.returns = torch.zeros(n, k, 1, device=device)
        self.current_return = torch.full((n,), self.target_return / self.rtg_scale, device=device)

    def act(self, states: torch.Tensor, index: torch.Tensor, t: int) -> torch.Tensor:
        k = self.k
        for buffer, new in ((self.states, states), (self.actions, torch.zeros(len(index), 3, device=states.device)),
                            (self.returns, self.current_return[index, None])):
            buffer[index] = torch.cat([buffer[index, 1:], new[:, None]], dim=1)
        steps = torch.arange(t - k + 1, t + 1, device=states.device)
        mask = (steps >= 0).expand(len(index), k)
        timesteps = steps.clamp_min(0).expand(len(index), k)
        actions = self.network(self.returns[index], self.states[index], self.actions[index], timesteps, mask)
        return actions[:, -1]

    def observe(self, index: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> None:
        self.actions[index, -1] = actions
        self.current_return[index] -= rewards / self.rtg_scale


class SequencePolicyTask(TractographyTask):
    """Offline training of a sequence policy on roll-out windows with Eq. 2, tracking with it at test time (see the
    module docstring).

    Args:
        network: the sequence model (``lightning_modules.tract_rlformer.TractRLFormer``).
        loss_radius, loss_reduction: Eq. 2's neighbourhood (2: 5 steps) and reduction (the code: sum).
        target_return, rtg_scale: R_0 at test time (the paper: 300) and the returns' scale (code: 100); the
            datamodule's windows carry returns already divided by its ``rtg_scale``, which must match.
        init_from: a checkpoint whose ``network.*`` weights (and state statistics) initialise the network
            (pre-training -> fine-tuning); keys it lacks (an appended block) stay fresh.
        freeze_pretrained: train only what ``init_from`` did not provide.
        use_data_statistics: z-score states with the training roll-outs' mean/std (off when ``init_from`` gave them).
    """

    monitor = "val/angular_error"
    monitor_mode = "min"

    def __init__(self, network: nn.Module, loss_radius: int = 2, loss_reduction: Literal["sum", "mean"] = "sum",
                 target_return: float = 300.0, rtg_scale: float = 100.0, init_from: Optional[str] = None,
                 freeze_pretrained: bool = False, use_data_statistics: bool = True,
                 baselines: Sequence[str] = ("det", "straight"), clean_mdf_mm: Optional[float] = None,
                 save_tractograms: bool = True, optimizer: OptimizerCallable = torch.optim.AdamW,
                 lr_scheduler: Optional[LRSchedulerCallable] = None,
                 scheduler_interval: Literal["epoch", "step"] = "step", figure_every_n_epochs: int = 1):
        super().__init__(baselines, clean_mdf_mm, save_tractograms, optimizer, lr_scheduler, scheduler_interval,
                         figure_every_n_epochs)
        self.save_config_hyperparameters()
        self.network = network
        self.loss_radius, self.loss_reduction = loss_radius, loss_reduction
        self.target_return, self.rtg_scale = target_return, rtg_scale
        self.init_from, self.freeze_pretrained = init_from, freeze_pretrained
        self.use_data_statistics = use_data_statistics
        self._initialised = False

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.init_from and not self._initialised:
            self.load_pretrained(self.init_from)
        self._initialised = True

    def load_pretrained(self, path: str) -> list[str]:
        """Load ``network.*`` weights of a checkpoint (non-strict); with ``freeze_pretrained`` only the parameters
        it lacked stay trainable. Returns the fresh parameter names."""
        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        weights = {k[len("network."):]: v for k, v in state.items() if k.startswith("network.")}
        missing, unexpected = self.network.load_state_dict(weights, strict=False)
        if unexpected:
            raise ValueError(f"{path} has weights this network lacks: {unexpected[:5]}")
        if self.freeze_pretrained:
            for name, p in self.network.named_parameters():
                p.requires_grad_(name in missing)
        self.use_data_statistics = self.use_data_statistics and "state_mean" in missing
        return [name for name in missing if not name.startswith("state_")]

    def optimizer_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if self.use_data_statistics and getattr(dm, "state_mean", None) is not None:
            self.network.set_state_statistics(dm.state_mean, dm.state_std)
        if dm is not None and getattr(dm, "rtg_scale", self.rtg_scale) != self.rtg_scale:
            raise ValueError(f"the datamodule scales returns by {dm.rtg_scale}, the task by {self.rtg_scale}")

    def predict_actions(self, batch: dict) -> torch.Tensor:
        return self.network(batch[RETURNS], batch[STATES], batch[ACTIONS], batch[TIMESTEPS], batch[STEP_MASK])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        predicted = self.predict_actions(batch)
        loss = multi_step_angular_loss(predicted, batch[ACTIONS], batch[STEP_MASK], self.loss_radius,
                                       self.loss_reduction)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(predicted))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        predicted = self.predict_actions(batch)
        mask = batch[STEP_MASK].bool()
        loss = multi_step_angular_loss(predicted, batch[ACTIONS], mask, self.loss_radius, self.loss_reduction)
        angles = torch.rad2deg(step_angles(predicted, batch[ACTIONS], eps=0.0))
        # baseline: repeat the previous (target) action
        repeat = torch.rad2deg(step_angles(batch[ACTIONS][:, :-1], batch[ACTIONS][:, 1:], eps=0.0))
        pair = mask[:, :-1] & mask[:, 1:]
        n = int(mask.sum())
        self.log("val/loss", loss, batch_size=len(predicted))
        self.log("val/angular_error", angles[mask].mean(), prog_bar=True, batch_size=max(n, 1))
        self.log("val/angular_error_repeat_previous", repeat[pair].mean(), batch_size=max(int(pair.sum()), 1))

    def tracking_policy(self, env: TrackingEnv):
        return DecisionTransformerPolicy(self.network, self.target_return, self.rtg_scale)
