"""`kaon.load` and `kaon.register`: models by file path or by registry reference (`name@version|alias`)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from kaon.errors import InvalidInputError, ModelLoadError
from kaon.models import Model, load_file, load_folder, save_model
from kaon.models.loader import MODEL_SUFFIXES
from kaon.types import Signature

#: fit_reference needs at least this many inputs for its statistics to mean anything.
MIN_REFERENCE_ROWS = 50


def looks_like_path(ref: str | Path) -> bool:
    text = str(ref)
    return Path(text).exists() or Path(text).suffix.lower() in MODEL_SUFFIXES or "/" in text or "\\" in text


def load(ref: str | Path, *, trust_pickle: bool = False, registry: Any = None) -> Model:
    """Load a model from a file (`digits.onnx`) or the registry (`digits`, `digits@3`, `digits@production`).

    >>> model = kaon.load("digits@latest")   # doctest: +SKIP
    >>> model.predict(x).shape               # doctest: +SKIP
    (2, 10)
    """
    if isinstance(ref, Model):
        return ref
    if looks_like_path(ref):
        return load_file(Path(ref), trust_pickle=trust_pickle)
    with _opened(registry) as reg:
        version = reg.get_version(str(ref))
        folder = reg.materialize(version)
    model = load_folder(folder, version.files, version.framework, version.signature, version.name)
    model.version = version  # type: ignore[attr-defined]
    return model


def register(model: Any, name: str, *, input_example: Any = None, signature: Any = None,
             metrics: dict[str, float] | None = None, labels: list[str] | None = None,
             parent: str | None = None, run_id: int | None = None, description: str = "",
             aliases: list[str] | None = None, reference_data: Any = None, registry: Any = None) -> Any:
    """Register a torch module, a Keras 3 model or a model file as a new version of `name`.

    The signature is inferred from `input_example` when not given (Keras models know theirs).
    `reference_data` (a batch of at least 50 inputs, e.g. the training or a calibration split) is
    summarised into `reference.npz` and registered with the version: `kaon serve` then watches live
    traffic for drift against it with no flags.
    Returns the ModelVersionRecord (`.ref` is "name@version").

    >>> kaon.register(net, "digits", input_example=x[:2], reference_data=x_train).files   # doctest: +SKIP
    {'model.pt2': '3f1c...', 'reference.npz': '9a0b...'}
    """
    from kaon.registry.refs import check_name, check_settable_alias

    # Everything a user can get wrong is checked before a version is written, and what needs no model before the
    # model is exported (torch.export takes seconds).
    check_name(name)
    for alias in aliases or []:
        check_settable_alias(alias)
    if signature is not None:
        _signature_dict(signature)
    x_reference = check_reference_data(reference_data) if reference_data is not None else None
    with _opened(registry) as reg:
        reg.check_version_arguments(name, metrics=metrics, parent=parent, run_id=run_id, description=description)
        with tempfile.TemporaryDirectory(prefix="kaon-register-") as tmp:
            saved = save_model(model, Path(tmp), input_example=input_example, labels=labels)
            sig_dict = _signature_dict(signature if signature is not None else saved.signature)
            _check_labels(labels if labels is not None else sig_dict.get("labels"), sig_dict)
            loaded = _check_loads(saved.files, saved.framework)
            files = dict(saved.files)
            if x_reference is not None:
                if loaded is None:
                    raise InvalidInputError(
                        f"reference_data needs a model kaon can run to fit the reference statistics; "
                        f"{sorted(files)} ({saved.framework}) is not one. Register a .pt2, .onnx or .keras model.")
                reference = fit_reference_file(loaded, x_reference, Path(tmp), signature=Signature.from_dict(sig_dict))
                files[reference.name] = reference
            version = reg.register_version(name, files, framework=saved.framework, signature=sig_dict,
                                           metrics=metrics or {}, parent=parent, run_id=run_id,
                                           description=description)
        _say_if_inputs_changed(reg, version, sig_dict)
        for alias in aliases or []:
            reg.set_alias(name, alias, version.version)
        return reg.get_version(version.ref)


@contextlib.contextmanager
def _opened(registry: Any) -> Iterator[Any]:
    """`registry`, or the default Registry() opened for this call and closed after it (its database connections
    were left to the garbage collector: 26 open files after 100 kaon.load calls)."""
    if registry is not None:
        yield registry
        return
    from kaon.registry import Registry

    with Registry() as reg:
        yield reg


def _signature_dict(signature: Any) -> dict[str, Any]:
    sig_dict = signature.to_dict() if hasattr(signature, "to_dict") else signature
    if not isinstance(sig_dict, dict):
        raise InvalidInputError(
            f"signature must be a kaon.types.Signature or a dict. Received: {type(signature).__name__}")
    return sig_dict


def _say_if_inputs_changed(registry: Any, version: Any, signature: dict[str, Any]) -> None:
    """A warning when the new version takes other inputs than the one before it: the clients of name@latest
    (which now points at it) must change, or it is another model under the same name."""
    import warnings

    earlier = [v for v in registry.list_versions(version.name) if v.version < version.version]
    if not earlier:
        return
    previous = max(earlier, key=lambda v: v.version)

    def inputs(sig: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(s.get("name"), tuple(s.get("shape") or ()), s.get("dtype")) for s in sig.get("inputs") or []]

    if inputs(previous.signature or {}) != inputs(signature):
        warnings.warn(
            f"{version.ref} takes other inputs than {previous.ref}: {inputs(signature)} where {previous.ref} took "
            f"{inputs(previous.signature or {})}. {version.name}@latest points at {version.ref} now, so its clients "
            f"must send the new inputs; if it is another model, register it under its own name.",
            UserWarning, stacklevel=3)


def _check_labels(labels: list[str] | None, signature: dict[str, Any]) -> None:
    """Class names, one per column of the first output (two for a binary model's one logit)."""
    outputs = signature.get("outputs") or []
    if not labels or not outputs:
        return
    shape = list(outputs[0].get("shape") or [])
    columns = shape[1] if len(shape) == 2 else None
    if columns is None or columns < 1 or len(labels) == columns or (columns == 1 and len(labels) == 2):
        return
    raise InvalidInputError(
        f"labels names {len(labels)} classes but the model's output '{outputs[0].get('name')}' has {columns} "
        f"columns (shape {shape}). Received: labels={list(labels)[:12]}. Pass one label per output column.")


def check_reference_data(x: Any) -> np.ndarray:
    """`x` as a batch of numeric inputs, at least MIN_REFERENCE_ROWS of them; InvalidInputError if not."""
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise InvalidInputError(
            f"reference_data must be an array of inputs, batch axis first. Received: {type(x).__name__} "
            f"that is not one ({exc}). Pass e.g. x_train, a numpy array of shape (N, ...).") from exc
    if array.dtype.kind not in "fiub" or array.ndim < 2 or len(array) < MIN_REFERENCE_ROWS:
        raise InvalidInputError(
            f"reference_data must be a numeric batch of at least {MIN_REFERENCE_ROWS} inputs, shape (N, ...). "
            f"Received: shape={array.shape}, dtype={array.dtype}. Pass the training or a calibration split "
            f"(a few hundred to a few thousand inputs), batch axis first.")
    return array


def fit_reference_file(model: Model, x: np.ndarray, folder: Path, *, signature: Signature | None = None) -> Path:
    """Fit `model`'s reference statistics on `x` and save them as `folder/reference.npz`."""
    from kaon.monitoring import REFERENCE_FILENAME, fit_reference  # lazily: `import kaon` stays light

    sig = signature or model.signature
    if len(sig.inputs) != 1:
        raise InvalidInputError(
            f"reference_data is fitted for models with one input; this one has {len(sig.inputs)}: "
            f"{[spec.name for spec in sig.inputs]}. Register without reference_data, or fit one with "
            f"kaon.monitoring.fit_reference(model, x) for its first input.")
    spec = sig.inputs[0]
    shape = tuple(int(d) for d in x.shape)
    if not spec.accepts_shape(shape):
        raise InvalidInputError(
            f"reference_data does not fit the model's input '{spec.name}', which expects {spec.describe()}. "
            f"Received: shape={shape}. Pass inputs shaped as the model takes them, batch axis first.")
    return fit_reference(model, x.astype(spec.dtype, copy=False)).save(folder / REFERENCE_FILENAME)


def _check_loads(files: dict[str, Path], framework: str) -> Model | None:
    """Refuse to register what cannot be loaded back, before anything is written; return the loaded model."""
    main = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}.get(framework)
    if not main or main not in files:
        return None
    try:
        return load_file(files[main])
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"the saved model does not load back, so it was not registered: {exc.message}") from exc
