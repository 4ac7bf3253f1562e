"""What an adversarial fit logs: clean figures under the usual names, the adversarial ones as adv_*."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

import kaon
from kaon.training import CSVLogger, EarlyStopping, Trainer


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.randn(64, 5), torch.randint(0, 3, (64,))


def _accuracy(y_pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((y_pred.argmax(1) == y).float().mean())


def test_adversarial_fit_logs_clean_and_adversarial_figures_under_their_own_names():
    """'loss' and 'accuracy' were the means over the clean batch and its attacked copy together."""
    x, y = _data()
    model = torch.nn.Linear(5, 3)
    attack = kaon.FGSM(0.5, clip_min=None, clip_max=None)
    attacked = attack.perturb(model, x, y, F.cross_entropy)
    with torch.no_grad():  # one step over the whole set: the logs are the model's figures before that step
        clean_pred, attacked_pred = model(x), model(attacked)
    history = Trainer(model, optimizer="sgd", lr=0.1, adversarial=attack, track=False).fit(
        x.numpy(), y.numpy(), epochs=1, batch_size=64, shuffle=False, verbose=False)
    logs = {name: values[0] for name, values in history.history.items()}
    assert list(logs) == ["loss", "accuracy", "adv_loss", "adv_accuracy"]
    assert logs["loss"] == pytest.approx(float(F.cross_entropy(clean_pred, y)), rel=1e-5)
    assert logs["accuracy"] == pytest.approx(_accuracy(clean_pred, y))
    assert logs["adv_loss"] == pytest.approx(float(F.cross_entropy(attacked_pred, y)), rel=1e-5)
    assert logs["adv_accuracy"] == pytest.approx(_accuracy(attacked_pred, y))
    assert logs["adv_loss"] > logs["loss"] and logs["adv_accuracy"] < logs["accuracy"]


def test_adversarial_fit_validates_on_clean_data_and_its_adv_values_can_be_monitored(tmp_path):
    x, y = _data()
    trainer = Trainer(torch.nn.Linear(5, 3), adversarial=kaon.FGSM(0.1), track=False)
    history = trainer.fit(x.numpy(), y.numpy(), epochs=2, batch_size=16, validation_data=(x.numpy(), y.numpy()),
                          verbose=False, callbacks=[EarlyStopping("adv_accuracy", patience=5),
                                                    CSVLogger(tmp_path / "log.csv")])
    names = ["loss", "accuracy", "adv_loss", "adv_accuracy", "val_loss", "val_accuracy"]
    assert list(history.history) == names
    assert list(next(csv.DictReader((tmp_path / "log.csv").open()))) == ["epoch", *names]
    assert sorted(trainer.evaluate(x.numpy(), y.numpy())) == ["accuracy", "loss"]
    plain = Trainer(torch.nn.Linear(5, 3), track=False).fit(x.numpy(), y.numpy(), epochs=1, verbose=False)
    assert list(plain.history) == ["loss", "accuracy"]


def test_a_non_finite_loss_on_the_attacked_copies_stops_the_fit():
    """The clean 'loss' alone stays finite here; the loss trained on (and so the weights) does not."""
    from kaon.errors import TrainingError

    class LogInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(torch.log(x))  # NaN for the negative inputs the attack makes

    torch.manual_seed(0)
    x, y = torch.rand(64, 5) * 0.5 + 0.5, torch.randint(0, 3, (64,))
    trainer = Trainer(LogInputs(), adversarial=kaon.FGSM(2.0, clip_min=None, clip_max=None), track=False)
    with pytest.raises(TrainingError, match="the loss became nan at epoch 1, step 1"):
        trainer.fit(x.numpy(), y.numpy(), epochs=1, batch_size=64, verbose=False)
