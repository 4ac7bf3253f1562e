"""Just enough HTTP/1.1 for the router and the control-plane API, on asyncio streams and httptools.

The web stack (starlette, uvicorn) belongs to serving/; the cluster layer speaks HTTP itself, with
the same C parser uvicorn uses. Messages are read whole (bodies are bounded by `max_body_bytes`),
which is what lets the router retry a request on another replica. A server's reader may also bound the
time a request takes to arrive and a connection's idle time (`read_timeout_s`, `keep_alive_s`), with one
timer per connection that checks timestamps when it fires, as kaon's HTTP server does: no timer per request.
"""

from __future__ import annotations

import asyncio
import collections
import http
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httptools

from kaon.errors import KaonError, MalformedRequestError, PayloadTooLargeError, RequestTimeoutError

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


class ReadTimeoutError(HttpError):
    """A request did not arrive in full within the reader's `read_timeout_s` of its first byte (a server answers 408).
    `part`: what was still arriving, "headers" or "body"."""

    def __init__(self, read_timeout_s: float, part: str) -> None:
        super().__init__(f"the request's {part} did not arrive within {read_timeout_s:g} s of its first byte")
        self.read_timeout_s, self.part = read_timeout_s, part


class _KeepAliveExpired(Exception):
    """The connection was idle for the reader's `keep_alive_s`: `next()` ends as if the peer had closed it."""


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
        self.begun_at: float | None = None  # time.monotonic() at the first byte of the message now arriving
        self.header_bytes = 0
        self._body: list[bytes] = []
        self._size = 0
        self._completed = False
        # what a callback raised: httptools re-raises it as a bare "`on_body` callback error"
        self.error: HttpError | None = None

    def on_message_begin(self) -> None:
        self.begun_at = time.monotonic()
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
        self.begun_at = None
        self.current.body = b"".join(self._body)
        self.done.append(self.current)


class MessageReader:
    """Whole HTTP messages from a stream, one after another on a keep-alive connection.

    A server's reader may bound its peer's time: `read_timeout_s`, a message must arrive in full, headers and body,
    within it of its first byte (else `next()` raises ReadTimeoutError); `keep_alive_s`, a connection idle that long
    while `next()` waits, before its first message too, ends (`next()` returns None). Time the caller spends
    between `next()` calls (answering) is not counted. Call `close()` when done with the connection."""

    def __init__(self, reader: asyncio.StreamReader, *, response: bool = False,
                 max_body_bytes: int = 64 * 1024 * 1024, read_timeout_s: float | None = None,
                 keep_alive_s: float | None = None) -> None:
        self._reader = reader
        self._response = response
        self._max_body_bytes = max_body_bytes
        self._collector = _Collector(max_body_bytes)
        self._new_parser()
        self.received_any = False  # whether any byte of the current response arrived
        self.read_timeout_s = read_timeout_s
        self.keep_alive_s = keep_alive_s
        self._waiting_since: float | None = None  # time.monotonic() next() began waiting; None outside next()
        self._timer: asyncio.TimerHandle | None = None  # the one timer that checks the two bounds

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
        if self.read_timeout_s is not None or self.keep_alive_s is not None:
            self._waiting_since = time.monotonic()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._check_every_s(), self._check)
        try:
            while not collector.done:
                try:
                    data = await self._reader.read(65536)
                except _KeepAliveExpired:
                    return None
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
        finally:
            self._waiting_since = None
        message = collector.done.popleft()
        if head_only:
            self._new_parser()  # the parser still waits for the body a HEAD response never has
        return message

    def close(self) -> None:
        """Stop the timer (the connection is done)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_every_s(self) -> float:
        return min(s for s in (self.read_timeout_s, self.keep_alive_s) if s is not None)

    def _check(self) -> None:
        """The connection's timer: while `next()` waits, end a message arriving past its read_timeout_s, or the
        wait itself once idle for keep_alive_s; it wakes `next()` with the error. Never waits longer than the
        shorter bound, so each deadline is met on time."""
        self._timer = None
        reader = self._reader
        if reader.at_eof() or reader.exception() is not None:
            return
        now = time.monotonic()
        delay_s = self._check_every_s()
        since = self._waiting_since
        if since is not None:  # else the caller is answering: not the peer's time
            begun_at = self._collector.begun_at
            deadline: float | None = None
            if begun_at is not None and self.read_timeout_s is not None:  # a message arriving (one pipelined
                deadline = max(begun_at, since) + self.read_timeout_s  # behind the last counts from the wait)
                if now >= deadline:
                    headers_in = bool(self._collector.current.method or self._collector.current.status)
                    reader.set_exception(ReadTimeoutError(self.read_timeout_s, "body" if headers_in else "headers"))
                    return
            elif begun_at is None and self.keep_alive_s is not None:
                deadline = since + self.keep_alive_s
                if now >= deadline:
                    reader.set_exception(_KeepAliveExpired())
                    return
            if deadline is not None:
                delay_s = min(delay_s, deadline - now)
        self._timer = asyncio.get_running_loop().call_later(delay_s, self._check)


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


def bad_request_response(exc: HttpError, *, too_large_advice: str,
                         timeout_advice: str = "Send each request whole, without pauses.") -> bytes:
    """The answer to a request that could not be read, in kaon's error envelope (as a replica gives it):
    413 for a body over the limit, 408 for a request that did not arrive in time, else 400. The connection
    closes after it."""
    error: KaonError
    if isinstance(exc, BodyTooLargeError):
        error = PayloadTooLargeError(f"the request body is larger than {exc.max_body_bytes} bytes, the most "
                                     f"this server reads. {too_large_advice}")
    elif isinstance(exc, ReadTimeoutError):
        error = RequestTimeoutError(f"{exc} (a request must arrive in full, headers and body, within it). "
                                    f"{timeout_advice}")
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
