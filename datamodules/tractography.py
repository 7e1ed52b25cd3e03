"""Tractography data for the RL tractography family (``lightning_modules/tasks/reinforcement.py``).

``TractographyDataModule`` owns the subjects (``load_subject`` -> ``TractographySubject``: fODF SH, peaks, masks,
reference bundle) and the environment's settings (step, angle, lengths, state), and serves:

- test (every mode): the seeds of the test subjects, ``test_seeds_per_voxel`` per seed-mask voxel, as batches
  ``{"subject": (B,), "seed": (B, 3)}`` (voxel coordinates) that the task tracks from;
- ``mode: episodes`` (online RL, e.g. TD3): training batches of seeds from the training subjects
  (``episodes_per_epoch`` drawn afresh each epoch from ``seeds_per_voxel`` per voxel), validation seeds of the
  validation subjects (at most ``val_seeds``);
- ``mode: trajectories`` (offline sequence policy, e.g. Tract-RLFormer): a level-1 ``expert`` (``peaks``: peak
  following with Gaussian noise ``expert_noise``; or a ``TD3Task`` checkpoint path) tracks both directions from
  every seed of each training (validation) subject; per subject the ``trajectories_per_subject`` kept are the
  longest half (``longest_fraction``) plus a random draw of the rest (the paper's 5,000 + 5,000), all when None,
  and ``trajectories_total`` likewise over all subjects.
  Items are K-step windows ``{"returns", "states", "actions", "timesteps", "mask"}`` starting at a uniformly drawn
  transition (Decision Transformer's sampling, so a trajectory is drawn in proportion to its length), left-padded
  (states 0, actions -10, returns 0, mask False) where the trajectory ends within K steps; returns-to-go are
  undiscounted and divided by ``rtg_scale``. ``state_mean``/``state_std`` (of the training transitions) z-score
  the states in the network. ``trajectory_cache`` (.npz) keeps the roll-outs between runs.

Subclasses implement ``subject_names(split)`` and ``load_subject(name)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from datamodules.base import BaseDataModule, DatasetError, EpochSeededRandomSampler
from lightning_modules.tasks.tracking_env import (FeedForwardPolicy, PeakFollower, TrackingEnv, TractographySubject,
                                                  rollout)

SPLITS = ("train", "val", "test")


class SeedDataset(Dataset):
    """(subject index, seed) items."""

    def __init__(self, subjects: np.ndarray, seeds: np.ndarray):
        self.subjects = torch.as_tensor(subjects, dtype=torch.long)
        self.seeds = torch.as_tensor(seeds, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i: int) -> dict:
        return {"subject": self.subjects[i], "seed": self.seeds[i]}


@dataclass
class Trajectories:
    """Roll-outs stored flat: per transition states (T, S), actions (T, 3), rewards (T,); trajectory i spans
    offsets[i]:offsets[i + 1]; subject (n,) the subject index of each."""

    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    offsets: np.ndarray
    subject: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def concatenate(cls, parts: list["Trajectories"]) -> "Trajectories":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros((0, 0), np.float32), np.zeros((0, 3), np.float32), np.zeros(0, np.float32),
                       np.zeros(1, np.int64), np.zeros(0, np.int64))
        offsets, start = [np.zeros(1, np.int64)], 0
        for p in parts:
            offsets.append(p.offsets[1:] + start)
            start += p.offsets[-1]
        return cls(np.concatenate([p.states for p in parts]), np.concatenate([p.actions for p in parts]),
                   np.concatenate([p.rewards for p in parts]), np.concatenate(offsets),
                   np.concatenate([p.subject for p in parts]))

    def select(self, index: np.ndarray) -> "Trajectories":
        rows = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in index]
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        lengths = self.lengths[index]
        return Trajectories(self.states[rows], self.actions[rows], self.rewards[rows],
                            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), self.subject[index])

    def save(self, path: str | Path) -> None:
        np.savez(path, states=self.states, actions=self.actions, rewards=self.rewards, offsets=self.offsets,
                 subject=self.subject)

    @classmethod
    def load(cls, path: str | Path) -> "Trajectories":
        with np.load(path) as f:
            return cls(*(f[k] for k in ("states", "actions", "rewards", "offsets", "subject")))


def returns_to_go(rewards: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Undiscounted reward sums from each transition to its trajectory's end."""
    out = np.zeros_like(rewards, dtype=np.float64)
    for a, b in zip(offsets[:-1], offsets[1:]):
        out[a:b] = np.cumsum(rewards[a:b][::-1])[::-1]
    return out.astype(np.float32)


class WindowDataset(Dataset):
    """K-step windows of trajectories, one per transition (see the module docstring)."""

    def __init__(self, trajectories: Trajectories, context_length: int, rtg_scale: float = 100.0,
                 max_timestep: Optional[int] = None):
        self.t, self.k, self.rtg_scale = trajectories, context_length, rtg_scale
        self.rtg = returns_to_go(trajectories.rewards, trajectories.offsets) / rtg_scale
        self.trajectory = np.repeat(np.arange(len(trajectories)), trajectories.lengths)
        self.max_timestep = max_timestep

    def __len__(self) -> int:
        return len(self.trajectory)

    def __getitem__(self, i: int) -> dict:
        traj = self.trajectory[i]
        begin, end = self.t.offsets[traj], self.t.offsets[traj + 1]
        stop = min(i + self.k, end)
        n, pad = stop - i, self.k - (stop - i)
        states = np.zeros((self.k, self.t.states.shape[1]), np.float32)
        actions = np.full((self.k, 3), -10.0, np.float32)
        returns = np.zeros((self.k, 1), np.float32)
        timesteps = np.zeros(self.k, np.int64)
        mask = np.zeros(self.k, bool)
        states[pad:] = self.t.states[i:stop]
        actions[pad:] = self.t.actions[i:stop]
        returns[pad:, 0] = self.rtg[i:stop]
        timesteps[pad:] = np.arange(i - begin, i - begin + n)
        if self.max_timestep is not None:
            timesteps = np.minimum(timesteps, self.max_timestep - 1)
        mask[pad:] = True
        return {"returns": torch.from_numpy(returns), "states": torch.from_numpy(states),
                "actions": torch.from_numpy(actions), "timesteps": torch.from_numpy(timesteps),
                "mask": torch.from_numpy(mask)}


class TractographyDataModule(BaseDataModule):
    """Base of every tractography dataset (see the module docstring).

    Args:
        mode: ``episodes`` (seed batches for online RL) or ``trajectories`` (expert roll-out windows).
        step_mm, max_angle, min_length_mm, max_length_mm, n_previous, neighbour_offset: the environment
            (``tasks.tracking_env.TrackingEnv``).
        seeds_per_voxel: training seeds (episodes mode) and expert roll-out seeds (trajectories mode) per voxel.
        test_seeds_per_voxel: test tracking seeds per voxel; val_seeds: validation seeds kept (episodes mode).
        episodes_per_epoch: seeds drawn per training epoch (episodes mode; None: all).
        expert, expert_noise: the level-1 policy of the roll-outs (``peaks`` or a TD3 checkpoint path, where
            ``{bundle}`` stands for the subject's tract: one agent per tract) and its noise.
        trajectories_per_subject, longest_fraction: the roll-outs kept per subject (None: all): the longest
            ``longest_fraction`` of them and a random draw of the rest (the paper: 5,000 + 5,000 per subject and tract);
        trajectories_total: the same selection over all subjects together (the paper's mixed-tract set: 75,000
            longest + 75,000 random of the 350,000).
        context_length: K; rtg_scale: returns-to-go divisor; max_timestep: the timestep embedding's size
            (timesteps clamp below it); windows_per_epoch: training windows per epoch (None: one per transition);
            val_windows: validation windows kept (a fixed random subset; None: all).
        trajectory_cache: an .npz file prefix: roll-outs are saved as ``<prefix>_<split>.npz`` and reused.
        rollout_chunk: seeds rolled out at once by the expert (memory: chunk x steps x state size floats).
        seed: seeds and roll-outs are deterministic given it.
    """

    def __init__(self, mode: Literal["episodes", "trajectories"] = "trajectories", step_mm: float = 0.375,
                 max_angle: float = 60.0, min_length_mm: float = 20.0, max_length_mm: float = 200.0,
                 n_previous: int = 4, neighbour_offset: float = 0.75, seeds_per_voxel: int = 7,
                 test_seeds_per_voxel: int = 7, val_seeds: int = 4096, episodes_per_epoch: Optional[int] = None,
                 expert: str = "peaks", expert_noise: float = 0.1, trajectories_per_subject: Optional[int] = None,
                 longest_fraction: float = 0.5, trajectories_total: Optional[int] = None, context_length: int = 40,
                 rtg_scale: float = 100.0,
                 max_timestep: Optional[int] = 530, windows_per_epoch: Optional[int] = None,
                 val_windows: Optional[int] = 4096,
                 trajectory_cache: Optional[str] = None, rollout_chunk: int = 2048, seed: int = 0,
                 batch_size: int = 128, num_workers: int = 0,
                 pin_memory: Optional[bool] = None, eval_batch_size: Optional[int] = None):
        super().__init__(batch_size, num_workers, pin_memory, eval_batch_size)
        if mode not in ("episodes", "trajectories"):
            raise ValueError(f"mode must be 'episodes' or 'trajectories', got {mode!r}")
        self.mode = mode
        self.env_args = dict(step_mm=step_mm, max_angle=max_angle, min_length_mm=min_length_mm,
                             max_length_mm=max_length_mm, n_previous=n_previous, neighbour_offset=neighbour_offset)
        self.seeds_per_voxel, self.test_seeds_per_voxel = seeds_per_voxel, test_seeds_per_voxel
        self.val_seeds = val_seeds
        self.episodes_per_epoch = episodes_per_epoch
        self.expert, self.expert_noise = expert, expert_noise
        self.trajectories_per_subject, self.longest_fraction = trajectories_per_subject, longest_fraction
        self.trajectories_total = trajectories_total
        self.context_length, self.rtg_scale, self.max_timestep = context_length, rtg_scale, max_timestep
        self.windows_per_epoch, self.val_windows = windows_per_epoch, val_windows
        self.trajectory_cache, self.rollout_chunk = trajectory_cache, rollout_chunk
        self.seed = seed
        self.names: list[str] = []
        self.split_of: dict[int, str] = {}
        self._subjects: dict[int, TractographySubject] = {}
        self.state_mean: Optional[np.ndarray] = None
        self.state_std: Optional[np.ndarray] = None
        self.trajectories: dict[str, Trajectories] = {}

    # -- what a dataset provides ----------------------------------------------------------------------------
    def subject_names(self, split: str) -> list[str]:
        raise NotImplementedError

    def load_subject(self, name: str) -> TractographySubject:
        raise NotImplementedError

    # -- subjects and environments ------------------------------------------------------------------------------
    def _index(self) -> None:
        if self.names:
            return
        for split in SPLITS:
            for name in self.subject_names(split):
                self.split_of[len(self.names)] = split
                self.names.append(name)

    def indices(self, split: str) -> list[int]:
        self._index()
        return [i for i, s in self.split_of.items() if s == split]

    def get_subject(self, index: int) -> TractographySubject:
        self._index()
        if index not in self._subjects:
            self._subjects[index] = self.load_subject(self.names[index])
        return self._subjects[index]

    def make_env(self, index: int, device: torch.device | str = "cpu") -> TrackingEnv:
        return TrackingEnv(self.get_subject(index), device=device, **self.env_args)

    @property
    def state_size(self) -> int:
        subject = self.get_subject(self.indices("train")[0] if self.indices("train") else 0)
        return 7 * (subject.sh.shape[-1] + 1) + 3 * self.env_args["n_previous"]

    def seed_set(self, split: str, per_voxel: int, limit: Optional[int] = None) -> SeedDataset:
        rng = np.random.default_rng(self.seed + SPLITS.index(split))
        subjects, seeds = [], []
        for index in self.indices(split):
            points = self.get_subject(index).seeds(per_voxel, rng)
            subjects.append(np.full(len(points), index))
            seeds.append(points)
        subjects = np.concatenate(subjects) if subjects else np.zeros(0, np.int64)
        seeds = np.concatenate(seeds) if seeds else np.zeros((0, 3), np.float32)
        if limit is not None and len(seeds) > limit:
            keep = np.sort(rng.choice(len(seeds), limit, replace=False))
            subjects, seeds = subjects[keep], seeds[keep]
        return SeedDataset(subjects, seeds)

    # -- expert roll-outs -------------------------------------------------------------------------------------
    def expert_policy(self, env: TrackingEnv, generator: torch.Generator):
        if self.expert == "peaks":
            return PeakFollower(env, noise=self.expert_noise, generator=generator)
        from lightning_modules.tasks.reinforcement import TD3Task

        path = self.expert.format(bundle=env.subject.bundle)  # one agent per tract: ".../td3_{bundle}/best.ckpt"
        if not Path(path).is_file():
            raise DatasetError("the level-1 expert's checkpoint (a TD3Task best.ckpt) is missing", path=path,
                               hint="train it first (e.g. experiments/tract_rlformer/tractoinferno_td3.yaml) or set "
                                    "--data.init_args.expert (peaks: the scripted peak follower)",
                               standin_config="experiments/tract_rlformer_demo.yaml")
        actor = TD3Task.load_from_checkpoint(path, map_location="cpu").actor.eval()
        return FeedForwardPolicy(actor, noise=self.expert_noise, generator=generator)

    def roll_out(self, split: str) -> Trajectories:
        """Both directions from every seed of the split's subjects, kept as the module docstring says."""
        cache = Path(f"{self.trajectory_cache}_{split}.npz") if self.trajectory_cache else None
        if cache is not None and cache.is_file():
            return Trajectories.load(cache)
        rng = np.random.default_rng(self.seed + 10 + SPLITS.index(split))
        generator = torch.Generator().manual_seed(self.seed)
        parts = []
        for index in self.indices(split):
            env = self.make_env(index)
            all_seeds = torch.as_tensor(self.get_subject(index).seeds(self.seeds_per_voxel, rng))
            policy = self.expert_policy(env, generator)
            subject_parts = []
            for seeds in all_seeds.split(self.rollout_chunk):  # bounded memory: (chunk, steps, 334) states
                forward = rollout(env, policy, seeds, keep_states=True)
                first = forward.points[:, 1] - forward.points[:, 0] if forward.points.shape[1] > 1 else None
                backward = rollout(env, policy, seeds, initial=None if first is None else -first, keep_states=True)
                for run in (forward, backward):
                    lengths = run.transitions.numpy()
                    valid = np.arange(run.actions.shape[1])[None] < lengths[:, None]
                    keep = lengths > 0
                    subject_parts.append(Trajectories(
                        run.states.numpy()[valid], run.actions.numpy()[valid], run.rewards.numpy()[valid],
                        np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
                        np.full(int(keep.sum()), index)))
            parts.append(self._keep(Trajectories.concatenate(subject_parts), rng, self.trajectories_per_subject))
        trajectories = self._keep(Trajectories.concatenate(parts), rng, self.trajectories_total)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            trajectories.save(cache)
        return trajectories

    def _keep(self, trajectories: Trajectories, rng: np.random.Generator, n: Optional[int]) -> Trajectories:
        if n is None or len(trajectories) <= n:
            return trajectories
        longest = int(round(n * self.longest_fraction))
        order = np.argsort(-trajectories.lengths, kind="stable")
        rest = rng.choice(order[longest:], n - longest, replace=False)
        return trajectories.select(np.sort(np.concatenate([order[:longest], rest])))

    # -- Lightning hooks ------------------------------------------------------------------------------------------
    def setup(self, stage: Optional[str] = None) -> None:
        self._index()
        if stage in (None, "fit", "validate"):
            if self.mode == "episodes":
                if self.train_set is None:
                    self.train_set = self.seed_set("train", self.seeds_per_voxel)
                    val_split = "val" if self.indices("val") else "train"  # no validation subject: training ones
                    self.val_set = self.seed_set(val_split, self.seeds_per_voxel, self.val_seeds)
            elif not self.trajectories:
                train = self.roll_out("train")
                if self.indices("val"):
                    self.trajectories = {"train": train, "val": self.roll_out("val")}
                else:  # no validation subject: hold out a fixed 5 % of the training trajectories
                    held = np.random.default_rng(self.seed + 30).random(len(train)) < 0.05
                    self.trajectories = {"train": train.select(np.flatnonzero(~held)),
                                         "val": train.select(np.flatnonzero(held))}
                train = self.trajectories["train"]
                if not len(train):
                    raise RuntimeError("the expert's roll-outs on the training subjects are empty")
                self.state_mean = train.states.mean(0)
                self.state_std = train.states.std(0)
                self.train_set = WindowDataset(train, self.context_length, self.rtg_scale, self.max_timestep)
                val = WindowDataset(self.trajectories["val"], self.context_length, self.rtg_scale, self.max_timestep)
                if self.val_windows is not None and len(val) > self.val_windows:
                    keep = np.random.default_rng(self.seed + 20).choice(len(val), self.val_windows, replace=False)
                    val = Subset(val, np.sort(keep).tolist())
                self.val_set = val
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self.seed_set("test", self.test_seeds_per_voxel)

    def train_sampler(self, dataset: Dataset):
        n = self.episodes_per_epoch if self.mode == "episodes" else self.windows_per_epoch
        return None if n is None else EpochSeededRandomSampler(dataset, n, seed=self.seed)
