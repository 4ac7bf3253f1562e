"""Torch models that end in a softmax or sigmoid: the named losses and metrics take their outputs as probabilities
(as they did for Keras models only), and outputs that look like probabilities while the loss reads logits are
warned about."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from torch import nn

from kaon.errors import ConfigError
from kaon.training import Trainer


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def flat_digits() -> tuple[np.ndarray, np.ndarray]:
    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target


def binary_net(last: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1), last)


def digits_net(last: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10), last)


def fit_quietly(trainer: Trainer, x, y, epochs: int) -> dict[str, list[float]]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a model kaon reads correctly is not warned about
        return trainer.fit(x, y, epochs=epochs, verbose=False).history


def test_a_final_nn_sigmoid_trains_with_binary_crossentropy(cancer):
    """It read the sigmoid's outputs as logits: accuracy stuck at 0.627 (always class 1), loss at 0.467."""
    x, y = cancer
    trainer = Trainer(binary_net(nn.Sigmoid()), loss="binary_crossentropy", metrics=["accuracy", "auc"],
                      lr=0.01, track=False)
    history = fit_quietly(trainer, x, y, epochs=3)
    assert history["accuracy"][-1] > 0.9 and history["auc"][-1] > 0.9
    assert history["loss"][-1] < 0.2
    logits = Trainer(binary_net(nn.Identity()), loss="binary_crossentropy", lr=0.01, track=False)
    assert history["loss"] == pytest.approx(fit_quietly(logits, x, y, epochs=3)["loss"], rel=1e-3)
    probabilities = trainer.predict(x)
    assert probabilities.min() >= 0 and probabilities.max() <= 1


@pytest.mark.parametrize("loss", ["cross_entropy", "sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_a_final_nn_softmax_trains_with_cross_entropy(flat_digits, loss):
    """Loss 1.52 after 5 epochs instead of 0.12: the softmax's outputs were softmaxed again."""
    x, y = flat_digits
    targets = np.eye(10, dtype=np.float32)[y] if loss == "categorical_crossentropy" else y
    trainer = Trainer(digits_net(nn.Softmax(dim=1)), loss=loss, metrics=["accuracy", "auc"], lr=0.01, track=False)
    history = fit_quietly(trainer, x, targets, epochs=3)
    assert history["accuracy"][-1] > 0.9 and history["auc"][-1] > 0.95
    assert history["loss"][-1] < 0.5
    rows = trainer.predict(x[:5]).sum(axis=1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-5)


def test_a_softmax_at_the_end_of_nested_sequentials_is_found(flat_digits):
    x, y = flat_digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(64, 32), nn.ReLU()),
                          nn.Sequential(nn.Linear(32, 10), nn.Softmax(dim=-1)))
    history = fit_quietly(Trainer(model, lr=0.01, track=False), x, y, epochs=3)
    assert history["accuracy"][-1] > 0.9 and history["loss"][-1] < 0.5  # softmaxed twice: about 1.5


def test_a_final_log_softmax_is_read_as_logits_and_refused_for_binary_crossentropy(flat_digits, cancer):
    """cross_entropy on log-probabilities is exact (log_softmax of log-probabilities changes nothing);
    binary_crossentropy cannot read them."""
    x, y = flat_digits
    history = fit_quietly(Trainer(digits_net(nn.LogSoftmax(dim=1)), lr=0.01, track=False), x, y, epochs=3)
    assert history["accuracy"][-1] > 0.9
    xb, yb = cancer
    with pytest.raises(ConfigError, match="binary_crossentropy reads logits or probabilities"):
        Trainer(binary_net(nn.LogSoftmax(dim=1)), loss="binary_crossentropy", track=False).fit(
            xb, yb, verbose=False)


def test_a_softmax_over_one_output_or_over_the_batch_is_refused(cancer, flat_digits):
    x, y = cancer
    with pytest.raises(ConfigError, match="softmax over one output, which is always 1"):
        Trainer(binary_net(nn.Softmax(dim=1)), loss="binary_crossentropy", track=False).fit(x, y, verbose=False)
    xd, yd = flat_digits
    with pytest.raises(ConfigError, match=r"Softmax\(dim=0\), which normalizes over the samples"):
        Trainer(digits_net(nn.Softmax(dim=0)), track=False).fit(xd, yd, verbose=False)


class SigmoidInForward(nn.Module):
    """A final sigmoid that the model's structure does not show."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(x)).squeeze(-1)


class SoftmaxInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).softmax(dim=-1)


def test_probabilities_computed_inside_forward_are_warned_about(cancer, flat_digits):
    x, y = cancer
    trainer = Trainer(SigmoidInForward(), loss="binary_crossentropy", track=False)
    with pytest.warns(RuntimeWarning, match=r"outputs look like probabilities, but binary_crossentropy reads logits"
                                            r".*within \[0, 1\].*a sigmoid computed them.*Remove the final sigmoid"):
        trainer.fit(x[:64], y[:64], epochs=1, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per Trainer
        trainer.fit(x[:64], y[:64], epochs=1, verbose=False)
    xd, yd = flat_digits
    with pytest.warns(RuntimeWarning, match=r"cross_entropy reads logits.*summing to 1.*a softmax computed them"):
        Trainer(SoftmaxInForward(), track=False).fit(xd[:64], yd[:64], epochs=1, verbose=False)


class SmallLogits(nn.Module):
    """Logits that all lie in [0, 1] on the first batch (a zero-initialized last layer): not probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(30, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_logits_that_happen_to_lie_in_0_1_are_not_warned_about(cancer):
    x, y = cancer
    history = fit_quietly(Trainer(SmallLogits(), loss="binary_crossentropy", lr=0.01, track=False), x, y, epochs=2)
    assert history["accuracy"][-1] > 0.9


def test_cross_entropy_on_probabilities_normalizes_them_as_keras_does(flat_digits):
    """A final nn.Sigmoid with cross_entropy: each row is divided by its sum, so the classes compete."""
    from kaon.training.losses import CrossEntropy

    scores = torch.tensor([[0.9, 0.6, 0.3], [0.2, 0.2, 0.8]])
    labels = torch.tensor([0, 2])
    expected = torch.nn.functional.nll_loss((scores / scores.sum(dim=1, keepdim=True)).log(), labels)
    assert float(CrossEntropy(from_logits=False)(scores, labels)) == pytest.approx(float(expected), rel=1e-6)
    x, y = flat_digits
    history = fit_quietly(Trainer(digits_net(nn.Sigmoid()), lr=0.01, track=False), x, y, epochs=3)
    assert history["accuracy"][-1] > 0.9


def test_probabilities_of_sequence_outputs_are_read_over_the_class_axis():
    """(N, C, L) outputs through Softmax(dim=1) with one-hot targets: the soft-target loss summed over the last
    axis (positions), 2.72 where the logits' loss is 1.05."""
    import torch.nn.functional as F

    from kaon.training.losses import CategoricalCrossentropy

    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 5), torch.randint(0, 3, (2, 5))
    one_hot = F.one_hot(labels, 3).permute(0, 2, 1).float()
    expected = float(F.cross_entropy(logits, one_hot))
    assert float(CategoricalCrossentropy()(logits, one_hot)) == pytest.approx(expected, abs=1e-6)
    assert float(CategoricalCrossentropy(from_logits=False)(logits.softmax(1), one_hot)) == pytest.approx(
        expected, abs=1e-5)


@pytest.mark.parametrize(("dim", "shape"), [(-2, (4, 2)), (-1, (4, 3, 5))])
def test_a_softmax_over_another_axis_than_the_classes_is_refused(dim, shape):
    """Softmax(dim=-2) on (N, C) is over the batch, as dim=0 (refused before); dim=-1 on (N, C, L) is over the
    positions. Both trained silently as class probabilities."""
    torch.manual_seed(0)
    body = nn.Linear(4, 2) if len(shape) == 2 else nn.Conv1d(4, 3, 1)
    x = np.random.default_rng(0).random((8, 4) if len(shape) == 2 else (8, 4, 5), dtype=np.float32)
    y = np.zeros(8, dtype=np.int64) if len(shape) == 2 else np.zeros((8, 5), dtype=np.int64)
    with pytest.raises(ConfigError, match=rf"Softmax\(dim={dim}\).*not over the classes \(axis 1"):
        Trainer(nn.Sequential(body, nn.Softmax(dim=dim)), loss="cross_entropy").fit(x, y, epochs=1, verbose=False)


def test_a_wrapped_sequential_is_seen_through_and_a_loss_object_reading_logits_is_named(flat_digits):
    from kaon.training._weights import final_activation
    from kaon.training.losses import CrossEntropy

    x, y = flat_digits
    assert final_activation(nn.DataParallel(digits_net(nn.Softmax(dim=1)))) == "softmax"
    with pytest.warns(RuntimeWarning, match=r"ends in a softmax: build the loss with from_logits=False"):
        Trainer(digits_net(nn.Softmax(dim=1)), loss=CrossEntropy()).fit(x[:64], y[:64], epochs=1, verbose=False)
