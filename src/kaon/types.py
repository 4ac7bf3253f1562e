"""Signatures: the named inputs and outputs of a Model, with dtypes and shapes.

A shape uses -1 for a dynamic axis (the batch axis is always dynamic)::

    >>> sig = Signature(inputs=[TensorSpec("image", "float32", (-1, 1, 8, 8))],
    ...                 outputs=[TensorSpec("probabilities", "float32", (-1, 10))])
    >>> sig.inputs[0].accepts_shape((4, 1, 8, 8))
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError

# V2 (Open Inference Protocol) datatype names <-> numpy dtypes.
V2_DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_V2: dict[str, str] = {v: k for k, v in V2_DATATYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name and shape (-1 = any size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def v2_datatype(self) -> str:
        return NUMPY_TO_V2.get(self.dtype, "FP32")

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        if len(shape) != len(self.shape):
            return False
        return all(want in (-1, got) for want, got in zip(self.shape, shape, strict=True))

    def describe(self) -> str:
        dims = ", ".join("N" if i == 0 and d == -1 else ("?" if d == -1 else str(d))
                         for i, d in enumerate(self.shape))
        return f"shape ({dims}) {self.dtype}"

    def validate(self, array: np.ndarray) -> np.ndarray:
        """Return `array` cast to this spec's dtype, or raise InvalidInputError saying why not."""
        shape = tuple(int(d) for d in array.shape)
        if not self.accepts_shape(shape):
            hint = ""
            item = self.shape[1:]
            if len(shape) == len(item) and all(want in (-1, got) for want, got in zip(item, shape, strict=True)):
                hint = " Add the batch axis (a batch of one is shape (1, ...))."
            raise InvalidInputError(
                f"input '{self.name}' expected {self.describe()}. "
                f"Received: shape={shape}, dtype={array.dtype}.{hint}",
                fields=[{"name": self.name, "expected": list(self.shape), "received": list(shape)}],
            )
        if array.dtype == np.dtype(self.dtype):
            return array
        if array.dtype.kind in "fiub" and np.dtype(self.dtype).kind in "fiub":
            if np.dtype(self.dtype).kind in "iu" and array.dtype.kind == "f":
                raise InvalidInputError(
                    f"input '{self.name}' expected {self.describe()}. Received: dtype={array.dtype}. "
                    f"Send integers for this input."
                )
            return array.astype(self.dtype, copy=False)
        raise InvalidInputError(
            f"input '{self.name}' expected {self.describe()}. Received: dtype={array.dtype}."
        )


@dataclass(frozen=True)
class Signature:
    """Named inputs and outputs of a Model; `labels` names the classes of a classifier."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for group in ("inputs", "outputs"):
            for spec in data[group]:
                spec["shape"] = list(spec["shape"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Signature:
        def specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
            return [TensorSpec(s["name"], s["dtype"], tuple(s["shape"])) for s in items]

        return cls(
            inputs=specs(data["inputs"]),
            outputs=specs(data["outputs"]),
            labels=data.get("labels"),
            extra=data.get("extra") or {},
        )

    @classmethod
    def infer(cls, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
              labels: list[str] | None = None) -> Signature:
        """A signature from example arrays; axis 0 (the batch) becomes dynamic."""

        def spec(name: str, arr: np.ndarray) -> TensorSpec:
            return TensorSpec(name, str(arr.dtype), (-1, *arr.shape[1:]))

        return cls([spec(k, v) for k, v in inputs.items()],
                   [spec(k, v) for k, v in outputs.items()], labels)
