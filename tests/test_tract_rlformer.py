"""Tract-RLFormer and the RL tractography family: environment (state, reward, termination), networks (parameter
counts, causality), Eq. 2, bundle metrics against torchmetrics/dipy, .trk output, TD3 mechanics, and a short
offline run on the synthetic phantom that learns (loss falls, tracking beats a straight-line tracker)."""
from __future__ import annotations

import functools
import math

import lightning as L
import numpy as np
import pytest
import torch
from scipy import ndimage

from datamodules.standins.synthetic_fodf_phantom import SyntheticFODFPhantomDataModule, make_phantom
from datamodules.tractography import Trajectories, WindowDataset, returns_to_go
from lightning_modules.losses.tractography import multi_step_angular_loss, step_angles
from lightning_modules.metrics.tractography import bundle_scores, streamlines_to_mask
from lightning_modules.tasks.reinforcement import (MLPActor, MLPCritic, ReplayBuffer, SequencePolicyTask, TD3Task,
                                                   DecisionTransformerPolicy, save_tractogram, clean_by_mdf)
from lightning_modules.tasks.tracking_env import (FeedForwardPolicy, FODFSampler, PeakFollower, TrackingEnv,
                                                  TractographySubject, rollout, state_size, track)
from lightning_modules.tract_rlformer import (MaskRefinementNet, TractRLFormer, count_decision_transformer,
                                              mrm_features)

PHANTOM_ENV = dict(step_mm=0.5, min_length_mm=20.0, max_length_mm=60.0)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@functools.lru_cache(maxsize=1)
def phantom_subject() -> TractographySubject:
    p = make_phantom(size=24, seed=3)
    return TractographySubject("p", p["sh"], p["peaks"], ndimage.binary_dilation(p["bundle_a"]), p["bundle_a"],
                               p["bundle_a"], reference=[p["centreline"]], sh_legacy=False)


def toy_subject(shape=(6, 5, 4), channels=45) -> TractographySubject:
    rng = np.random.default_rng(0)
    peaks = np.zeros((*shape, 2, 3), np.float32)
    peaks[..., 0, :] = [1.0, 0.0, 0.0]
    peaks[..., 1, :] = [0.0, 2.0, 0.0]  # any length: normalised
    mask = np.ones(shape, bool)
    return TractographySubject("toy", rng.standard_normal((*shape, channels)).astype(np.float32), peaks, mask, mask)


# -- environment -----------------------------------------------------------------------------------------------
def test_state_has_the_papers_334_dimensions_and_interpolates_like_scipy():
    subject = toy_subject()
    env = TrackingEnv(subject, neighbour_offset=0.75)
    assert env.state_size == state_size(45, 4) == 334
    points = torch.tensor([[2.3, 1.7, 1.2], [3.0, 2.0, 1.0]])
    previous = torch.zeros(2, 4, 3)
    previous[0, 0] = torch.tensor([0.0, 0.0, 1.0])
    s = env.state(points, previous)
    assert s.shape == (2, 334)
    volume = np.concatenate([subject.sh, subject.tracking_mask[..., None]], -1)
    for i, p in enumerate(points.numpy()):
        neighbourhood = [p] + [p + 0.75 * o for o in np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0],
                                                               [0, 0, 1], [0, 0, -1]])]
        expected = np.concatenate([[ndimage.map_coordinates(volume[..., c], q[:, None], order=1, mode="constant")[0]
                                    for c in range(46)] for q in neighbourhood])
        np.testing.assert_allclose(s[i, :322].numpy(), expected, atol=1e-5)
    assert torch.equal(s[0, 322:325], torch.tensor([0.0, 0.0, 1.0])) and not s[0, 325:].any()


def test_reward_is_eq1_and_in_minus_one_one():
    env = TrackingEnv(toy_subject())
    points = torch.full((4, 3), 2.0)
    d = torch.tensor([[1.0, 0, 0], [0.6, 0.8, 0], [0, 0, 1.0], [-1.0, 0, 0]])
    first = env.reward(points, d, None)
    torch.testing.assert_close(first, torch.tensor([1.0, 0.8, 0.0, 1.0]))  # max_i |p_i . d|
    previous = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]])
    torch.testing.assert_close(env.reward(points, d, previous), torch.tensor([1.0, 0.8 * 0.6, 0.0, -1.0]))
    random = torch.nn.functional.normalize(torch.randn(500, 3), dim=-1)
    r = env.reward(torch.rand(500, 3) * 3, random, torch.nn.functional.normalize(torch.randn(500, 3), dim=-1))
    assert r.min() >= -1 and r.max() <= 1


def test_episodes_end_on_a_sharp_turn_or_leaving_the_mask():
    subject = toy_subject(shape=(30, 5, 5))
    env = TrackingEnv(subject, step_mm=1.0, max_angle=60, max_length_mm=10)
    turn = FeedForwardPolicy(lambda s: torch.where(s[:, -12:-9].norm(dim=-1, keepdim=True) > 0,
                                                   torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])))
    run = rollout(env, turn, torch.tensor([[2.0, 2.0, 2.0]]))
    assert run.transitions.item() == 2 and bool(run.done[0, 1])  # the 90 degree turn ends the episode
    straight = FeedForwardPolicy(lambda s: torch.tensor([[1.0, 0.0, 0.0]]).expand(len(s), 3))
    run = rollout(env, straight, torch.tensor([[2.0, 2.0, 2.0]]))
    assert run.transitions.item() == 10 and run.points_count.item() == 11  # max length
    run = rollout(env, straight, torch.tensor([[27.0, 2.0, 2.0]]))  # leaves the volume after 2 steps
    assert run.points_count.item() == 3 and run.rewards[0, -1] == 0 and run.returns.item() == 2.0


def test_peak_following_tracks_the_phantom_bundle_and_beats_a_straight_line():
    subject = phantom_subject()
    env = TrackingEnv(subject, **PHANTOM_ENV)
    seeds = torch.as_tensor(subject.seeds(1, np.random.default_rng(0)))[::4]
    lines = track(env, PeakFollower(env), seeds)
    scores = bundle_scores(streamlines_to_mask(lines, subject.shape), subject.bundle_mask)
    assert scores["dice"] > 0.7 and scores["overlap"] > 0.9
    from lightning_modules.tasks.tracking_env import StraightLinePolicy

    straight = track(env, StraightLinePolicy(generator=torch.Generator().manual_seed(0)), seeds)
    assert bundle_scores(streamlines_to_mask(straight, subject.shape), subject.bundle_mask)["dice"] < 0.3
    assert all(len(line) >= env.min_points for line in lines)
    kept = clean_by_mdf(lines, subject.reference, 3.0, subject.affine)
    assert 0 < len(kept) <= len(lines)
    prob = track(env, FODFSampler(env, generator=torch.Generator().manual_seed(0)), seeds)
    assert bundle_scores(streamlines_to_mask(prob, subject.shape), subject.bundle_mask)["dice"] > 0.5


def test_fodf_sampling_draws_near_the_peak_within_the_cone():
    subject = phantom_subject()
    env = TrackingEnv(subject, **PHANTOM_ENV)
    voxel = np.argwhere(subject.bundle_mask & (np.linalg.norm(subject.peaks[..., 1, :], axis=-1) == 0))[0]
    peak = torch.as_tensor(subject.peaks[tuple(voxel)][0])
    tips = torch.as_tensor(voxel, dtype=torch.float32).expand(400, 3)
    previous = torch.zeros(400, 4, 3)
    previous[200:, 0] = peak  # continuing along +peak: only the + lobe is in the 60 degree cone
    policy = FODFSampler(env, generator=torch.Generator().manual_seed(0))
    d = policy.act(env.state(tips, previous), torch.arange(400), 0)
    cos = d @ peak
    assert cos.abs()[:200].median() > 0.9 and (cos[200:] >= 0.5).all() and cos[200:].median() > 0.9
    assert (cos[:200] < 0).any() and (cos[:200] > 0).any()  # first step: both lobes


# -- networks -------------------------------------------------------------------------------------------------------
def test_parameter_counts():
    # the card's ~0.95 M (4 blocks, d 128, the code's unused state/return heads included); no count in the paper
    full = TractRLFormer(auxiliary_heads=True)
    assert n_params(full) == count_decision_transformer(auxiliary_heads=True) == 948_690
    assert abs(n_params(full) - 0.95e6) / 0.95e6 < 0.01
    assert n_params(TractRLFormer()) == count_decision_transformer(auxiliary_heads=False) == 905_475
    assert n_params(MaskRefinementNet()) == 331_521  # the card's count of the paper's MRM
    assert n_params(MLPActor()) == 334 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 * 3 + 3
    assert n_params(MLPCritic()) == 337 * 1024 + 1024 + 1024 * 1024 + 1024 + 1024 + 1


def test_decision_transformer_is_causal_and_handles_left_padding():
    torch.manual_seed(0)
    net = TractRLFormer(state_dim=334, hidden_size=32, n_layers=2, context_length=6, max_ep_len=50).eval()
    b, k = 3, 6
    args = [torch.randn(b, k, 1), torch.randn(b, k, 334), torch.randn(b, k, 3), torch.arange(k).expand(b, k),
            torch.ones(b, k, dtype=torch.bool)]
    out = net(*args)
    assert out.shape == (b, k, 3) and out.abs().max() <= 1
    changed = [a.clone() for a in args]
    changed[2][:, 3] += 5  # the action at step 3 may only change predictions after step 3
    changed[1][:, 4] += 5  # the state at step 4: predictions from step 4 on
    out2 = net(*changed)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])
    padded = [a.clone() for a in args]
    padded[4][:, :2] = False
    padded[1][:, :2] = 99.0  # padded steps: any value, no effect
    a = net(*padded)
    padded[1][:, :2] = -5.0
    torch.testing.assert_close(a[:, 2:], net(*padded)[:, 2:])
    assert torch.isfinite(a).all()


def test_fine_tuning_appends_a_block_and_freezes_the_rest():
    net = TractRLFormer(hidden_size=16, n_layers=3, context_length=4, max_ep_len=20)
    net.add_block()
    net.freeze_all_but_last(1)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert len(net.blocks) == 4 and trainable and all(n.startswith("blocks.3.") for n in trainable)


def test_fine_tuning_loads_the_pretrained_checkpoint_and_trains_only_the_new_block(tmp_path):
    torch.manual_seed(0)
    small = dict(state_dim=334, hidden_size=16, context_length=4, max_ep_len=20)
    pretrained = SequencePolicyTask(TractRLFormer(n_layers=1, **small))
    pretrained.network.set_state_statistics(torch.full((334,), 2.0), torch.full((334,), 3.0))
    path = tmp_path / "pre.ckpt"
    torch.save({"state_dict": pretrained.state_dict(), "pytorch-lightning_version": L.__version__,
                "hyper_parameters": dict(pretrained.hparams)}, path)
    task = SequencePolicyTask(TractRLFormer(n_layers=2, **small), init_from=str(path), freeze_pretrained=True)
    fresh = task.load_pretrained(str(path))
    assert fresh and all(name.startswith("blocks.1.") for name in fresh)
    assert not task.use_data_statistics and task.network.state_std.eq(3).all()  # the pre-trained z-scoring kept
    torch.testing.assert_close(task.network.blocks[0].attn.c_attn.weight,
                               pretrained.network.blocks[0].attn.c_attn.weight)
    trainable = [n for n, p in task.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("network.blocks.1.") for n in trainable)
    assert sum(p.numel() for p in task.optimizer_parameters()) == sum(
        p.numel() for p in task.network.blocks[1].parameters())
    reloaded = SequencePolicyTask.load_from_checkpoint(path, network=TractRLFormer(n_layers=1, **small))
    assert reloaded.network.state_mean.eq(2).all()


def test_mrm_features_take_the_voxel_and_its_six_neighbours():
    sh = np.arange(3 * 3 * 3 * 2, dtype=np.float32).reshape(3, 3, 3, 2)
    roi = np.zeros((3, 3, 3), bool)
    roi[1, 1, 1] = roi[0, 0, 0] = True
    f = mrm_features(sh, roi)
    assert f.shape == (2, 7 * 3)
    centre = f[1].reshape(7, 3)
    np.testing.assert_array_equal(centre[0], [*sh[1, 1, 1], 1])
    np.testing.assert_array_equal(centre[1], [*sh[2, 1, 1], 0])
    np.testing.assert_array_equal(f[0].reshape(7, 3)[2], 0)  # -x of the corner voxel: outside, zero-padded
    assert MaskRefinementNet(in_features=21).eval()(torch.as_tensor(f)).shape == (2, 1)


# -- loss and metrics -------------------------------------------------------------------------------------------
def test_eq2_loss_matches_its_double_sum_and_is_zero_for_identical_actions():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 8, 3), torch.randn(2, 8, 3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, :3] = False
    angles = step_angles(pred, target)
    expected = sum(angles[b, t + i] * mask[b, t + i] for b in range(2) for t in range(2, 6) for i in range(-2, 3))
    torch.testing.assert_close(multi_step_angular_loss(pred, target, mask), expected)
    n_terms = sum(int(mask[b, t + i]) for b in range(2) for t in range(2, 6) for i in range(-2, 3))
    torch.testing.assert_close(multi_step_angular_loss(pred, target, mask, reduction="mean"), expected / n_terms)
    assert multi_step_angular_loss(target, 3 * target, mask, eps=0.0) < 1e-2  # float rounding of cos = 1
    # the code's clamp: identical actions cost arccos(1 - 1e-4) per term
    torch.testing.assert_close(multi_step_angular_loss(target, target, mask),
                               n_terms * torch.tensor(math.acos(1 - 1e-4)),
                               rtol=1e-3, atol=0)  # float32 arccos near 1
    torch.testing.assert_close(step_angles(torch.tensor([[1.0, 0, 0]]), torch.tensor([[0, 1.0, 0]])),
                               torch.tensor([math.pi / 2]))


def test_bundle_scores_match_torchmetrics_and_the_definitions():
    from torchmetrics.classification import BinaryF1Score, BinaryRecall

    rng = np.random.default_rng(0)
    pred, ref = rng.random((8, 8, 8)) > 0.6, rng.random((8, 8, 8)) > 0.5
    s = bundle_scores(pred, ref)
    p, r = torch.as_tensor(pred).flatten().int(), torch.as_tensor(ref).flatten().int()
    assert s["dice"] == pytest.approx(BinaryF1Score()(p, r).item(), abs=1e-6)
    assert s["overlap"] == pytest.approx(BinaryRecall()(p, r).item(), abs=1e-6)
    assert s["overreach"] == pytest.approx((pred & ~ref).sum() / ref.sum())


def test_streamline_masks_are_dipys_density_map_and_trk_round_trips(tmp_path):
    from dipy.io.streamline import load_trk
    from dipy.tracking.utils import density_map

    lines = [np.array([[1.0, 1.0, 1.0], [1.4, 2.6, 1.0], [3.0, 3.0, 3.0]], np.float32),
             np.array([[0.2, 0.0, 4.0], [0.0, 0.0, 3.6]], np.float32)]
    mask = streamlines_to_mask(lines, (5, 5, 5))
    np.testing.assert_array_equal(mask, density_map(lines, np.eye(4), (5, 5, 5)) > 0)
    assert mask.sum() == 4 and mask[1, 3, 1] and mask[0, 0, 4]
    subject = toy_subject((5, 5, 5))
    subject.affine = np.diag([2.0, 2.0, 2.0, 1.0])
    path = save_tractogram(lines, subject, str(tmp_path / "t.trk"))
    sft = load_trk(path, "same", bbox_valid_check=False)
    sft.to_vox()
    sft.to_center()
    np.testing.assert_allclose(sft.streamlines[0], lines[0], atol=1e-4)


# -- trajectories and policies ------------------------------------------------------------------------------------
def test_windows_are_left_padded_with_returns_to_go():
    t = Trajectories(states=np.arange(5 * 2, dtype=np.float32).reshape(5, 2), actions=np.ones((5, 3), np.float32),
                     rewards=np.array([1.0, 2.0, 3.0, 0.5, 0.5], np.float32), offsets=np.array([0, 3, 5]),
                     subject=np.array([0, 0]))
    np.testing.assert_allclose(returns_to_go(t.rewards, t.offsets), [6, 5, 3, 1, 0.5])
    ds = WindowDataset(t, context_length=3, rtg_scale=2.0)
    assert len(ds) == 5
    w = ds[1]  # steps 1, 2 of the first trajectory, one pad in front
    assert w["mask"].tolist() == [False, True, True] and w["timesteps"].tolist() == [0, 1, 2]
    torch.testing.assert_close(w["returns"][:, 0], torch.tensor([0.0, 2.5, 1.5]))
    assert (w["actions"][0] == -10).all() and (w["states"][0] == 0).all()
    torch.testing.assert_close(w["states"][1:], torch.as_tensor(t.states[1:3]))
    assert ds[4]["timesteps"].tolist() == [0, 0, 1]


def test_decision_transformer_policy_reproduces_the_networks_prediction():
    torch.manual_seed(0)
    net = TractRLFormer(state_dim=334, hidden_size=16, n_layers=1, context_length=3, max_ep_len=10).eval()
    policy = DecisionTransformerPolicy(net, target_return=5.0, rtg_scale=1.0)
    policy.start(2, torch.device("cpu"))
    index = torch.arange(2)
    states = torch.randn(4, 2, 334)
    for t in range(4):
        action = policy.act(states[t], index, t)
        policy.observe(index, action, torch.tensor([1.0, 0.5]))
    # at t = 3 the window holds steps 1..3
    assert torch.allclose(policy.returns[:, -1, 0], torch.tensor([2.0, 3.5]))
    assert torch.allclose(policy.current_return, torch.tensor([1.0, 3.0]))


# -- TD3 ---------------------------------------------------------------------------------------------------------------
def test_replay_buffer_wraps_around():
    buffer = ReplayBuffer(5, state_dim=2)
    for start in (0, 3):
        n = 3
        buffer.add(state=torch.arange(start, start + n).float()[:, None].expand(n, 2), action=torch.zeros(n, 3),
                   reward=torch.arange(start, start + n).float(), next_state=torch.zeros(n, 2), done=torch.zeros(n))
    assert buffer.size == 5 and sorted(buffer.data["reward"].tolist()) == [1, 2, 3, 4, 5]
    assert buffer.sample(7)["state"].shape == (7, 2)


def test_td3_collects_transitions_and_updates(tmp_path):
    L.seed_everything(0)
    dm = SyntheticFODFPhantomDataModule(mode="episodes", seeds_per_voxel=1, episodes_per_epoch=64, batch_size=32,
                                        val_seeds=32, train_subjects=1, val_subjects=1, test_subjects=1, **PHANTOM_ENV)
    task = TD3Task(MLPActor(334, 3, (32,)), MLPCritic(334, 3, (32,)), replay_batch_size=64, updates_per_rollout=4,
                   optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    before = [p.clone() for p in task.target_actor.parameters()]
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(task, dm)
    assert task.buffer.size > 64 and task.updates == 8
    assert not all(torch.equal(a, b) for a, b in zip(before, task.target_actor.parameters()))
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/critic_loss"]) and torch.isfinite(metrics["val/return"])
    assert not torch.equal(task.critic_1.net[0].weight, task.critic_2.net[0].weight)  # independent twins


# -- learning on the stand-in --------------------------------------------------------------------------------------
def test_offline_decision_transformer_learns_to_track_the_phantom(tmp_path):
    L.seed_everything(0)
    dm = SyntheticFODFPhantomDataModule(train_subjects=1, val_subjects=1, test_subjects=1, seeds_per_voxel=1,
                                        test_seeds_per_voxel=1, context_length=8, max_timestep=120,
                                        windows_per_epoch=32 * 50, val_windows=256, batch_size=32,
                                        eval_batch_size=256, **PHANTOM_ENV)
    net = TractRLFormer(state_dim=334, hidden_size=32, n_layers=1, context_length=8, max_ep_len=120, dropout=0.0)
    task = SequencePolicyTask(net, target_return=60.0, baselines=["straight"],
                              optimizer=functools.partial(torch.optim.AdamW, lr=2e-3, weight_decay=1e-4))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, log_every_n_steps=10, gradient_clip_val=0.25)
    trainer.fit(task, dm)
    import pandas as pd

    log = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    loss = log["train/loss"].dropna().to_numpy()
    assert loss[-3:].mean() < 0.5 * loss[:2].mean()
    val = log.dropna(subset=["val/angular_error"])
    assert val["val/angular_error"].iloc[-1] < val["val/angular_error"].iloc[0]
    assert task.network.state_std.ne(1).any()  # z-scoring set from the roll-outs
    result = trainer.test(task, dm, verbose=False)[0]
    assert result["test/dice"] > 0.5 and result["test/dice"] > result["test/straight/dice"] + 0.3
    assert (tmp_path / "tractograms" / "phantom-2000_policy.trk").is_file()


def _run_demo(config: str, tmp_path):
    import json
    from pathlib import Path

    import run

    cli = run.main(["--config", config, "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                    "--runs_dir", str(tmp_path), "--run_id", "r"])
    return json.loads((Path(cli.run_dir) / "results.json").read_text())["metrics"], Path(cli.run_dir)


@pytest.mark.slow
def test_shipped_demo_tracks_the_bundle(tmp_path):
    """experiments/tract_rlformer_demo.yaml as shipped (~1.5 min on 2 cores): the DT, trained offline on the scripted
    expert's roll-outs, tracks the test phantom's U bundle far better than a straight-line tracker."""
    metrics, run_dir = _run_demo("experiments/tract_rlformer_demo.yaml", tmp_path)
    assert metrics["test/dice"] > 0.6 and metrics["test/dice"] > metrics["test/straight/dice"] + 0.4
    assert metrics["test/overlap"] > 0.9
    assert (run_dir / "tractograms" / "phantom-2000_policy.trk").is_file()


@pytest.mark.slow
def test_shipped_td3_demo_learns_to_track(tmp_path):
    """experiments/tract_rlformer_td3_demo.yaml as shipped (~3 min on 2 cores): TD3 learns from the reward alone."""
    metrics, _ = _run_demo("experiments/tract_rlformer_td3_demo.yaml", tmp_path)
    assert metrics["test/dice"] > 0.6 and metrics["test/dice"] > metrics["test/straight/dice"] + 0.4
