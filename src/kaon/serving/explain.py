"""`POST /explain` on a served model: attributions (and heatmaps) beside `/predict`.

Request: `{"inputs": [...], "method": null, "target": null, "heatmap": false}`; `method` null (or left
out) is integrated gradients for a model kaon has gradients for, occlusion for the rest (ONNX);
`target` is null (the predicted class), one class for every input, or one per input. Response: one
object per input, `{"target", "label", "prediction", "attributions", "heatmap"}` (`heatmap` is a
base64 PNG when asked for).

Batching: concurrent requests for the same method (and heatmap choice) are queued together and
explained in one pass, as `/predict` batches forward passes; KernelSHAP and LIME fit one surrogate
per input anyway, so a batch of them only shares the queue. Everything a request can get wrong
(method, target, shape) is checked before it is queued, so one bad request never fails the batch
it would have joined. Torch and captum load on the first `/explain`, not when the server starts.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError
from kaon.explanation.methods import Method, check_method, tensor_methods
from kaon.models import Model
from kaon.serving.batcher import Batcher

ExplainMethod = Method  # one list of methods, kaon.explanation's
ExplainTarget = int | list[int] | None


def has_gradients(model: Model) -> bool:
    """Whether kaon can run autograd through `model`: a torch model, or a Keras 3 model on the torch backend
    (Model.differentiable_module; an ONNX model says no without importing torch)."""
    return model.differentiable_module() is not None


def _why_not(model: Model) -> str:
    if model.framework == "onnx":
        return "runs on onnxruntime, which gives no gradients"
    if model.framework == "torch":
        return "is a torch model (a CNN or MLP on tensors, not a transformer over tokens)"
    return f"runs on {model.framework}, which kaon explains with forward passes only"


class ExplainQueue:
    """Per (method, heatmap): a Batcher whose handler explains a batch of (input, target) items."""

    def __init__(self, model: Model, *, max_batch_size: int = 32, max_wait_ms: float = 2.0,
                 max_queue: int = 1024) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_wait_ms = max_wait_ms
        self.max_queue = max_queue
        self.methods = tensor_methods(has_gradients(model))
        self._adapter: Any = None
        self._num_outputs: int | None = None
        self._batchers: dict[tuple[str, bool], Batcher] = {}

    # checks made before queueing -----------------------------------------------------------------

    def _adapter_(self) -> Any:
        if self._adapter is None:
            from kaon.explanation._tensor import TensorAdapter

            self._adapter = TensorAdapter(self.model)
        return self._adapter

    def num_outputs(self) -> int:
        if self._num_outputs is None:
            shape = self.model.signature.outputs[0].shape
            if len(shape) == 2 and shape[1] > 0:
                self._num_outputs = int(shape[1])
            else:
                spec = self.model.signature.inputs[0]
                probe = np.zeros((1, *[max(1, d) for d in spec.shape[1:]]), dtype=spec.dtype)
                self._num_outputs = int(self._adapter_().predict(probe).shape[1])
        return self._num_outputs

    def targets_for(self, target: ExplainTarget, count: int) -> list[int | None]:
        if target is None:
            return [None] * count
        values = [target] * count if isinstance(target, int) else list(target)
        if len(values) != count:
            raise InvalidInputError(
                f"target must be null, one integer, or one integer per input ({count}). "
                f"Received: {len(values)} targets.", fields=[{"name": "target", "expected": count,
                                                               "received": len(values)}])
        k = self.num_outputs()
        for value in values:
            if not 0 <= value < k:
                raise InvalidInputError(
                    f"target {value} is out of range: model '{self.model.name}' has {k} outputs, so a target is "
                    f"an integer in [0, {k - 1}]. Received: target={target!r}. Send null to explain the "
                    f"predicted class.",
                    fields=[{"name": "target", "expected": f"int in [0, {k - 1}]", "received": value}])
        return list(values)

    # queueing --------------------------------------------------------------------------------------

    async def explain(self, inputs: list[np.ndarray], method: str | None, target: ExplainTarget,
                      heatmap: bool) -> list[dict[str, Any]]:
        method = check_method(method, self.methods, self.model.name, _why_not(self.model))
        if not inputs:
            return []
        targets = self.targets_for(target, len(inputs))
        key = (method, bool(heatmap))
        batcher = self._batchers.get(key)
        if batcher is None:
            batcher = Batcher(self._handler(method, bool(heatmap)), max_batch_size=self.max_batch_size,
                              max_wait_ms=self.max_wait_ms, max_queue=self.max_queue,
                              name=f"explain-{method}")
            self._batchers[key] = batcher
        return await batcher.submit(list(zip(inputs, targets, strict=True)))

    def _handler(self, method: str, heatmap: bool) -> Any:
        def run(items: list[tuple[np.ndarray, int | None]]) -> list[dict[str, Any]]:
            return self.explain_now([x for x, _ in items], [t for _, t in items], method, heatmap)

        return run

    def explain_now(self, inputs: list[np.ndarray], targets: list[int | None], method: str,
                    heatmap: bool) -> list[dict[str, Any]]:
        """Explain one batch in this thread (the Batcher's worker)."""
        from kaon.explanation.explainer import attribute
        from kaon.explanation.heatmap import render_heatmap

        adapter = self._adapter_()
        x = adapter.prepare(np.stack(inputs))  # (N, *item)
        predictions = adapter.predict(x)
        best = predictions.argmax(axis=1)
        chosen = np.array([best[i] if t is None else t for i, t in enumerate(targets)], dtype=np.int64)
        attributions = attribute(adapter, x, method, chosen)
        labels = self.model.signature.labels
        rows = []
        for i in range(len(inputs)):
            target = int(chosen[i])
            row: dict[str, Any] = {
                "method": method,
                "target": target,
                "label": labels[target] if labels and target < len(labels) else target,
                "prediction": predictions[i].tolist(),
                "attributions": attributions[i].tolist(),
            }
            if heatmap:
                row["heatmap"] = base64.b64encode(render_heatmap(x[i], attributions[i])).decode("ascii")
            rows.append(row)
        return rows

    def close(self) -> None:
        """Stop the batchers' workers; pending requests were already answered or failed by the app."""
        for batcher in self._batchers.values():
            task = getattr(batcher, "_task", None)
            if task is not None:
                task.cancel()
            executor = getattr(batcher, "_executor", None)
            if executor is not None:
                executor.shutdown(wait=False)
        self._batchers.clear()

