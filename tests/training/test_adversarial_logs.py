"""What an adversarial fit logs: clean figures under the usual names, the adversarial ones as adv_* (val_adv_* for
the attacked validation data)."""

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


def test_adversarial_fit_validates_on_clean_and_attacked_data_and_its_adv_values_can_be_monitored(tmp_path):
    x, y = _data()
    trainer = Trainer(torch.nn.Linear(5, 3), adversarial=kaon.FGSM(0.1), track=False)
    history = trainer.fit(x.numpy(), y.numpy(), epochs=2, batch_size=16, validation_data=(x.numpy(), y.numpy()),
                          verbose=False, callbacks=[EarlyStopping("adv_accuracy", patience=5),
                                                    CSVLogger(tmp_path / "log.csv")])
    names = ["loss", "accuracy", "adv_loss", "adv_accuracy",
             "val_loss", "val_accuracy", "val_adv_loss", "val_adv_accuracy"]
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


class _DropoutNet(torch.nn.Module):
    """Dropout makes a forward pass in training mode differ from one in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(5, 3)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.linear(x))


class _GradientsKept(kaon.training.Callback):
    """The weights' gradients after the last training step, compared with those left once validation has run."""

    def __init__(self) -> None:
        super().__init__()
        self.changed: list[str] = []

    def on_train_batch_end(self, step, logs):
        self.last = {n: p.grad.clone() for n, p in self.trainer.model.named_parameters()}

    def on_epoch_end(self, epoch, logs):
        for name, parameter in self.trainer.model.named_parameters():
            if parameter.grad is None or not torch.equal(parameter.grad, self.last[name]):
                self.changed.append(name)


def test_adversarial_fit_attacks_the_validation_data_in_eval_mode_into_val_adv_figures():
    """With validation data, an adversarial fit logged val_loss/val_accuracy but nothing on attacked held-out data."""
    x, y = _data()
    x_val, y_val = _data(seed=1)
    torch.manual_seed(0)
    model = _DropoutNet()
    attack = kaon.FGSM(0.5, clip_min=None, clip_max=None)
    kept = _GradientsKept()
    history = Trainer(model, optimizer="sgd", lr=0.1, adversarial=attack, seed=0, track=False).fit(
        x.numpy(), y.numpy(), epochs=1, batch_size=64, validation_data=(x_val.numpy(), y_val.numpy()),
        verbose=False, callbacks=[kept])
    logs = {name: values[0] for name, values in history.history.items()}
    assert list(logs) == ["loss", "accuracy", "adv_loss", "adv_accuracy",
                          "val_loss", "val_accuracy", "val_adv_loss", "val_adv_accuracy"]
    model.eval()  # validation ran after the epoch's step, in eval mode (no dropout): these are its figures
    attacked = attack.perturb(model, x_val, y_val, F.cross_entropy)
    with torch.no_grad():
        clean_pred, attacked_pred = model(x_val), model(attacked)
    assert logs["val_loss"] == pytest.approx(float(F.cross_entropy(clean_pred, y_val)), rel=1e-5)
    assert logs["val_adv_loss"] == pytest.approx(float(F.cross_entropy(attacked_pred, y_val)), rel=1e-5)
    assert logs["val_adv_accuracy"] == pytest.approx(_accuracy(attacked_pred, y_val))
    assert logs["val_adv_loss"] > logs["val_loss"]
    assert kept.changed == []  # the attack took gradients w.r.t. the inputs only: the weights' are as trained


def test_val_adv_figures_reach_the_callbacks_the_run_and_the_printed_lines(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kaon.registry import Registry
    from kaon.training import TensorBoard

    x, y = _data()
    stopping = EarlyStopping("val_adv_loss", patience=0)  # was refused before training: 'fit does not log' it
    trainer = Trainer(torch.nn.Linear(5, 3), adversarial=kaon.PGD(0.1, steps=2, seed=0), seed=0)
    history = trainer.fit(x.numpy(), y.numpy(), epochs=2, batch_size=16, validation_split=0.25, verbose=True,
                          callbacks=[stopping, CSVLogger(tmp_path / "log.csv"), TensorBoard(tmp_path / "tb")])
    names = ["loss", "accuracy", "adv_loss", "adv_accuracy",
             "val_loss", "val_accuracy", "val_adv_loss", "val_adv_accuracy"]
    assert list(history.history) == names
    assert list(next(csv.DictReader((tmp_path / "log.csv").open()))) == ["epoch", *names]
    assert stopping.best == min(history.history["val_adv_loss"])
    assert "val_adv_loss=" in capsys.readouterr().out
    validation = EventAccumulator(str(tmp_path / "tb" / "validation"))
    validation.Reload()  # beside adv_loss in train/, as val_loss is beside loss
    assert [e.value for e in validation.Scalars("epoch_adv_loss")] == pytest.approx(history.history["val_adv_loss"])
    with Registry() as registry:
        recorded = registry.metric_history(history.run_id)
        summary = registry.get_run(history.run_id).summary
    assert [value for _, value in recorded["val_adv_loss"]] == pytest.approx(history.history["val_adv_loss"])
    assert summary["best_val_adv_accuracy"] == max(history.history["val_adv_accuracy"])
    assert sorted(trainer.evaluate(x.numpy(), y.numpy())) == ["accuracy", "loss"]  # evaluate attacks nothing


def test_monitoring_an_adv_value_in_a_fit_without_an_attack_says_what_logs_it():
    """It said "did you mean 'val_loss'?", which monitors another thing, without a word of adversarial=."""
    from kaon.errors import ConfigError

    x, y = _data()
    for monitor in ("val_adv_loss", "adv_accuracy"):
        with pytest.raises(ConfigError, match=rf"monitors '{monitor}', which fit does not log: this fit trains "
                                              r"without an attack .*Trainer\(\.\.\., adversarial=kaon\.PGD"):
            Trainer(torch.nn.Linear(5, 3), track=False).fit(x.numpy(), y.numpy(), validation_split=0.25,
                                                            verbose=False, callbacks=[EarlyStopping(monitor)])


def test_attacking_the_validation_data_leaves_the_training_as_it_would_be_without_validation():
    """PGD's random start draws from torch's global generator, as dropout does: attacking the validation data must
    not shift what the next epochs draw, so validation data leaves the trained weights as they would be without."""
    x, y = _data()
    weights = []
    for validation in (None, _data(seed=1)):
        torch.manual_seed(0)
        model = _DropoutNet()
        trainer = Trainer(model, adversarial=kaon.PGD(0.1, steps=2), seed=0, track=False)
        trainer.fit(x.numpy(), y.numpy(), epochs=3, batch_size=16, verbose=False,
                    validation_data=None if validation is None else (validation[0].numpy(), validation[1].numpy()))
        weights.append(model.linear.weight.detach().clone())
    torch.testing.assert_close(weights[1], weights[0], rtol=0, atol=0)
