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

from kaon.errors import InvalidInputError
from kaon.types import Signature


class Model(ABC):
    """A loaded model. Subclasses implement `_run` on validated, correctly typed arrays."""

    framework: str = "unknown"

    def __init__(self, signature: Signature, name: str = "model") -> None:
        self.signature = signature
        self.name = name

    @abstractmethod
    def _run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

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
