"""`kaon.testing.check_service(MyService)`: does a class follow the Service contract?

    >>> from kaon.testing import check_service
    >>> specs = check_service(MyService)               # doctest: +SKIP
    >>> check_service(MyService, examples={"predict": {"images": [x]}})   # also runs setup + the endpoint

Raises ServiceContractError listing every problem found, or returns the endpoints' specs.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pydantic

from kaon.errors import ConfigError
from kaon.serving.service import EndpointSpec, Service, _endpoint_spec, endpoint_specs

# the defaults endpoint_specs(cls) checks a class with (max_batch_size, max_wait_ms)
_SPEC_DEFAULTS = {name: p.default for name, p in list(inspect.signature(endpoint_specs).parameters.items())[1:]}


class ServiceContractError(ConfigError):
    code = "service_contract"


def check_service(cls: Any, examples: dict[str, dict[str, Any]] | None = None) -> list[EndpointSpec]:
    problems: list[str] = []
    if not (isinstance(cls, type) and issubclass(cls, Service)):
        raise ServiceContractError(f"expected a subclass of kaon.Service. Received: {cls!r}.")
    init = inspect.signature(cls.__init__)
    required = [p for n, p in list(init.parameters.items())[1:]
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        problems.append(f"__init__ must take no required arguments (kaon builds one instance per replica); "
                        f"it requires {[p.name for p in required]}. Load things in setup() instead.")
    specs: list[EndpointSpec] = []
    marked = [(attr, func, options) for attr, func in inspect.getmembers(cls, predicate=callable)
              if (options := getattr(func, "__kaon_endpoint__", None)) is not None]
    if not marked:
        problems.append("no method is decorated with @kaon.endpoint; a Service needs at least one endpoint.")
    for attr, func, options in marked:  # each on its own: endpoint_specs stops at the first broken one
        spec, broken = _check_endpoint(cls, attr, func, options)
        problems += broken
        if spec is not None:
            specs.append(spec)
    paths = [s.path for s in specs]
    for path in {p for p in paths if paths.count(p) > 1}:
        problems.append(f"two endpoints share the path {path}.")
    for spec in specs:
        for model in (spec.request_model, spec.response_model):
            try:
                model.model_json_schema()
            except Exception as exc:  # noqa: BLE001 - any schema failure is a contract problem
                problems.append(f"{spec.name}: {model.__name__} has no JSON schema ({exc}); use pydantic types.")
    if not problems and examples:
        problems += _run_examples(cls, specs, examples)
    if problems:
        raise ServiceContractError(f"{cls.__name__} does not follow the Service contract:\n- " + "\n- ".join(problems))
    return specs


def _check_endpoint(cls: type, attr: str, func: Any, options: dict[str, Any]
                    ) -> tuple[EndpointSpec | None, list[str]]:
    """The endpoint's spec, or None and its problem (`_endpoint_spec`, what `kaon serve` runs, says the first)."""
    try:
        return _endpoint_spec(cls, attr, func, options, **_SPEC_DEFAULTS), []
    except ConfigError as exc:
        return None, [exc.message]


def _run_examples(cls: type[Service], specs: list[EndpointSpec], examples: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    service = cls()
    try:
        service.setup()
    except Exception as exc:  # noqa: BLE001
        return [f"setup() raised {type(exc).__name__}: {exc}"]
    by_name = {s.name: s for s in specs}
    for name, body in examples.items():
        spec = by_name.get(name)
        if spec is None:
            problems.append(f"examples name '{name}', which is not an endpoint ({sorted(by_name)}).")
            continue
        try:
            request = spec.request_model.model_validate(body)
            kwargs = {k: getattr(request, k) for k in spec.params}
            result = getattr(service, spec.method_name)(**kwargs)
            if inspect.isawaitable(result):
                result = asyncio.run(_await(result))
            pydantic.TypeAdapter(spec.return_type).validate_python(result)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{name}: calling it with the example failed: {type(exc).__name__}: {exc}")
            continue
        if spec.batchable and len(result) != len(kwargs[spec.batch_param]):  # type: ignore[index]
            problems.append(f"{name}: returned {len(result)} results for {len(kwargs[spec.batch_param])} inputs; "  # type: ignore[index]
                            f"a batched endpoint returns one result per input.")
    return problems


async def _await(awaitable: Any) -> Any:
    return await awaitable
