"""Can the explanation be trusted? Deletion/insertion faithfulness and the model-randomization check.

Deletion (Petsiuk et al., 2018): remove features in the order the attribution ranks them (most
positive first, set to the baseline) and track the target's probability; a faithful attribution
makes it fall fast, so the area under that curve is small. Insertion starts from the baseline and
adds features back in the same order; the area should be large. Both are compared with a random
order on the same inputs, so a score means something on any model:

    faithfulness = (insertion - deletion) - (random insertion - random deletion)

> 0: the attribution ranks features better than chance. The randomization check (Adebayo et al.,
2018) re-runs the method on a copy of the model with re-initialised weights: attributions that do
not change (rank correlation near 1) describe the input, not the model, and fail the check.

    >>> scores = faithfulness(model, exp)              # doctest: +SKIP
    >>> scores["faithfulness"] > 0                      # doctest: +SKIP
    True
    >>> randomization_check(model, x, "integrated_gradients")["passed"]   # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import torch

from kaon._internal.scores import are_probabilities
from kaon.errors import InvalidInputError
from kaon.explanation._tensor import TensorAdapter
from kaon.explanation.explanation import Explanation

RANDOMIZATION_MAX_CORRELATION = 0.5  # rank correlation above this: attributions ignore the weights


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Rows that are already probabilities are kept; anything else goes through a softmax."""
    if outputs.ndim == 2 and outputs.shape[1] > 1 and are_probabilities(outputs):
        return outputs
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return outputs
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _feature_ranks(attributions: np.ndarray, inputs_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Per input, feature indices from most positive to most negative; images rank whole pixels."""
    from kaon.explanation._perturbation import image_layout

    layout = image_layout(inputs_shape[1:])
    if layout == "chw":
        per_pixel = attributions.sum(axis=1)  # (N, H, W)
    elif layout == "hwc":
        per_pixel = attributions.sum(axis=3)
    else:
        per_pixel = attributions
    flat = per_pixel.reshape(per_pixel.shape[0], -1)
    return np.argsort(-flat, axis=1, kind="stable"), tuple(per_pixel.shape[1:])


def _curves(adapter: TensorAdapter, x: np.ndarray, targets: np.ndarray, order: np.ndarray,
            pixel_shape: tuple[int, ...], baseline: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves (N, steps + 1) of the target's probability."""
    from kaon.explanation._perturbation import image_layout

    n = x.shape[0]
    num_features = order.shape[1]
    counts = np.round(np.linspace(0, num_features, steps + 1)).astype(int)
    layout = image_layout(x.shape[1:])
    keep = np.zeros((n, steps + 1, num_features), dtype=bool)  # True: the feature is removed (deletion)
    for s, count in enumerate(counts):
        rows = np.repeat(np.arange(n), count)
        keep[rows, s, order[:, :count].reshape(-1)] = True
    removed = keep.reshape(n, steps + 1, *pixel_shape)
    if layout == "chw":
        removed = removed[:, :, None]  # broadcast over channels
    elif layout == "hwc":
        removed = removed[..., None]
    base = np.full_like(x, baseline)
    x_rep = np.broadcast_to(x[:, None], (n, steps + 1, *x.shape[1:]))
    b_rep = np.broadcast_to(base[:, None], x_rep.shape)
    deleted = np.where(removed, b_rep, x_rep).reshape(-1, *x.shape[1:]).astype(x.dtype)
    inserted = np.where(removed, x_rep, b_rep).reshape(-1, *x.shape[1:]).astype(x.dtype)
    probs = as_probabilities(adapter.predict(np.concatenate([deleted, inserted])))
    index = np.tile(np.repeat(targets, steps + 1), 2)
    picked = probs[np.arange(len(index)), index].reshape(2, n, steps + 1)
    return picked[0], picked[1]


def faithfulness(model: Any, explanation: Explanation, *, steps: int = 16, baseline: float = 0.0,
                 seed: int = 0) -> dict[str, float]:
    """Deletion and insertion areas (mean over inputs), the same for a random order, and their difference."""
    from kaon.explanation.explainer import resolve_model

    if explanation.inputs is None or explanation.tokens is not None:
        raise InvalidInputError("faithfulness needs an explanation of tensor inputs (it perturbs the inputs).")
    resolved = resolve_model(model, explanation.inputs)
    adapter = resolved if isinstance(resolved, TensorAdapter) else TensorAdapter(resolved)  # type: ignore[arg-type]
    x = explanation.inputs
    targets = np.asarray(explanation.targets, dtype=np.int64)
    order, pixel_shape = _feature_ranks(explanation.attributions, x.shape)
    rng = np.random.default_rng(seed)
    random_order = np.argsort(rng.random(order.shape), axis=1)
    deletion, insertion = _curves(adapter, x, targets, order, pixel_shape, baseline, steps)
    r_deletion, r_insertion = _curves(adapter, x, targets, random_order, pixel_shape, baseline, steps)

    def area(curve: np.ndarray) -> float:
        return float(((curve[:, 1:] + curve[:, :-1]) / (2 * steps)).sum(axis=1).mean())  # trapezoid rule

    scores = {
        "deletion_auc": area(deletion), "insertion_auc": area(insertion),
        "random_deletion_auc": area(r_deletion), "random_insertion_auc": area(r_insertion),
    }
    scores["faithfulness"] = (scores["insertion_auc"] - scores["deletion_auc"]) - (
        scores["random_insertion_auc"] - scores["random_deletion_auc"])
    return {k: round(v, 4) for k, v in scores.items()}


def randomized_copy(adapter: TensorAdapter, seed: int = 0) -> TensorAdapter:
    """A copy of a torch model with every weight redrawn (same shapes and scale, new values)."""
    from kaon.models.torch import TorchModel

    if adapter.module is None:
        raise InvalidInputError(
            f"the randomization check re-initialises the model's weights, which kaon does for torch models; "
            f"model '{adapter.name}' {adapter.why_not}. Run it on the torch version this one was made from.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's pytree warns while copying a .pt2 module
        module = copy.deepcopy(adapter.module)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            scale = float(param.std()) if param.numel() > 1 else 0.1
            noise = torch.randn(param.shape, generator=generator) * (scale or 0.1)
            param.copy_(noise.to(param.device, param.dtype))
    model = TorchModel(module, adapter.model.signature, name=f"{adapter.name}-randomized")
    return TensorAdapter(model)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(np.float64)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else 1.0


def randomization_check(model: Any, inputs: Any, method: str = "integrated_gradients", target: Any = None,
                        *, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Rank correlation of the attributions before and after randomizing the weights; passes under 0.5."""
    from kaon.explanation.explainer import explain_tensor, resolve_model

    resolved = resolve_model(model, inputs)
    adapter = resolved if isinstance(resolved, TensorAdapter) else TensorAdapter(resolved)  # type: ignore[arg-type]
    original = explain_tensor(adapter, inputs, method, target, **options)
    if not np.any(original.attributions):
        # all zero (inputs equal to the baseline, say): ranks of ties measure nothing, so neither pass nor fail
        return {"method": method, "skipped": "every attribution is zero (inputs equal to the baseline?), so "
                "there is nothing to compare with randomized weights"}
    randomized = explain_tensor(randomized_copy(adapter, seed), original.inputs, method, original.targets,
                                **options)
    signed, absolute = [], []
    for a, b in zip(original.attributions, randomized.attributions, strict=True):
        signed.append(_spearman(a.reshape(-1), b.reshape(-1)))
        absolute.append(_spearman(np.abs(a).reshape(-1), np.abs(b).reshape(-1)))
    mean = float(np.mean(signed))
    # The test uses signed ranks. |attributions| of input-times-gradient methods (integrated gradients)
    # keep the input's shape under any weights (a zero pixel always scores 0), so their absolute ranks
    # correlate whatever the model is; the absolute figure is reported for reference.
    return {"method": method, "rank_correlation": round(mean, 4),
            "abs_rank_correlation": round(float(np.mean(absolute)), 4),
            "max_correlation": RANDOMIZATION_MAX_CORRELATION, "passed": bool(mean < RANDOMIZATION_MAX_CORRELATION)}


def trust(model: Any, explanation: Explanation, *, steps: int = 16, seed: int = 0) -> dict[str, Any]:
    """Faithfulness of `explanation`, and the randomization check for its method (torch models only)."""
    from kaon.explanation.explainer import resolve_model

    resolved = resolve_model(model, explanation.inputs)
    adapter = resolved if isinstance(resolved, TensorAdapter) else TensorAdapter(resolved)  # type: ignore[arg-type]
    scores: dict[str, Any] = {"faithfulness": faithfulness(adapter, explanation, steps=steps, seed=seed)}
    if adapter.has_gradients:
        scores["randomization"] = randomization_check(adapter, explanation.inputs, explanation.method,
                                                      explanation.targets, seed=seed)
    else:
        scores["randomization"] = {"skipped": f"model '{adapter.name}' {adapter.why_not}; kaon re-initialises "
                                              f"the weights of torch models only"}
    return scores


def trust_report(model: Any, inputs: Any, methods: list[str] | None = None, *, target: Any = None,
                 steps: int = 16, seed: int = 0) -> dict[str, dict[str, Any]]:
    """`trust` for every method the model supports (or `methods`), on the same inputs."""
    from kaon.explanation.explainer import explain_tensor, resolve_model

    resolved = resolve_model(model, inputs)
    adapter = resolved if isinstance(resolved, TensorAdapter) else TensorAdapter(resolved)  # type: ignore[arg-type]
    return {method: trust(adapter, explain_tensor(adapter, inputs, method, target, seed=seed), steps=steps, seed=seed)
            for method in methods or adapter.supported_methods}
