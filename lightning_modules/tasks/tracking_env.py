"""Reinforcement-learning tractography: the tracking environment on an fODF volume, vectorised in torch.

Everything lives in voxel space (a voxel's centre at integer coordinates, dipy's ``Space.VOX`` with the NIfTI
origin), so one environment serves any subject: positions are (N, 3) float tensors, and every streamline of a
batch steps at once (no per-streamline Python loop; the only loop is over time steps).

The environment follows Track-to-Learn (Théberge et al. 2021), which Tract-RLFormer adopts:

- state s_t = the data volume (SH coefficients + tracking mask: C + 1 channels) trilinearly interpolated at the
  tip and at its 6 face neighbours (offset ``neighbour_offset`` voxels), then the ``n_previous`` last step
  directions (zeros where a streamline has fewer): 7 x (45 + 1) + 4 x 3 = 334 for SH order 8;
- action a_t in [-1, 1]^3: a direction, normalised and scaled to the step size;
- reward (Tract-RLFormer Eq. 1) r_t = max_i |p_i . d_t| x (d_t . u_{t-1}), d_t the unit action, p_i the unit fODF
  peaks of the voxel the step lands in, u_{t-1} the previous unit step (the factor is 1 on a first step); 0 for a
  step that leaves the tracking mask (that step is not taken);
- termination: the step leaves the mask (or the volume), the angle to the previous step exceeds ``max_angle``,
  or the streamline reaches ``max_steps``.

Policies are objects with ``start(n, device)``, ``act(states, index, t) -> actions`` and ``observe(index, actions,
rewards)`` (the Decision Transformer keeps its return-to-go and context there; feed-forward policies ignore it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

#: the 6 face neighbours of a voxel (the state's neighbourhood after the centre)
NEIGHBOURS = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32)


@dataclass
class TractographySubject:
    """One subject's tracking inputs, voxel space, numpy.

    sh: (X, Y, Z, C) fODF SH coefficients; peaks: (X, Y, Z, P, 3) fODF peak directions (any length; zero rows
    where a voxel has fewer peaks); tracking_mask, seed_mask: (X, Y, Z) bool; bundle_mask: (X, Y, Z) bool, the
    reference bundle's voxels (None when unscored); affine: voxel -> RAS mm; reference: optional reference
    streamlines in voxel space (for FSS-style cleaning)."""

    name: str
    sh: np.ndarray
    peaks: np.ndarray
    tracking_mask: np.ndarray
    seed_mask: np.ndarray
    bundle_mask: Optional[np.ndarray] = None
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    reference: Optional[list] = None
    bundle: Optional[str] = None
    sh_basis: str = "descoteaux07"
    sh_legacy: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tracking_mask.shape)

    @property
    def voxel_size(self) -> float:
        """Mean voxel edge length in mm (the step size in voxels is step_mm / voxel_size)."""
        return float(np.mean(np.linalg.norm(self.affine[:3, :3], axis=0)))

    def seeds(self, per_voxel: int, rng: np.random.Generator) -> np.ndarray:
        """``per_voxel`` uniform random points in every seed-mask voxel, voxel coordinates (N, 3) float32."""
        voxels = np.argwhere(self.seed_mask).astype(np.float32)
        voxels = np.repeat(voxels, per_voxel, axis=0)
        return (voxels + rng.uniform(-0.5, 0.5, size=voxels.shape)).astype(np.float32)


def state_size(sh_coefficients: int = 45, n_previous: int = 4) -> int:
    """7 x (SH coefficients + mask) + 3 x previous directions: 334 for order-8 SH and 4 directions."""
    return 7 * (sh_coefficients + 1) + 3 * n_previous


def unit(vectors: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(eps)


class TrackingEnv:
    """The vectorised tracking environment of one subject (see the module docstring).

    Args:
        subject: the subject's volumes.
        step_mm: step size in mm (converted to voxels with the subject's voxel size).
        max_angle: the largest turn between two steps, degrees (60 in Track-to-Learn and the paper).
        min_length_mm, max_length_mm: streamline lengths kept by tracking (``max_steps`` = max / step).
        n_previous: previous directions in the state (4).
        neighbour_offset: the neighbours' distance from the tip, voxels (Track-to-Learn's code: 0.75; 1: the face
            neighbours' centres).
        device: where the volumes live.
    """

    def __init__(self, subject: TractographySubject, step_mm: float = 0.375, max_angle: float = 60.0,
                 min_length_mm: float = 20.0, max_length_mm: float = 200.0, n_previous: int = 4,
                 neighbour_offset: float = 0.75, device: torch.device | str = "cpu"):
        self.subject = subject
        self.device = torch.device(device)
        self.step = step_mm / subject.voxel_size
        self.step_mm = step_mm
        self.max_steps = max(1, int(round(max_length_mm / step_mm)))
        self.min_points = int(math.ceil(min_length_mm / step_mm)) + 1
        self.cos_max = math.cos(math.radians(max_angle))
        self.n_previous = n_previous
        mask = torch.as_tensor(np.asarray(subject.tracking_mask, dtype=np.float32))
        sh = torch.as_tensor(np.asarray(subject.sh, dtype=np.float32))
        # (1, C + 1, X, Y, Z): grid_sample's (D, H, W) = (X, Y, Z)
        self.volume = torch.cat([sh, mask[..., None]], dim=-1).permute(3, 0, 1, 2)[None].contiguous().to(self.device)
        self.mask = mask.bool().to(self.device)
        self.shape = torch.tensor(self.mask.shape, device=self.device)
        peaks = torch.as_tensor(np.asarray(subject.peaks, dtype=np.float32))
        self.peaks = (unit(peaks) * (peaks.norm(dim=-1, keepdim=True) > 0)).to(self.device)  # zero rows stay zero
        self.offsets = NEIGHBOURS.to(self.device) * neighbour_offset
        self.state_size = 7 * self.volume.shape[1] + 3 * n_previous

    # -- volumes ----------------------------------------------------------------------------------------
    def interpolate(self, points: torch.Tensor) -> torch.Tensor:
        """Trilinear interpolation of the data volume at voxel coordinates (N, 3) -> (N, C + 1); 0 outside."""
        size = (self.shape - 1).clamp_min(1).to(points.dtype)
        grid = (2 * points / size - 1).flip(-1)  # grid_sample's last axis is (W, H, D) = (Z, Y, X)
        values = F.grid_sample(self.volume, grid.view(1, -1, 1, 1, 3), mode="bilinear", padding_mode="zeros",
                               align_corners=True)
        return values.view(self.volume.shape[1], -1).t()

    def voxel_index(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest voxel (N, 3) long, and whether it lies inside the volume."""
        index = torch.round(points).long()
        inside = ((index >= 0) & (index < self.shape)).all(-1)
        return index.clamp(min=torch.zeros_like(self.shape), max=self.shape - 1), inside

    def in_mask(self, points: torch.Tensor) -> torch.Tensor:
        index, inside = self.voxel_index(points)
        return inside & self.mask[index[:, 0], index[:, 1], index[:, 2]]

    def peaks_at(self, points: torch.Tensor) -> torch.Tensor:
        index, _ = self.voxel_index(points)
        return self.peaks[index[:, 0], index[:, 1], index[:, 2]]  # (N, P, 3)

    # -- the MDP -------------------------------------------------------------------------------------------
    def state(self, points: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """s_t (N, state_size) at tips ``points`` (N, 3) with the last unit steps ``previous`` (N, n_previous, 3),
        most recent first, zeros where a streamline has fewer."""
        neighbourhood = torch.cat([points[:, None], points[:, None] + self.offsets], dim=1)  # (N, 7, 3)
        signal = self.interpolate(neighbourhood.reshape(-1, 3)).reshape(len(points), -1)
        return torch.cat([signal, previous.reshape(len(points), -1)], dim=1)

    def reward(self, points: torch.Tensor, directions: torch.Tensor, previous: Optional[torch.Tensor]) -> torch.Tensor:
        """Eq. 1: max_i |p_i . d| x (d . u_prev) with the peaks at ``points``; the factor is 1 without ``previous``
        (a zero row of ``previous`` also counts as none)."""
        alignment = (self.peaks_at(points) * directions[:, None]).sum(-1).abs().amax(-1)
        if previous is None:
            return alignment
        has_previous = previous.norm(dim=-1) > 0
        continuity = torch.where(has_previous, (directions * previous).sum(-1), torch.ones_like(alignment))
        return alignment * continuity


@dataclass
class Rollout:
    """Episodes of a batch of streamlines, padded to the longest: points (N, T + 1, 3), states (N, T, S) (None when
    not kept), actions (N, T, 3) (the policy's raw actions), rewards (N, T), steps (N,) taken (valid steps; the
    last valid state may be followed by a step that left the mask, whose reward is 0 and is counted in
    ``transitions`` but not in the points), done (N, T) bool: the transition ended the episode."""

    points: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    transitions: torch.Tensor
    points_count: torch.Tensor
    done: torch.Tensor
    states: Optional[torch.Tensor] = None
    next_states: Optional[torch.Tensor] = None

    @property
    def returns(self) -> torch.Tensor:
        """Undiscounted episode return (N,)."""
        return self.rewards.sum(1)

    def streamlines(self) -> list[np.ndarray]:
        """Each episode's points (voxel coordinates) as float32 arrays."""
        points = self.points.detach().cpu().numpy()
        return [points[i, :n] for i, n in enumerate(self.points_count.tolist())]


class Policy(Protocol):
    def start(self, n: int, device: torch.device) -> None: ...
    def act(self, states: torch.Tensor, index: torch.Tensor, t: int) -> torch.Tensor: ...
    def observe(self, index: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> None: ...


class FeedForwardPolicy:
    """A policy from a state -> action callable (an actor network), with optional Gaussian exploration noise
    (std ``noise`` on the actions, clipped to [-1, 1], TD3's)."""

    def __init__(self, actor, noise: float = 0.0, generator: Optional[torch.Generator] = None):
        self.actor, self.noise, self.generator = actor, noise, generator

    def start(self, n: int, device: torch.device) -> None:
        pass

    def act(self, states: torch.Tensor, index: torch.Tensor, t: int) -> torch.Tensor:
        actions = self.actor(states)
        if self.noise > 0:
            noise = torch.randn(actions.shape, generator=self.generator, device="cpu").to(actions.device)
            actions = (actions + self.noise * noise).clamp(-1, 1)
        return actions

    def observe(self, index: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> None:
        pass


class PeakFollower(FeedForwardPolicy):
    """Deterministic peak following (the DET baseline, and the scripted expert of the stand-in with ``noise``):
    the voxel's peak closest to the previous step, sign-matched to it; on a first step the first peak. Reads the
    tip and the previous step from the state, so it needs the environment."""

    def __init__(self, env: TrackingEnv, noise: float = 0.0, generator: Optional[torch.Generator] = None):
        super().__init__(self._follow, noise, generator)
        self.env = env
        self.tips: Optional[torch.Tensor] = None

    def _follow(self, states: torch.Tensor) -> torch.Tensor:
        previous = states[:, -3 * self.env.n_previous:][:, :3]
        peaks = self.env.peaks_at(self.tips)  # (N, P, 3)
        dots = (peaks * previous[:, None]).sum(-1)
        first = previous.norm(dim=-1) == 0
        best = torch.where(first, torch.zeros_like(dots[:, 0], dtype=torch.long), dots.abs().argmax(-1))
        chosen = peaks[torch.arange(len(peaks), device=peaks.device), best]
        sign = torch.where(first | (dots.gather(1, best[:, None])[:, 0] >= 0), 1.0, -1.0)
        chosen = chosen * sign[:, None]
        # no peak here: keep going straight
        return torch.where(chosen.norm(dim=-1, keepdim=True) > 0, chosen, previous)


class FODFSampler(FeedForwardPolicy):
    """Probabilistic fODF tracking (the PROB baseline, dipy's ``ProbabilisticDirectionGetter`` in this environment):
    the fODF at the tip (the state's interpolated SH) evaluated on ``repulsion724``, negatives and directions beyond
    ``max_angle`` of the previous step zeroed (any direction on a first step: the fODF is symmetric), a direction
    drawn in proportion to the rest (``power`` sharpens)."""

    def __init__(self, env: TrackingEnv, max_angle: float = 60.0, power: float = 1.0,
                 generator: Optional[torch.Generator] = None):
        from dipy.data import get_sphere
        from dipy.reconst.shm import order_from_ncoef, sh_to_sf_matrix

        super().__init__(self._sample, 0.0, generator)
        sphere = get_sphere(name="repulsion724")
        n_coef = env.volume.shape[1] - 1
        matrix = sh_to_sf_matrix(sphere, sh_order_max=order_from_ncoef(n_coef), basis_type=env.subject.sh_basis,
                                 legacy=env.subject.sh_legacy, return_inv=False)
        self.env, self.power, self.cos_max = env, power, math.cos(math.radians(max_angle))
        self.matrix = torch.as_tensor(matrix, dtype=torch.float32, device=env.device)  # (C, V)
        self.vertices = torch.as_tensor(sphere.vertices, dtype=torch.float32, device=env.device)
        self.n_coef = n_coef

    def _sample(self, states: torch.Tensor) -> torch.Tensor:
        previous = states[:, -3 * self.env.n_previous:][:, :3]
        sf = (states[:, :self.n_coef] @ self.matrix).clamp_min(0) ** self.power
        dots = previous @ self.vertices.t()  # (N, V)
        first = previous.norm(dim=-1, keepdim=True) == 0
        sf = sf * (first | (dots >= self.cos_max))
        empty = sf.sum(-1) <= 0
        sf[empty] = 1.0  # no fODF mass in the cone: a uniform draw (the turn test then ends the streamline)
        index = torch.multinomial(sf.cpu(), 1, generator=self.generator).squeeze(-1).to(states.device)
        return self.vertices[index]


class StraightLinePolicy(FeedForwardPolicy):
    """Trivial baseline: a random first direction, then straight on."""

    def __init__(self, n_previous: int = 4, generator: Optional[torch.Generator] = None):
        super().__init__(self._straight, 0.0, generator)
        self.n_previous = n_previous

    def _straight(self, states: torch.Tensor) -> torch.Tensor:
        previous = states[:, -3 * self.n_previous:][:, :3]
        random = unit(torch.randn(previous.shape, generator=self.generator).to(previous.device))
        return torch.where(previous.norm(dim=-1, keepdim=True) > 0, previous, random)


class RandomPolicy(FeedForwardPolicy):
    """Trivial baseline: uniformly random directions."""

    def __init__(self, generator: Optional[torch.Generator] = None):
        super().__init__(self._random, 0.0, generator)

    def _random(self, states: torch.Tensor) -> torch.Tensor:
        return unit(torch.randn(len(states), 3, generator=self.generator).to(states.device))


@torch.no_grad()
def rollout(env: TrackingEnv, policy: Policy, seeds: torch.Tensor, initial: Optional[torch.Tensor] = None,
            keep_states: bool = False, max_steps: Optional[int] = None) -> Rollout:
    """Track every seed at once until all episodes end.

    ``initial`` (N, 3): a previous direction to start from (the backward half of a bidirectional track starts with
    the reversed first step of the forward half), else none. Returns a ``Rollout``; with ``keep_states`` the
    states and next states of every transition (for replay buffers and trajectory datasets)."""
    device = env.device
    n = len(seeds)
    steps = env.max_steps if max_steps is None else max_steps
    tips = seeds.to(device, torch.float32).clone()
    previous = torch.zeros(n, env.n_previous, 3, device=device)
    if initial is not None:
        previous[:, 0] = unit(initial.to(device, torch.float32))
    points = torch.zeros(n, steps + 1, 3, device=device)
    points[:, 0] = tips
    actions = torch.zeros(n, steps, 3, device=device)
    rewards = torch.zeros(n, steps, device=device)
    done = torch.zeros(n, steps, dtype=torch.bool, device=device)
    states = torch.zeros(n, steps, env.state_size, device=device) if keep_states else None
    next_states = torch.zeros(n, steps, env.state_size, device=device) if keep_states else None
    transitions = torch.zeros(n, dtype=torch.long, device=device)
    count = torch.ones(n, dtype=torch.long, device=device)
    alive = torch.arange(n, device=device)
    policy.start(n, device)
    for t in range(steps):
        if not len(alive):
            break
        state = env.state(tips[alive], previous[alive])
        if isinstance(policy, PeakFollower):
            policy.tips = tips[alive]
        action = policy.act(state, alive, t).to(device, torch.float32)
        direction = unit(action)
        prev = previous[alive, 0]
        candidate = tips[alive] + env.step * direction
        inside = env.in_mask(candidate)
        has_prev = prev.norm(dim=-1) > 0
        turn_ok = ~has_prev | ((direction * prev).sum(-1) >= env.cos_max)
        reward = env.reward(candidate, direction, prev) * inside
        actions[alive, t] = action
        rewards[alive, t] = reward
        transitions[alive] += 1
        policy.observe(alive, action, reward)
        moved = alive[inside]
        tips[moved] = candidate[inside]
        previous[moved] = torch.cat([direction[inside, None], previous[moved, :-1]], dim=1)
        points[moved, count[moved]] = tips[moved]
        count[moved] += 1
        ends = ~inside | ~turn_ok | (t + 1 >= steps)
        done[alive, t] = ends
        if keep_states:
            states[alive, t] = state
            next_states[alive, t] = env.state(tips[alive], previous[alive])
        alive = alive[~ends]
    used = int(transitions.max()) if n else 0
    return Rollout(points=points[:, :used + 1], actions=actions[:, :used], rewards=rewards[:, :used],
                   transitions=transitions, points_count=count, done=done[:, :used],
                   states=None if states is None else states[:, :used],
                   next_states=None if next_states is None else next_states[:, :used])


def track(env: TrackingEnv, policy: Policy, seeds: torch.Tensor, min_points: Optional[int] = None) -> list[np.ndarray]:
    """Bidirectional tracking from every seed: forward, then backward from the seed starting with the reversed
    first forward step; the halves joined (backward reversed + forward). Streamlines with fewer than ``min_points``
    points (default: the environment's minimum length) are dropped. Voxel coordinates."""
    forward = rollout(env, policy, seeds)
    first = forward.points[:, 1] - forward.points[:, 0] if forward.points.shape[1] > 1 else torch.zeros_like(seeds)
    backward = rollout(env, policy, seeds, initial=-first)
    keep = env.min_points if min_points is None else min_points
    lines = []
    for fwd, bwd in zip(forward.streamlines(), backward.streamlines()):
        line = np.concatenate([bwd[::-1], fwd[1:]], axis=0)
        if len(line) >= keep:
            lines.append(line)
    return lines
