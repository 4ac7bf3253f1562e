"""Reference statistics: what the model saw at registration, kept with the version as `reference.npz`.

    >>> ref = fit_reference(model, x_calibration)        # doctest: +SKIP
    >>> ref.save(folder / "reference.npz")                # register it with the model's files
    >>> Reference.load(folder / "reference.npz").kind     # doctest: +SKIP
    'embedding'

Fit it on data the model did not train on (a validation or calibration split): on training data the
model is more confident than it will ever be on new inputs, and clean traffic would look drifted.
The file is plain arrays (`np.load(..., allow_pickle=False)`): loading it runs no code.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kaon.errors import InvalidInputError, ModelLoadError
from kaon.monitoring.drift import median_bandwidth, psi_bins
from kaon.monitoring.features import FeatureExtractor, Features, ModelLike, feature_extractor
from kaon.monitoring.outliers import OutlierModel, fit_outlier_model

FORMAT_VERSION = 1
FILENAME = "reference.npz"
Kind = Literal["tabular", "embedding"]


@dataclass
class Reference:
    """Statistics of reference data for one model (see the module docstring)."""

    kind: Kind
    source: str  # 'penultimate' | 'outputs' | 'inputs': what `embeddings` holds
    input_name: str
    input_shape: tuple[int, ...]  # one item, without the batch axis
    num_samples: int
    embeddings: np.ndarray  # (M, D) a sample, for MMD and the outlier model
    bandwidth: float
    outlier: OutlierModel
    features: np.ndarray | None = None  # tabular: (M, F) a sample of the inputs, for KS
    psi_edges: np.ndarray | None = None  # tabular: (F, B-1)
    psi_expected: np.ndarray | None = None  # tabular: (F, B)
    class_counts: np.ndarray | None = None  # classifiers: (K,) predicted classes on the reference
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return 0 if self.class_counts is None else len(self.class_counts)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {
            "format": FORMAT_VERSION, "kind": self.kind, "source": self.source, "input_name": self.input_name,
            "input_shape": list(self.input_shape), "num_samples": self.num_samples, "bandwidth": self.bandwidth,
            "outlier": {"method": self.outlier.method, "median": self.outlier.median, "high": self.outlier.high,
                        "rate": self.outlier.rate},
            **self.meta,
        }
        arrays: dict[str, np.ndarray] = {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                                         "embeddings": self.embeddings.astype(np.float32)}
        optional = {"features": self.features, "psi_edges": self.psi_edges, "psi_expected": self.psi_expected,
                    "class_counts": self.class_counts, "outlier_means": self.outlier.means,
                    "outlier_precision": self.outlier.precision}
        arrays.update({k: v for k, v in optional.items() if v is not None})
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        return path

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(
                f"{str(path)!r} is not a kaon reference file ({exc}). Expected a reference.npz written by "
                f"kaon.monitoring.fit_reference(model, x).save(path)."
            ) from exc
        if meta.get("format") != FORMAT_VERSION:
            raise ModelLoadError(f"{str(path)!r} has reference format {meta.get('format')!r}; this kaon reads "
                                 f"format {FORMAT_VERSION}. Fit the reference again with this kaon.")
        out = meta.pop("outlier")
        outlier = OutlierModel(out["method"], out["median"], out["high"], out["rate"],
                               arrays.get("outlier_means"), arrays.get("outlier_precision"))
        known = {"format", "kind", "source", "input_name", "input_shape", "num_samples", "bandwidth"}
        return cls(
            kind=meta["kind"], source=meta["source"], input_name=meta["input_name"],
            input_shape=tuple(meta["input_shape"]), num_samples=meta["num_samples"],
            embeddings=arrays["embeddings"].astype(np.float64), bandwidth=float(meta["bandwidth"]), outlier=outlier,
            features=arrays.get("features"), psi_edges=arrays.get("psi_edges"),
            psi_expected=arrays.get("psi_expected"), class_counts=arrays.get("class_counts"),
            meta={k: v for k, v in meta.items() if k not in known},
        )


def is_tabular(x: np.ndarray) -> bool:
    """Rows of float features: (N, F). Integer (N, L) inputs are token ids (text), not tabular."""
    return x.ndim == 2 and x.dtype.kind == "f"


def fit_reference(model: ModelLike, x: Any, *, batch_size: int = 256, max_samples: int = 1000,
                  seed: int = 0, extractor: FeatureExtractor | None = None) -> Reference:
    """Reference statistics of `model` on `x` (its first input, a batch of at least 50 items).

    Tabular inputs get per-feature KS/PSI statistics; images and text get embeddings from the
    penultimate layer (torch models), or the model's outputs when that layer is out of reach
    (ONNX, Keras). Classifiers also get their predicted-class distribution.
    """
    x = np.asarray(x)
    if x.ndim < 2 or len(x) < 50:
        raise InvalidInputError(
            f"fit_reference needs a batch of at least 50 inputs, shape (N, ...). Received: shape={x.shape}. "
            f"Pass a validation or calibration split (a few hundred to a few thousand items)."
        )
    extractor = extractor or feature_extractor(model)
    parts = [extractor(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    features = Features(
        outputs=np.concatenate([p.outputs for p in parts]),
        logits=np.concatenate([p.logits for p in parts]) if all(p.logits is not None for p in parts) else None,
        embeddings=(np.concatenate([p.embeddings for p in parts])  # type: ignore[misc]
                    if all(p.embeddings is not None for p in parts) else None),
    )
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.permutation(len(x))[:max_samples])
    tabular = is_tabular(x)
    if features.embeddings is not None:
        embeddings, source = features.embeddings, "penultimate"
    elif tabular:
        embeddings, source = x.astype(np.float64), "inputs"
    else:
        embeddings = features.logits if features.logits is not None else features.outputs
        source = "outputs"
    outlier_embeddings = embeddings if source in ("penultimate", "inputs") else None
    outputs = features.outputs
    reference = Reference(
        kind="tabular" if tabular else "embedding", source=source, input_name=extractor.input_name,
        input_shape=tuple(int(d) for d in x.shape[1:]), num_samples=len(x),
        embeddings=embeddings[sample].astype(np.float64), bandwidth=median_bandwidth(embeddings[sample], seed=seed),
        outlier=fit_outlier_model(outlier_embeddings, features.logits, outputs, seed=seed),
        meta={"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    if tabular:
        reference.features = x[sample].astype(np.float64)
        reference.psi_edges, reference.psi_expected = psi_bins(x.astype(np.float64))
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        reference.class_counts = np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1])
    return reference
