"""What the detectors look at: a model's outputs, its logits, and its penultimate-layer embeddings.

`feature_extractor(model)` returns a callable that runs the model on a batch and hands back all
three it can get:

| model | embeddings | logits |
| --- | --- | --- |
| torch.export program (`.pt2`) | input of the last `linear` in the graph | output of that `linear` |
| in-memory `torch.nn.Module` | input of the last `nn.Linear` (forward hook, on a copy) | its output |
| ONNX, Keras, anything else | none: drift uses the model's outputs | the outputs, unless probabilities |

The extractor never touches the model that serves requests: a torch.export graph is copied (its
weights are shared, read-only), an `nn.Module` is deep-copied.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np


class ModelLike(Protocol):
    """What kaon.models.Model offers; monitoring needs no more (and imports no runtime)."""

    signature: Any

    def run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]: ...


@dataclass
class Features:
    outputs: np.ndarray  # (N, K) the model's first output as served (probabilities, logits or values)
    logits: np.ndarray | None  # (N, K) pre-softmax scores, when known
    embeddings: np.ndarray | None  # (N, D) penultimate layer, when reachable


Source = Literal["penultimate", "outputs"]


class FeatureExtractor:
    """Runs a model on a batch of inputs (its first input) and returns its Features."""

    def __init__(self, run: Callable[[np.ndarray], Features], source: Source, input_name: str) -> None:
        self._run = run
        self.source: Source = source
        self.input_name = input_name

    def __call__(self, x: np.ndarray) -> Features:
        return self._run(x)


def feature_extractor(model: ModelLike) -> FeatureExtractor:
    """The best extractor for `model`: penultimate-layer embeddings when reachable, else its outputs."""
    input_name = model.signature.inputs[0].name
    module = getattr(model, "module", None)
    if module is not None and getattr(model, "framework", "") == "torch":
        run = _torch_penultimate(model, module)
        if run is not None:
            return FeatureExtractor(run, "penultimate", input_name)

    def outputs_only(x: np.ndarray) -> Features:
        outputs = _first_output(model, model.run({input_name: x}))
        return Features(outputs, None if looks_like_probabilities(outputs) else outputs, None)

    return FeatureExtractor(outputs_only, "outputs", input_name)


def looks_like_probabilities(outputs: np.ndarray) -> bool:
    """Rows of non-negative numbers that sum to 1 (a softmax output)."""
    if outputs.ndim != 2 or outputs.shape[1] < 2 or not len(outputs):
        return False
    return bool(np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))


def _first_output(model: ModelLike, outputs: dict[str, np.ndarray]) -> np.ndarray:
    names = [spec.name for spec in model.signature.outputs]
    first = outputs[names[0]] if names and names[0] in outputs else next(iter(outputs.values()))
    array = np.asarray(first, dtype=np.float32)
    return array.reshape(len(array), -1)


def _torch_penultimate(model: ModelLike, module: Any) -> Callable[[np.ndarray], Features] | None:
    import torch  # the model is a torch model: torch is loaded already

    graph_module = _graph_with_embeddings(module) if isinstance(module, torch.fx.GraphModule) else None
    if graph_module is not None:
        def run_graph(x: np.ndarray) -> Features:
            with torch.inference_mode():
                outputs, embeddings, logits = graph_module(torch.from_numpy(_writable(x, model)))
            out = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
            return _features(out, logits, embeddings)

        return run_graph
    if isinstance(module, torch.nn.Module) and not isinstance(module, torch.fx.GraphModule):
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            return None
        index = [m for m in module.modules()].index(linears[-1])
        clone = copy.deepcopy(module).eval()
        last = list(clone.modules())[index]
        seen: dict[str, Any] = {}

        def hook(_module: Any, args: tuple[Any, ...], output: Any) -> None:
            seen["embeddings"], seen["logits"] = args[0], output

        last.register_forward_hook(hook)
        lock = _lock()

        def run_module(x: np.ndarray) -> Features:
            with lock, torch.inference_mode():
                out = clone(torch.from_numpy(_writable(x, model)))
                out = out[0] if isinstance(out, (tuple, list)) else out
                return _features(out, seen.get("logits"), seen.get("embeddings"))

        return run_module
    return None


def _graph_with_embeddings(module: Any) -> Any:
    """A copy of a torch.fx graph that also returns the last linear layer's input and output."""
    import torch

    graph = torch.fx.Graph()
    value_map: dict[Any, Any] = {}
    out_value = graph.graph_copy(module.graph, value_map)
    linears = [value_map[n] for n in module.graph.nodes
               if n.op == "call_function" and n.target in (torch.ops.aten.linear.default, torch.ops.aten.addmm.default)]
    if not linears or out_value is None:
        return None
    last = linears[-1]
    embedding = last.args[1] if last.target == torch.ops.aten.addmm.default else last.args[0]
    original = out_value[0] if isinstance(out_value, tuple) and len(out_value) == 1 else out_value
    graph.output((original, embedding, last))
    try:
        copied = torch.fx.GraphModule(module, graph)  # shares the weights of `module`
        graph.lint()
    except Exception:  # noqa: BLE001 - an unusual graph: fall back to the outputs
        return None
    return copied


def _features(outputs: Any, logits: Any, embeddings: Any) -> Features:
    out = outputs.detach().float().cpu().numpy().reshape(len(outputs), -1)
    lg = logits.detach().float().cpu().numpy().reshape(len(logits), -1) if logits is not None else None
    emb = embeddings.detach().float().cpu().numpy().reshape(len(embeddings), -1) if embeddings is not None else None
    if lg is not None and lg.shape != out.shape:
        lg = None  # the last linear is not the classifier head
    return Features(out, lg, emb)


def _writable(x: np.ndarray, model: ModelLike) -> np.ndarray:
    dtype = np.dtype(model.signature.inputs[0].dtype)
    array = np.ascontiguousarray(x, dtype=dtype)
    return array if array.flags.writeable else array.copy()


def _lock() -> Any:
    import threading

    return threading.Lock()
