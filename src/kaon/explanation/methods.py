"""The attribution methods kaon offers, and which model can use which.

| method | needs | works on |
| --- | --- | --- |
| `saliency` | gradients | torch models, text models |
| `integrated_gradients` | gradients | torch models, text models |
| `occlusion` | forward passes only | every model (ONNX, Keras, torch), text models |
| `kernel_shap` | forward passes only | every tensor model |
| `lime` | forward passes only | every tensor model |
| `shap_gradient` | gradients, the `shap` extra | torch models |
| `shap_permutation` | forward passes only, the `shap` extra | every tensor model |
| `attention` | attention weights | transformer (text) models |
| `attention_rollout` | attention weights | transformer (text) models |

A model gives gradients when kaon runs it through torch (a `.pt2` program, an in-memory module);
ONNX and Keras models are explained with the forward-only methods. shap's methods are offered
when shap is installed (`pip install 'kaon[shap]'`); they come last in the lists.
"""

from __future__ import annotations

import importlib.util
from typing import Literal, get_args

from kaon.errors import InvalidInputError, require

Method = Literal["saliency", "integrated_gradients", "occlusion", "kernel_shap", "lime",
                 "shap_gradient", "shap_permutation", "attention", "attention_rollout"]
METHODS: tuple[str, ...] = get_args(Method)
GRADIENT_METHODS = ("saliency", "integrated_gradients", "shap_gradient")
FORWARD_METHODS = ("occlusion", "kernel_shap", "lime", "shap_permutation")
SHAP_METHODS = ("shap_gradient", "shap_permutation")  # the shap extra's
ATTENTION_METHODS = ("attention", "attention_rollout")
TEXT_METHODS = ("integrated_gradients", "saliency", "occlusion", "attention", "attention_rollout")


def tensor_methods(has_gradients: bool) -> list[str]:
    """The methods a tensor model supports: all forward-only ones, and the gradient ones with gradients.

    shap's come last, and only when shap is installed (found without importing it).
    """
    methods = [*(GRADIENT_METHODS if has_gradients else ()), *FORWARD_METHODS]
    with_shap = importlib.util.find_spec("shap") is not None
    return [m for m in methods if m not in SHAP_METHODS] + [m for m in methods if m in SHAP_METHODS and with_shap]


def check_method(method: object, supported: list[str], model_name: str, why: str) -> str:
    """Return `method` if `supported` has it, else raise an error naming the methods that would work.
    None is the default: integrated gradients where the model has gradients, else occlusion.

    `why` says what the model is (e.g. "runs on onnxruntime, which gives no gradients").
    """
    if method is None:
        return "integrated_gradients" if "integrated_gradients" in supported else "occlusion"
    if method in supported:
        return str(method)
    if method in SHAP_METHODS and importlib.util.find_spec("shap") is None:
        require("shap", "shap", f"method {method!r}")  # raises: names the extra to install
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
