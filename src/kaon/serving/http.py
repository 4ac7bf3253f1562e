"""The request and response kaon's ASGI app passes around, and the error-to-response mapping.

`error_response` is pure: an exception (and the request id) in, status, body and headers out.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import pydantic

from kaon.errors import (
    InvalidInputError,
    KaonError,
    MalformedRequestError,
    MethodNotAllowedError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)

log = logging.getLogger("kaon.serving")

JSON = b"application/json"
# Content types a JSON body arrives with: curl -d sends form-urlencoded, some clients text/plain or nothing.
_JSONISH = ("", "application/json", "text/plain", "application/x-www-form-urlencoded")


def decode_headers(raw: Any) -> dict[str, str]:
    """HTTP headers as the server parsed them (lower-case name and value bytes) as the str dict a Request keeps."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}


def decompressed(body: bytes, encoding: str, limit: int) -> bytes:
    """A body sent with Content-Encoding gzip or deflate (tritonclient's request_compression_algorithm), inflated
    to at most `limit` bytes: a small body that inflates past --max-body-bytes is a 413, not a memory spike."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(
        encoding.strip().lower())
    if wbits is None:
        raise UnsupportedMediaTypeError(
            f"the request body is sent with Content-Encoding '{encoding}'; kaon takes gzip, deflate or none.")
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise MalformedRequestError(f"the request body is not valid {encoding} data ({exc}).") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"the request body inflates to more than the limit of {limit} bytes "
                                   f"(--max-body-bytes). Send fewer or smaller inputs per request.")
    return data


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    request_id: str
    query: str = ""
    path_params: dict[str, str] = field(default_factory=dict)
    client: str | None = None
    arriving: Any = None  # the Batcher that counts this request as on its way in, until it is queued

    def settle_arrival(self) -> None:
        if self.arriving is not None:
            self.arriving.arrived()
            self.arriving = None

    @property
    def content_type(self) -> str:
        sent = self.headers.get("content-type", "")
        if sent == "application/json":  # what nearly every client sends, as it is
            return sent
        return sent.split(";", 1)[0].strip().lower()

    def json(self) -> Any:
        """The body as JSON, or MalformedRequestError saying where it broke."""
        if not self.body:
            raise MalformedRequestError("the request body is empty. Expected a JSON object.")
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError as exc:
            content_type = self.content_type
            sent = "" if content_type in _JSONISH or content_type.endswith("+json") else (
                f" The body was sent as Content-Type '{content_type}': send JSON (application/json), or PNG/JPEG "
                f"bytes (image/png, image/jpeg) to an image endpoint.")
            raise MalformedRequestError(
                f"the request body is not valid JSON: {exc}. Received {len(self.body)} bytes starting "
                f"{self.body[:40]!r}.{sent}"
            ) from exc


@dataclass
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY))


MAX_ERROR_FIELDS = 20  # an error body stays small however many items were wrong


def validation_fields(exc: pydantic.ValidationError) -> list[dict[str, Any]]:
    fields = []
    for err in exc.errors(include_url=False, include_context=False)[:MAX_ERROR_FIELDS]:
        loc = [str(p) for p in err.get("loc", ())]
        received = err.get("input")
        text = repr(received)
        fields.append({
            "name": ".".join(loc) or "body",
            "message": err.get("msg", ""),
            "type": err.get("type", ""),
            "received": text if len(text) <= 120 else text[:117] + "...",
        })
    return fields


def error_response(exc: BaseException, request_id: str, *, v2: bool = False) -> Response:
    """Map any exception to the one error envelope (V2 routes: `{"error": "..."}`)."""
    headers: list[tuple[bytes, bytes]] = []
    if isinstance(exc, pydantic.ValidationError):
        fields = validation_fields(exc)
        summary = "; ".join(f"{f['name']}: {f['message'][:200]}" for f in fields[:5])
        if exc.error_count() > len(fields):
            summary += f" (and {exc.error_count() - len(fields)} more errors)"
        err: KaonError = InvalidInputError(
            f"the request does not match the endpoint's schema: {summary}", fields=fields)
    elif isinstance(exc, KaonError):
        err = exc
        if isinstance(exc, UnauthorizedError):
            headers.append((b"www-authenticate", b'Bearer realm="kaon"'))
        if isinstance(exc, (OverloadedError, RateLimitedError)):
            headers.append((b"retry-after", str(max(1, round(exc.retry_after_s))).encode()))
        if isinstance(exc, MethodNotAllowedError):
            headers.append((b"allow", ", ".join(exc.allowed).encode()))
    else:
        log.error("request %s failed", request_id, exc_info=exc)
        err = KaonError(f"internal error while serving the request; the server log has the trace under "
                        f"request id {request_id}.")
    status = getattr(err, "status_code", 500)
    if status >= 500 and isinstance(err, KaonError) and err is exc and not isinstance(exc, OverloadedError):
        log.error("request %s failed: %s", request_id, err.message)
    body = {"error": err.message} if v2 else err.to_dict(request_id)
    return Response(status, orjson.dumps(body), headers=headers)
