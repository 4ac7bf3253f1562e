"""Just enough HTTP/1.1 for the router and the control-plane API, on asyncio streams and httptools.

The web stack (starlette, uvicorn) belongs to serving/; the cluster layer speaks HTTP itself, with
the same C parser uvicorn uses. Messages are read whole (bodies are bounded by `max_body_bytes`),
which is what lets the router retry a request on another replica.
"""

from __future__ import annotations

import asyncio
import collections
import http
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

from kaon.errors import KaonError, MalformedRequestError, PayloadTooLargeError

# Headers that describe one connection, not the message: never forwarded by a proxy (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                        b"trailer", b"upgrade", b"proxy-authenticate", b"proxy-authorization", b"content-length"})
MAX_HEADER_BYTES = 64 * 1024


class HttpError(Exception):
    """The peer sent something that is not HTTP/1.1, or more than allowed."""


class BodyTooLargeError(HttpError):
    """The body is longer than the reader's `max_body_bytes` (a server answers 413)."""

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(f"body larger than {max_body_bytes} bytes")
        self.max_body_bytes = max_body_bytes


@dataclass
class HttpMessage:
    """A request (method, url) or a response (status) with its headers and whole body."""

    method: str = ""
    url: str = ""
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: bytes) -> bytes | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    @property
    def path(self) -> str:
        return self.url.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.url.split("?", 1)[1] if "?" in self.url else ""


class _Collector:
    """httptools callbacks that gather whole messages into a queue."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes
        self.done: collections.deque[HttpMessage] = collections.deque()
        self.current = HttpMessage()
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self.head_only = False  # a response to HEAD: complete once its headers are in
        self.header_bytes = 0
        self._body: list[bytes] = []
        self._size = 0
        self._completed = False
        # what a callback raised: httptools re-raises it as a bare "`on_body` callback error"
        self.error: HttpError | None = None

    def on_message_begin(self) -> None:
        self.current = HttpMessage()
        self._body, self._size, self.header_bytes, self._completed = [], 0, 0, False

    def on_url(self, url: bytes) -> None:
        self.current.url += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > MAX_HEADER_BYTES:
            self.error = HttpError("headers too large")
            raise self.error
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None
        if isinstance(self.parser, httptools.HttpRequestParser):
            self.current.method = self.parser.get_method().decode("ascii")
        else:
            self.current.status = self.parser.get_status_code()
        self.current.keep_alive = self.parser.should_keep_alive()
        if self.head_only:
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body_bytes:
            self.error = BodyTooLargeError(self.max_body_bytes)
            raise self.error
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._completed:  # a HEAD response, already complete at its headers
            return
        self._completed = True
        self.current.body = b"".join(self._body)
        self.done.append(self.current)


class MessageReader:
    """Whole HTTP messages from a stream, one after another on a keep-alive connection."""

    def __init__(self, reader: asyncio.StreamReader, *, response: bool = False,
                 max_body_bytes: int = 64 * 1024 * 1024) -> None:
        self._reader = reader
        self._response = response
        self._max_body_bytes = max_body_bytes
        self._collector = _Collector(max_body_bytes)
        self._new_parser()
        self.received_any = False  # whether any byte of the current response arrived

    def _new_parser(self) -> None:
        kind = httptools.HttpResponseParser if self._response else httptools.HttpRequestParser
        self._collector = _Collector(self._max_body_bytes)
        self._collector.parser = kind(self._collector)
        self._parser = self._collector.parser

    async def next(self, *, head_only: bool = False) -> HttpMessage | None:
        """The next message, or None when the peer closed the connection between messages."""
        collector = self._collector
        collector.head_only = head_only
        self.received_any = False
        while not collector.done:
            data = await self._reader.read(65536)
            if not data:
                if self.received_any:
                    raise ConnectionResetError("connection closed in the middle of a message")
                return None
            self.received_any = True
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                raise HttpError("protocol upgrades are not supported") from exc
            except httptools.HttpParserError as exc:
                raise collector.error or HttpError(str(exc)) from exc
        message = collector.done.popleft()
        if head_only:
            self._new_parser()  # the parser still waits for the body a HEAD response never has
        return message


def render_request(message: HttpMessage, host: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    lines = [f"{message.method} {message.url} HTTP/1.1\r\n".encode("latin-1"), b"host: ", host.encode(), b"\r\n"]
    for name, value in message.headers:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered == b"host":
            continue
        lines += [name, b": ", value, b"\r\n"]
    for name, value in extra:
        lines += [name, b": ", value, b"\r\n"]
    lines += [b"content-length: ", str(len(message.body)).encode(), b"\r\n\r\n", message.body]
    return b"".join(lines)


def render_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes, *, keep_alive: bool,
                    extra: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")]
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP:
            lines += [name, b": ", value, b"\r\n"]
    for name, value in extra:
        lines += [name, b": ", value, b"\r\n"]
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    lines += [b"content-length: ", str(len(body)).encode(), b"\r\n\r\n", body]
    return b"".join(lines)


def bad_request_response(exc: HttpError, *, too_large_advice: str) -> bytes:
    """The answer to a request that could not be read, in kaon's error envelope (as a replica gives it):
    413 for a body over the limit, else 400. The connection closes after it."""
    error: KaonError
    if isinstance(exc, BodyTooLargeError):
        error = PayloadTooLargeError(f"the request body is larger than {exc.max_body_bytes} bytes, the most "
                                     f"this server reads. {too_large_advice}")
    else:
        error = MalformedRequestError(f"the request is not valid HTTP/1.1: {exc}.")
    return render_response(error.status_code, [(b"content-type", b"application/json")], error_body(error),
                           keep_alive=False)


def error_body(error: KaonError, request_id: str | None = None) -> bytes:
    import json

    return json.dumps(error.to_dict(request_id)).encode()


def json_response(status: int, payload: object, *, keep_alive: bool = True,
                  headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    import json

    body = json.dumps(payload, default=str).encode()
    return render_response(status, [(b"content-type", b"application/json"), *(headers or [])], body,
                           keep_alive=keep_alive)
