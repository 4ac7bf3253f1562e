"""Adversarial training through Trainer.train_step (the override path): PGD accuracy goes up measurably.

This is the change the lead wires into Trainer for `Trainer(..., adversarial=kaon.PGD(epsilon=0.1))`:
each step trains on the clean batch and its PGD counterpart together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kaon.robustness as kr
from kaon.training import Trainer
from tests.robustness.conftest import train_digits


class AdversarialTrainer(Trainer):
    def __init__(self, *args, adversarial=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.adversarial = adversarial

    def train_step(self, batch):
        x, y = batch[0], batch[1]
        if self.adversarial is not None:
            x_adv = self.adversarial.perturb(self.model, x, y, self.compute_loss)
            x, y = torch.cat([x, x_adv]), torch.cat([y, y])
        return super().train_step((x, y))


def test_training_on_pgd_examples_raises_pgd_accuracy_and_keeps_clean_accuracy(digits, cnn):
    _, _, x_test, y_test = digits
    x, y = torch.from_numpy(x_test), torch.from_numpy(y_test)
    robust = train_digits(digits, trainer_class=AdversarialTrainer, adversarial=kr.PGD(0.1, steps=5))

    def accuracies(model):
        adv = kr.PGD(0.1, steps=10, seed=0).perturb(model, x, y, F.cross_entropy)
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean()), float((model(adv).argmax(1) == y).float().mean())

    clean_standard, pgd_standard = accuracies(cnn)
    clean_robust, pgd_robust = accuracies(robust)
    assert pgd_robust > pgd_standard + 0.15
    assert clean_robust > clean_standard - 0.02
