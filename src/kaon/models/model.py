"""Model: a loaded artifact plus its runtime, with a Signature.

Every runtime (onnxruntime, torch.export, Keras on torch, an in-memory torch module) answers the
same two calls::

    outputs = model.run({"input": x})   # dict of numpy arrays in, dict of numpy arrays out
    probs = model.predict(x)            # one array in, the first output out
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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
                f"a {self.framework} model runs on the CPU in fp32 in kaon. Received: device={device!r}, "
                f"precision={precision!r}. Serve a torch.export .pt2 for a GPU or bf16/fp16, or make an "
                f"fp16 variant with `kaon optimize --methods fp16`.")
        return self

    def validate(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Check names, shapes and dtypes against the signature; cast where it is safe."""
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
        return {spec.name: spec.validate(np.asarray(inputs[spec.name])) for spec in self.signature.inputs}

    def run(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        return self._run(self.validate(inputs))

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
