"""ConTL network (shapes, parameter counts against the card's breakdown of the official code, gradients, the
length-1-sequence fidelity, ablations) and a learning test of ConTLTask on the synthetic SEED-IV stand-in."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torchmetrics.classification import MulticlassF1Score

from datamodules.standins.synthetic_eeg import SyntheticSEEDIVDataModule
from lightning_modules.contl import ConTL, ConTLTask
from lightning_modules.utils import count_parameters


def test_parameter_count_matches_the_code():
    net = ConTL(num_classes=4)
    # exact (no tolerance): the card's count from the official code, module by module
    assert count_parameters(net) == 482_568
    parts = {"cnn": 16_896, "linear": 243_250, "transformer": 217_298, "fc": 132}
    for name, n in parts.items():
        assert count_parameters(getattr(net, name)) == n, name
    assert count_parameters(net.lstm1) + count_parameters(net.lstm2) == 4_992
    assert net.cnn_length == 76 and net.linear.in_features == 4864


def test_shapes_inputs_and_gradients():
    torch.manual_seed(0)
    net = ConTL(num_classes=4)
    x = torch.randn(5, 62, 5)
    out = net(x)
    assert out.shape == (5, 4)
    torch.testing.assert_close(net.eval()(x), net(x.reshape(5, 1, 310)))  # (B, 62, 5) == the code's (B, 1, 310)
    net.train()
    net(x).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match="310"):
        net(torch.randn(2, 32, 5))


def test_single_token_sequence_means_samples_do_not_interact():
    """The code's (1, B, h) Transformer input: attention over one token, so in eval mode a sample's logits do
    not depend on the other samples of the batch."""
    torch.manual_seed(0)
    net = ConTL().eval()
    x = torch.randn(6, 310)
    torch.testing.assert_close(net(x)[:2], net(x[:2]))
    tokens = ConTL(seq_mode="tokens").eval()
    assert tokens(x).shape == (6, 4)
    torch.testing.assert_close(tokens(x)[:2], tokens(x[:2]))


@pytest.mark.parametrize("flags, fc_in", [({"use_lstm": False}, 50), ({"use_cnn": False}, 32),
                                          ({"use_transformer": False}, 32)])
def test_ablations(flags, fc_in):
    net = ConTL(num_classes=3, **flags)
    assert net.fc.in_features == fc_in
    assert net(torch.randn(4, 310)).shape == (4, 3)
    if not flags.get("use_cnn", True):
        assert net.linear.in_features == 310


def test_learning_on_the_standin_beats_the_prior(tmp_path):
    """ConTLTask trains ConTL on the stand-in (1 subject, 2 sessions): loss falls, test accuracy >> prior."""
    L.seed_everything(0)
    dm = SyntheticSEEDIVDataModule(n_subjects=1, n_sessions=2, n_windows=20, effect=2.0, batch_size=32)
    task = ConTLTask(ConTL(num_classes=4), num_classes=4, metrics={"weighted_f1": MulticlassF1Score(4, average="weighted")},
                     optimizer=lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.5, 0.999)))
    assert task.monitor == "val/loss" and task.monitor_mode == "min" and task.input_key == "signal"
    trainer = L.Trainer(max_epochs=8, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        default_root_dir=tmp_path,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        log_every_n_steps=1)
    trainer.fit(task, datamodule=dm)
    logged = trainer.logged_metrics
    results = trainer.test(task, datamodule=dm, verbose=False)[0]
    import pandas as pd
    history = pd.read_csv(next(tmp_path.rglob("metrics.csv")))
    losses = history["train/loss"].dropna().to_numpy()
    assert losses[-5:].mean() < 0.7 * losses[:5].mean()
    assert results["test/acc"] > results["test/acc_prior"] + 0.3, (results, logged)
    assert 0 < results["test/weighted_f1"] <= 1


class _FakeTrainer:
    def __init__(self, optimizer):
        self.sanity_checking, self.should_stop = False, False
        self.callback_metrics, self.optimizers = {}, [optimizer]


def test_patience_restarts_reload_best_then_stop():
    from lightning_modules.contl import PatienceRestarts
    net = torch.nn.Linear(2, 1)
    optimizer = torch.optim.Adam(net.parameters())
    trainer = _FakeTrainer(optimizer)
    callback = PatienceRestarts(patience=2, num_trials=2)
    losses = [1.0, 0.5, 0.6, 0.7]  # best at epoch 1, patience exhausted at epoch 3 -> reload
    for epoch, loss in enumerate(losses):
        trainer.callback_metrics["val/loss"] = torch.tensor(loss)
        callback.on_validation_end(trainer, net)
        if epoch == 1:
            best_weight = net.weight.detach().clone()
        with torch.no_grad():
            net.weight.add_(1.0)  # "training" moves the weights
    # after epoch 3 the best weights came back (then the loop added 1 once more)
    torch.testing.assert_close(net.weight.detach(), best_weight + 1.0)
    assert callback.trials == 1 and not trainer.should_stop and callback.wait == 0
    for loss in (0.8, 0.9):
        trainer.callback_metrics["val/loss"] = torch.tensor(loss)
        callback.on_validation_end(trainer, net)
    assert trainer.should_stop and callback.trials == 2
