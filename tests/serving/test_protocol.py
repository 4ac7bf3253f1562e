"""The coalescing transport under uvicorn's protocol: one send per response, nothing held past a loop step."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import uvicorn
from uvicorn.server import ServerState

import kaon
from kaon.config import ServeConfig
from kaon.serving._protocol import _JOIN_MAX_BYTES, CoalescingTransport, DirectCycle, KaonHttpToolsProtocol
from kaon.serving.app import KaonApp


class Recorder:
    """A transport that records its writes (a pure unit test of the buffering rule)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_headers_and_body_written_in_one_step_leave_in_one_write() -> None:
    async def scenario() -> Recorder:
        real = Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # alone: the protocol's own error answer
        assert len(real.writes) == 1
        await asyncio.sleep(0)  # one loop step later it is out
        assert real.writes[-1] == b"HTTP/1.1 400 Bad Request\r\n\r\n"
        assert transport.get_extra_info("peername") == "info:peername"  # the rest is the real transport
        return real

    asyncio.run(scenario())


def test_a_large_body_is_not_copied_and_close_flushes_first() -> None:
    async def scenario() -> None:
        real = Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        body = b"x" * (_JOIN_MAX_BYTES + 1)
        transport.write(b"head")
        transport.write(body)
        assert real.writes == [b"head", body]
        transport.write(b"last words")
        transport.close()
        assert real.writes[-1] == b"last words" and real.closed
        await asyncio.sleep(0)
        assert len(real.writes) == 3  # the scheduled flush finds nothing left

    asyncio.run(scenario())


def test_a_real_server_answers_pipelined_requests_in_order(onnx_server) -> None:
    """Two requests in one packet (HTTP pipelining): both answers arrive, complete and in order."""
    host, port = "127.0.0.1", onnx_server.port
    request = (f"GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n"
               f"GET /nope HTTP/1.1\r\nhost: {host}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"200") and second.startswith(b"404")


# ---- kaon's POST routes answered without the ASGI cycle ---------------------------------------------


class Doubler(kaon.Service):
    @kaon.endpoint(max_batch_size=8, max_wait_ms=1)
    def double(self, xs: list[float]) -> list[float]:
        return [2 * x for x in xs]

    @kaon.endpoint
    def fail(self, n: int) -> int:
        raise RuntimeError("secret internals")

    @kaon.endpoint
    async def slow(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


class Connection(Recorder):
    """A client connection as uvicorn's protocol sees its transport: addresses, flow control."""

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@contextlib.asynccontextmanager
async def started(config: ServeConfig | None = None) -> AsyncIterator[KaonApp]:
    app = KaonApp(Doubler, config or ServeConfig())
    await app.startup()
    try:
        yield app
    finally:
        await app.shutdown()


async def _connection(app: KaonApp, server_state: ServerState, ws: Any = None,
                      keep_alive_s: float = 5.0) -> tuple[Any, Recorder]:
    """uvicorn's real protocol class (kaon's subclass, bound to `app`) on a recording transport; `keep_alive_s`:
    uvicorn's timeout_keep_alive (5 s, its default)."""
    config = uvicorn.Config(app, http=KaonHttpToolsProtocol.for_app(app), lifespan="off", log_level="warning",
                            timeout_keep_alive=keep_alive_s)
    config.load()
    if ws is not None:  # as when `websockets` is installed (uvicorn[standard])
        config.ws_protocol_class = ws
    protocol = config.http_protocol_class(config=config, server_state=server_state, app_state={})
    transport = Connection()
    protocol.connection_made(transport)
    return protocol, transport


def post(path: str, body: bytes, *extra: str, version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "host: 127.0.0.1", "content-type: application/json", *extra]
    if not any(h.lower().startswith("transfer-encoding") for h in extra):
        head.append(f"content-length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _answered(transport: Recorder, count: int = 1) -> list[bytes]:
    for _ in range(500):
        if b"".join(transport.writes).count(b"HTTP/1.1 ") >= count:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    return [b"HTTP/1.1 " + part for part in b"".join(transport.writes).split(b"HTTP/1.1 ")[1:]]


def _parts(response: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_a_plain_post_is_answered_directly_and_like_the_asgi_path() -> None:
    async def scenario() -> None:
        async with started(ServeConfig(max_body_bytes=1024)) as app:
            state = ServerState()
            state.default_headers = [(b"date", b"Fri, 27 Nov 2026 12:00:00 GMT")]  # the server loop refreshes it
            body = b'{"xs": [1.5, 2]}'
            direct, direct_out = await _connection(app, state)
            direct.data_received(post("/double", body))
            assert type(direct.cycle) is DirectCycle  # no ASGI task: the app answered the parsed request
            # a chunked body takes uvicorn's ASGI cycle; the answer must be the same
            asgi, asgi_out = await _connection(app, state)
            chunked = post("/double", b"", "transfer-encoding: chunked")
            asgi.data_received(chunked + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            assert type(asgi.cycle) is not DirectCycle
            (one,), (two,) = await _answered(direct_out), await _answered(asgi_out)
            (status, headers, payload), (status2, headers2, payload2) = _parts(one), _parts(two)
            assert status == status2 == 200 and payload == payload2 == b"[3.0,4.0]"
            assert set(headers) == set(headers2) >= {"content-type", "content-length", "x-request-id", "date",
                                                     "x-content-type-options"}
            assert headers["content-length"] == str(len(payload))
            assert headers["x-request-id"] != headers2["x-request-id"]
            assert not direct_out.closed  # keep-alive: the next request on the connection is answered too
            direct.data_received(post("/double", b'{"xs": [5]}', "x-request-id: mine-1"))
            second = (await _answered(direct_out, 2))[1]
            assert _parts(second)[2] == b"[10.0]" and _parts(second)[1]["x-request-id"] == "mine-1"
            assert state.total_requests == 3
            metrics = app.metrics.render().decode()
            assert 'kaon_requests_total{route="/double",status="200"} 3.0' in metrics

    asyncio.run(scenario())


def test_a_body_arriving_in_pieces_is_answered_whole_on_the_direct_path() -> None:
    async def scenario() -> None:
        async with started() as app:
            protocol, transport = await _connection(app, ServerState())
            body = b'{"xs": [' + b", ".join(b"%d" % i for i in range(300)) + b"]}"
            request = post("/double", body)
            head_end = request.index(b"\r\n\r\n") + 4
            for start, end in ((0, head_end + 5), (head_end + 5, head_end + 400), (head_end + 400, len(request))):
                protocol.data_received(request[start:end])  # the body in three pieces
                await asyncio.sleep(0)
            assert type(protocol.cycle) is DirectCycle
            (answer,) = await _answered(transport)
            assert _parts(answer)[0] == 200 and _parts(answer)[2] == orjson.dumps([2.0 * i for i in range(300)])

    asyncio.run(scenario())


def test_keep_alive_closes_a_connection_idle_for_the_timeout_and_only_then() -> None:
    """One keep-alive check per connection instead of a timer per request: a connection used more often than
    the timeout stays open, one busy for longer than it is not cut, and one idle for the timeout is closed."""
    async def scenario() -> None:
        async with started() as app:
            protocol, transport = await _connection(app, ServerState(), keep_alive_s=0.3)
            loop = asyncio.get_running_loop()
            started_at = loop.time()
            for count in range(1, 5):  # 4 requests 0.15 s apart: 0.6 s open, never 0.3 s idle
                protocol.data_received(post("/double", b'{"xs": [1]}'))
                assert len(await _answered(transport, count)) == count
                await asyncio.sleep(0.15)
            assert not transport.closed and loop.time() - started_at > 0.5
            protocol.data_received(post("/slow", b'{"seconds": 0.5}'))  # busy past the timeout: not idle
            await asyncio.sleep(0.45)
            assert not transport.closed
            answers = await _answered(transport, 5)
            assert len(answers) == 5 and _parts(answers[-1])[2] == b"0.5"
            idle_from = loop.time()
            while not transport.closed and loop.time() - idle_from < 2:
                await asyncio.sleep(0.01)
            assert transport.closed and 0.28 <= loop.time() - idle_from <= 0.6

    asyncio.run(scenario())


def test_each_request_target_form_and_the_headers_reach_the_app_on_both_paths() -> None:
    """The direct path reads the path from a query or an absolute-form target too; the ASGI path gets the
    request's own headers although its scope is built only once the headers are in."""

    async def scenario() -> None:
        async with started() as app:
            state = ServerState()
            answers = {}
            for name, raw, direct in (
                ("query", post("/double?verbose=1", b'{"xs": [1]}', "x-request-id: q-1"), True),
                ("absolute", post("http://127.0.0.1:8000/double", b'{"xs": [2]}', "x-request-id: a-1"), True),
                ("chunked", post("/double", b"", "transfer-encoding: chunked", "x-request-id: c-1")
                 + b'b\r\n{"xs": [3]}\r\n0\r\n\r\n', False),
            ):
                protocol, out = await _connection(app, state)
                protocol.data_received(raw)
                assert (type(protocol.cycle) is DirectCycle) is direct, name
                (answer,) = await _answered(out)
                status, headers, body = _parts(answer)
                answers[name] = (status, headers["x-request-id"], body)
            assert answers == {"query": (200, "q-1", b"[2.0]"), "absolute": (200, "a-1", b"[4.0]"),
                               "chunked": (200, "c-1", b"[6.0]")}

    asyncio.run(scenario())


def test_errors_on_the_direct_path_are_the_usual_envelopes() -> None:
    async def scenario() -> None:
        async with started() as app:
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(post("/double", b'{"xs": "nope"}'))
            protocol.data_received(post("/double", b'{"xs": [1'))
            protocol.data_received(post("/fail", b'{"n": 1}', "connection: close"))
            bad_type, bad_json, failed = await _answered(out, 3)
            assert _parts(bad_type)[0] == 422 and b"xs" in _parts(bad_type)[2]
            assert _parts(bad_json)[0] == 400
            status, headers, body = _parts(failed)
            assert status == 500 and headers["connection"] == "close" and b"secret" not in body
            assert headers["x-request-id"] in body.decode()
            assert out.closed  # the client asked to close

    asyncio.run(scenario())


def test_requests_the_direct_path_does_not_take_go_through_asgi() -> None:
    async def scenario() -> None:
        async with started(ServeConfig(max_body_bytes=1024)) as app:
            state = ServerState()
            cases = {
                "http/1.0": post("/double", b'{"xs": [1]}', version="1.0"),
                "expect": post("/double", b'{"xs": [1]}', "expect: 100-continue"),
                "get": b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
                "unknown route": post("/nope", b"{}"),
                "escaped path": post("/doub%6Ce", b'{"xs": [1]}'),
                "over the body limit": post("/double", b'{"xs": [' + b"1," * 600 + b"1]}"),
            }
            statuses = {}
            for name, raw in cases.items():
                protocol, out = await _connection(app, state)
                protocol.data_received(raw)
                assert type(protocol.cycle) is not DirectCycle, name
                answers = await _answered(out)
                statuses[name] = [_parts(answer)[0] for answer in answers]
            assert statuses == {"http/1.0": [200], "expect": [100, 200], "get": [200], "unknown route": [404],
                                "escaped path": [200], "over the body limit": [413]}

    asyncio.run(scenario())


def test_a_client_gone_before_the_answer_gets_no_write() -> None:
    async def scenario() -> None:
        async with started() as app:
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(post("/double", b'{"xs": [1]}'))
            cycle = protocol.cycle
            protocol.connection_lost(None)
            for _ in range(100):
                if cycle.response_complete:
                    break
                await asyncio.sleep(0.01)
            assert cycle.response_complete and cycle.disconnected
            assert out.writes == [] and out.closed

    asyncio.run(scenario())


def test_pipelined_posts_are_answered_in_order() -> None:
    """The first of two POSTs in one packet goes direct; the second waits for it (uvicorn's pipeline)."""
    async def scenario() -> None:
        async with started() as app:
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(post("/double", b'{"xs": [1]}') + post("/double", b'{"xs": [2, 3]}')
                                   + post("/double", b'{"xs": [4]}'))
            answers = await _answered(out, 3)
            assert [_parts(a)[2] for a in answers] == [b"[2.0]", b"[4.0,6.0]", b"[8.0]"]

    asyncio.run(scenario())


def test_shutdown_drops_a_request_still_arriving_but_not_an_answer_on_its_way() -> None:
    """A request whose body stalls is closed at shutdown; a request in full being answered is answered first,
    also when the next request on its connection is the one still arriving (it was dropped with it)."""
    async def scenario() -> None:
        async with started() as app:
            state = ServerState()
            stalled, stalled_out = await _connection(app, state)
            stalled.data_received(post("/slow", b'{"seconds": 0.2}')[:-6])
            busy, busy_out = await _connection(app, state)
            busy.data_received(post("/slow", b'{"seconds": 0.2}') + post("/slow", b'{"seconds": 0.2}')[:-6])
            await asyncio.sleep(0.05)  # the first request on `busy` is being answered
            stalled.shutdown()
            busy.shutdown()
            assert stalled_out.closed and not stalled_out.writes  # nothing was started for it
            (answer,) = await _answered(busy_out)
            assert _parts(answer)[0] == 200 and _parts(answer)[2] == b"0.2"
            await asyncio.sleep(0.05)
            assert busy_out.closed  # after its answer

    asyncio.run(scenario())


def test_a_client_that_does_not_read_holds_its_connection_until_it_does() -> None:
    """Write backpressure: the answer is written, but the cycle ends (and reading resumes) only once drained."""
    async def scenario() -> None:
        async with started() as app:
            protocol, out = await _connection(app, ServerState())
            protocol.pause_writing()  # the transport's buffer is over its high-water mark
            protocol.data_received(post("/double", b'{"xs": [1]}'))
            cycle = protocol.cycle
            (answer,) = await _answered(out)
            assert _parts(answer)[2] == b"[2.0]" and not cycle.response_complete
            protocol.resume_writing()
            for _ in range(100):
                if cycle.response_complete:
                    break
                await asyncio.sleep(0.01)
            assert cycle.response_complete and not out.closed

    asyncio.run(scenario())


def test_a_client_request_id_is_echoed_only_when_it_is_short_printable_ascii() -> None:
    async def scenario() -> None:
        async with started() as app:
            protocol, out = await _connection(app, ServerState())
            body = b'{"xs": [1]}'
            protocol.data_received(post("/double", body, "x-request-id: trace-42"))
            protocol.data_received(post("/double", body, "x-request-id: " + "a" * 200))
            protocol.data_received(post("/double", body).replace(b"host:", b"x-request-id: caf\xe9\r\nhost:"))
            ids = [_parts(a)[1]["x-request-id"] for a in await _answered(out, 3)]
            assert ids[0] == "trace-42"
            assert all(i != "trace-42" and len(i) < 40 and i.isascii() for i in ids[1:]) and ids[1] != ids[2]

    asyncio.run(scenario())


class Slow(kaon.Service):
    @kaon.endpoint(max_batch_size=8, max_wait_ms=1)
    def nap(self, xs: list[float]) -> list[float]:
        time.sleep(0.1)
        return xs


def test_a_request_whose_client_left_mid_answer_is_still_counted() -> None:
    async def scenario() -> None:
        app = KaonApp(Slow, ServeConfig())
        await app.startup()
        try:
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(post("/nap", b'{"xs": [1]}'))
            cycle = protocol.cycle
            await asyncio.sleep(0.03)  # the model is running it
            protocol.connection_lost(None)
            for _ in range(100):
                if cycle.response_complete:
                    break
                await asyncio.sleep(0.01)
            assert out.writes == [] and out.closed
            assert 'kaon_requests_total{route="/nap",status="200"} 1.0' in app.metrics.render().decode()
        finally:
            await app.shutdown()

    asyncio.run(scenario())


class UpgradeTo(asyncio.Protocol):
    """A stand-in WebSocket protocol: records what it is handed."""

    made: list[Any] = []

    def __init__(self, config: Any, server_state: Any, app_state: Any) -> None:
        UpgradeTo.made.append(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport


class Upgradable(Connection):
    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


def test_an_upgrade_after_a_direct_post_does_not_answer_the_post_again() -> None:
    async def scenario() -> None:
        async with started() as app:
            state = ServerState()
            config = uvicorn.Config(app, http=KaonHttpToolsProtocol.for_app(app), lifespan="off", log_level="warning")
            config.load()
            config.ws_protocol_class = UpgradeTo
            protocol = config.http_protocol_class(config=config, server_state=state, app_state={})
            out = Upgradable()
            protocol.connection_made(out)
            protocol.data_received(post("/double", b'{"xs": [1]}'))
            await _answered(out)
            protocol.data_received(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
                                   b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
            await asyncio.sleep(0.1)
            assert b"".join(out.writes).count(b"HTTP/1.1 200") == 1 and state.total_requests == 1
            assert UpgradeTo.made and out.protocol is UpgradeTo.made[-1]
            assert protocol.timeout_keep_alive_task is None  # the connection is the WebSocket protocol's now

    asyncio.run(scenario())


def test_forwarded_requests_take_the_asgi_path_where_uvicorn_reads_the_proxy_headers() -> None:
    async def scenario() -> None:
        async with started() as app:
            seen = []
            answer = app.answer

            async def spy(*args: Any, **kwargs: Any) -> Any:
                seen.append(args[5])
                return await answer(*args, **kwargs)

            app.answer = spy  # type: ignore[method-assign]
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(post("/double", b'{"xs": [1]}', "x-forwarded-for: 203.0.113.7"))
            assert type(protocol.cycle) is not DirectCycle
            (response,) = await _answered(out)
            assert _parts(response)[0] == 200 and seen == ["203.0.113.7"]  # from a trusted (loopback) proxy

    asyncio.run(scenario())


def test_a_failure_inside_kaon_on_the_direct_path_is_a_500_envelope_and_a_closed_connection() -> None:
    async def scenario() -> None:
        async with started() as app:
            async def broken(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("secret internals")

            app.answer = broken  # type: ignore[method-assign]
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(post("/double", b'{"xs": [1]}'))
            (response,) = await _answered(out)
            status, headers, body = _parts(response)
            assert status == 500 and headers["connection"] == "close" and b"secret" not in body
            assert headers["x-request-id"] in body.decode() and out.closed
            assert 'kaon_requests_total{route="/double",status="500"} 1.0' in app.metrics.render().decode()

    asyncio.run(scenario())


def test_a_post_counts_as_arriving_from_its_headers_until_it_is_answered_or_gone() -> None:
    """The batcher waits for requests still on their way in (decide_flush), direct path or not."""
    async def scenario() -> None:
        async with started() as app:
            batcher = app.batchers["double"]
            raw = post("/double", b'{"xs": [1, 2, 3]}')
            protocol, out = await _connection(app, ServerState())
            protocol.data_received(raw[:-5])  # the headers and part of the body
            assert type(protocol.cycle) is DirectCycle and batcher.num_arriving == 1
            protocol.data_received(raw[-5:])
            (answer,) = await _answered(out)
            assert _parts(answer)[2] == b"[2.0,4.0,6.0]" and batcher.num_arriving == 0
            gone, _ = await _connection(app, ServerState())
            gone.data_received(raw[:-5])
            assert batcher.num_arriving == 1
            gone.connection_lost(None)
            assert batcher.num_arriving == 0

    asyncio.run(scenario())


def test_a_body_that_stalls_past_read_timeout_s_is_a_408_and_a_closed_connection() -> None:
    """A client that sends its headers and then stalls (or trickles its body) held the connection and its buffer
    forever. The request has read_timeout_s from its first byte to arrive in full: else a 408 envelope, and the
    connection closes. Checked by the connection's one timer (no timer per request), on either path, on a new
    connection and on one kept alive after an answered request; a slow body within the time is answered as usual."""
    async def scenario() -> None:
        async with started(ServeConfig(read_timeout_s=0.3)) as app:
            state = ServerState()
            loop = asyncio.get_running_loop()
            request = post("/double", b'{"xs": [1, 2, 3]}')
            stalled = {}
            for name in ("direct", "chunked", "kept alive"):
                protocol, out = await _connection(app, state)
                if name == "chunked":  # uvicorn's ASGI path
                    protocol.data_received(post("/double", b"", "transfer-encoding: chunked") + b'b\r\n{"xs"')
                    assert type(protocol.cycle) is not DirectCycle
                else:
                    if name == "kept alive":
                        protocol.data_received(request)
                        assert [_parts(a)[0] for a in await _answered(out)] == [200]
                        out.writes.clear()
                    protocol.data_received(post("/double", b'{"xs": [1, 2, 3]}', "x-request-id: mine-1")[:-5])
                    assert type(protocol.cycle) is DirectCycle
                stalled[name] = (out, loop.time())
            slow, slow_out = await _connection(app, state)
            for start in range(0, len(request), len(request) // 3 + 1):  # three pieces over 0.2 s: in time
                slow.data_received(request[start:start + len(request) // 3 + 1])
                await asyncio.sleep(0.1)
            for name, (out, since) in stalled.items():
                while not out.closed and loop.time() - since < 3:
                    await asyncio.sleep(0.01)
                assert out.closed and 0.25 <= loop.time() - since <= 1.0, (name, loop.time() - since)
                (answer,) = [b"HTTP/1.1 " + part for part in b"".join(out.writes).split(b"HTTP/1.1 ")[1:]]
                status, headers, body = _parts(answer)
                error = orjson.loads(body)["error"]
                assert status == 408 and headers["connection"] == "close", name
                assert error["code"] == "request_timeout" and "--read-timeout-s" in error["message"]
                assert error["request_id"] == headers["x-request-id"]
                assert (headers["x-request-id"] == "mine-1") is (name != "chunked"), name  # the client's own id
            (answer,) = await _answered(slow_out)
            assert _parts(answer)[0] == 200 and _parts(answer)[2] == b"[2.0,4.0,6.0]" and not slow_out.closed
            assert 'kaon_requests_total{route="/double",status="408"} 2.0' in app.metrics.render().decode()

    asyncio.run(scenario())


def test_a_request_being_answered_or_an_idle_connection_is_not_timed_as_arriving() -> None:
    """Only a request still arriving is timed: a request in full that takes longer than read_timeout_s to answer is
    answered, and an idle kept-alive connection closes at the keep-alive timeout, as before, without a 408. A
    request pipelined behind one being answered is timed from that answer on: its 408 does not cut the answer."""
    async def scenario() -> None:
        async with started(ServeConfig(read_timeout_s=0.2)) as app:
            protocol, transport = await _connection(app, ServerState(), keep_alive_s=0.6)
            loop = asyncio.get_running_loop()
            piped, piped_out = await _connection(app, ServerState())
            piped.data_received(post("/slow", b'{"seconds": 0.5}') + post("/double", b'{"xs": [1]}')[:30])
            protocol.data_received(post("/slow", b'{"seconds": 0.5}'))  # 0.5 s to answer: past the read's 0.2 s
            (answer,) = await _answered(transport)
            assert _parts(answer)[0] == 200 and not transport.closed
            idle_from = loop.time()
            while not transport.closed and loop.time() - idle_from < 3:
                await asyncio.sleep(0.01)
            assert transport.closed and 0.55 <= loop.time() - idle_from <= 0.9  # the keep-alive timeout
            assert b"".join(transport.writes).count(b"HTTP/1.1 ") == 1  # no 408
            assert piped_out.closed and [_parts(a)[0] for a in await _answered(piped_out, 2)] == [200, 408]

    asyncio.run(scenario())


def test_a_connection_that_sends_no_request_is_closed_after_the_keep_alive_timeout() -> None:
    """uvicorn arms its keep-alive timer only once a response is complete: a connection that never sent a request
    (or only blank lines) was held forever, 10,000 of them 10,000 file descriptors. The time before a connection's
    first request is idle time like that between requests; a first request within it is answered as usual."""
    async def scenario() -> None:
        async with started() as app:
            loop = asyncio.get_running_loop()
            connections = [await _connection(app, ServerState(), keep_alive_s=0.3) for _ in range(3)]
            opened_at = loop.time()
            (_, silent), (blank, blank_out), (busy, busy_out) = connections
            await asyncio.sleep(0.2)
            blank.data_received(b"\r\n")  # no request begins: still idle
            busy.data_received(post("/double", b'{"xs": [1]}'))  # its first request, within the timeout
            assert _parts((await _answered(busy_out))[0])[0] == 200
            while not silent.closed and loop.time() - opened_at < 3:
                await asyncio.sleep(0.01)
            assert silent.closed and not silent.writes and 0.28 <= loop.time() - opened_at <= 0.6
            assert not busy_out.closed  # idle only from its answer on
            while not blank_out.closed and loop.time() - opened_at < 3:
                await asyncio.sleep(0.01)
            assert blank_out.closed and not blank_out.writes and loop.time() - opened_at <= 0.9

    asyncio.run(scenario())


def test_headers_that_stall_past_read_timeout_s_are_a_408_and_a_closed_connection() -> None:
    """Slowloris: a client that sends a request's headers slowly, a line every while, never finishing, held the
    connection forever (the body's time starts at the headers' end, and each piece put off the keep-alive close).
    A request must arrive in full, headers and body, within read_timeout_s of its first byte: else a 408 envelope
    and the connection closes. Headers that take a while but arrive in time are answered as usual."""
    async def scenario() -> None:
        async with started(ServeConfig(read_timeout_s=0.4)) as app:
            state = ServerState()
            loop = asyncio.get_running_loop()
            request = post("/double", b'{"xs": [1, 2, 3]}', "x-request-id: mine-2")
            stalled = {}
            for name in ("request line", "some headers", "kept alive", "a line at a time"):
                protocol, out = await _connection(app, state)
                if name == "kept alive":
                    protocol.data_received(post("/double", b'{"xs": [1]}'))
                    assert [_parts(a)[0] for a in await _answered(out)] == [200]
                    out.writes.clear()
                # httptools hands a header over once the next one begins: "con" delivers x-request-id
                cut = 12 if name == "request line" else request.index(b"content-length") + 3
                protocol.data_received(request[:cut])
                stalled[name] = (protocol, out, loop.time())
            trickling, _, _ = stalled["a line at a time"]
            slow, slow_out = await _connection(app, state)
            for start in range(0, len(request), len(request) // 3 + 1):  # three pieces over 0.2 s: in time
                slow.data_received(request[start:start + len(request) // 3 + 1])
                trickling.data_received(b"x-more: 1\r\n")  # a header line every 0.1 s, never the last
                await asyncio.sleep(0.1)
            (answer,) = await _answered(slow_out)
            assert _parts(answer)[0] == 200 and _parts(answer)[2] == b"[2.0,4.0,6.0]" and not slow_out.closed
            for name, (_, out, since) in stalled.items():
                while not out.closed and loop.time() - since < 3:
                    await asyncio.sleep(0.01)
                assert out.closed and 0.35 <= loop.time() - since <= 1.0, (name, loop.time() - since)
                (answer,) = await _answered(out)
                status, headers, body = _parts(answer)
                error = orjson.loads(body)["error"]
                assert status == 408 and headers["connection"] == "close", name
                assert error["code"] == "request_timeout" and "headers" in error["message"], error
                assert "--read-timeout-s" in error["message"]
                assert (headers["x-request-id"] == "mine-2") is (name != "request line"), name  # the client's own
            assert 'kaon_requests_total{route="/double",status="408"} 3.0' in app.metrics.render().decode()

    asyncio.run(scenario())


async def _real_server(app: KaonApp, **options: Any) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """`app` served by uvicorn on a free loopback port, in this event loop, with kaon's protocol."""
    from tests.servers import free_port

    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), http=KaonHttpToolsProtocol.for_app(app),
                            lifespan="off", log_level="warning", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    return server, task


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """One response: status, headers, body, and whether the server closed the connection after it."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    status, headers, _ = _parts(head)
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), 3)
    closed = headers.get("connection") == "close" and await asyncio.wait_for(reader.read(1), 3) == b""
    return status, headers, body, closed


def test_a_real_server_closes_silent_and_slowloris_connections_and_serves_others_meanwhile() -> None:
    """Over loopback sockets: a connection that sends nothing is closed after the keep-alive timeout, one whose
    headers trickle in gets its 408 at read_timeout_s, while other clients, and one whose body takes a while but
    arrives in time, are answered."""
    async def scenario() -> None:
        async with started(ServeConfig(read_timeout_s=1.0)) as app:
            server, serving = await _real_server(app, timeout_keep_alive=0.5)
            port = server.config.port
            loop = asyncio.get_running_loop()
            request = post("/double", b'{"xs": [1, 2, 3]}')
            try:
                silent_reader, silent = await asyncio.open_connection("127.0.0.1", port)
                loris_reader, loris = await asyncio.open_connection("127.0.0.1", port)
                since = loop.time()

                async def silent_closed_after_s() -> float:
                    assert await asyncio.wait_for(silent_reader.read(1), 3) == b""  # closed, nothing written
                    return loop.time() - since

                async def trickle() -> tuple[int, bytes, bool, float]:  # a header line every 0.3 s, never the last
                    loris.write(request[:request.index(b"content-length")])
                    answering = asyncio.create_task(_read_response(loris_reader))
                    while not answering.done():
                        await asyncio.wait([answering], timeout=0.3)
                        loris.write(b"x-more: 1\r\n")
                    status, _, body, closed = answering.result()
                    return status, body, closed, loop.time() - since

                silent_closed = asyncio.create_task(silent_closed_after_s())
                loris_answered = asyncio.create_task(trickle())
                other_reader, other = await asyncio.open_connection("127.0.0.1", port)
                other.write(request)
                assert (await _read_response(other_reader))[::2] == (200, b"[2.0,4.0,6.0]")
                for start in range(0, len(request), len(request) // 3 + 1):  # over 0.6 s: in time
                    other.write(request[start:start + len(request) // 3 + 1])
                    await asyncio.sleep(0.3)
                status, _, body, closed = await _read_response(other_reader)
                assert (status, body, closed) == (200, b"[2.0,4.0,6.0]", False)
                assert 0.45 <= await silent_closed <= 0.9
                status, body, closed, after_s = await loris_answered
                assert status == 408 and closed and 0.95 <= after_s <= 1.6, (status, after_s)
                assert orjson.loads(body)["error"]["code"] == "request_timeout"
                for writer in (silent, loris, other):
                    writer.close()
            finally:
                server.should_exit = True
                await serving

    asyncio.run(scenario())


SLOW_CLIENT_SERVICE = '''
import kaon


class Echo(kaon.Service):
    @kaon.endpoint(max_batch_size=8, max_wait_ms=1)
    def double(self, xs: list[float]) -> list[float]:
        return [2 * x for x in xs]
'''


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes, bool]:
    """One response read from `sock`: status, headers, body, and whether the server closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status, headers, body = _parts(data)
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    closed = False
    if headers.get("connection") == "close":
        closed = sock.recv(65536) == b""
    return status, headers, body, closed


def test_a_real_server_answers_408_to_a_stalled_body_and_serves_other_clients_meanwhile(tmp_path) -> None:
    from tests.servers import Server

    (tmp_path / "echo.py").write_text(SLOW_CLIENT_SERVICE)
    server = Server(["serve", f"{tmp_path / 'echo.py'}:Echo", "--read-timeout-s", "1"],
                    env={"KAON_HOME": str(tmp_path / "home")})
    try:
        server.wait_ready()
        request = post("/double", b'{"xs": [1, 2, 3]}')
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        stalled.sendall(request[:-8])  # the headers and half the body, then nothing
        since = time.monotonic()
        # meanwhile another client is served, and one whose body takes 0.6 s (within the 1 s) too
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as other:
            other.sendall(request)
            assert _response(other)[:3:2] == (200, b"[2.0,4.0,6.0]")
            for start in range(0, len(request), len(request) // 3 + 1):
                other.sendall(request[start:start + len(request) // 3 + 1])
                time.sleep(0.3)
            status, _, body, closed = _response(other)
            assert (status, body, closed) == (200, b"[2.0,4.0,6.0]", False)
        status, headers, body, closed = _response(stalled)
        waited = time.monotonic() - since
        stalled.close()
        assert status == 408 and closed and 0.9 <= waited <= 3.0, (status, waited)
        assert orjson.loads(body)["error"]["code"] == "request_timeout"
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as after:  # still serving
            after.sendall(request)
            assert _response(after)[0] == 200
    finally:
        server.stop()
