"""Targets: which output each input's attribution explains."""

from __future__ import annotations

import numpy as np

from kaon.errors import InvalidInputError

Target = int | list[int] | np.ndarray | str | list[str] | None


def resolve_targets(target: Target, predictions: np.ndarray, model_name: str) -> np.ndarray:
    """One output index per input, checked against the number of outputs."""
    n, num_outputs = predictions.shape
    if target is None:
        return predictions.argmax(axis=1).astype(np.int64)
    if isinstance(target, str):
        raise InvalidInputError(f"target must be an output index for model '{model_name}'. Received: {target!r}")
    values = np.asarray(target)
    if values.ndim == 0:
        values = np.full(n, values)
    if values.shape != (n,) or values.dtype.kind not in "iu" and not (
            values.dtype.kind == "f" and np.all(values == np.round(values))):
        raise InvalidInputError(
            f"target must be None, one integer, or one integer per input ({n}). Received: target={target!r}",
            fields=[{"name": "target", "expected": f"int in [0, {num_outputs - 1}]"}])
    values = values.astype(np.int64)
    bad = values[(values < 0) | (values >= num_outputs)]
    if bad.size:
        raise InvalidInputError(
            f"target {int(bad[0])} is out of range: model '{model_name}' has {num_outputs} outputs, so a target "
            f"is an integer in [0, {num_outputs - 1}]. Received: target={target!r}. Leave it null to explain "
            f"the predicted class.",
            fields=[{"name": "target", "expected": f"int in [0, {num_outputs - 1}]", "received": int(bad[0])}])
    return values
