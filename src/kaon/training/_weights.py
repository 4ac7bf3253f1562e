"""Read and write a model's weights the same way for torch modules and Keras-on-torch models."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

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


# Checkpoint metadata: a Keras model's variable paths in model.weights order. The paths carry Keras' automatic
# layer numbers ('sequential_1/dense_1/kernel' for the second model built in a process), so a model rebuilt the
# same way can have other paths: its variables are then matched by position (shapes checked).
KERAS_ORDER_KEY = "kaon_keras_weights_order"


def keras_order(model: nn.Module) -> dict[str, str]:
    """The checkpoint metadata a Keras model's weights need to be restored into a rebuilt model ({} for torch)."""
    if not is_keras_model(model):
        return {}
    return {KERAS_ORDER_KEY: json.dumps([v.path for v in model.weights])}  # type: ignore[union-attr,attr-defined]


def restore(model: nn.Module, weights: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    if is_keras_model(model):
        variables = list(model.weights)  # type: ignore[union-attr,attr-defined,arg-type]
        if all(v.path in weights for v in variables):
            for variable in variables:
                variable.assign(weights[variable.path])
            return
        order = json.loads((metadata or {}).get(KERAS_ORDER_KEY, "[]"))
        if len(order) != len(variables) or any(tuple(weights[name].shape) != tuple(v.shape)
                                                for name, v in zip(order, variables, strict=True)):
            missing = [v.path for v in variables if v.path not in weights][:3]
            raise KeyError(f"no weights for {missing} (and the saved layers do not line up with this model's)")
        for name, variable in zip(order, variables, strict=True):
            variable.assign(weights[name])
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


def input_count(model: nn.Module) -> int | None:
    """How many inputs the model takes (its forward's required positional arguments, or a Keras model's
    inputs); None when it cannot tell (*args, a model not built yet)."""
    if is_keras_model(model):
        try:
            inputs = model.inputs  # type: ignore[attr-defined]
        except (AttributeError, ValueError):
            return None
        return len(inputs) if inputs else None  # type: ignore[arg-type]
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if parameter.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) \
                and parameter.default is inspect.Parameter.empty:
            count += 1
    return count or None


# An optimizer's state (Adam's moments and step counts, each group's learning rate) beside a checkpoint, as
# safetensors: tensors by "state.<param index>.<key>", everything else as JSON in the metadata.
OPTIMIZER_SUFFIX = ".optimizer"
_OPTIMIZER_KEY = "kaon_optimizer"


def optimizer_file(weights_file: Path) -> Path:
    """Where the optimizer state of `weights_file` is kept: "03.safetensors" -> "03.safetensors.optimizer", so
    that a glob for "*.safetensors" still finds only weights."""
    return weights_file.with_name(weights_file.name + OPTIMIZER_SUFFIX)


# Both files of one checkpoint carry the same random id: an optimizer file left from another save (a rerun with
# save_optimizer=False, a copy) is not loaded with weights it does not belong to
CHECKPOINT_ID_KEY = "kaon_checkpoint_id"


def optimizer_to_safetensors(optimizer: torch.optim.Optimizer, checkpoint_id: str) -> bytes:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    values: dict[str, dict[str, object]] = {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                values.setdefault(str(index), {})[key] = value
    described = {"class": type(optimizer).__name__, "param_groups": state["param_groups"], "values": values}
    return to_safetensors(tensors, {_OPTIMIZER_KEY: json.dumps(described), CHECKPOINT_ID_KEY: checkpoint_id})


def optimizer_from_safetensors(path: Path) -> tuple[str, str, dict[str, object]]:
    """(the optimizer's class name, the checkpoint id, its state_dict) from `optimizer_to_safetensors`'s file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        described = json.loads(metadata[_OPTIMIZER_KEY])
        checkpoint_id = metadata.get(CHECKPOINT_ID_KEY, "")
        state: dict[int, dict[str, object]] = {
            int(index): dict(entries) for index, entries in described["values"].items()}
        for name in handle.keys():  # noqa: SIM118
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = handle.get_tensor(name)
    return described["class"], checkpoint_id, {"state": state, "param_groups": described["param_groups"]}
