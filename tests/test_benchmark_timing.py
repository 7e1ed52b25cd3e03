"""benchmarks/timing.py: the shared training-step closure every speed benchmark times."""
from __future__ import annotations

import argparse

import torch

from benchmarks.timing import add_speed_args, step_times, training_step


def test_training_step_equals_a_hand_written_step_and_clips():
    torch.manual_seed(0)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    reference, ours = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
    ours.load_state_dict(reference.state_dict())
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.1)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)

    opt_ref.zero_grad()
    torch.nn.functional.mse_loss(reference(x), y).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01)
    opt_ref.step()

    ours.eval()
    step = training_step(lambda: torch.nn.functional.mse_loss(ours(x), y), opt_ours, "cpu", module=ours,
                         clip_norm=0.01)
    assert len(step_times(step, "cpu", steps=1, warmup=0)) == 1
    assert ours.training  # the closure puts the module back in train mode
    for a, b in zip(reference.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b)


def test_training_step_under_bf16_autocast_keeps_float32_weights():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()
    training_step(lambda: model(torch.randn(3, 4)).float().square().mean(), opt, "cpu", "bf16-mixed")()
    assert model.weight.dtype == torch.float32 and not torch.equal(before, model.weight)


def test_add_speed_args_defaults():
    parser = argparse.ArgumentParser()
    add_speed_args(parser, batch_size=16)
    args = parser.parse_args([])
    assert (args.batch_size, args.steps, args.device, args.precision) == (16, 3, "cpu", "32-true")
