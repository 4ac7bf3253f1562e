"""Names -> objects for optimizers, losses and metrics, with one wording for an unknown name."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from kaon.errors import ConfigError
from kaon.training.losses import LOSSES, Loss
from kaon.training.metrics import METRICS, MeanMetric, Metric, metric_factory
from kaon.training.privacy import DifferentialPrivacy

OptimizerSpec = str | torch.optim.Optimizer | Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
LossSpec = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
MetricSpec = str | Metric | Callable[[torch.Tensor, torch.Tensor], Any]

OPTIMIZERS: dict[str, Callable[[list[torch.nn.Parameter], float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "rmsprop": lambda params, lr: torch.optim.RMSprop(params, lr=lr),
}


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> ConfigError:
    names = ", ".join(valid)
    return ConfigError(
        f"unknown {kind} {name!r}. Expected one of: {names}; or pass an object instead of a name. "
        f"Received: {kind}={name!r}",
        fields=[{"name": kind, "expected": list(valid), "received": repr(name)}],
    )


def check_optimizer(optimizer: object) -> None:
    if isinstance(optimizer, str):
        if optimizer.lower() not in OPTIMIZERS:
            raise unknown_name("optimizer", optimizer, OPTIMIZERS)
    elif not (isinstance(optimizer, torch.optim.Optimizer) or callable(optimizer)):
        raise ConfigError(
            "optimizer must be a name, a torch.optim.Optimizer, or a function params -> optimizer. "
            f"Received: optimizer={optimizer!r}"
        )


def build_optimizer(
    optimizer: OptimizerSpec, params: list[torch.nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    if isinstance(optimizer, str):
        return OPTIMIZERS[optimizer.lower()](params, lr)
    if isinstance(optimizer, torch.optim.Optimizer):
        given = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = [p for p in params if p.requires_grad]
        if trainable and not any(id(p) in given for p in trainable):
            # the notebook cell re-run: a new model, the optimizer still built on the old one's parameters
            raise ConfigError(
                f"the optimizer updates none of the model's parameters ({type(optimizer).__name__} holds "
                f"{len(given)} tensors, none of them this model's), so training would change nothing. Build it "
                "on this model: optimizer=torch.optim.Adam(model.parameters()), or pass a name ('adam').")
        return optimizer
    built = optimizer(params)
    if not isinstance(built, torch.optim.Optimizer):
        raise ConfigError(
            "the optimizer function must return a torch.optim.Optimizer. "
            f"Received: {type(built).__name__} from optimizer={optimizer!r}"
        )
    return built


def optimizer_name(optimizer: OptimizerSpec) -> str:
    if isinstance(optimizer, str):
        return optimizer.lower()
    if isinstance(optimizer, torch.optim.Optimizer):
        return type(optimizer).__name__
    return getattr(optimizer, "__name__", type(optimizer).__name__)


def check_loss(loss: object) -> None:
    if isinstance(loss, str):
        if loss.lower() not in LOSSES:
            raise unknown_name("loss", loss, LOSSES)
    elif not callable(loss):
        raise ConfigError(f"loss must be a name or a function (y_pred, y) -> tensor. Received: loss={loss!r}")


def build_loss(loss: LossSpec, *, from_logits: bool) -> Callable[[torch.Tensor, torch.Tensor], Any]:
    if isinstance(loss, str):
        return LOSSES[loss.lower()](from_logits=from_logits)
    return loss


def loss_name(loss: LossSpec) -> str:
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, Loss):
        return loss.name
    return getattr(loss, "__name__", type(loss).__name__)


def check_metrics(metrics: Sequence[object]) -> None:
    if isinstance(metrics, str | Metric):
        raise ConfigError(f"metrics must be a list. Received: metrics={metrics!r}; write metrics=[{metrics!r}]")
    for metric in metrics:
        if isinstance(metric, str):
            if metric_factory(metric) is None:
                raise unknown_name("metric", metric, METRICS)
        elif not (isinstance(metric, Metric) or callable(metric)):
            raise ConfigError(
                f"each metric must be a name, a kaon.training.metrics.Metric or a function "
                f"(y_pred, y) -> scalar. Received: {metric!r}"
            )


def build_metrics(metrics: Sequence[MetricSpec], *, from_logits: bool) -> list[Metric]:
    built: list[Metric] = []
    for metric in metrics:
        if isinstance(metric, str):
            factory = metric_factory(metric)
            assert factory is not None  # check_metrics refused the others
            made = factory(from_logits)
            made.name = metric.lower()
        elif isinstance(metric, Metric):
            made = metric
        else:
            made = MeanMetric(metric)
        built.append(made)
    names = [m.name for m in built]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or "loss" in names:
        raise ConfigError(
            f"metric names must be unique and not 'loss'. Received: metrics named {names}; "
            "give a function metric a distinct __name__ or wrap it in MeanMetric(fn, name=...)"
        )
    return built


_CLASSIFICATION_LOSSES = ("cross_entropy", "sparse_categorical_crossentropy",
                          "categorical_crossentropy", "binary_crossentropy")


def check_arguments(*, model: object, optimizer: object, loss: object, metrics: Sequence[MetricSpec] | None,
                    lr: object, device: object, precision: object, seed: object,
                    privacy: object) -> list[MetricSpec]:
    """Validate the Trainer's arguments (one wording per problem); return the metrics to use."""
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            "model must be a torch.nn.Module or a Keras 3 model on the torch backend "
            f"(KERAS_BACKEND=torch). Received: model of type {type(model).__name__}"
        )
    check_optimizer(optimizer)
    check_loss(loss)
    if metrics is None:  # accuracy is the default only where it means something
        metrics = ["accuracy"] if loss_name(loss) in _CLASSIFICATION_LOSSES else []  # type: ignore[arg-type]
    check_metrics(metrics)
    if isinstance(lr, bool) or not (isinstance(lr, int | float) and lr > 0):
        raise ConfigError(f"lr must be a number > 0. Received: lr={lr!r}")
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be 'fp32', 'bf16' or 'fp16'. Received: precision={precision!r}")
    if privacy is not None and not isinstance(privacy, DifferentialPrivacy):
        raise ConfigError(f"privacy must be a DifferentialPrivacy(...). Received: privacy={privacy!r}")
    if privacy is not None and precision == "fp16":
        raise ConfigError("privacy does not support precision='fp16'. Received: precision='fp16'; "
                          "use 'bf16' or 'fp32'")
    if device is not None:
        try:
            torch.device(device)  # type: ignore[call-overload]
        except (RuntimeError, TypeError) as exc:
            raise ConfigError("device must be a torch device name such as 'cpu', 'cuda' or 'cuda:1'. "
                              f"Received: device={device!r}") from exc
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"seed must be an integer or None. Received: seed={seed!r}")
    return list(metrics)
