"""ONNX models through onnxruntime, with its graph optimizations on.

Weights in an external `.onnx.data` file beside the model load as long as the file sits where the
model's graph says (onnxruntime resolves it relative to the model's folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kaon.errors import ModelLoadError, require
from kaon.models.model import Model
from kaon.types import Signature, TensorSpec

# onnxruntime's type strings -> numpy dtype names
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _spec(arg: object) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)  # type: ignore[attr-defined]
    return TensorSpec(arg.name, _ORT_TYPES.get(arg.type, "float32"), shape)  # type: ignore[attr-defined]


class OnnxModel(Model):
    framework = "onnx"

    def __init__(self, path: Path, name: str | None = None, num_threads: int | None = None) -> None:
        ort = require("onnxruntime", "onnx", "Serving an ONNX model")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = num_threads or int(os.environ.get("KAON_NUM_THREADS", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options, providers=_providers(ort))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelLoadError(
                f"'{path}' could not be loaded as an ONNX model: {exc}. "
                f"Expected a valid .onnx file (and its .onnx.data file beside it if the weights are external)."
            ) from exc
        signature = Signature([_spec(a) for a in self.session.get_inputs()],
                              [_spec(a) for a in self.session.get_outputs()])
        super().__init__(signature, name or Path(path).stem)
        self._output_names = [s.name for s in signature.outputs]

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, inputs)
        return dict(zip(self._output_names, results, strict=True))


def _providers(ort: object) -> list[str]:
    available = ort.get_available_providers()  # type: ignore[attr-defined]
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or list(available)
