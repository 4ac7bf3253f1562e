"""Turn PyTorch's low-level failures into errors that say what was received and how to fix it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from kaon.errors import InvalidInputError, TrainingError
from kaon.training.losses import BinaryCrossentropy, CrossEntropy, class_labels, match_targets

_SHAPE_HINTS = ("shape", "size", "mat1", "mat2", "expected input", "channels", "dimension",
                "Expected", "must match", "Input 0 of layer", "incompatible")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def first_layer(model: nn.Module) -> nn.Module | None:
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Embedding):
            return module
    return None


def expected_input(model: nn.Module) -> str | None:
    """What the model's first layer reads, in words, e.g. '(N, 1, H, W)' for Conv2d(1, 32, 3)."""
    layer = first_layer(model)
    if isinstance(layer, nn.Conv2d):
        return f"(N, {layer.in_channels}, H, W) for its first layer {layer}"
    if isinstance(layer, nn.Conv1d):
        return f"(N, {layer.in_channels}, L) for its first layer {layer}"
    if isinstance(layer, nn.Conv3d):
        return f"(N, {layer.in_channels}, D, H, W) for its first layer {layer}"
    if isinstance(layer, nn.Linear):
        return f"(N, ..., {layer.in_features}) for its first layer {layer}"
    if isinstance(layer, nn.Embedding):
        return f"integer token ids (N, L) below {layer.num_embeddings} for its first layer {layer}"
    return None


def metric_error(name: str, y_pred: torch.Tensor, y: torch.Tensor, exc: BaseException) -> TrainingError:
    """A metric that cannot compare these predictions with these targets (the fit's forward pass worked)."""
    got = f"predictions of shape {tuple(y_pred.shape)} with targets of shape {tuple(y.shape)}"
    if name in ("mae", "mse") and y_pred.ndim == 2 and y_pred.shape[1] > 1 and y.ndim == 1:
        hint = (f"'{name}' scores regression, one value per target; these look like class scores and class "
                "labels: use metrics=['accuracy'] (or 'precision', 'recall', 'auc').")
    else:
        hint = "Pick metrics that fit the model's outputs and the targets, or pass your own fn(y_pred, y)."
    return TrainingError(f"metric '{name}' could not compare {got} ({_first_line(exc)}). {hint}")


def forward_error(exc: BaseException, model: nn.Module, x: Any, *, where: str) -> BaseException:
    """A TrainingError for a forward pass that failed on the input's shape; else `exc` unchanged."""
    message = _first_line(exc)
    if "more than 1 value per channel" in message:  # BatchNorm in training mode, given a batch of one
        size = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim else 1
        return TrainingError(
            f"a batch of {size} sample reached a BatchNorm layer in training ({where}); it needs at least 2 to "
            f"compute its statistics. The last batch of an epoch is this small when the number of samples leaves "
            f"a remainder of 1 after batch_size: pick another batch_size, or drop one sample."
        )
    if not any(hint in message for hint in _SHAPE_HINTS):
        return exc
    if isinstance(x, torch.Tensor):
        sample = tuple(x.shape[1:])
        shape_text = "(N, " + ", ".join(str(d) for d in sample) + ")" if sample else "(N,)"
        received = f"x of shape {shape_text}, {str(x.dtype).removeprefix('torch.')}"
    else:
        sample, received = (), f"x of type {type(x).__name__}"
    expected = expected_input(model)
    layer = first_layer(model)
    dims = ", ".join(str(d) for d in sample)
    if isinstance(layer, nn.Conv2d) and len(sample) == 2:
        fix = f"Add the channel axis: x.reshape(-1, {layer.in_channels}, {dims})."
    elif isinstance(layer, nn.Conv2d) and len(sample) == 3 and sample[-1] == layer.in_channels:
        fix = "x looks channels-last (N, H, W, C): move the axis with x.transpose(0, 3, 1, 2)."
    elif isinstance(layer, nn.Linear) and len(sample) > 1:
        fix = "Flatten the sample axes: x.reshape(len(x), -1), or start the model with nn.Flatten()."
    else:
        fix = "Reshape x to what the model reads, or change the model's first layer to fit the data."
    return TrainingError(
        f"the model could not run on the input ({where}). "
        f"Expected: {expected or 'an input the model accepts'}. Received: {received}. "
        f"PyTorch said: {message.rstrip('.')}. {fix}"
    )


def check_class_labels(y: torch.Tensor, num_classes: int, *, where: str) -> None:
    """Integer labels must lie in [0, num_classes): the model has one output per class."""
    if y.is_floating_point() or y.numel() == 0:
        return
    low, high = int(y.min()), int(y.max())
    if low >= 0 and high < num_classes:
        return
    bad = high if high >= num_classes else low
    raise InvalidInputError(
        f"labels must be class indices in [0, {num_classes - 1}]: the model has {num_classes} outputs. "
        f"Received: label {bad} ({where}; labels range from {low} to {high}). "
        f"Fix the labels (e.g. map them to 0..{num_classes - 1}), or give the model "
        f"{high + 1} outputs if there are {high + 1} classes.",
        fields=[{"name": "y", "expected": [0, num_classes - 1], "received": bad}],
    )


def check_targets(y: torch.Tensor, y_pred: torch.Tensor, loss_name: str, *, where: str) -> None:
    """Targets that cannot fit the loss: out-of-range labels, or a one-hot width that differs."""
    if loss_name in ("cross_entropy", "sparse_categorical_crossentropy") and y_pred.ndim >= 2:
        labels = class_labels(y, y_pred)
        if labels.is_floating_point():
            return  # class probabilities (N, C)
        if y.is_floating_point() and y.numel() and not torch.equal(y, y.round()):
            fraction = y[y != y.round()].flatten()[0].item()
            raise InvalidInputError(
                f"{loss_name} reads class indices (0, 1, 2, ...). Received: labels with fractions such as "
                f"{fraction:g} ({where}). Pass the class of each sample, or use loss='mse' for a regression."
            )
        check_class_labels(labels, int(y_pred.shape[1]), where=where)
    elif loss_name == "categorical_crossentropy":
        if y.ndim != y_pred.ndim or y.shape[-1] != y_pred.shape[-1]:
            raise InvalidInputError(
                f"categorical_crossentropy reads one-hot targets of shape (N, {y_pred.shape[-1]}) "
                f"like the model's output. Received: y.shape={tuple(y.shape)}. "
                "Pass integer labels with loss='cross_entropy', or one-hot encode them."
            )
    elif loss_name in ("mse", "mean_squared_error", "mae", "mean_absolute_error", "binary_crossentropy"):
        # one value per output, or a clear error naming the shapes of all of y (not of the 2-sample probe)
        matched = match_targets(y[: y_pred.shape[0]], y_pred, count=len(y))
        if loss_name == "binary_crossentropy" and matched.numel():
            low, high = float(y.min()), float(y.max())
            if low < 0 or high > 1:
                raise InvalidInputError(
                    f"binary_crossentropy reads targets in [0, 1]. Received: values from {low:g} to {high:g} "
                    f"({where}). Map the labels to 0 and 1."
                )


def non_finite_loss(epoch: int, step: int | None, value: float, lr: float | None) -> TrainingError:
    at = f"epoch {epoch + 1}, step {step + 1}" if step is not None else f"epoch {epoch + 1}"
    lr_text = f" (lr={lr:g})" if lr is not None else ""
    return TrainingError(
        f"the loss became {value} at {at}; training stopped. Expected: a finite loss. "
        f"Lower the learning rate{lr_text}, e.g. by 10x; check the inputs for NaN or inf and scale them "
        "to about [-1, 1]; with precision='fp16', try 'bf16' or 'fp32'."
    )


def probability_outputs(loss: object, y_pred: torch.Tensor) -> str | None:
    """What makes `y_pred` look like probabilities while the named cross-entropy `loss` reads logits (all within
    [0, 1]; for several classes, rows summing to 1), in words; None when they do not look so."""
    if not isinstance(loss, CrossEntropy | BinaryCrossentropy) or not loss.from_logits:
        return None
    if not y_pred.is_floating_point() or y_pred.numel() == 0:
        return None
    p = y_pred.detach().float()
    low, high = float(p.min()), float(p.max())
    if low < 0 or high > 1:
        return None
    values = f"from {low:.3g} to {high:.3g}"
    if isinstance(loss, BinaryCrossentropy):
        return f"every output within [0, 1] ({values})"
    if p.ndim < 2 or p.shape[1] < 2:
        return None
    sums = p.sum(dim=1)
    if not bool(((sums - 1).abs() < 1e-3).all()):
        return None
    return f"every output within [0, 1] ({values}) and each sample's {p.shape[1]} class scores summing to 1"


# Operations that only move or copy values: looked through to the one that computed the outputs
_PASS_THROUGH = frozenset({"View", "UnsafeView", "Reshape", "ReshapeAlias", "Squeeze", "Unsqueeze", "Clone",
                           "ToCopy", "Permute", "Transpose", "T", "Expand", "Alias"})


def final_operation(forward: Callable[[Any], Any], x: Any,
                    autocast: contextlib.AbstractContextManager[Any] | None = None) -> str | None:
    """The operation that computed the model's outputs for `x`, read from autograd: 'sigmoid', 'softmax', another
    name (e.g. 'Addmm' for a Linear layer), or None when autograd does not record it (no trainable parameters)."""
    try:
        with torch.enable_grad(), autocast or contextlib.nullcontext():
            out = forward(x)
    except Exception:  # noqa: BLE001 - the forward ran already; this is only a second look
        return None
    node = getattr(out, "grad_fn", None)
    for _ in range(16):
        if node is None:
            return None
        name = re.sub(r"Backward\d*$", "", type(node).__name__)  # SigmoidBackward0 -> Sigmoid
        if name in ("Sigmoid", "Softmax"):
            return name.lower()
        if name not in _PASS_THROUGH or not node.next_functions:
            return name
        node = node.next_functions[0][0]
    return None


def probabilities_warning(loss: object, seen: str, made_by: str | None, *, ends_in: str | None = None,
                          keras: bool = False) -> str:
    """`ends_in`: the final activation the model's structure shows (then a loss object of the user's own reads
    logits, and its from_logits is the fix); `keras`: the model is a Keras model (no nn.Sequential advice)."""
    name = getattr(loss, "name", "the loss")
    function = "sigmoid" if isinstance(loss, BinaryCrossentropy) else "softmax"
    origin = f"a {made_by} computed them" if made_by else "their values"
    head = (f"the model's outputs look like probabilities, but {name} reads logits (raw scores: it applies the "
            f"{function} itself). Received on the first batch: {seen}; {origin}. Taken as logits, they train slowly "
            f"or not at all, and accuracy is read wrongly. ")
    if ends_in is not None:  # the structure is known: the loss object was built to read logits
        return head + (f"The model ends in a {ends_in}: build the loss with from_logits=False, or pass it by name "
                       f"(loss={name!r}), which reads probabilities after a final {ends_in}.")
    if keras:
        return head + (f"End the model in a layer with activation='{function}' (Dense(..., activation="
                       f"'{function}')): kaon then takes the outputs as probabilities; or remove the {function}.")
    layer = "nn.Sigmoid()" if function == "sigmoid" else "nn.Softmax(dim=1)"
    return head + (f"Remove the final {function} from the model's forward (apply it to predict()'s outputs "
                   f"instead), or make it the last layer of an nn.Sequential ({layer}): kaon then takes the outputs "
                   f"as probabilities.")
