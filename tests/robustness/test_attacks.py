"""FGSM and PGD: inside the epsilon ball and the valid range, stronger with epsilon, weights untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kaon.robustness as kr
from kaon.errors import ConfigError


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def test_batch(digits):
    _, _, x_test, y_test = digits
    return torch.from_numpy(x_test), torch.from_numpy(y_test)


@pytest.mark.parametrize("attack", [kr.FGSM(0.1), kr.PGD(0.1, seed=0)], ids=["fgsm", "pgd"])
def test_attacks_stay_in_the_ball_and_the_valid_range_and_lower_accuracy(cnn, test_batch, attack):
    x, y = test_batch
    adv = attack.perturb(cnn, x, y, F.cross_entropy)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert _accuracy(cnn, adv, y) < _accuracy(cnn, x, y) - 0.15


def test_pgd_is_at_least_as_strong_as_fgsm_and_both_grow_with_epsilon(cnn, test_batch):
    x, y = test_batch
    fgsm = [_accuracy(cnn, kr.FGSM(e).perturb(cnn, x, y, F.cross_entropy), y) for e in (0.03, 0.1, 0.2)]
    pgd = [_accuracy(cnn, kr.PGD(e, seed=0).perturb(cnn, x, y, F.cross_entropy), y) for e in (0.03, 0.1, 0.2)]
    assert fgsm[0] > fgsm[1] > fgsm[2] and pgd[0] > pgd[1] > pgd[2]
    assert all(p <= f + 0.01 for p, f in zip(pgd, fgsm, strict=True))


def test_attacks_leave_weights_gradients_and_training_mode_alone(cnn, test_batch):
    x, y = test_batch
    cnn.zero_grad(set_to_none=True)
    cnn.train()
    seen = []
    hook = cnn.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    try:
        kr.PGD(0.05, steps=3).perturb(cnn, x[:16], y[:16], F.cross_entropy)
    finally:
        hook.remove()
        training_after = cnn.training
        cnn.eval()
    assert seen == [False, False, False]  # attacked in eval mode ...
    assert training_after  # ... and put back
    assert all(p.grad is None for p in cnn.parameters())


def test_zero_epsilon_is_the_identity_and_bad_settings_are_config_errors(cnn, test_batch):
    x, y = test_batch
    assert torch.equal(kr.PGD(0.0).perturb(cnn, x[:4], y[:4], F.cross_entropy), x[:4])
    assert torch.equal(kr.FGSM(0.0).perturb(cnn, x[:4], y[:4], F.cross_entropy), x[:4])
    with pytest.raises(ConfigError, match="epsilon must be a number >= 0. Received: epsilon=-0.1"):
        kr.PGD(-0.1)
    with pytest.raises(ConfigError, match="steps"):
        kr.PGD(0.1, steps=0)


def test_a_seeded_pgd_is_reproducible(cnn, test_batch):
    x, y = test_batch
    a = kr.PGD(0.1, seed=3).perturb(cnn, x[:32], y[:32], F.cross_entropy)
    b = kr.PGD(0.1, seed=3).perturb(cnn, x[:32], y[:32], F.cross_entropy)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
