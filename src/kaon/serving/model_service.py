"""The Service kaon generates to serve a Model: `POST /predict`, `POST /explain` and the V2 routes."""

from __future__ import annotations

from typing import Any

import numpy as np

from kaon._internal.scores import are_probabilities
from kaon.errors import InvalidInputError
from kaon.models import Model
from kaon.serving.batcher import run_by_shape
from kaon.serving.explain import ExplainMethod, ExplainQueue, ExplainTarget
from kaon.serving.images import EncodedImage, as_array, decode_batch
from kaon.serving.service import Service, endpoint
from kaon.serving.tensors import Tensor

# Inputs per explained batch: integrated gradients runs 50 path points per input in one pass.
EXPLAIN_MAX_BATCH_SIZE = 32


def _looks_like_image(shape: tuple[int, ...]) -> bool:
    # (N, C, H, W) or (N, H, W, C) with 1 or 3 channels and a real picture size
    if len(shape) != 4:
        return False
    return (shape[1] in (1, 3) and min(shape[2:]) >= 8) or (shape[3] in (1, 3) and min(shape[1:3]) >= 8)


# Output names that say "not class scores": such a model gets no 'label' (an argmax of an embedding is noise)
_NOT_CLASS_SCORES = ("embed", "hidden", "pool", "feature", "encod", "latent", "vector", "regress", "box", "coord")


def is_classifier(name: str, array: np.ndarray, labels: list[str] | None) -> bool:
    """Whether one output reads as class scores: (N, classes > 1), and its model has class names or its name
    does not say it is something else (an embedding, hidden state, box or regression output)."""
    if array.ndim != 2 or array.shape[1] < 2:
        return False
    return bool(labels) or not any(word in name.lower() for word in _NOT_CLASS_SCORES)


# Rows of scores that sum to 1 within this are probabilities already (else logits, for a softmax). Wider than
# kaon._internal.scores' 1e-3: a model served in bf16 rounds each probability by up to 0.002, and a quarter of
# its rows miss 1 by more than 1e-3; a row of logits that is non-negative and sums to 1 within 1e-2 is no real case.
PROBABILITY_ATOL = 1e-2


def top_probabilities(scores: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The probabilities of the classes `top` picks from each row of `scores` (N, classes), best first: the
    scores themselves where every row is a distribution already, else their softmax's (the same that
    kaon._internal.scores.probabilities and the explanations read)."""
    scores = np.asarray(scores, dtype=np.result_type(scores.dtype, np.float32))
    picked = np.take_along_axis(scores, top, axis=1)
    if are_probabilities(scores, atol=PROBABILITY_ATOL):
        return picked
    best = picked[:, :1]  # each row's largest score: top[:, 0] is its argmax
    return np.exp(picked - best) / np.exp(scores - best).sum(axis=1, keepdims=True)


def rows_to_predictions(outputs: dict[str, np.ndarray], labels: list[str] | None,
                        top_k: int = 0) -> list[dict[str, Any]]:
    """Split batched outputs into one JSON-ready dict per input; classifiers (`is_classifier`) also get a
    'label'. With `top_k` > 0 a classifier's row is `{"label", "top_k": [{"label", "score"}, ...]}` instead of
    every class's score: 1,000 ImageNet scores cost more to write as JSON than the model takes to run. The
    scores are probabilities (`top_probabilities`: logits go through a softmax)."""
    names = list(outputs)
    count = len(outputs[names[0]])
    classify = len(names) == 1 and is_classifier(names[0], outputs[names[0]], labels)

    def label(index: int) -> Any:
        return labels[index] if labels and index < len(labels) else index

    if classify and top_k > 0:
        scores = outputs[names[0]]
        top = top_k_indices(scores, min(top_k, scores.shape[1]))
        top_scores = top_probabilities(scores, top).tolist()
        return [{"label": label(row[0]),
                 "top_k": [{"label": label(c), "score": v} for c, v in zip(row, vals, strict=True)]}
                for row, vals in zip(top.tolist(), top_scores, strict=True)]
    if len(names) == 1:  # the common case, a row per item without a per-row loop in Python
        name = names[0]
        values = outputs[name].tolist()
        if not classify:
            return [{name: value} for value in values]
        best = outputs[name].argmax(axis=1).tolist()
        if labels:
            return [{name: value, "label": label(index)} for value, index in zip(values, best, strict=True)]
        return [{name: value, "label": index} for value, index in zip(values, best, strict=True)]
    rows: list[dict[str, Any]] = []
    lists = {n: outputs[n].tolist() for n in names}
    if classify:
        best = outputs[names[0]].argmax(axis=1).tolist()
    for i in range(count):
        row: dict[str, Any] = {n: lists[n][i] for n in names}
        if classify:
            row["label"] = label(best[i])
        rows.append(row)
    return rows


def stacked(items: list[np.ndarray]) -> np.ndarray:
    """`np.stack(items)` for arrays of one shape and dtype (run_by_shape groups them so): one C loop, where
    np.stack indexes and checks each item in Python (64 digits: 11 us instead of 32, 0.3 us a request)."""
    return np.array(items)


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """The k best columns of each row, best first. k argmax passes: 0.3 ms for 256 x 1,000 scores, where
    np.argpartition takes 3 ms (that is ~12 us per image on the batch thread, the GIL held)."""
    if k > 16:
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    work = scores.astype(np.float64 if scores.dtype == np.float64 else np.float32, copy=True)
    rows = np.arange(len(work))
    top = np.empty((len(work), k), dtype=np.int64)
    for j in range(k):
        best = work.argmax(axis=1)
        top[:, j] = best
        work[rows, best] = -np.inf
    return top


def decodes_on_device(model: Model) -> bool:
    """True for a torch model on a GPU with torchvision at hand: its JPEGs are decoded there (nvJPEG)."""
    device = getattr(model, "device", None)
    if getattr(device, "type", None) != "cuda" or not hasattr(model, "run_tensors"):
        return False
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def model_service(model: Model, version: str | None = None, *, top_k: int = 0,
                  decode_on_device: bool | None = None) -> type[Service]:
    """Build a Service class whose `predict` runs `model` on a list of inputs, batched.
    `top_k`: a classifier answers with its k best labels and scores (see rows_to_predictions).
    `decode_on_device` (default: `decodes_on_device(model)`): JPEG bodies are decoded a batch at a time
    where the model runs instead of one by one on the event loop."""
    class_name = "".join(p[:1].upper() + p[1:] for p in model.name.replace("-", "_").split("_") if p) or "Model"
    if len(model.signature.inputs) != 1:
        return _multi_input_service(model, version, top_k, class_name)
    spec = model.signature.inputs[0]
    image = _looks_like_image(spec.shape)
    lazy = image and (decodes_on_device(model) if decode_on_device is None else decode_on_device)
    item = Tensor(spec.shape[1:], spec.dtype, image=image, encoded=lazy)
    labels = model.signature.labels

    def setup(self: Any) -> None:
        self.model = model
        self.explainer = ExplainQueue(model, max_batch_size=EXPLAIN_MAX_BATCH_SIZE)

    def warm_up(self: Any, endpoint: str, max_batch_size: int) -> None:
        """Before the server says ready: a model on a GPU captures its CUDA graphs for every batch size the
        endpoint can form (otherwise the first batch of each size waits ~0.1 s for its capture)."""
        if endpoint == "predict" and hasattr(self.model, "warm_up"):
            self.model.warm_up(max_batch_size)

    def teardown(self: Any) -> None:
        explainer = getattr(self, "explainer", None)
        if explainer is not None:
            explainer.close()

    def predict(self: Any, inputs: list[item]) -> list[dict[str, Any]]:  # type: ignore[valid-type]
        if not (lazy and any(isinstance(x, EncodedImage) for x in inputs)):
            return run_by_shape(inputs, [x.shape for x in inputs], lambda same: rows_to_predictions(  # type: ignore[attr-defined]
                self.model.run({spec.name: stacked(same)}), labels, top_k))
        errors: list[tuple[int, ValueError]] = []
        batch = decode_batch(inputs, self.model.device, errors=errors)
        rows: list[Any] = rows_to_predictions(self.model.run_tensors([batch]), labels, top_k) if len(batch) else []
        for index, error in errors:  # a picture that does not decode fails its own request (400), alone
            rows.insert(index, InvalidInputError(str(error)))
        return rows

    async def explain(self: Any, inputs: list[item], method: ExplainMethod | None = None,  # type: ignore[valid-type]
                      target: ExplainTarget = None, heatmap: bool = False) -> list[dict[str, Any]]:
        """Attributions for each input (see kaon.serving.explain); batched with concurrent requests.
        `method` null: integrated gradients for a torch model, occlusion for an ONNX one."""
        arrays = [as_array(x) for x in inputs]
        return await self.explainer.explain(arrays, method, target, heatmap)

    # Annotations are strings under `from __future__ import annotations`; give the real types.
    predict.__annotations__ = {"inputs": list[item], "return": list[dict[str, Any]]}  # type: ignore[valid-type]
    explain.__annotations__ = {"inputs": list[item], "method": ExplainMethod | None, "target": ExplainTarget,  # type: ignore[valid-type]
                               "heatmap": bool, "return": list[dict[str, Any]]}

    def models(self: Any) -> dict[str, Model]:
        return {model.name: model}

    namespace = {
        "name": model.name,  # the banner, /docs and logs say the model's own name; schemas camel-case it
        "setup": setup,
        "warm_up": warm_up,
        "teardown": teardown,
        "predict": endpoint(predict),
        "explain": endpoint(explain),
        "models": property(models),
        "model_version": version,
        "__doc__": f"Serves the {model.framework} model '{model.name}'.",
    }
    return type(class_name, (Service,), namespace)


def _multi_input_service(model: Model, version: str | None, top_k: int, class_name: str) -> type[Service]:
    """A model with several inputs (token ids and an attention mask, say): `POST /predict` takes
    `{"inputs": [{"<input name>": item, ...}, ...]}`, one object per example naming every input, and batches
    them as for one input; the V2 routes take the named tensors."""
    import pydantic

    specs = model.signature.inputs
    # an input's name need not be a Python identifier ("input.1", "mask:0"): the JSON key is the alias
    fields: dict[str, Any] = {f"input_{i}": (Tensor(s.shape[1:], s.dtype), pydantic.Field(alias=s.name))
                              for i, s in enumerate(specs)}
    item = pydantic.create_model(f"{class_name}Inputs", __config__=pydantic.ConfigDict(extra="forbid"),
                                 **fields)
    keys = list(fields)
    labels = model.signature.labels

    def setup(self: Any) -> None:
        self.model = model

    def predict(self: Any, inputs: list[item]) -> list[dict[str, Any]]:  # type: ignore[valid-type]
        arrays = [[getattr(x, k) for k in keys] for x in inputs]

        def run(same: list[list[np.ndarray]]) -> list[dict[str, Any]]:
            batch = {s.name: stacked([row[i] for row in same]) for i, s in enumerate(specs)}
            return rows_to_predictions(self.model.run(batch), labels, top_k)

        return run_by_shape(arrays, [tuple(a.shape for a in row) for row in arrays], run)

    predict.__annotations__ = {"inputs": list[item], "return": list[dict[str, Any]]}  # type: ignore[valid-type]

    def models(self: Any) -> dict[str, Model]:
        return {model.name: model}

    return type(class_name, (Service,), {
        "name": model.name, "setup": setup, "predict": endpoint(predict), "models": property(models),
        "model_version": version,
        "__doc__": f"Serves the {model.framework} model '{model.name}' ({len(specs)} inputs).",
    })
