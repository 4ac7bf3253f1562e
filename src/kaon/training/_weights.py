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


def mismatch(model: nn.Module, weights: dict[str, torch.Tensor], shown: int = 3) -> str:
    """How `weights` differ from a torch model's state_dict, in words: the names missing from the file, those the
    model lacks, and the shapes that differ; the first `shown` of each kind, and how many in all ('' if none)."""
    if is_keras_model(model):
        return ""
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    shapes = [f"{name!r} is {tuple(weights[name].shape)} in the file and {tuple(tensor.shape)} in the model"
              for name, tensor in expected.items() if name in weights and weights[name].shape != tensor.shape]

    def listed(items: list[str], quote: bool = True) -> str:
        names = [repr(item) if quote else item for item in items[:shown]]
        return ", ".join(names) + (f" and {len(items) - shown} more" if len(items) > shown else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's weights are not in the file ({listed(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} weights in the file are not in the model ({listed(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} weights differ in shape ({listed(shapes, quote=False)})")
    return "; ".join(parts)


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


_TORCH_ACTIVATIONS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Softmax, "softmax"), (nn.Softmax2d, "softmax"), (nn.Sigmoid, "sigmoid"),
    (nn.LogSoftmax, "log_softmax"), (nn.LogSigmoid, "log_sigmoid"),
)


def last_module(model: nn.Module) -> nn.Module:
    """The module an nn.Sequential ends in (inside nested Sequentials, and through torch.compile's and
    DataParallel's wrappers); else the model itself."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, nn.Sequential) and len(model):
            model = model[-1]
        else:
            return model


def final_activation(model: nn.Module) -> str | None:
    """'softmax', 'sigmoid', 'log_softmax' or 'log_sigmoid' when the model's structure says its outputs pass through
    that function last: a Keras model's last layer's activation, or the last module of a torch nn.Sequential (an
    nn.Softmax, nn.Sigmoid, nn.LogSoftmax or nn.LogSigmoid). None otherwise: the outputs are taken as logits."""
    if is_keras_model(model):
        layers = getattr(model, "layers", None) or []
        activation = getattr(layers[-1], "activation", None) if layers else None
        name = getattr(activation, "__name__", "")
        if not name and layers:  # a layer that is the activation itself: keras.layers.Softmax()
            name = {"Softmax": "softmax"}.get(type(layers[-1]).__name__, "")
        return name if name in ("softmax", "sigmoid", "log_softmax") else None
    last = last_module(model)
    return next((name for kind, name in _TORCH_ACTIVATIONS if isinstance(last, kind)), None)


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


def is_optimizer_state(metadata: dict[str, str]) -> bool:
    """True for the metadata of an optimizer state file (`optimizer_to_safetensors`), not of weights."""
    return _OPTIMIZER_KEY in metadata


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
