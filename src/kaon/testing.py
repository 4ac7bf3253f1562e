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
from kaon.serving.service import EndpointSpec, Service, endpoint_specs


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
    specs_built = True
    try:
        specs = endpoint_specs(cls)
    except ConfigError as exc:
        problems.append(exc.message)
        specs_built = False
    if specs_built and not specs:
        problems.append("no method is decorated with @kaon.endpoint; a Service needs at least one endpoint.")
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
