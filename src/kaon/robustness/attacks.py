"""Adversarial attacks with true labels: FGSM and PGD under an L-infinity budget, in a few lines of torch.

    >>> attack = PGD(epsilon=0.1)                                   # doctest: +SKIP
    >>> x_adv = attack.perturb(model, x, y, loss_fn)                # doctest: +SKIP
    >>> float((x_adv - x).abs().max()) <= 0.1 + 1e-6                # doctest: +SKIP
    True

`perturb(model, x, y, loss_fn)` is the whole contract (tensors in, tensors out), so the same object
attacks in an audit and trains adversarially: `Trainer(..., adversarial=kaon.PGD(epsilon=0.1))`.
`loss_fn(y_pred, y)` is the training loss (logits in); an audit of a model that outputs
probabilities passes a loss that takes probabilities. The model's weights get no gradients from an
attack, and a model in training mode is attacked in eval mode (dropout off, batch-norm statistics
untouched), then put back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from kaon.errors import ConfigError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}. Received: {name}={value!r}")


def _input_gradient(model: Any, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    """d loss / d x, without touching the gradients of the model's weights."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        output = model(leaf)
        if not isinstance(output, torch.Tensor):
            output = output[0]
        loss = loss_fn(output, y)
        (grad,) = torch.autograd.grad(loss, leaf)
    return grad


class _EvalMode:
    """Run the attack in eval mode and restore the model's mode after."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.was_training = bool(getattr(model, "training", False))

    def __enter__(self) -> None:
        if self.was_training:
            self._set(False)

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self._set(True)

    def _set(self, training: bool) -> None:
        try:
            self.model.train(training)
        except (NotImplementedError, RuntimeError):
            pass  # a torch.export program's module cannot switch mode; it was exported in eval mode


@dataclass(frozen=True)
class FGSM:
    """Fast gradient sign method: one step of size `epsilon` along the sign of the loss gradient."""

    epsilon: float
    clip_min: float | None = 0.0
    clip_max: float | None = 1.0

    def __post_init__(self) -> None:
        _check("epsilon", self.epsilon, isinstance(self.epsilon, int | float) and self.epsilon >= 0, "a number >= 0")

    def perturb(self, model: Any, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        if self.epsilon == 0:
            return x.detach().clone()
        with _EvalMode(model):
            grad = _input_gradient(model, x, y, loss_fn)
        return _clip(x.detach() + self.epsilon * grad.sign(), self.clip_min, self.clip_max)


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent (Madry et al., 2018): `steps` signed steps from a random start,
    each projected back into the L-infinity ball of radius `epsilon` around x (and the valid range).

    `step_size` defaults to 2.5 * epsilon / steps, the paper's choice.
    """

    epsilon: float
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    clip_min: float | None = 0.0
    clip_max: float | None = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        _check("epsilon", self.epsilon, isinstance(self.epsilon, int | float) and self.epsilon >= 0, "a number >= 0")
        _check("steps", self.steps, isinstance(self.steps, int) and not isinstance(self.steps, bool)
               and self.steps >= 1, "an integer >= 1")
        _check("step_size", self.step_size, self.step_size is None or (
            isinstance(self.step_size, int | float) and self.step_size > 0), "None or a number > 0")

    def perturb(self, model: Any, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
        x = x.detach()
        if self.epsilon == 0:
            return x.clone()
        alpha = self.step_size if self.step_size is not None else 2.5 * self.epsilon / self.steps
        adv = x.clone()
        if self.random_start:
            generator = None
            if self.seed is not None:
                generator = torch.Generator(device=x.device).manual_seed(self.seed)
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            adv = _clip(x + (2 * noise - 1) * self.epsilon, self.clip_min, self.clip_max)
        with _EvalMode(model):
            for _ in range(self.steps):
                grad = _input_gradient(model, adv, y, loss_fn)
                adv = adv + alpha * grad.sign()
                adv = torch.max(torch.min(adv, x + self.epsilon), x - self.epsilon)  # project into the ball
                adv = _clip(adv, self.clip_min, self.clip_max).detach()
        return adv


def _clip(x: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    if low is None and high is None:
        return x
    return x.clamp(min=low, max=high)
