"""Service: a user class with `setup()` and typed `@endpoint` methods.

    class Digits(kaon.Service):
        def setup(self):
            self.model = kaon.load("digits.onnx")

        @kaon.endpoint(max_batch_size=64, max_wait_ms=5)
        def predict(self, images: list[Image28]) -> list[Prediction]:
            ...

An endpoint whose one parameter is a `list[...]` and whose return is a `list[...]` of the same
length is batchable: kaon concatenates the lists of concurrent requests, calls the method once and
splits the result. The same signature works with batching off. The request body is an object
with one field per parameter (`{"images": [...]}`) and the response is the returned value.
Schemas are named `<Service><Endpoint>Request` / `<Service><Endpoint>Response`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin

import pydantic

from kaon.errors import ConfigError

# The name every batched endpoint also takes its list under: {"inputs": [...]}, as a served model's does
BATCH_ALIAS = "inputs"


def endpoint(
    func: Callable[..., Any] | None = None,
    *,
    max_batch_size: int | None = None,
    max_wait_ms: float | None = None,
    path: str | None = None,
) -> Any:
    """Mark a Service method as an HTTP endpoint (`POST /<name>` unless `path` says otherwise)."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        f.__kaon_endpoint__ = {  # type: ignore[attr-defined]
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "path": path,
        }
        return f

    return mark(func) if func is not None else mark


class Service:
    """Base class of user services. The constructor stores nothing heavy; `setup()` loads models."""

    name: str | None = None

    def setup(self) -> None:
        """Called once per replica before the first request: load models here."""

    def teardown(self) -> None:
        """Called once when the replica stops."""

    @property
    def models(self) -> dict[str, Any]:
        """Models this service exposes on the Open Inference Protocol (V2) routes, by name."""
        return {}


@dataclass
class EndpointSpec:
    """What kaon learned from one `@endpoint` method."""

    name: str
    path: str
    method_name: str
    is_async: bool
    params: dict[str, Any]
    return_type: Any
    request_model: type[pydantic.BaseModel]
    response_model: type[pydantic.RootModel[Any]]
    batch_param: str | None
    max_batch_size: int
    max_wait_ms: float
    item_type: Any = None
    problems: list[str] = field(default_factory=list)

    @property
    def batchable(self) -> bool:
        return self.batch_param is not None

    @property
    def batched(self) -> bool:
        """Served through a Batcher (a bounded queue); max_batch_size=1 turns batching off."""
        return self.batchable


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace("-", "_").split("_") if part)


def service_name(cls: type) -> str:
    return getattr(cls, "name", None) or cls.__name__


def endpoint_specs(cls: type, default_max_batch_size: int = 64, default_max_wait_ms: float = 2.0
                   ) -> list[EndpointSpec]:
    """Introspect every `@endpoint` of a Service class. Raises ConfigError on a broken contract."""
    specs = []
    for attr, func in inspect.getmembers(cls, predicate=callable):
        options = getattr(func, "__kaon_endpoint__", None)
        if options is None:
            continue
        specs.append(_endpoint_spec(cls, attr, func, options, default_max_batch_size, default_max_wait_ms))
    return specs


def _endpoint_spec(cls: type, attr: str, func: Callable[..., Any], options: dict[str, Any],
                   default_max_batch_size: int, default_max_wait_ms: float) -> EndpointSpec:
    where = f"{cls.__name__}.{attr}"
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as exc:
        raise ConfigError(f"{where}: its type hints cannot be resolved ({exc}). Import the types it names.") from exc
    signature = inspect.signature(func)
    params: dict[str, Any] = {}
    for pname, param in list(signature.parameters.items())[1:]:
        if pname not in hints:
            raise ConfigError(
                f"{where}: parameter '{pname}' has no type hint. kaon builds the request schema from hints. "
                f"Received: def {attr}(self, {pname}, ...). Add one, e.g. {pname}: list[float]."
            )
        default = ... if param.default is inspect.Parameter.empty else param.default
        params[pname] = (hints[pname], default)
    if "return" not in hints:
        raise ConfigError(f"{where}: the return type hint is missing; kaon builds the response schema from it.")
    return_type = hints["return"]
    if not params:
        raise ConfigError(f"{where}: an endpoint takes at least one typed parameter.")

    batch_param = None
    item_type = None
    if len(params) == 1:
        (pname, (ptype, _)), = params.items()
        if get_origin(ptype) is list and get_origin(return_type) is list:
            batch_param = pname
            item_type = get_args(ptype)[0] if get_args(ptype) else Any
    max_batch_size = options["max_batch_size"]
    if max_batch_size is None:
        max_batch_size = default_max_batch_size if batch_param else 1
    if max_batch_size > 1 and batch_param is None:
        raise ConfigError(
            f"{where}: max_batch_size={max_batch_size} needs a batchable signature: one parameter of type "
            f"list[...] and a list[...] return of the same length. Received: "
            f"({', '.join(f'{k}: {_type_name(v[0])}' for k, v in params.items())}) -> {_type_name(return_type)}."
        )
    max_wait_ms = options["max_wait_ms"] if options["max_wait_ms"] is not None else default_max_wait_ms

    prefix = _camel(service_name(cls)) + _camel(attr)
    fields: dict[str, Any] = dict(params)
    if batch_param is not None and batch_param != BATCH_ALIAS:
        # {"inputs": [...]} works on every batched endpoint, as on a served model's (and kaon.Client.predict(x)
        # sends it); the schema names the parameter itself
        ptype, default = params[batch_param]
        fields[batch_param] = (ptype, pydantic.Field(default, validation_alias=pydantic.AliasChoices(
            batch_param, BATCH_ALIAS)))
    request_model = pydantic.create_model(  # type: ignore[call-overload]
        f"{prefix}Request", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True, extra="forbid"),
        **fields,
    )
    try:
        response_model = pydantic.create_model(
            f"{prefix}Response", __base__=pydantic.RootModel[return_type],  # type: ignore[valid-type]
        )
    except pydantic.PydanticSchemaGenerationError as exc:
        raise ConfigError(
            f"{where}: the return type {_type_name(return_type)} has no JSON schema (for /openapi.json and the "
            f"checks of each answer). Annotate arrays as kaon.Tensor((...), 'float32') or list[float] (numpy "
            f"arrays and scalars returned under those, or under dict, are written as JSON lists and numbers)."
        ) from exc
    path = options["path"] or f"/{attr}"
    if not path.startswith("/"):
        path = "/" + path
    return EndpointSpec(
        name=attr, path=path, method_name=attr, is_async=inspect.iscoroutinefunction(func),
        params=params, return_type=return_type, request_model=request_model,
        response_model=response_model, batch_param=batch_param,
        max_batch_size=int(max_batch_size), max_wait_ms=float(max_wait_ms), item_type=item_type,
    )


def _type_name(tp: Any) -> str:
    if get_args(tp):  # list[numpy.ndarray], not "list"
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
