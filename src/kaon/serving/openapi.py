"""`/openapi.json` and `/docs`, rendered by FastAPI from the endpoints' pydantic models.

The routes declared here document kaon's own ASGI routes; requests to them never reach FastAPI
(KaonApp dispatches them first), so their bodies only describe the schema. `/docs` (Swagger UI) and
`/redoc` load their scripts from the server itself (fastapi-offline's copies, under /docs/static/),
not from a CDN: a server with no internet access still shows its docs.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import PlainTextResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

from kaon.errors import KaonError


class ErrorDetail(BaseModel):
    code: str = Field(description="stable for clients: invalid_input, malformed_request, payload_too_large, ...")
    message: str = Field(description="what was received, what was expected, how to fix it")
    fields: list[dict[str, Any]] = Field(description="one entry per wrong field: name, message, type, received")
    request_id: str = Field(description="the x-request-id header of the response; the server log uses it too")


class ErrorEnvelope(BaseModel):
    """Every error kaon answers on its own routes (the V2 routes answer {"error": "..."})."""

    error: ErrorDetail


class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str = Field(description="BOOL, UINT8, INT32, INT64, FP16, FP32, FP64, BYTES, ...")
    data: list[Any] | None = Field(None, description="row-major values; absent with the binary-data extension")
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor]
    outputs: list[dict[str, Any]] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[V2Tensor]


class V2Error(BaseModel):
    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorEnvelope, "description": description} for status, description in (
        (400, "malformed body (not JSON, bad encoding)"),
        (401, "missing or unknown token (auth is on with --require-auth or once a token was created)"),
        (403, "the token lacks the route's scope"), (408, "the request did not arrive within --read-timeout-s"),
        (413, "body over --max-body-bytes, or too many inputs"), (422, "the body does not match the schema"),
        (429, "rate limited (Retry-After)"), (500, "a bug or a failing endpoint: the log has the trace"),
        (503, "queue full or still starting (Retry-After)"), (504, "over --timeout-s"))
}
_V2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2Error, "description": description} for status, description in (
        (400, "malformed body"), (404, "no such model or version"),
        (408, "the request did not arrive within --read-timeout-s"), (422, "inputs do not match the model"),
        (503, "queue full (Retry-After)"), (504, "over --timeout-s"))
}


def _described(spec: Any) -> Any:
    async def documented(body: spec.request_model = Body(...)) -> Any:  # type: ignore[name-defined]
        raise KaonError("documentation route called directly")  # KaonApp answers this path itself

    documented.__annotations__ = {"body": spec.request_model, "return": Any}
    return documented


def docs_app(app: Any) -> FastAPI:
    from kaon import __version__

    api = FastAPIOffline(title=f"{app.name} (kaon)", version=__version__, static_url="/docs/static",
                  description=f"Endpoints of the kaon Service '{app.name}'. Errors use one envelope: "
                  '{"error": {"code", "message", "fields", "request_id"}}.')
    for spec in app.specs:
        api.post(spec.path, response_model=spec.response_model, name=spec.name,
                 operation_id=f"{app.name}_{spec.name}", responses=_ERRORS,
                 summary=f"{spec.name} ({'batched, max ' + str(spec.max_batch_size) if spec.batched else 'unbatched'})",
                 )(_described(spec))
    for model in sorted(getattr(app.service, "models", None) or {}):
        api.post(f"/v2/models/{model}/infer", response_model=V2InferResponse, responses=_V2_ERRORS,
                 operation_id=f"v2_infer_{model}", summary=f"Open Inference Protocol (V2): infer with '{model}'",
                 description="JSON tensors as below, or the binary-data extension (an Inference-Header-Content-Length "
                             "header, then the raw little-endian tensors).")(_v2_infer)
        api.get(f"/v2/models/{model}", operation_id=f"v2_metadata_{model}", responses=_V2_ERRORS,
                summary=f"V2 metadata of '{model}': its inputs' and outputs' names, datatypes and shapes")(_noop)
        api.get(f"/v2/models/{model}/config", operation_id=f"v2_config_{model}", responses=_V2_ERRORS,
                summary=f"Triton model configuration of '{model}' (max_batch_size, dims without the batch axis)")(_noop)
        api.get(f"/v2/models/{model}/stats", operation_id=f"v2_stats_{model}", responses=_V2_ERRORS,
                summary=f"Triton inference statistics of '{model}' (this server process's counts)")(_noop)
    api.get("/metrics", summary="Prometheus metrics (text exposition format)", response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})(_noop)
    for path, summary in (("/healthz", "liveness"), ("/readyz", "readiness: models loaded"),
                          ("/v2", "Open Inference Protocol: server metadata"),
                          ("/v2/health/live", "V2 liveness"), ("/v2/health/ready", "V2 readiness"),
                          ("/v2/models/stats", "Triton inference statistics of every model")):
        api.get(path, summary=summary)(_noop)
    return api


async def _v2_infer(body: V2InferRequest) -> Any:
    raise KaonError("documentation route called directly")  # KaonApp answers /v2 itself


async def _noop() -> None:
    raise KaonError("documentation route called directly")
