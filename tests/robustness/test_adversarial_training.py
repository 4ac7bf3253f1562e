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
