"""Model: a loaded artifact plus its runtime, with a Signature.

Every runtime (onnxruntime, torch.export, Keras on torch, an in-memory torch module) answers the
same two calls::

    outputs = model.run({"input": x})   # dict of numpy arrays in, dict of numpy arrays out
    probs = model.predict(x)            # one array in, the first output out
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace
from typing import Any

import numpy as np

from kaon.errors import ConfigError, InvalidInputError
from kaon.types import Signature


class Model(ABC):
    """A loaded model. Subclasses implement `_run` on validated, correctly typed arrays."""

    framework: str = "unknown"

    def __init__(self, signature: Signature, name: str = "model") -> None:
        self.signature = signature
        self.name = name

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def place(self, device: str | None = "auto", precision: str = "fp32") -> Model:
        """Where and in what precision the model runs. This runtime runs on the CPU in float32 only;
        torch models (`.pt2`) also run on a CUDA GPU and in bf16/fp16 (TorchModel.place). Returns self."""
        if (device or "auto") not in ("auto", "cpu") or precision != "fp32":
            raise ConfigError(
                f"kaon runs {self.framework} models on the CPU in fp32. Received: device={device!r}, "
                f"precision={precision!r}. Serve a torch.export .pt2 for a GPU or bf16/fp16, or make an "
                f"fp16 variant with `kaon optimize --methods fp16`.")
        return self

    def differentiable_module(self) -> Any:
        """The torch module autograd can run through, for gradient explanations and attacks; None when the
        runtime gives no gradients (onnxruntime)."""
        return None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model was exported with, when it has no dynamic batch axis (torch.onnx.export
        without dynamic axes gives 1): `run` then takes any number of rows, in calls of that many."""
        sizes = {spec.shape[0] for spec in self.signature.inputs if spec.shape}
        size = sizes.pop() if len(sizes) == 1 else -1
        return size if size > 0 else None

    def validate(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check names, shapes and dtypes against the signature; cast where it is safe. The batch axis of a
        fixed-batch model takes any size (see `fixed_batch`)."""
        expected = {spec.name for spec in self.signature.inputs}
        missing = expected - inputs.keys()
        unknown = inputs.keys() - expected
        if missing or unknown:
            raise InvalidInputError(
                f"model '{self.name}' expects inputs {sorted(expected)}. "
                f"Received: {sorted(inputs)}. Name each input as the signature does.",
                fields=[{"name": n, "problem": "missing"} for n in sorted(missing)]
                + [{"name": n, "problem": "unknown"} for n in sorted(unknown)],
            )
        specs = self.signature.inputs
        if self.fixed_batch is not None:
            specs = [replace(spec, shape=(-1, *spec.shape[1:])) for spec in specs]
        return {spec.name: spec.validate(np.asarray(inputs[spec.name])) for spec in specs}

    def run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        checked = self.validate(inputs)
        fixed = self.fixed_batch
        if fixed is None:
            return self._run(checked)
        return self._run_fixed(checked, fixed)

    def _run_fixed(self, inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
        """Rows in calls of exactly `size`; a short last call is padded with copies of its last row, dropped after."""
        count = len(next(iter(inputs.values())))
        if count == size:
            return self._run(inputs)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, count, size):
            chunk = {k: v[start:start + size] for k, v in inputs.items()}
            rows = len(next(iter(chunk.values())))
            if rows < size:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], size - rows, axis=0)]) for k, v in chunk.items()}
            parts.append({k: v[:rows] for k, v in self._run(chunk).items()})
        if not parts:
            return self._run(inputs)
        return {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}

    def predict(self, inputs: Any) -> np.ndarray:
        """Run on one array (or a dict of arrays) and return the first output as numpy."""
        if not isinstance(inputs, dict):
            if len(self.signature.inputs) != 1:
                names = [s.name for s in self.signature.inputs]
                raise InvalidInputError(
                    f"model '{self.name}' has {len(names)} inputs {names}; pass a dict of arrays. "
                    f"Received: {type(inputs).__name__}"
                )
            inputs = {self.signature.inputs[0].name: inputs}
        outputs = self.run(inputs)
        return outputs[self.signature.outputs[0].name]

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in self.signature.inputs)
        return f"<{type(self).__name__} {self.name!r} ({ins})>"
