"""Differential privacy for fit, through Opacus (imported only here, and only when used).

    >>> dp = DifferentialPrivacy(target_epsilon=8.0)
    >>> dp.mode
    'ghost'

`mode='ghost'` clips per-sample gradients with ghost clipping (two backward passes, no
per-sample gradient tensors: about 2x the cost of non-private training); `mode='standard'`
materializes per-sample gradients (about 8-10x). Both give the same (epsilon, delta) guarantee.
Batches are drawn by Poisson sampling, as the accounting assumes, so their sizes vary.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kaon.errors import ConfigError, InvalidInputError, require
from kaon.training._data import ArrayBatches, Batches, Inputs, LoaderBatches, PoissonBatches
from kaon.training._weights import is_keras_model

PrivacyMode = Literal["ghost", "standard"]


@dataclass(frozen=True)
class DifferentialPrivacy:
    """Train with (target_epsilon, target_delta)-differential privacy: the noise is set so that
    the planned epochs spend at most `target_epsilon`; History.epsilon reports what was spent."""

    target_epsilon: float
    target_delta: float = 1e-5
    max_grad_norm: float = 1.0
    mode: PrivacyMode = "ghost"

    def __post_init__(self) -> None:
        checks = [
            ("target_epsilon", self.target_epsilon > 0 and math.isfinite(self.target_epsilon),
             "a finite number > 0"),
            ("target_delta", 0 < self.target_delta < 1, "a number in (0, 1), usually below 1/len(data)"),
            ("max_grad_norm", self.max_grad_norm > 0, "a number > 0"),
            ("mode", self.mode in ("ghost", "standard"), "'ghost' or 'standard'"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"{name} must be {expected}. Received: {name}={getattr(self, name)!r}")


@contextlib.contextmanager
def quiet_opacus() -> Iterator[None]:
    """Silence Opacus's advice that does not apply here (secure RNG, alpha range, hook notes)."""
    with warnings.catch_warnings():
        for message in ("Secure RNG turned off", "Optimal order is the", "Full backward hook is firing"):
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield


# Where a model keeps the privacy its earlier private fits spent: (noise multiplier, sample rate, steps) per
# run of steps, as Opacus's accountant records them. Privacy loss adds up over fits on the same model.
SPENT_ATTRIBUTE = "_kaon_privacy_spent"
# ...and where a checkpoint keeps it (JSON in the safetensors metadata), so a fit resumed from it counts it
SPENT_METADATA_KEY = "kaon_privacy_spent"


class PrivateTraining:
    """The Opacus objects of one private fit: optimizer, loss and loader, plus the accountant. Epsilon counts
    this model's earlier private fits too (kept on the model), so a second fit reports the total spent."""

    def __init__(self, config: DifferentialPrivacy, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Any, loader: DataLoader, epochs: int) -> None:
        require("opacus", "privacy", "Training with differential privacy")
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator

        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            listed = "; ".join(str(p) for p in problems[:5])
            raise ConfigError(
                f"the model has layers that differential privacy cannot train: {listed}. "
                "Replace them (BatchNorm -> GroupNorm), e.g. model = "
                "opacus.validators.ModuleValidator.fix(model), then build the Trainer again."
            )
        if not hasattr(loss_fn, "reduction"):
            raise ConfigError(
                "privacy needs a loss that can return one value per sample: a loss name such as "
                "'cross_entropy', or an nn.Module loss with a `reduction` attribute. "
                f"Received: loss={loss_fn!r}"
            )
        self.config = config
        self.original_optimizer = optimizer
        grad_sample_mode = "ghost" if config.mode == "ghost" else "hooks"
        with quiet_opacus():
            self.engine = PrivacyEngine(accountant="rdp")
            made = self.engine.make_private_with_epsilon(
                module=model, optimizer=optimizer, criterion=loss_fn, data_loader=loader,
                target_epsilon=config.target_epsilon, target_delta=config.target_delta, epochs=epochs,
                max_grad_norm=config.max_grad_norm, grad_sample_mode=grad_sample_mode, wrap_model=False,
            )
        if grad_sample_mode == "ghost":
            self.hooks, self.optimizer, self.loss_fn, self.loader = made
        else:
            self.hooks, self.optimizer, self.loader = made
            self.loss_fn = loss_fn
        self.noise_multiplier = float(self.optimizer.noise_multiplier)
        self._rdp_per_step: dict[tuple[float, float], Any] = {}
        self.model = model
        self.prior: list[tuple[float, float, int]] = list(getattr(model, SPENT_ATTRIBUTE, []))
        if self.prior:
            spent = self.epsilon()
            warnings.warn(
                f"this model already spent epsilon={spent:.2f} in earlier private fits; privacy loss adds up, so "
                f"the epsilon reported for this fit counts those too and will exceed target_epsilon="
                f"{config.target_epsilon:g}. Train a fresh model to start a new budget.", RuntimeWarning, stacklevel=4)

    def epsilon(self) -> float:
        """Epsilon spent so far, as Opacus's RDP accountant computes it, but cheap to call every epoch.

        RDP composes linearly in the number of steps, so the per-step RDP of each (noise, sample
        rate) pair is computed once and scaled, instead of recomputed from scratch for every call.
        """
        from opacus.accountants.analysis import rdp as analysis

        accountant = self.engine.accountant
        history = [*getattr(self, "prior", []), *accountant.history]
        if not history:
            return 0.0
        alphas = accountant.DEFAULT_ALPHAS
        total: Any = 0.0
        with quiet_opacus():
            for noise_multiplier, sample_rate, steps in history:
                key = (noise_multiplier, sample_rate)
                if key not in self._rdp_per_step:
                    self._rdp_per_step[key] = analysis.compute_rdp(
                        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=alphas)
                total = total + self._rdp_per_step[key] * steps
            epsilon, _ = analysis.get_privacy_spent(orders=alphas, rdp=total, delta=self.config.target_delta)
        return float(epsilon)

    def spent(self) -> list[tuple[float, float, int]]:
        """What this model has spent, earlier fits and this one so far: (noise, sample rate, steps) runs."""
        return [*self.prior, *self.engine.accountant.history]

    def close(self) -> None:
        """Detach Opacus's hooks so the model predicts and trains as a plain module again; the model keeps what
        this fit spent, for the next private fit's epsilon."""
        setattr(self.model, SPENT_ATTRIBUTE, self.spent())
        cleanup = getattr(self.hooks, "cleanup", None) or getattr(self.hooks, "remove_hooks", None)
        if cleanup is not None:
            cleanup()


def make_private(config: DifferentialPrivacy, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Any, train: Batches, batch_size: int, epochs: int) -> tuple[PrivateTraining, Batches]:
    """Opacus's optimizer and loss for `model`, and the training batches drawn by Poisson sampling."""
    if is_keras_model(model):
        raise ConfigError("privacy supports torch.nn.Module models; Opacus cannot clip a Keras "
                          f"model's per-sample gradients. Received: {type(model).__name__}")
    if isinstance(train, LoaderBatches):
        loader = train.loader
    else:
        if train.y is None:
            raise InvalidInputError("privacy needs targets: pass y, or a Dataset of (x, y).")
        if isinstance(train.x, Inputs):
            raise ConfigError("privacy trains models with one input here. Received: several inputs "
                              f"({train.x.describe()}); train without privacy, or combine them into one tensor.")
        loader = DataLoader(TensorDataset(train.x, train.y), batch_size=batch_size)
    private = PrivateTraining(config, model=model, optimizer=optimizer, loss_fn=loss_fn, loader=loader,
                              epochs=epochs)
    if isinstance(train, ArrayBatches):
        # The sampling of Opacus's DPDataLoader, on tensors instead of per-sample indexing.
        return private, PoissonBatches(train, sample_rate=1 / len(train), steps=len(train))
    return private, LoaderBatches(private.loader, device=train.device, check=train.check)
