"""`kaon.load` and `kaon.register`: models by file path or by registry reference (`name@version|alias`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kaon.errors import InvalidInputError, ModelLoadError
from kaon.models import Model, load_file, load_folder, save_model
from kaon.models.loader import MODEL_SUFFIXES


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
    from kaon.registry import Registry

    reg = registry or Registry()
    version = reg.get_version(str(ref))
    folder = reg.materialize(version)
    model = load_folder(folder, version.files, version.framework, version.signature, version.name)
    model.version = version  # type: ignore[attr-defined]
    return model


def register(model: Any, name: str, *, input_example: Any = None, signature: Any = None,
             metrics: dict[str, float] | None = None, labels: list[str] | None = None,
             parent: str | None = None, run_id: int | None = None, description: str = "",
             aliases: list[str] | None = None, registry: Any = None) -> Any:
    """Register a torch module, a Keras 3 model or a model file as a new version of `name`.

    The signature is inferred from `input_example` when not given (Keras models know theirs).
    Returns the ModelVersionRecord (`.ref` is "name@version").
    """
    from kaon.registry import Registry

    reg = registry or Registry()
    with tempfile.TemporaryDirectory(prefix="kaon-register-") as tmp:
        saved = save_model(model, Path(tmp), input_example=input_example, labels=labels)
        sig = signature if signature is not None else saved.signature
        sig_dict = sig.to_dict() if hasattr(sig, "to_dict") else sig
        if not isinstance(sig_dict, dict):
            raise InvalidInputError(
                f"signature must be a kaon.types.Signature or a dict. Received: {type(sig).__name__}")
        _check_loads(saved.files, saved.framework)
        version = reg.register_version(name, saved.files, framework=saved.framework, signature=sig_dict,
                                       metrics=metrics or {}, parent=parent, run_id=run_id,
                                       description=description)
    for alias in aliases or []:
        reg.set_alias(name, alias, version.version)
    return reg.get_version(version.ref)


def _check_loads(files: dict[str, Path], framework: str) -> None:
    """Refuse to register what cannot be loaded back, before anything is written."""
    main = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}.get(framework)
    if main and main in files:
        try:
            load_file(files[main])
        except ModelLoadError as exc:
            raise ModelLoadError(
                f"the saved model does not load back, so it was not registered: {exc.message}") from exc
