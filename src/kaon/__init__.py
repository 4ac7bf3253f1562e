"""kaon: take a deep learning model from a notebook to a fast, secure, explainable HTTP service.

    import kaon

    class Digits(kaon.Service):
        def setup(self):
            self.model = kaon.load("digits@latest")

        @kaon.endpoint(max_batch_size=64, max_wait_ms=5)
        def predict(self, images: list[kaon.Image(8, 8)]) -> list[int]:
            return self.model.predict(np.stack(images)).argmax(1).tolist()

    kaon.serve(Digits, port=8000)

Heavy parts (torch, onnxruntime, the web stack) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Service": "kaon.serving",
    "endpoint": "kaon.serving",
    "Image": "kaon.serving",
    "Tensor": "kaon.serving",
    "serve": "kaon._entry",
    "Client": "kaon.sdk",
    "AsyncClient": "kaon.sdk",
    "load": "kaon.sdk",
    "register": "kaon.sdk",
    "Model": "kaon.models",
    "Signature": "kaon.types",
    "TensorSpec": "kaon.types",
    "KaonError": "kaon.errors",
    "Trainer": "kaon.training",
    "DifferentialPrivacy": "kaon.training",
    "testing": "kaon.testing",
    "explain": "kaon.explanation",
    "Explanation": "kaon.explanation",
    "audit": "kaon.robustness",
    "AuditReport": "kaon.robustness",
    "PGD": "kaon.robustness",
    "FGSM": "kaon.robustness",
    "optimize": "kaon.optimization",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kaon' has no attribute {name!r}")
    if name == "testing":
        return importlib.import_module(module)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
