"""Open a model file by what it is, not only by what its name says.

| file | runtime |
| --- | --- |
| `.onnx` (+ `.onnx.data`) | onnxruntime |
| `.pt2` | torch.export ExportedProgram |
| `.keras` | Keras 3 on the torch backend |
| `.pt`, `.pth`, `.pkl`, `.ckpt`, `.bin` | pickle: refused unless `trust_pickle=True` |
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from kaon.errors import ModelLoadError, UnsafeModelError, require
from kaon.models.model import Model
from kaon.types import Signature

PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}
MODEL_SUFFIXES = {".onnx", ".pt2", ".keras"} | PICKLE_SUFFIXES


def sniff_format(path: Path) -> str:
    """'onnx', 'pt2', 'keras' or 'pickle' from the suffix, checked against the file's first bytes."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found. Received: {str(path)!r}. Check the path.")
    if path.is_dir():
        raise ModelLoadError(
            f"expected a model file (.onnx, .pt2, .keras). Received: the folder {str(path)!r}."
        )
    suffix = path.suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(4)
    is_zip = head == b"PK\x03\x04"
    if suffix == ".onnx":
        # An ONNX file is a protobuf ModelProto; its first field (ir_version) encodes as byte 0x08.
        if is_zip or not head or head[0] != 0x08:
            raise ModelLoadError(
                f"'{path}' is named .onnx but is not an ONNX model (its first bytes are {head!r}). "
                f"Expected a protobuf written by torch.onnx.export or onnx.save."
            )
        return "onnx"
    if suffix in (".pt2", ".keras"):
        if not is_zip:
            raise ModelLoadError(
                f"'{path}' is named {suffix} but is not a zip archive as {suffix} files are "
                f"(its first bytes are {head!r})."
            )
        if suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                if "config.json" not in archive.namelist():
                    raise ModelLoadError(f"'{path}' has no config.json inside; it is not a Keras 3 .keras file.")
        return suffix[1:]
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    raise ModelLoadError(
        f"unknown model format {suffix!r} for '{path}'. Expected one of: .onnx, .pt2, .keras "
        f"(or a pickle-based .pt/.pth with --trust-pickle)."
    )


def load_file(path: str | Path, *, name: str | None = None, trust_pickle: bool = False,
              signature: Signature | None = None) -> Model:
    """Load a model file with the runtime its format needs. The model's name defaults to the file stem."""
    path = Path(path)
    fmt = sniff_format(path)
    name = name or path.name.split(".")[0]
    if fmt == "onnx":
        from kaon.models.onnx import OnnxModel

        return OnnxModel(path, name=name)
    if fmt == "pt2":
        from kaon.models.torch import load_program

        return load_program(path, name=name, signature=signature)
    if fmt == "keras":
        from kaon.models.keras import KerasModel

        return KerasModel.load(path, name=name)
    return _load_pickle(path, name, trust_pickle, signature)


def _load_pickle(path: Path, name: str, trust_pickle: bool, signature: Signature | None) -> Model:
    if not trust_pickle:
        raise UnsafeModelError(
            f"'{path}' is a pickle-based file, and loading a pickle can run arbitrary code. "
            f"Export the model instead (torch.export.save -> .pt2, or ONNX), or pass --trust-pickle "
            f"(trust_pickle=True) if you wrote this file yourself."
        )
    torch = require("torch", "torch", "Loading a pickled PyTorch model")
    from kaon.models.torch import TorchModel

    obj: Any = torch.load(str(path), weights_only=False, map_location="cpu")
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(
            f"'{path}' holds a {type(obj).__name__}, not a torch.nn.Module. A state dict needs its model "
            f"class: build the model, load the state dict, and serve it through a kaon.Service."
        )
    if signature is None:
        raise ModelLoadError(
            f"'{path}' is a pickled module with no signature. Register it with kaon.register(model, "
            f"input_example=...) or export it with torch.export, then serve that."
        )
    return TorchModel(obj, signature, name)


def load_folder(folder: Path, files: dict[str, Any], framework: str, signature: dict[str, Any] | None,
                name: str) -> Model:
    """Load a registered version's files (already materialized into `folder`)."""
    sig = Signature.from_dict(signature) if signature else None
    main = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}.get(framework)
    if main is None or main not in files:
        candidates = [f for f in files if Path(f).suffix in MODEL_SUFFIXES]
        if not candidates:
            raise ModelLoadError(f"version {name!r} has no model file among {sorted(files)}")
        main = candidates[0]
    model = load_file(folder / main, name=name, signature=sig)
    if sig is not None and sig.labels and not model.signature.labels:
        model.signature = Signature(model.signature.inputs, model.signature.outputs, sig.labels,
                                    sig.extra)
    return model
