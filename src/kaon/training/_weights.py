"""Read and write a model's weights the same way for torch modules and Keras-on-torch models."""

from __future__ import annotations

import torch
from torch import nn


def is_keras_model(model: object) -> bool:
    """True for a Keras 3 model (which, on the torch backend, is also an nn.Module)."""
    return any(cls.__module__.startswith("keras.") for cls in type(model).__mro__)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every weight (and buffer), named as in the checkpoint file, on the model's device."""
    if is_keras_model(model):
        return {v.path: v.value.detach().clone() for v in model.weights}  # type: ignore[union-attr,attr-defined]
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


def restore(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    if is_keras_model(model):
        for variable in model.weights:  # type: ignore[union-attr,attr-defined]
            variable.assign(weights[variable.path])
        return
    model.load_state_dict(weights)


def to_safetensors(weights: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The weights as safetensors bytes: host memory, contiguous, no shared storage."""
    from safetensors.torch import save

    host = {name: t.detach().to("cpu").contiguous().clone() for name, t in weights.items()}
    return save(host, metadata=metadata)


def parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters: a Keras model's trainable variables, else requires_grad params."""
    if is_keras_model(model):
        return [v.value for v in model.trainable_variables]  # type: ignore[union-attr,attr-defined]
    return [p for p in model.parameters() if p.requires_grad]


def outputs_probabilities(model: nn.Module) -> bool:
    """True when a Keras model ends in softmax or sigmoid, so its outputs are probabilities."""
    layers = getattr(model, "layers", None) or []
    activation = getattr(layers[-1], "activation", None) if layers else None
    return getattr(activation, "__name__", "") in ("softmax", "sigmoid")
