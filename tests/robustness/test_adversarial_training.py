"""Adversarial training: `Trainer(..., adversarial=kaon.PGD(epsilon=0.1))` raises PGD accuracy measurably.

Each step trains on the clean batch and its PGD counterpart together.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kaon
import kaon.robustness as kr
from kaon.errors import ConfigError
from kaon.training import DifferentialPrivacy, Trainer
from kaon.training.models import DigitsCNN
from tests.robustness.conftest import train_digits


def test_training_on_pgd_examples_raises_pgd_accuracy_and_keeps_clean_accuracy(digits, cnn):
    _, _, x_test, y_test = digits
    x, y = torch.from_numpy(x_test), torch.from_numpy(y_test)
    robust = train_digits(digits, adversarial=kaon.PGD(0.1, steps=5))

    def accuracies(model):
        adv = kr.PGD(0.1, steps=10, seed=0).perturb(model, x, y, F.cross_entropy)
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean()), float((model(adv).argmax(1) == y).float().mean())

    clean_standard, pgd_standard = accuracies(cnn)
    clean_robust, pgd_robust = accuracies(robust)
    assert pgd_robust > pgd_standard + 0.15
    assert clean_robust > clean_standard - 0.02


def test_adversarial_must_have_perturb_and_excludes_privacy():
    with pytest.raises(ConfigError, match="perturb"):
        Trainer(DigitsCNN(), adversarial=object(), track=False)
    with pytest.raises(ConfigError, match="cannot be combined with privacy"):
        Trainer(DigitsCNN(), adversarial=kaon.PGD(0.1), privacy=DifferentialPrivacy(target_epsilon=8), track=False)


def test_adversarial_training_on_integer_inputs_says_they_cannot_be_perturbed():
    """Token ids reached the attack's requires_grad_: a bare RuntimeError from torch ('only Tensors of floating point
    dtype can require gradients') with no word of adversarial=."""

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = torch.nn.EmbeddingBag(10, 4)
            self.linear = torch.nn.Linear(4, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.linear(self.embedding(ids))

    ids, y = torch.randint(0, 10, (32, 6)), torch.randint(0, 3, (32,))
    expected = r"must be floating point\. Received: x of dtype int64 .* without adversarial="
    with pytest.raises(ConfigError, match=expected):
        Trainer(Bag(), adversarial=kaon.FGSM(0.1), track=False).fit(ids.numpy(), y.numpy(), epochs=1, verbose=False)


def test_adversarial_examples_of_standardized_data_stay_within_epsilon():
    """kaon's attacks clip to [0, 1] by default: on standardized data every input was clamped into [0, 1],
    up to 3.7 away from itself with epsilon=0.1. The Trainer widens the range to the data's."""
    from kaon.training.trainer import _within_data_range

    torch.manual_seed(0)
    x = torch.randn(64, 5) * 2
    y = torch.randint(0, 3, (64,))
    model = torch.nn.Linear(5, 3)
    for attack in (kaon.PGD(0.1, steps=3, seed=0), kaon.FGSM(0.1)):
        adversary = _within_data_range(attack, x)
        adv = adversary.perturb(model, x, y, F.cross_entropy)
        assert float((adv - x).abs().max()) <= 0.1 + 1e-6
        assert adversary.clip_min <= float(x.min()) and adversary.clip_max >= float(x.max())
    pixels = torch.rand(8, 5)
    assert _within_data_range(kaon.FGSM(0.1), pixels) == kaon.FGSM(0.1)  # data in [0, 1]: as given
    seen = []

    class Recording(Trainer):
        def train_step(self, batch):
            seen.append(_within_data_range(self.adversarial, batch[0]))
            return super().train_step(batch)

    Recording(torch.nn.Linear(5, 3), adversarial=kaon.FGSM(0.1), track=False).fit(
        x.numpy(), y.numpy(), epochs=1, batch_size=64, verbose=False)
    assert seen and seen[0].clip_min < 0
