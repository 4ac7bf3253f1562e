"""What `kaon serve TARGET` can name: a model file, a registry reference, or `file.py:ServiceClass`."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from kaon.config import ServeConfig
from kaon.errors import ConfigError, ModelLoadError
from kaon.models import Model
from kaon.sdk import load
from kaon.serving.model_service import model_service
from kaon.serving.service import Service

log = logging.getLogger("kaon.serving")


def resolve_target(target: Any, *, name: str | None = None, trust_pickle: bool = False, device: str = "auto",
                   precision: str = "fp32", top_k: int = 0) -> type[Service]:
    """A Service class for `target`. Models are loaded (and placed on `device` in `precision`) here, so a
    bad file or setting fails before the server starts. A Service of the user's own places its models."""
    if isinstance(target, type) and issubclass(target, Service):
        return target
    if isinstance(target, Service):
        return type(target)
    if isinstance(target, Model):
        model = target
    elif not isinstance(target, str | Path):
        kind = type(target).__name__
        if any(c.__module__.startswith(("torch.", "keras")) for c in type(target).__mro__):
            raise ConfigError(
                f"kaon serves a saved or registered model, not a live {kind} object. Register it first: "
                f"kaon.register(model, 'name', input_example=x[:2]), then kaon.serve('name') (or `kaon serve name`); "
                f"or save it (torch.export / model.save('m.keras')) and serve the file.")
        raise ConfigError(f"cannot serve a {kind}. Expected a model file path, a registry reference ('digits@2'), "
                          f"'path/service.py:ClassName', a kaon.Service class or a kaon Model.")
    else:
        text = str(target)
        if ":" in text and text.split(":", 1)[0].endswith(".py"):
            return load_service_class(text)
        model = load(text, trust_pickle=trust_pickle)
    if name:
        model.name = name
    if model.fixed_batch is not None:
        how = {"torch": "torch.export.export(..., dynamic_shapes=({0: torch.export.Dim('batch')},))",
               "onnx": "torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}})"}.get(
            model.framework, "its batch dimension left as None")
        log.warning("model '%s' was exported with a fixed batch of %d (no dynamic batch axis): kaon runs it %d row(s) "
                    "per call, so batching saves nothing. Export it with a dynamic batch axis (%s) to batch requests.",
                    model.name, model.fixed_batch, model.fixed_batch, how)
    model.place(device, precision)
    if precision != "fp32" and str(getattr(model, "device", "cpu")).startswith("cpu"):
        log.warning("--precision %s on the CPU: half precision is for GPUs; on a CPU it is usually slower than "
                    "fp32 and rounds the outputs (a probability of 0.998 reads 1.0). Serve with fp32 here.",
                    precision)
    version = getattr(model, "version", None)
    return model_service(model, str(version.version) if version is not None else None, top_k=top_k)


def serve_target(target: Any, config: ServeConfig, *, name: str | None = None, trust_pickle: bool = False) -> None:
    """What `kaon serve TARGET` and `kaon.serve(target)` run: `config.workers` processes, or one server here
    with the model placed as `config` says (device, precision, top-k)."""
    from kaon.serving.observers import check_observer_settings

    check_observer_settings(config)
    if config.workers > 1:
        from kaon.serving.workers import serve_workers

        serve_workers(target, config)
        return
    from kaon.serving.server import serve

    serve(resolve_target(target, name=name, trust_pickle=trust_pickle, device=config.device,
                         precision=config.precision, top_k=config.top_k), config)


def load_service_class(spec: str) -> type[Service]:
    """Import `path/to/service.py:ClassName` and check it is a Service."""
    file_part, _, class_name = spec.partition(":")
    path = Path(file_part)
    if not path.exists():
        raise ConfigError(f"service file not found. Received: {file_part!r}. Expected path/to/service.py:ClassName.")
    module_name = f"kaon_user_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"cannot import {file_part!r} as a Python module.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ModelLoadError(f"importing {file_part!r} failed: {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        found = [k for k, v in vars(module).items()
                 if isinstance(v, type) and issubclass(v, Service) and v is not Service]
        raise ConfigError(f"{file_part!r} has no class {class_name!r}. Services found there: {found or 'none'}.")
    if not (isinstance(cls, type) and issubclass(cls, Service)):
        raise ConfigError(f"{spec} is a {type(cls).__name__}, not a kaon.Service subclass.")
    return cls
