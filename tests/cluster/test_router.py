"""The router, in process, in front of real loopback HTTP servers that play replicas: balancing,
retries, cold-start waiting, load accounting."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from kaon.cluster._http import HttpMessage, MessageReader, render_response
from kaon.cluster.router import Router
from tests.cluster.helpers import run_async


class Upstream:
    """A tiny HTTP server: /slow?ms=N sleeps, /die drops the connection unanswered, anything else echoes."""

    def __init__(self, name: str, *, drops_die: bool = True) -> None:
        self.name = name
        self.drops_die = drops_die
        self.seen: list[str] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Upstream:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        messages = MessageReader(reader)
        try:
            while (request := await messages.next()) is not None:
                self.seen.append(request.path)
                if request.path == "/die" and self.drops_die:
                    writer.transport.abort()
                    return
                if request.path == "/slow":
                    await asyncio.sleep(int(request.query.split("=")[1]) / 1000)
                body = json.dumps({"replica": self.name, "method": request.method, "body": request.body.decode(),
                                   "request_id": (request.header(b"x-request-id") or b"").decode()}).encode()
                writer.write(render_response(200, [(b"content-type", b"application/json")], body,
                                             keep_alive=request.keep_alive))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def started_router(**options) -> Router:
    router = Router("test", port=0, **options)
    await router.start()
    return router


@run_async
async def test_least_outstanding_sends_new_requests_away_from_the_busy_replica():
    a, b = await Upstream("a").start(), await Upstream("b").start()
    router = await started_router()
    router.add_replica("a", a.port)
    router.add_replica("b", b.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        slow = asyncio.create_task(client.get("/slow?ms=600"))
        await asyncio.sleep(0.2)
        busy = router.replica_stats()
        assert sorted(s["in_flight"] for s in busy.values()) == [0, 1]
        quick = [await client.get("/fast") for _ in range(6)]
        slow_on = (await slow).headers["x-kaon-replica"]
    idle = {"a", "b"} - {slow_on}
    assert {r.headers["x-kaon-replica"] for r in quick} == idle  # every quick one went to the idle replica
    await router.close()
    await a.close()
    await b.close()


@run_async
async def test_ties_spread_requests_over_replicas():
    ups = [await Upstream(n).start() for n in "abc"]
    router = await started_router()
    for up in ups:
        router.add_replica(up.name, up.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        await asyncio.gather(*(client.get("/x") for _ in range(60)))
    counts = [len(up.seen) for up in ups]
    assert sum(counts) == 60 and min(counts) >= 8, counts
    await router.close()


@run_async
async def test_a_request_whose_replica_dies_is_retried_on_another():
    dying, healthy = await Upstream("dying").start(), await Upstream("healthy").start()
    router = await started_router()
    router.add_replica("dying", dying.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        router.add_replica("healthy", healthy.port)
        # /die on the healthy one would die too: point the dying replica at a closed port instead
        await dying.close()
        responses = [await client.post("/predict", json={"i": i}) for i in range(10)]
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["replica"] for r in responses} == {"healthy"}
    assert router.replica_stats()["dying"]["failures"] >= 1
    await router.close()


@run_async
async def test_connection_dropped_mid_request_is_retried_once_per_replica_then_503():
    a, b = await Upstream("a").start(), await Upstream("b").start()
    router = await started_router(retries=2, restart_wait_s=0.2)
    router.add_replica("a", a.port)
    router.add_replica("b", b.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        response = await client.post("/die", json={})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "overloaded" and "every replica of 'test' failed" in error["message"]
    assert response.headers["retry-after"] == "1"
    assert a.seen == ["/die"] and b.seen == ["/die"]  # tried on each replica once, never twice on one
    await router.close()


@run_async
async def test_post_is_not_retried_when_retry_post_is_off():
    a, b = await Upstream("a").start(), await Upstream("b").start()
    router = await started_router(retry_post=False, restart_wait_s=0.2)
    router.add_replica("a", a.port)
    router.add_replica("b", b.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        response = await client.post("/die", json={})
        get = await client.get("/die")
    assert response.status_code == 503 and "cannot be retried" in response.json()["error"]["message"]
    assert get.status_code == 503 and "every replica" in get.json()["error"]["message"]
    await router.close()


@run_async
async def test_slow_replica_is_a_504_not_a_retry():
    a, b = await Upstream("a").start(), await Upstream("b").start()
    router = await started_router(request_timeout_s=0.2)
    router.add_replica("a", a.port)
    router.add_replica("b", b.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        response = await client.get("/slow?ms=1000")
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
    assert len(a.seen) + len(b.seen) == 1
    await router.close()


@run_async
async def test_with_no_replica_a_request_waits_for_one_and_signals_demand():
    up = await Upstream("late").start()
    demands = []
    router = await started_router(on_demand=lambda: demands.append(1))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as client:
        pending = asyncio.create_task(client.post("/predict", json={"x": 1}))
        await asyncio.sleep(0.3)
        assert router.waiting == 1 and demands == [1]
        router.add_replica("late", up.port)
        response = await pending
    assert response.status_code == 200 and response.json()["body"] == '{"x":1}'
    assert int(response.headers["x-kaon-cold-start-ms"]) >= 250
    assert router.waiting == 0
    await router.close()


@run_async
async def test_cold_start_timeout_is_a_503_that_names_the_fix():
    router = await started_router(cold_start_timeout_s=0.2)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert "no replica of 'test' became ready within 0.2 s" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "5"
    await router.close()


@run_async
async def test_unroutable_replica_gets_nothing_and_request_ids_pass_through():
    a, b = await Upstream("a").start(), await Upstream("b").start()
    router = await started_router()
    router.add_replica("a", a.port)
    router.add_replica("b", b.port, routable=False)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        responses = [await client.get("/x", headers={"x-request-id": f"id-{i}"}) for i in range(5)]
    assert b.seen == [] and len(a.seen) == 5
    assert [r.json()["request_id"] for r in responses] == [f"id-{i}" for i in range(5)]
    await router.close()


@run_async
async def test_take_load_reports_arrivals_latency_and_average_in_flight():
    up = await Upstream("a").start()
    now = [0.0]
    router = await started_router(clock=lambda: now[0])
    router.add_replica("a", up.port)
    router.take_load()
    # two requests held 1 s each (clock advanced by hand), over a 2 s window: 1 in flight on average
    request = HttpMessage(method="GET", url="/x", headers=[], body=b"")

    async def timed() -> None:
        router._change_in_flight(+1)
        now[0] += 1.0
        router._change_in_flight(-1)

    await timed()
    await timed()
    await router.handle(request)
    load = router.take_load()
    assert load.window_s == pytest.approx(2.0)
    assert load.in_flight == pytest.approx(1.0)
    assert load.arrivals == 1 and load.completed == 1 and load.failed == 0
    assert router.take_load().arrivals == 0
    await router.close()


@run_async
async def test_head_and_keep_alive_connections_are_reused():
    up = await Upstream("a").start()
    router = await started_router()
    router.add_replica("a", up.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        head = await client.head("/x")
        again = [await client.get("/y") for _ in range(3)]
    assert head.status_code == 200 and head.content == b""
    assert all(r.status_code == 200 for r in again)
    assert len(router._replicas["a"].pool) == 1  # one upstream connection served them all
    await router.close()


@run_async
async def test_garbage_is_a_400():
    router = await started_router()
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    writer.write(b"NOT HTTP\r\n\r\n")
    data = await reader.read(1000)
    assert data.startswith(b"HTTP/1.1 400")
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == "malformed_request"
    writer.close()
    await router.close()


@run_async
async def test_a_request_whose_only_replica_died_waits_for_its_restart():
    dying = await Upstream("dying").start()
    router = await started_router()
    router.add_replica("0.0", dying.port)
    restarted = await Upstream("restarted", drops_die=False).start()

    async def restart_later() -> None:
        await asyncio.sleep(0.4)
        router.remove_replica("0.0")  # the supervisor saw it die...
        router.add_replica("0.1", restarted.port)  # ...and its successor is ready

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as client:
        restart = asyncio.create_task(restart_later())
        response = await client.post("/die", json={})  # kills the connection on the only replica
        await restart
    assert response.status_code == 200 and response.json()["replica"] == "restarted"
    await router.close()


@run_async
async def test_a_body_over_the_limit_is_a_413_with_kaons_error_envelope():
    up = await Upstream("a").start()
    router = await started_router(max_body_bytes=1024)
    router.add_replica("a", up.port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as client:
        response = await client.post("/predict", content=b"x" * 4096)
    assert response.status_code == 413 and response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "payload_too_large" and "1024 bytes" in error["message"]
    assert up.seen == []
    await router.close()


@run_async
async def test_while_replicas_fail_to_start_a_request_gets_a_503_at_once_not_a_cold_start_wait():
    router = await started_router(cold_start_timeout_s=30)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=10) as client:
        waiting = asyncio.create_task(client.post("/predict", json={}))  # arrived before the crash loop was seen
        await asyncio.sleep(0.2)
        router.set_failing("replica 0 exited with 1 while starting, 2 times in a row", retry_after_s=2.0)
        early = await asyncio.wait_for(waiting, 2)
        started = asyncio.get_running_loop().time()
        late = await client.post("/predict", json={})
        assert asyncio.get_running_loop().time() - started < 1
        for response in (early, late):
            assert response.status_code == 503 and response.headers["retry-after"] == "2"
            error = response.json()["error"]
            assert error["code"] == "replicas_failing" and "kaon logs test" in error["message"]
            assert "exited with 1 while starting" in error["message"]
        up = await Upstream("fixed").start()
        router.add_replica("0.3", up.port)  # a replica is ready again: requests are served
        assert (await client.post("/predict", json={})).status_code == 200
        router.set_failing(None)
        router.remove_replica("0.3")
        pending = asyncio.create_task(client.post("/predict", json={}))  # cold start: it waits again
        await asyncio.sleep(0.3)
        assert not pending.done()
        router.add_replica("0.4", up.port)
        assert (await pending).status_code == 200
    await router.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes, bool]:
    """One response off a raw connection: status, headers, body, and whether the router closed it after."""
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).decode()
    lines = head.split("\r\n")[:-2]
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines[1:])}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 3)
    closed = await asyncio.wait_for(reader.read(1), 3) == b"" if headers.get("connection") == "close" else False
    return int(lines[0].split()[1]), headers, body, closed


@run_async
async def test_a_client_that_stalls_mid_request_gets_a_408_and_others_are_served_meanwhile():
    """A request must arrive in full, headers and body, within read_timeout_s of its first byte: a client that
    stalls in its headers, trickles them a line at a time (slowloris) or stalls mid-body held a router connection
    forever. Each now gets a 408 in kaon's envelope and the connection closes; the replica never sees them, other
    clients are served meanwhile, and a request that takes a while but arrives in time is served as usual."""
    up = await Upstream("a").start()
    router = await started_router(read_timeout_s=0.5)
    router.add_replica("a", up.port)
    loop = asyncio.get_running_loop()
    request = b'POST /stalled HTTP/1.1\r\nhost: x\r\nx-request-id: mine-3\r\ncontent-length: 11\r\n\r\n{"xs": [1]}'
    cuts = {"request line": 14, "headers": request.index(b"content-length"), "body": len(request) - 4,
            "a line at a time": request.index(b"content-length")}
    since = loop.time()

    async def stalled(cut: int, trickle: bool) -> tuple[int, dict[str, str], bytes, bool, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(request[:cut])
        answered = asyncio.create_task(_response(reader))
        while trickle and not answered.done():
            await asyncio.wait([answered], timeout=0.15)
            writer.write(b"x-more: 1\r\n")
        result = await answered
        writer.close()
        return (*result, loop.time() - since)

    stalls = {name: asyncio.create_task(stalled(cut, name == "a line at a time")) for name, cut in cuts.items()}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", timeout=5) as client:
        assert (await client.post("/other", json={})).status_code == 200
    reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
    slow = request.replace(b"/stalled", b"/slow-client")
    for start in range(0, len(slow), len(slow) // 3 + 1):  # three pieces over 0.3 s: in time
        writer.write(slow[start:start + len(slow) // 3 + 1])
        await asyncio.sleep(0.1)
    status, headers, body, closed = await _response(reader)
    assert (status, json.loads(body)["body"], closed) == (200, '{"xs": [1]}', False)
    writer.close()
    for name, stall in stalls.items():
        status, headers, body, closed, after_s = await stall
        error = json.loads(body)["error"]
        assert status == 408 and closed and 0.45 <= after_s <= 1.5, (name, status, after_s)
        assert headers["content-type"] == "application/json" and error["code"] == "request_timeout", name
        part = "body" if name == "body" else "headers"
        assert f"request's {part} did not arrive within 0.5 s" in error["message"], (name, error)
    assert up.seen == ["/other", "/slow-client"]
    await router.close()
    await up.close()


@run_async
async def test_a_connection_idle_for_keep_alive_s_is_closed_before_its_first_request_too():
    """A connection that never sends a request held a router connection (a file descriptor) forever. Idle for
    keep_alive_s, before its first request or after an answer, it is closed; one in use is not."""
    up = await Upstream("a").start()
    router = await started_router(keep_alive_s=0.3)
    router.add_replica("a", up.port)
    loop = asyncio.get_running_loop()
    opened_at = loop.time()
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", router.port)
    used_reader, used = await asyncio.open_connection("127.0.0.1", router.port)
    silent_closed = asyncio.create_task(asyncio.wait_for(silent_reader.read(1), 3))
    await asyncio.sleep(0.2)
    used.write(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n")  # its first request, within the time
    assert (await _response(used_reader))[0] == 200
    answered_at = loop.time()
    assert await silent_closed == b"" and 0.25 <= loop.time() - opened_at <= 0.6  # nothing written, closed
    assert await asyncio.wait_for(used_reader.read(1), 3) == b""
    assert 0.25 <= loop.time() - answered_at <= 0.6  # idle from its answer on
    silent.close()
    used.close()
    await router.close()
    await up.close()


def test_the_control_plane_api_bounds_a_request_and_an_idle_connection_too(kaon_home):
    """The control plane's API read each request without a time bound, like the router: a client that stalled
    or never sent held a connection forever. Same reader, same bounds (short here)."""
    from kaon.cluster.controlplane import ControlPlane
    from kaon.cluster.placement import Node
    from tests.servers import free_port

    async def scenario() -> None:
        plane = ControlPlane(port=free_port(), node=Node("here", cpus=2.0, memory_mb=1024))
        plane.read_timeout_s, plane.keep_alive_s = 0.4, 0.6
        await plane.start()
        try:
            loop = asyncio.get_running_loop()
            stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", plane.port)
            silent_reader, silent = await asyncio.open_connection("127.0.0.1", plane.port)
            since = loop.time()
            stalled.write(b"GET /v1/deployments HTTP/1.1\r\nhost: x\r\n")  # headers never finish
            status, _, body, closed = await asyncio.wait_for(_response(stalled_reader), 3)
            assert (status, json.loads(body)["error"]["code"], closed) == (408, "request_timeout", True)
            assert 0.35 <= loop.time() - since <= 1.5
            assert await asyncio.wait_for(silent_reader.read(1), 3) == b""  # closed, idle since it opened
            assert 0.55 <= loop.time() - since <= 2.0
            async with httpx.AsyncClient(base_url=plane.url, timeout=5) as client:  # the API still answers
                answer = await client.get("/v1/deployments", headers={"authorization": f"Bearer {plane.token}"})
                assert answer.status_code == 200
            stalled.close()
            silent.close()
        finally:
            await plane.close()

    asyncio.run(scenario())
