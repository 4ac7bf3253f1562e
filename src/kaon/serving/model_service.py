"""The Service kaon generates to serve a Model: `POST /predict`, `POST /explain` and the V2 routes."""

from __future__ import annotations

from typing import Any

import numpy as np

from kaon.models import Model
from kaon.serving.explain import ExplainMethod, ExplainQueue, ExplainTarget
from kaon.serving.service import Service, endpoint
from kaon.serving.tensors import Tensor

# Inputs per explained batch: integrated gradients runs 50 path points per input in one pass.
EXPLAIN_MAX_BATCH_SIZE = 32


def _looks_like_image(shape: tuple[int, ...]) -> bool:
    # (N, C, H, W) or (N, H, W, C) with 1 or 3 channels and a real picture size
    if len(shape) != 4:
        return False
    return (shape[1] in (1, 3) and min(shape[2:]) >= 8) or (shape[3] in (1, 3) and min(shape[1:3]) >= 8)


def rows_to_predictions(outputs: dict[str, np.ndarray], labels: list[str] | None) -> list[dict[str, Any]]:
    """Split batched outputs into one JSON-ready dict per input; classifiers also get a 'label'."""
    names = list(outputs)
    count = len(outputs[names[0]])
    classify = len(names) == 1 and outputs[names[0]].ndim == 2 and outputs[names[0]].shape[1] > 1
    rows: list[dict[str, Any]] = []
    lists = {n: outputs[n].tolist() for n in names}
    if classify:
        best = outputs[names[0]].argmax(axis=1).tolist()
    for i in range(count):
        row: dict[str, Any] = {n: lists[n][i] for n in names}
        if classify:
            row["label"] = labels[best[i]] if labels and best[i] < len(labels) else best[i]
        rows.append(row)
    return rows


def model_service(model: Model, version: str | None = None) -> type[Service]:
    """Build a Service class whose `predict` runs `model` on a list of inputs, batched."""
    if len(model.signature.inputs) != 1:
        return _multi_input_service(model, version)
    spec = model.signature.inputs[0]
    item = Tensor(spec.shape[1:], spec.dtype, image=_looks_like_image(spec.shape))
    labels = model.signature.labels
    class_name = "".join(p[:1].upper() + p[1:] for p in model.name.replace("-", "_").split("_") if p) or "Model"

    def setup(self: Any) -> None:
        self.model = model
        self.explainer = ExplainQueue(model, max_batch_size=EXPLAIN_MAX_BATCH_SIZE)

    def teardown(self: Any) -> None:
        explainer = getattr(self, "explainer", None)
        if explainer is not None:
            explainer.close()

    def predict(self: Any, inputs: list[item]) -> list[dict[str, Any]]:  # type: ignore[valid-type]
        batch: np.ndarray = np.stack(inputs)  # (N, *item shape)
        return rows_to_predictions(self.model.run({spec.name: batch}), labels)

    async def explain(self: Any, inputs: list[item], method: ExplainMethod = "integrated_gradients",  # type: ignore[valid-type]
                      target: ExplainTarget = None, heatmap: bool = False) -> list[dict[str, Any]]:
        """Attributions for each input (see kaon.serving.explain); batched with concurrent requests."""
        return await self.explainer.explain(inputs, method, target, heatmap)

    # Annotations are strings under `from __future__ import annotations`; give the real types.
    predict.__annotations__ = {"inputs": list[item], "return": list[dict[str, Any]]}  # type: ignore[valid-type]
    explain.__annotations__ = {"inputs": list[item], "method": ExplainMethod, "target": ExplainTarget,  # type: ignore[valid-type]
                               "heatmap": bool, "return": list[dict[str, Any]]}

    def models(self: Any) -> dict[str, Model]:
        return {model.name: model}

    namespace = {
        "name": class_name,
        "setup": setup,
        "teardown": teardown,
        "predict": endpoint(predict),
        "explain": endpoint(explain),
        "models": property(models),
        "model_version": version,
        "__doc__": f"Serves the {model.framework} model '{model.name}'.",
    }
    return type(class_name, (Service,), namespace)


def _multi_input_service(model: Model, version: str | None) -> type[Service]:
    """A model with several inputs is served on the V2 routes only (named tensors)."""

    def setup(self: Any) -> None:
        self.model = model

    def models(self: Any) -> dict[str, Model]:
        return {model.name: model}

    return type("ModelService", (Service,), {"name": model.name, "setup": setup, "models": property(models),
                                             "model_version": version})
