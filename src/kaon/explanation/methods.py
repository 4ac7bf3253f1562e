"""The attribution methods kaon offers, and which model can use which.

| method | needs | works on |
| --- | --- | --- |
| `saliency` | gradients | torch models, text models |
| `integrated_gradients` | gradients | torch models, text models |
| `occlusion` | forward passes only | every model (ONNX, Keras, torch), text models |
| `kernel_shap` | forward passes only | every tensor model |
| `lime` | forward passes only | every tensor model |
| `attention` | attention weights | transformer (text) models |
| `attention_rollout` | attention weights | transformer (text) models |

A model gives gradients when kaon runs it through torch (a `.pt2` program, an in-memory module);
ONNX and Keras models are explained with the forward-only methods.
"""

from __future__ import annotations

from typing import Literal, get_args

from kaon.errors import InvalidInputError

Method = Literal["saliency", "integrated_gradients", "occlusion", "kernel_shap", "lime",
                 "attention", "attention_rollout"]
METHODS: tuple[str, ...] = get_args(Method)
GRADIENT_METHODS = ("saliency", "integrated_gradients")
FORWARD_METHODS = ("occlusion", "kernel_shap", "lime")
ATTENTION_METHODS = ("attention", "attention_rollout")
TEXT_METHODS = ("integrated_gradients", "saliency", "occlusion", "attention", "attention_rollout")


def tensor_methods(has_gradients: bool) -> list[str]:
    """The methods a tensor model supports: all forward-only ones, and the gradient ones with gradients."""
    return [*(GRADIENT_METHODS if has_gradients else ()), *FORWARD_METHODS]


def check_method(method: object, supported: list[str], model_name: str, why: str) -> str:
    """Return `method` if `supported` has it, else raise an error naming the methods that would work.

    `why` says what the model is (e.g. "runs on onnxruntime, which gives no gradients").
    """
    if method in supported:
        return str(method)
    if method not in METHODS:
        raise InvalidInputError(
            f"unknown explanation method. Received: method={method!r}. Methods for model '{model_name}': "
            f"{', '.join(supported)}.",
            fields=[{"name": "method", "expected": supported, "received": str(method)}],
        )
    if method in GRADIENT_METHODS:
        need = "gradients"
    elif method in ATTENTION_METHODS:
        need, why = "a transformer's attention weights", "is not a transformer text model (kaon.explanation.TextModel)"
    else:
        need = "a tensor input"
    raise InvalidInputError(
        f"method {method!r} needs {need}, and model '{model_name}' {why}. "
        f"Methods that work for this model: {', '.join(supported)}. Received: method={method!r}.",
        fields=[{"name": "method", "expected": supported, "received": str(method)}],
    )
