"""ONNX models through onnxruntime, with its graph optimizations on.

Weights in an external `.onnx.data` file beside the model load as long as the file sits where the
model's graph says (onnxruntime resolves it relative to the model's folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError, ModelLoadError, require
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
        # Spinning worker threads wait for work by burning a core; beside a server's event loop that
        # core is the one answering requests (measured at c64 on 2 cores: mean batch 3.8 with spinning,
        # far larger batches and ~40% less CPU per request without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
        self._fast_checks = _fast_checks(signature)
        # onnxruntime's binding under InferenceSession.run, which first re-checks names and OrtValue
        # ownership in Python (~1 us): the fast path below has checked what applies to numpy inputs.
        self._binding_run = getattr(getattr(self.session, "_sess", None), "run", None)

    def run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Like Model.run; inputs that already match the signature exactly skip the general validation.

        On a small model (digits, ~10 us per call in onnxruntime) the general path costs ~5 us;
        this check costs a fraction of a microsecond. Anything else takes the general path, which
        casts what is safe to cast and raises the usual errors.
        """
        checks = self._fast_checks
        if type(inputs) is dict and len(inputs) == len(checks):
            for name, dtype, ndim, tail, fixed in checks:
                array = inputs.get(name)
                if type(array) is not np.ndarray or array.ndim != ndim or (
                        array.dtype is not dtype and array.dtype != dtype):
                    break
                if tail is not None:
                    if array.shape[1:] != tail:
                        break
                elif fixed and any(array.shape[axis] != size for axis, size in fixed):
                    break
            else:
                return self._run(inputs)
        return super().run(inputs)

    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._output_names
        binding = self._binding_run
        try:
            if binding is not None:
                try:
                    results = binding(names, inputs, None)
                except Exception:  # noqa: BLE001 - the public call retries (provider fallback) or raises its error
                    results = self.session.run(names, inputs)
            else:
                results = self.session.run(names, inputs)
        except Exception as exc:
            if type(exc).__name__ != "InvalidArgument":  # onnxruntime's error for values a node cannot take
                raise
            reason = str(exc).split("Status Message: ", 1)[-1].strip()
            raise InvalidInputError(
                f"model '{self.name}' cannot run on this input: {reason}. Check the values against what the model "
                f"takes (for example token ids within its vocabulary)."
            ) from exc
        if len(names) == 1:
            return {names[0]: results[0]}
        return dict(zip(names, results, strict=True))


_Check = tuple[str, np.dtype, int, "tuple[int, ...] | None", tuple[tuple[int, int], ...]]


def _fast_checks(signature: Signature) -> list[_Check]:
    """Per input, for OnnxModel.run: (name, dtype, rank, the non-batch dims when they are all fixed and
    the batch is dynamic (one tuple comparison), else None and the (axis, size) pairs that are fixed)."""
    checks: list[_Check] = []
    for spec in signature.inputs:
        tail = tuple(spec.shape[1:])
        simple = spec.shape[0] == -1 and all(d != -1 for d in tail)
        fixed = tuple((axis, size) for axis, size in enumerate(spec.shape) if size != -1)
        checks.append((spec.name, np.dtype(spec.dtype), len(spec.shape), tail if simple else None, fixed))
    return checks


def _providers(ort: object) -> list[str]:
    available = ort.get_available_providers()  # type: ignore[attr-defined]
    preferred = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or list(available)
