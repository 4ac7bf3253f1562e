"""uvicorn's httptools protocol, with each response leaving in one `send()`, and kaon's hot routes answered directly.

uvicorn writes a response's status line and headers in one `transport.write()` and its body in a
second; with uvloop each write is a `send()` syscall at once. Under c64 those two syscalls were the
largest single cost of a small-model request (py-spy: 16% and 8% of the event loop's samples; see
BENCHMARKS.md, serving). `CoalescingTransport` holds a write until the end of the current event-loop
step: the body written right after the headers joins them, and anything written alone (an error
answer, a 100-continue, the last chunk of a stream) still leaves in the same loop iteration.

`KaonHttpToolsProtocol` also answers the plainest requests to kaon's POST routes and V2 (HTTP/1.1, a
Content-Length within --max-body-bytes, no Expect or Upgrade, nothing pipelined before them) without the
ASGI cycle: the parsed request goes to `KaonApp.answer`, which the ASGI path calls too, and the
response is written as one block. The ASGI scope, the receive/send messages and their coroutines, and
uvicorn's per-header checks cost a small-model request ~25% of its CPU under c64 (BENCHMARKS.md,
serving). Everything else (GET routes and the docs, chunked or oversized bodies, `Expect: 100-continue`,
HTTP/1.0, a request pipelined behind another, X-Forwarded-* headers while uvicorn's proxy_headers is on)
takes uvicorn's ASGI path as before.

Each connection has one timer, checking timestamps when it fires instead of a timer armed and cancelled per
request: it closes a connection idle for the keep-alive timeout, before its first request too, and answers 408
and closes one whose request has not arrived in full, headers and body, within --read-timeout-s of its first
byte. uvicorn arms its keep-alive timer only once a response is complete and has no read limit: a connection that
never sent a request, one that sent headers and stalled, and one trickling header lines (slowloris) were each
held, with their buffers, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from kaon.errors import RequestTimeoutError
from kaon.serving.app import answer_headers
from kaon.serving.http import decode_headers

if TYPE_CHECKING:
    from kaon.serving.app import Answer, KaonApp

log = logging.getLogger("kaon.serving")

# With uvicorn's proxy_headers on, these set the client's address and scheme: such requests take the ASGI path,
# where uvicorn's ProxyHeadersMiddleware applies them from trusted proxies.
_PROXY_HEADERS = (b"x-forwarded-for", b"x-forwarded-proto")
# Above this a body is written on its own: copying it to join the headers would cost more than a syscall.
_JOIN_MAX_BYTES = 64 * 1024


class CoalescingTransport:
    """A transport whose first write waits for the next one, or for the end of this loop step."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._pending = None
        if len(data) <= _JOIN_MAX_BYTES:
            self._transport.write(pending + bytes(data))
        else:
            self._transport.write(pending)
            self._transport.write(data)

    def write_now(self, data: bytes) -> None:
        """Write `data` at once, after anything held."""
        pending, self._pending = self._pending, None
        self._transport.write(data if pending is None else pending + data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class _Event:
    """What uvicorn's protocol calls on a cycle's message event; a direct request has no reader to wake."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_READER = _Event()


class DirectCycle:
    """One request answered without ASGI: the attributes uvicorn's protocol reads on its current cycle."""

    __slots__ = ("announced", "body", "disconnected", "headers", "keep_alive", "message_event", "path", "query",
                 "response_complete", "started")

    def __init__(self, path: str, query: bytes, headers: dict[str, str], keep_alive: bool,
                 announced: Any, started: float) -> None:
        self.started = started  # perf_counter at the request's first byte
        self.path, self.query, self.headers, self.keep_alive = path, query, headers, keep_alive
        self.announced = announced  # the batcher counting it as on its way in, until `_answer` hands it on
        self.body: bytes | bytearray = b""
        self.disconnected = False
        self.response_complete = False
        self.message_event = _NO_READER


class KaonHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport (`uvicorn.Config(http=...)`); `kaon_app`'s POST
    routes are answered directly when the request is a plain one (see the module's docstring)."""

    kaon_app: ClassVar[KaonApp | None] = None  # set on the subclass `for_app` makes: one per server
    _direct_request = False
    _arriving = False  # from a request's first byte until it is in full
    _read_since = 0.0  # perf_counter at the first byte of the request arriving (or when uvicorn let it go on)
    _answers = 0  # requests in full whose response is not complete yet (both paths)
    _shutting_down = False
    _idle_since: float | None = None  # loop time the connection was opened or last answered, until data comes
    _idle_timer: asyncio.TimerHandle | None = None  # the connection's one timer: keep-alive and read checks
    _check_every_s = 5.0  # the longest the timer waits: min(keep-alive, read timeout), set per connection
    _read_timeout_s = 60.0
    _defaults_of: ClassVar[list[tuple[bytes, bytes]] | None] = None  # the server's default headers, as last seen
    _default_lines: ClassVar[bytes] = b""  # ... and written as header lines

    @classmethod
    def for_app(cls, app: KaonApp) -> type[KaonHttpToolsProtocol]:
        """This protocol bound to `app` (a subclass per server: servers in one process do not share it)."""
        return type(cls.__name__, (cls,), {"kaon_app": app})

    def on_message_begin(self) -> None:
        # uvicorn's own also builds the ASGI scope, which a request answered directly never reads: it is built
        # in on_headers_complete, for the requests that take the ASGI path
        self._direct_request = False  # per request: an upgrade or a pipelined request leaves the old cycle current
        self._arriving = True  # until on_message_complete
        self._read_since = time.perf_counter()  # its read time starts (and its latency, on the direct path)
        self.url = b""
        self.expect_100_continue = False
        self.headers = []

    def on_headers_complete(self) -> None:
        app = self.kaon_app
        if app is not None and self._direct(app):
            self._direct_request = True
            return
        url, headers, expect_100_continue = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()  # the scope, with what this request's url and header callbacks gathered
        self.url, self.headers, self.expect_100_continue = url, headers, expect_100_continue
        self.scope["headers"] = headers  # this request's list: how `_headers_in` tells its headers are in
        super().on_headers_complete()

    def _direct(self, app: KaonApp) -> bool:
        """Start a DirectCycle when this request qualifies; False leaves it to uvicorn's ASGI cycle."""
        parser = self.parser
        if (parser.get_method() != b"POST" or self.expect_100_continue or parser.should_upgrade()
                or parser.get_http_version() != "1.1"
                or (self.cycle is not None and not self.cycle.response_complete)):
            return False
        raw_path, query = self.url, b""
        if raw_path[:1] != b"/" or b"?" in raw_path or b"#" in raw_path:  # else the target is the path itself
            url = httptools.parse_url(raw_path)
            raw_path, query = url.path, url.query or b""
        if b"%" in raw_path:
            return False
        path = raw_path.decode("ascii")
        if ("POST", path) not in app.routes and not path.startswith("/v2/"):
            return False
        length = None
        proxied = self.config.proxy_headers
        headers = {}
        for name, value in self.headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding" or (proxied and name in _PROXY_HEADERS):
                return False  # uvicorn reads chunked bodies, and takes the client's address from a trusted proxy
            headers[name.decode("latin-1")] = value.decode("latin-1")  # as decode_headers gives them
        if length is None or not length.isdigit() or int(length) > app.config.max_body_bytes:
            return False  # the ASGI path answers 413
        # counted as arriving from its headers on, as on the ASGI path: the batcher waits for a body still on its way
        self.cycle = DirectCycle(path, query, headers,  # type: ignore[assignment]
                                 parser.should_keep_alive(), app.announce("POST", path), self._read_since)
        return True

    def on_body(self, body: bytes) -> None:
        if self._direct_request:
            cycle: DirectCycle = self.cycle  # type: ignore[assignment]
            if not cycle.body:  # most bodies come in one piece: kept as it is, not copied twice
                cycle.body = body
            elif type(cycle.body) is bytes:
                cycle.body = bytearray(cycle.body) + body  # then appended to in place
            else:
                cycle.body += body
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._arriving = False
        self._answers += 1
        if self._direct_request:
            task = self.loop.create_task(self._answer(self.cycle))  # type: ignore[arg-type]
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return
        super().on_message_complete()

    async def _answer(self, cycle: DirectCycle) -> None:
        app = self.kaon_app
        assert app is not None
        answer, written = None, False
        announced, cycle.announced = cycle.announced, None
        try:
            if not cycle.disconnected:  # a client gone before its turn costs no inference
                handed, announced = announced, None  # answer() settles it from here on
                try:
                    answer = await app.answer("POST", cycle.path, cycle.headers, bytes(cycle.body),
                                              cycle.query.decode("latin-1"), self.client[0] if self.client else None,
                                              announced=handed)
                except Exception as exc:  # answer() maps request errors itself: this is a kaon bug; answer 500
                    cycle.keep_alive = False
                    answer = app.failed_answer("POST", cycle.path, exc)
            if answer is not None and not cycle.disconnected and not self.transport.is_closing():
                self._write(app, answer, cycle.keep_alive)
                written = True
                if self.flow.write_paused and not cycle.disconnected:  # a client not reading: wait until it does
                    await self.flow.drain()
        finally:  # also on cancellation (a forced shutdown): a connection left without its answer is closed
            if announced is not None:
                announced.arrived()
            cycle.response_complete = True
            if (not written or not cycle.keep_alive) and not self.transport.is_closing():
                self.transport.close()
            self.on_response_complete()
        if answer is not None:  # recorded like the ASGI path does, also when the client had gone
            app.finish(answer, cycle.started)

    def _write(self, app: KaonApp, answer: Answer, keep_alive: bool) -> None:
        head = [STATUS_LINE[answer.response.status], app.security_header_lines]
        for name, value in answer_headers(answer):
            head += [name, b": ", value, b"\r\n"]
        defaults = self.server_state.default_headers  # date and server: the server makes a new list each second
        if defaults is not self._defaults_of:
            type(self)._defaults_of = defaults
            type(self)._default_lines = b"".join(name + b": " + value + b"\r\n" for name, value in defaults)
        head.append(self._default_lines)
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += [b"\r\n", answer.response.body]
        self.transport.write_now(b"".join(head))  # type: ignore[attr-defined]

    def shutdown(self) -> None:
        """Graceful shutdown: a request still arriving is not waited for (a client that stalls mid-body held the
        exit for the whole graceful timeout, past a pod's grace period); it was not started, so the client may
        retry it elsewhere. Requests that arrived in full are answered first, as uvicorn does, also when the next
        request on the connection is the one still arriving: the connection closes after their answers."""
        self._shutting_down = True
        if self._arriving and self._answers == 0 and not self.transport.is_closing():
            self.transport.close()
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        if self._answers:  # 0 for an answer that came before its request was in full (a 413 mid-body)
            self._answers -= 1
        if self._shutting_down and self._arriving and self._answers == 0 and not self.transport.is_closing():
            self.server_state.total_requests += 1
            self.transport.close()  # the rest is a request still arriving: not started, as above
            return
        if self.pipeline or self.transport.is_closing():
            super().on_response_complete()
            if self._idle_timer is None and not self.transport.is_closing():  # a pipelined request is still timed
                self._idle_timer = self.loop.call_at(self.loop.time() + self._check_every_s, self._idle_check)
            return
        # uvicorn's, but the keep-alive timer is armed once and checked when it fires (see _idle_check): a
        # call_later and a cancel per request cost ~1.7 us, 4% of a small model's request at c64
        self.server_state.total_requests += 1
        if self.timeout_keep_alive_task is not None:  # uvicorn's own timer, armed by its path for a pipelined one
            self._unset_keepalive_if_required()
        self.flow.resume_reading()
        self._idle_since = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(self._idle_since + self._check_every_s, self._idle_check)

    def _unset_keepalive_if_required(self) -> None:  # uvicorn calls it when data arrives and when the peer is gone
        self._idle_since = None
        if self.timeout_keep_alive_task is not None:
            super()._unset_keepalive_if_required()

    def _idle_check(self) -> None:
        """The connection's timer. A request arriving: it has read_timeout_s from its first byte to arrive in full,
        headers and body (`_read_timed_out`). A request in full being answered: its response re-arms the timer.
        Idle, since the connection opened or its last response: closed once idle for the keep-alive timeout
        (uvicorn's timeout_keep_alive, 5 s), as uvicorn's timer does after a response. The timer never waits longer
        than `_check_every_s`, so a request's deadline is met on time; a deadline or keep-alive end nearer than
        that is waited for exactly."""
        self._idle_timer = None
        if self.transport.is_closing() or self not in self.connections:  # closed, or handed to a WebSocket
            return
        now = self.loop.time()
        if self._arriving:
            left_s = self._read_left_s()
            if left_s <= 0:
                self._read_timed_out()
                return
            next_at = now + min(left_s, self._check_every_s)
        elif self._answers:  # requests in full, being answered
            return
        else:
            if self._idle_since is None:  # data came that began no request (blank lines): idle from here
                self._idle_since = now
            closes_at = self._idle_since + self.timeout_keep_alive
            if now >= closes_at:
                self.timeout_keep_alive_handler()
                return
            next_at = min(closes_at, now + self._check_every_s)
        self._idle_timer = self.loop.call_at(next_at, self._idle_check)

    def _read_left_s(self) -> float:
        """Seconds left for the request now arriving to arrive in full: read_timeout_s from its first byte."""
        cycle: Any = self.cycle
        if self._answers or (not self._direct_request and (self.flow.read_paused or (
                self._headers_in() and cycle.waiting_for_100_continue))):
            # held by the server, not the client: a request before it is being answered (pipelined), uvicorn paused
            # reading (its app has not read the body so far), or the client waits for a 100 Continue. Its time
            # starts again from here.
            self._read_since = time.perf_counter()
        return self._read_since + self._read_timeout_s - time.perf_counter()

    def _headers_in(self) -> bool:
        """Whether the request now arriving has its headers in: a direct one, or one whose ASGI scope holds the
        header list `on_message_begin` started for it (a request still in its headers has no scope of its own)."""
        scope = self.scope
        return self._direct_request or (scope is not None and scope["headers"] is self.headers)

    def _read_timed_out(self) -> None:
        """A 408 in kaon's error envelope (unless the request's response has begun), and the connection closes."""
        app, cycle = self.kaon_app, self.cycle
        headers_in = self._headers_in()
        if app is not None and not (headers_in and getattr(cycle, "response_started", False)):
            direct: Any = cycle if self._direct_request else None
            if direct:  # a DirectCycle writes its response at its end: none has begun
                method, path, headers = "POST", direct.path, direct.headers
            elif headers_in:
                method, path, headers = self.scope["method"], self.scope["path"], decode_headers(self.scope["headers"])
            else:  # its method and path once its request line is in (a header follows it), and the headers so far
                method, path, headers = "", "", decode_headers(self.headers)
                if self.headers:
                    with contextlib.suppress(httptools.HttpParserInvalidURLError, UnicodeDecodeError):
                        method = self.parser.get_method().decode("ascii")
                        path = httptools.parse_url(self.url).path.decode("ascii")
            part = "body" if headers_in else "headers"
            answer = app.failed_answer(method, path, RequestTimeoutError(
                f"the request's {part} did not arrive within {self._read_timeout_s:g} s of its first byte "
                f"(--read-timeout-s: a request must arrive in full, headers and body, within it). Send each request "
                f"whole, or raise --read-timeout-s for slow uploads."), headers)
            self._write(app, answer, keep_alive=False)
            if not headers_in or direct:  # an ASGI request records its own outcome once it sees the connection gone
                app.finish(answer, self._read_since)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        cycle = self.cycle
        if type(cycle) is DirectCycle and cycle.announced is not None:  # gone while its body was arriving
            cycle.announced.arrived()
            cycle.announced = None
        super().connection_lost(exc)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
        app = self.kaon_app
        if app is not None:
            self._read_timeout_s = app.config.read_timeout_s
        keep_alive_s = self.timeout_keep_alive  # 0 (close once answered) would make the timer spin
        self._check_every_s = min(keep_alive_s, self._read_timeout_s) if keep_alive_s > 0 else self._read_timeout_s
        # idle until its first request, like between requests (uvicorn's own timer waits for a first response).
        # The timer is armed once per connection: a response re-arms it after.
        self._idle_since = now = self.loop.time()
        self._idle_timer = self.loop.call_at(now + self._check_every_s, self._idle_check)
