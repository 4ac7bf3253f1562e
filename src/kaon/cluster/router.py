"""The local backend's router: one port in front of a deployment's replicas.

- Least outstanding requests: each request goes to the routable replica with the fewest requests in
  flight through this router (ties broken at random), which follows slow and fast replicas better
  than round robin and needs no feedback from them.
- Retry: a request whose replica fails before answering (connection refused or reset: the replica
  died or is stopping) is sent again to another replica when it is idempotent, which kaon's
  inference routes are (POST /predict computes, it does not change state). A replica that answered
  slowly is never retried (504): the request may still be running there.
- Cold start: with no replica ready (scaled to zero, or all restarting) a request waits, up to
  `cold_start_timeout_s`, and `on_demand` tells the autoscaler at once instead of at its next tick.
  Unless the replicas keep failing at start-up (the supervisor calls `set_failing`): then, while none is
  ready, a request gets a 503 `replicas_failing` at once, with Retry-After, instead of waiting in vain.
- Load: in-flight requests integrated over time, arrivals and latencies, read and reset by the
  autoscaler with `take_load()` every step.
- Slow clients: a request must arrive in full, headers and body, within `read_timeout_s` of its first byte
  (else a 408 and the connection closes), and a connection idle for `keep_alive_s`, before its first request
  too, is closed, as a replica does: a client that stalls or never sends does not hold a connection forever.

Bench: bench/scaling.py compares this router with SO_REUSEPORT replicas (see BENCHMARKS.md (scaling)).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kaon.cluster._http import (
    HttpError,
    HttpMessage,
    MessageReader,
    bad_request_response,
    error_body,
    render_request,
    render_response,
)
from kaon.errors import EndpointTimeoutError, KaonError, OverloadedError

log = logging.getLogger("kaon.cluster.router")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# An idle pooled connection older than this is dropped: uvicorn closes idle keep-alives after 5 s.
_POOL_IDLE_S = 4.0
_MAX_POOLED = 64


class ReplicasFailingError(OverloadedError):
    """No replica is ready and they keep failing at start-up: a 503 at once (a cold start would not come)."""

    code = "replicas_failing"


class _UpstreamFailed(Exception):
    """The replica did not answer: nothing of a response arrived, so the request may be retried."""


@dataclass
class ReplicaEndpoint:
    """One replica as the router sees it."""

    key: str
    host: str
    port: int
    routable: bool = True
    outstanding: int = 0
    served: int = 0
    failures: int = 0
    pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, MessageReader, float]] = field(default_factory=list)


@dataclass(frozen=True)
class RouterLoad:
    """What the router saw since the last `take_load()`."""

    window_s: float
    in_flight: float  # average requests in flight (at replicas or waiting for one) over the window
    arrivals: int
    completed: int
    latency_s: float | None  # mean over the completed ones
    waiting: int  # requests waiting for a replica right now (cold start)
    failed: int  # requests answered with a 5xx by the router itself


class Router:
    """An asyncio reverse proxy with least-outstanding-requests balancing and retries."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, *, retries: int = 2,
                 retry_post: bool = True, cold_start_timeout_s: float = 120.0, request_timeout_s: float = 60.0,
                 restart_wait_s: float = 15.0, read_timeout_s: float = 60.0, keep_alive_s: float = 5.0,
                 max_body_bytes: int = 64 * 1024 * 1024, on_demand: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.retries = retries
        self.retry_post = retry_post
        self.cold_start_timeout_s = cold_start_timeout_s
        self.request_timeout_s = request_timeout_s
        self.restart_wait_s = restart_wait_s  # a request every replica failed waits this long for a restarted one
        self.read_timeout_s = read_timeout_s  # a client's request arrives in full within this of its first byte
        self.keep_alive_s = keep_alive_s  # a client connection idle this long is closed (uvicorn's default too)
        self.max_body_bytes = max_body_bytes
        self.on_demand = on_demand
        self._clock = clock
        self._replicas: dict[str, ReplicaEndpoint] = {}
        self._id_prefix = uuid.uuid4().hex[:8] + "-"  # request ids: unique per router, cheap per request
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Condition | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.failing: str | None = None  # why the replicas fail to start, while they do (set_failing)
        self._failing_retry_after_s = 5.0
        # load accounting
        self._in_flight = 0
        self._waiting = 0
        self._area = 0.0
        self._mark_t = clock()
        self._window_start = self._mark_t
        self._arrivals = 0
        self._completed = 0
        self._latency_sum = 0.0
        self._failed = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen; returns the port (useful with port=0)."""
        self._changed = asyncio.Condition()
        self._server = await asyncio.start_server(self._serve_client, self.host, self.port, backlog=1024,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        for replica in self._replicas.values():
            _close_pool(replica)

    # ---- replicas ----------------------------------------------------------------------------

    def add_replica(self, key: str, port: int, host: str = "127.0.0.1", *, routable: bool = True) -> None:
        self._replicas[key] = ReplicaEndpoint(key, host, port, routable=routable)
        if routable:
            self._notify()

    def set_routable(self, key: str, routable: bool) -> None:
        replica = self._replicas.get(key)
        if replica is not None and replica.routable != routable:
            replica.routable = routable
            if routable:
                self._notify()

    def remove_replica(self, key: str) -> None:
        replica = self._replicas.pop(key, None)
        if replica is not None:
            replica.routable = False
            _close_pool(replica)

    def set_failing(self, reason: str | None, *, retry_after_s: float = 5.0) -> None:
        """The replicas keep failing at start-up (`reason`, e.g. 'replica 0 exited with 1 while starting, 2 times
        in a row'), or no longer (None). While failing and no replica is routable, requests are answered 503 at
        once, those waiting for a replica included."""
        self.failing = reason
        self._failing_retry_after_s = retry_after_s
        if reason is not None:
            self._notify()

    def _failing_fast(self) -> bool:
        return self.failing is not None and not any(r.routable for r in self._replicas.values())

    def _failing_error(self) -> ReplicasFailingError:
        return ReplicasFailingError(
            f"no replica of '{self.name}' is ready and they fail to start ({self.failing}). See why with "
            f"`kaon logs {self.name}`; fix the target and deploy again, or kaon stop {self.name}.",
            retry_after_s=self._failing_retry_after_s)

    def outstanding(self, key: str) -> int:
        replica = self._replicas.get(key)
        return replica.outstanding if replica else 0

    def replica_stats(self) -> dict[str, dict[str, int | bool]]:
        return {key: {"in_flight": r.outstanding, "served": r.served, "failures": r.failures,
                      "routable": r.routable} for key, r in self._replicas.items()}

    @property
    def waiting(self) -> int:
        return self._waiting

    def take_load(self) -> RouterLoad:
        """The load since the last call (the autoscaler calls this once per step)."""
        now = self._clock()
        self._mark(now)
        window = max(now - self._window_start, 1e-9)
        load = RouterLoad(
            window_s=window, in_flight=self._area / window, arrivals=self._arrivals, completed=self._completed,
            latency_s=self._latency_sum / self._completed if self._completed else None, waiting=self._waiting,
            failed=self._failed,
        )
        self._window_start, self._area = now, 0.0
        self._arrivals = self._completed = self._failed = 0
        self._latency_sum = 0.0
        return load

    # ---- requests ----------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        messages = MessageReader(reader, max_body_bytes=self.max_body_bytes, read_timeout_s=self.read_timeout_s,
                                 keep_alive_s=self.keep_alive_s)
        try:
            while True:
                try:
                    request = await messages.next()
                except HttpError as exc:
                    writer.write(bad_request_response(exc, too_large_advice=(
                        "Send fewer or smaller inputs per request, or compress images as PNG/JPEG; the limit is "
                        "the deployment's serve.max_body_bytes (a little more at the router)."), timeout_advice=(
                        "Send each request whole, or raise the deployment's serve.read_timeout_s for slow uploads.")))
                    break
                if request is None:
                    break
                response = await self.handle(request)
                if writer.is_closing():  # the client left while its request was served
                    break
                writer.write(response)
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, RuntimeError):  # uvloop: a closed transport
            pass
        except asyncio.CancelledError:
            # The loop is closing (kaon down). Nothing awaits this task, and Python 3.11's asyncio logs a
            # cancelled connection handler as an error with its traceback: the connection just ends here.
            pass
        finally:
            messages.close()
            self._clients.discard(writer)
            writer.close()

    async def handle(self, request: HttpMessage) -> bytes:
        """Forward one request and return the bytes of the response to send back."""
        started = self._clock()
        self._arrivals += 1
        self._change_in_flight(+1)
        given = request.header(b"x-request-id")
        request_id = given.decode("latin-1") if given else f"{self._id_prefix}{next(self._ids):x}"
        tried: set[str] = set()
        waited_s = 0.0
        try:
            while True:
                replica = self._pick(tried)
                if replica is None:
                    if len(tried) > self.retries:
                        return self._fail(request, OverloadedError(
                            f"every replica of '{self.name}' failed this request "
                            f"({len(tried)} tried); retry it, and check `kaon logs {self.name}`.",
                            retry_after_s=1.0), request_id)
                    # No replica, or every one failed this request: wait for one that has not (a cold
                    # start, or the restart of a replica that died) - briefly when some are up.
                    tried_all = any(r.routable for r in self._replicas.values())
                    wait_started = self._clock()
                    replica = await self._wait_for_replica(
                        tried, timeout_s=min(self.cold_start_timeout_s, self.restart_wait_s) if tried_all else None)
                    waited_s += self._clock() - wait_started
                    if replica is None and tried_all:
                        return self._fail(request, OverloadedError(
                            f"every replica of '{self.name}' failed this request "
                            f"({len(tried)} tried); retry it, and check `kaon logs {self.name}`.",
                            retry_after_s=1.0), request_id)
                    if replica is None and self._failing_fast():
                        return self._fail(request, self._failing_error(), request_id)
                    if replica is None:
                        return self._fail(request, OverloadedError(
                            f"no replica of '{self.name}' became ready within {self.cold_start_timeout_s:g} s "
                            f"(cold start). See `kaon status {self.name}` and `kaon logs {self.name}`.",
                            retry_after_s=5.0), request_id)
                try:
                    response = await self._forward(replica, request, request_id)
                except _UpstreamFailed as exc:
                    tried.add(replica.key)
                    log.info("request %s failed on replica %s (%s)", request_id, replica.key, exc)
                    if self._retryable(request) and len(tried) <= self.retries:
                        continue
                    return self._fail(request, OverloadedError(
                        f"replica {replica.key} of '{self.name}' failed before answering ({exc}) and the request "
                        "cannot be retried; send it again.", retry_after_s=1.0), request_id)
                except asyncio.TimeoutError:
                    return self._fail(request, EndpointTimeoutError(
                        f"replica {replica.key} of '{self.name}' did not answer within {self.request_timeout_s:g} s."
                    ), request_id)
                self._completed += 1
                self._latency_sum += self._clock() - started
                extra = [(b"x-kaon-replica", replica.key.encode())]
                if waited_s > 0:
                    extra.append((b"x-kaon-cold-start-ms", f"{waited_s * 1000:.0f}".encode()))
                return render_response(response.status, response.headers, response.body,
                                       keep_alive=request.keep_alive, extra=extra)
        finally:
            self._change_in_flight(-1)

    def _retryable(self, request: HttpMessage) -> bool:
        return request.method in IDEMPOTENT_METHODS or (self.retry_post and request.method == "POST")

    def _pick(self, tried: set[str]) -> ReplicaEndpoint | None:
        best: list[ReplicaEndpoint] = []
        low = None
        for replica in self._replicas.values():
            if not replica.routable or replica.key in tried:
                continue
            if low is None or replica.outstanding < low:
                low, best = replica.outstanding, [replica]
            elif replica.outstanding == low:
                best.append(replica)
        if not best:
            return None
        return best[0] if len(best) == 1 else random.choice(best)

    async def _wait_for_replica(self, tried: set[str], timeout_s: float | None = None) -> ReplicaEndpoint | None:
        assert self._changed is not None
        self._waiting += 1
        try:
            if self.on_demand is not None:
                self.on_demand()
            deadline = self._clock() + (self.cold_start_timeout_s if timeout_s is None else timeout_s)
            async with self._changed:
                while True:
                    replica = self._pick(tried)
                    if replica is not None:
                        return replica
                    remaining = deadline - self._clock()
                    if remaining <= 0 or self._failing_fast():  # failing: no cold start is coming
                        return None
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), remaining)
        finally:
            self._waiting -= 1

    async def _forward(self, replica: ReplicaEndpoint, request: HttpMessage, request_id: str) -> HttpMessage:
        extra = [] if request.header(b"x-request-id") else [(b"x-request-id", request_id.encode())]
        payload = render_request(request, f"{replica.host}:{replica.port}", extra=extra)
        replica.outstanding += 1
        try:
            for attempt in range(2):
                pooled = attempt == 0 and self._pooled(replica)
                if pooled:
                    up_reader, up_writer, messages, _ = pooled
                else:
                    try:
                        up_reader, up_writer = await asyncio.wait_for(
                            asyncio.open_connection(replica.host, replica.port), 5.0)
                    except (OSError, asyncio.TimeoutError) as exc:
                        replica.failures += 1
                        raise _UpstreamFailed(f"connect: {exc}") from exc
                    messages = MessageReader(up_reader, response=True, max_body_bytes=self.max_body_bytes)
                # A timer, not asyncio.wait_for: no task per request (this is the hot path).
                expired: list[bool] = []
                timer = asyncio.get_running_loop().call_later(
                    self.request_timeout_s, _expire, up_writer, expired)
                try:
                    up_writer.write(payload)
                    await up_writer.drain()
                    response = await messages.next(head_only=request.method == "HEAD")
                except (OSError, HttpError) as exc:
                    up_writer.close()
                    if expired:
                        raise asyncio.TimeoutError from exc
                    if pooled and not messages.received_any:
                        continue  # a stale keep-alive connection: once more on a fresh one
                    replica.failures += 1
                    raise _UpstreamFailed(str(exc) or type(exc).__name__) from exc
                finally:
                    timer.cancel()
                if response is None:
                    up_writer.close()
                    if expired:
                        raise asyncio.TimeoutError
                    if pooled:
                        continue
                    replica.failures += 1
                    raise _UpstreamFailed("connection closed before a response")
                replica.served += 1
                if response.keep_alive and len(replica.pool) < _MAX_POOLED and replica.key in self._replicas:
                    replica.pool.append((up_reader, up_writer, messages, self._clock()))
                else:
                    up_writer.close()
                return response
            raise _UpstreamFailed("no connection")
        finally:
            replica.outstanding -= 1

    def _pooled(self, replica: ReplicaEndpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                                         MessageReader, float] | None:
        now = self._clock()
        while replica.pool:
            entry = replica.pool.pop()
            if now - entry[3] < _POOL_IDLE_S and not entry[1].is_closing() and not entry[0].at_eof():
                return entry
            entry[1].close()
        return None

    def _fail(self, request: HttpMessage, error: KaonError, request_id: str) -> bytes:
        self._failed += 1
        headers = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
        retry_after = getattr(error, "retry_after_s", None)
        if retry_after:
            headers.append((b"retry-after", str(max(1, round(retry_after))).encode()))
        log.warning("%s %s -> %d: %s", request.method, request.path, error.status_code, error.message)
        return render_response(error.status_code, headers, error_body(error, request_id),
                               keep_alive=request.keep_alive)

    # ---- accounting --------------------------------------------------------------------------

    def _mark(self, now: float) -> None:
        self._area += self._in_flight * (now - self._mark_t)
        self._mark_t = now

    def _change_in_flight(self, delta: int) -> None:
        self._mark(self._clock())
        self._in_flight += delta

    def _notify(self) -> None:
        changed = self._changed
        if changed is None:
            return

        async def wake() -> None:
            async with changed:
                changed.notify_all()

        with contextlib.suppress(RuntimeError):  # no running loop: nobody can be waiting
            asyncio.get_running_loop().create_task(wake())


def _expire(writer: asyncio.StreamWriter, expired: list[bool]) -> None:
    """The request timed out: cut the upstream connection, which ends the read waiting on it."""
    expired.append(True)
    writer.transport.abort()


def _close_pool(replica: ReplicaEndpoint) -> None:
    for _, writer, _, _ in replica.pool:
        writer.close()
    replica.pool.clear()
