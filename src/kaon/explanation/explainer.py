"""`kaon.explain`: attributions for a model's predictions, by any method the model supports.

    >>> exp = kaon.explain("digits@latest", x, method="integrated_gradients", heatmap=True)  # doctest: +SKIP
    >>> exp.attributions.shape, exp.targets                                                  # doctest: +SKIP
    ((2, 1, 8, 8), [3, 7])

`model` is a kaon Model, a registry reference (`digits@production`), a model file, a torch
module, or a TextModel (a transformer with its tokenizer: text in, token attributions out).
`target` is the output index to explain: None (the predicted class), one int for every input,
or one per input; for a text encoder, None or a reference text (see kaon.explanation.text).
shap's methods (`pip install 'kaon[shap]'`) measure from a `background` sample when given one:

    >>> exp = kaon.explain(model, x, method="shap_gradient", background=x_train[:16])  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kaon.errors import InvalidInputError
from kaon.explanation import _gradients, _perturbation, _shap
from kaon.explanation._targets import Target, resolve_targets
from kaon.explanation._tensor import TensorAdapter
from kaon.explanation.explanation import Explanation
from kaon.explanation.heatmap import render_heatmaps
from kaon.explanation.methods import SHAP_METHODS, Method, check_method
from kaon.explanation.text import TextModel, explain_text
from kaon.models import Model


def explain(
    model: Any,
    inputs: Any,
    method: Method | None = None,
    target: Target = None,
    *,
    heatmap: bool = False,
    n_steps: int = 50,
    baseline: float | np.ndarray = 0.0,
    background: np.ndarray | None = None,
    n_samples: int = 200,
    internal_batch_size: int | None = None,
    seed: int = 0,
) -> Explanation:
    """Explain `model`'s outputs on `inputs` with `method`; see the module docstring. `method` None:
    integrated gradients where kaon has the model's gradients (torch), occlusion where not (ONNX).

    `n_steps` is integrated gradients' path length; `baseline` the "absent" input (a number or an
    item-shaped array; text uses [PAD] tokens); `background` a sample of inputs (M, *item) that shap's
    methods average "absent" over instead of the baseline (a few dozen rows: it multiplies the cost of
    shap_permutation by M); `n_samples` the perturbations KernelSHAP and LIME fit on, the path points
    shap_gradient draws, and shap_permutation's forward passes (at least one permutation) per input;
    `heatmap` adds one PNG per input with the attribution overlaid.
    """
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise InvalidInputError(f"n_steps must be an integer >= 1. Received: n_steps={n_steps!r}")
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 2:
        raise InvalidInputError(f"n_samples must be an integer >= 2. Received: n_samples={n_samples!r}")
    if background is not None and method not in SHAP_METHODS:
        raise InvalidInputError(
            f"background is a sample for shap's methods ({', '.join(SHAP_METHODS)}); method {method!r} measures "
            f"from the baseline. Received: method={method!r} with a background. Pass baseline=, or drop background.")
    resolved = resolve_model(model, inputs)
    if isinstance(resolved, TextModel):
        return explain_text(resolved, inputs, method, target, n_steps=n_steps,
                            internal_batch_size=internal_batch_size)
    adapter = resolved if isinstance(resolved, TensorAdapter) else TensorAdapter(resolved)
    return explain_tensor(adapter, inputs, method, target, heatmap=heatmap, n_steps=n_steps, baseline=baseline,
                          background=background, n_samples=n_samples, internal_batch_size=internal_batch_size,
                          seed=seed)


def resolve_model(model: Any, inputs: Any = None) -> TensorAdapter | TextModel | Model:
    """A Model, TensorAdapter or TextModel from whatever the user passed."""
    if isinstance(model, TensorAdapter | TextModel | Model):
        return model
    if isinstance(model, torch.nn.Module):
        from kaon.models.torch import TorchModel

        example = np.asarray(inputs)
        return TorchModel.from_module(model, example[:1] if example.ndim > 1 else example[None],
                                      name=type(model).__name__)
    if isinstance(model, str | Path):
        path = Path(model)
        if path.is_dir() and (path / "config.json").exists():
            return TextModel.load(path)
        from kaon.sdk import load

        return load(str(model))
    raise InvalidInputError(
        f"model must be a kaon Model, a registry reference ('digits@latest'), a model file, a torch module or "
        f"a kaon.explanation.TextModel. Received: {type(model).__name__}"
    )


def explain_tensor(adapter: TensorAdapter, inputs: Any, method: str | None, target: Target, *, heatmap: bool = False,
                   n_steps: int = 50, baseline: float | np.ndarray = 0.0, background: np.ndarray | None = None,
                   n_samples: int = 200, internal_batch_size: int | None = None, seed: int = 0) -> Explanation:
    """Explain a single-input tensor model (the path /explain serves)."""
    method = check_method(method, adapter.supported_methods, adapter.name, adapter.why_not)
    x_np = adapter.prepare(inputs)
    predictions = adapter.predict(x_np)
    targets = resolve_targets(target, predictions, adapter.name)
    attributions = attribute(adapter, x_np, method, targets, n_steps=n_steps, baseline=baseline,
                             background=background, n_samples=n_samples, internal_batch_size=internal_batch_size,
                             seed=seed)
    return Explanation(
        attributions=attributions, targets=targets.tolist(), method=method, predictions=predictions,
        inputs=x_np, heatmaps=render_heatmaps(x_np, attributions) if heatmap else None, labels=adapter.labels,
    )


def attribute(adapter: TensorAdapter, x_np: np.ndarray, method: str, targets: np.ndarray, *, n_steps: int = 50,
              baseline: float | np.ndarray = 0.0, background: np.ndarray | None = None, n_samples: int = 200,
              internal_batch_size: int | None = None, seed: int = 0) -> np.ndarray:
    """Attributions (N, *item) for validated inputs and resolved targets."""
    x = torch.from_numpy(x_np).to(adapter.device)
    base = _baseline(baseline, x, adapter)
    target_t = torch.from_numpy(targets).to(adapter.device)
    if method == "integrated_gradients":
        score = _gradients.target_scores(adapter.forward, target_t, x.shape[0])
        result = _gradients.integrated_gradients(score, x, base.expand_as(x), n_steps, internal_batch_size)
    elif method == "saliency":
        result = _gradients.saliency(_gradients.target_scores(adapter.forward, target_t, x.shape[0]), x)
    elif method == "occlusion":
        result = _perturbation.occlusion(adapter.forward, x, target_t, base)
    elif method == "kernel_shap":
        result = _perturbation.kernel_shap(adapter.forward, x, target_t, base, n_samples, seed)
    elif method in SHAP_METHODS:
        references = _references(background, base, x, adapter)
        if method == "shap_gradient":
            result = _shap.gradient(adapter.forward, x, target_t, references, n_samples, seed, internal_batch_size)
        else:
            result = _shap.permutation(adapter.forward, x, target_t, references, n_samples, seed)
    else:
        result = _perturbation.lime(adapter.forward, x, target_t, base, n_samples, seed)
    return result.detach().cpu().numpy().astype(np.float32, copy=False)


def _references(background: np.ndarray | None, base: torch.Tensor, x: torch.Tensor,
                adapter: TensorAdapter) -> torch.Tensor:
    """What "absent" means to shap, per input (N, M, *item): the background sample, or the baseline."""
    if background is None:
        return base.expand_as(x).unsqueeze(1)
    sample = torch.from_numpy(adapter.prepare(background)).to(x.device, x.dtype)  # (M, *item)
    return sample.unsqueeze(0).expand(x.shape[0], *sample.shape)


def _baseline(baseline: float | np.ndarray, x: torch.Tensor, adapter: TensorAdapter) -> torch.Tensor:
    if isinstance(baseline, int | float) and not isinstance(baseline, bool):
        return torch.tensor(float(baseline), dtype=x.dtype, device=x.device)
    array = np.asarray(baseline, dtype=np.float32)
    if array.shape == x.shape[1:]:
        return torch.from_numpy(array).to(x.device, x.dtype).unsqueeze(0).expand_as(x).contiguous()
    if array.shape == x.shape:
        return torch.from_numpy(array).to(x.device, x.dtype)
    raise InvalidInputError(
        f"baseline must be a number or an array shaped like one input {list(x.shape[1:])} (or the whole batch). "
        f"Received: shape={list(array.shape)}")
