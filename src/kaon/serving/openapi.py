"""`/openapi.json` and `/docs`, rendered by FastAPI from the endpoints' pydantic models.

The routes declared here document kaon's own ASGI routes; requests to them never reach FastAPI
(KaonApp dispatches them first), so their bodies only describe the schema.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import PlainTextResponse

from kaon.errors import KaonError


def _described(spec: Any) -> Any:
    async def documented(body: spec.request_model = Body(...)) -> Any:  # type: ignore[name-defined]
        raise KaonError("documentation route called directly")  # KaonApp answers this path itself

    documented.__annotations__ = {"body": spec.request_model, "return": Any}
    return documented


def docs_app(app: Any) -> FastAPI:
    from kaon import __version__

    api = FastAPI(title=f"{app.name} (kaon)", version=__version__,
                  description=f"Endpoints of the kaon Service '{app.name}'. Errors use one envelope: "
                  '{"error": {"code", "message", "fields", "request_id"}}.')
    for spec in app.specs:
        api.post(spec.path, response_model=spec.response_model, name=spec.name,
                 operation_id=f"{app.name}_{spec.name}",
                 summary=f"{spec.name} ({'batched, max ' + str(spec.max_batch_size) if spec.batched else 'unbatched'})",
                 )(_described(spec))
    api.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})(_noop)
    for path, summary in (("/healthz", "liveness"), ("/readyz", "readiness: models loaded"),
                          ("/v2", "Open Inference Protocol: server metadata"),
                          ("/v2/health/live", "V2 liveness"), ("/v2/health/ready", "V2 readiness")):
        api.get(path, summary=summary)(_noop)
    return api


async def _noop() -> None:
    raise KaonError("documentation route called directly")
