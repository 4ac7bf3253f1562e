"""A Service as an ASGI app: routing, limits, batching, V2 protocol, metrics, errors.

The hot routes (`POST /<endpoint>`, V2 infer) are dispatched by a dict lookup on (method, path)
straight to their handler; FastAPI is used only to render `/openapi.json` and `/docs` from the
same pydantic models. Every response carries `x-request-id`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, NamedTuple

import orjson
import pydantic
from pydantic_core import PydanticSerializationError

from kaon.config import ServeConfig
from kaon.errors import (
    ConfigError,
    EndpointTimeoutError,
    InvalidInputError,
    KaonError,
    MethodNotAllowedError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
)
from kaon.serving.batcher import Batcher, Deadlines, call_unbatched, check_request_size
from kaon.serving.guards import release_request
from kaon.serving.http import Request, Response, decode_headers, decompressed, error_response
from kaon.serving.metrics import ServerMetrics
from kaon.serving.service import BATCH_ALIAS, EndpointSpec, Service, endpoint_specs, service_name
from kaon.serving.tensors import (
    TensorInfo,
    batch_fast_path,
    is_image_type,
    item_shape_accepted,
    numpy_to_json,
    tensor_info,
)
from kaon.serving.v2 import V2Routes

log = logging.getLogger("kaon.serving")
# orjson writes only what it writes exactly as pydantic does (dicts with str keys, lists, str, int, float, bool,
# None; numpy through numpy_to_json); dataclasses, datetimes and subclasses go to numpy_to_json, which refuses them
_PLAIN_JSON_ONLY = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
# A loose return type, and whether an answer has its shape (one that does not is pydantic's to write, and warn
# of); a list's first row stands for the rest: checking every row would cost each request more than orjson saves
_LOOSE_SHAPES: dict[Any, Callable[[Any], bool]] = {
    Any: lambda result: True,
    list[Any]: lambda result: type(result) is list,
    dict[str, Any]: lambda result: type(result) is dict,
    list[dict[str, Any]]: lambda result: type(result) is list and (not result or type(result[0]) is dict),
}

Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Request], Awaitable[None]]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
LARGE_BODY_BYTES = 256 * 1024


def _timeout_error(name: str, timeout_s: float, batched: bool = True, is_async: bool = False) -> EndpointTimeoutError:
    if batched:
        advice = "Send smaller batches, or raise --timeout-s."
    elif is_async:
        advice = "The call was cancelled; make the endpoint faster, or raise --timeout-s."
    else:
        advice = "The call goes on in its thread until it returns; make the endpoint faster, or raise --timeout-s."
    return EndpointTimeoutError(f"endpoint '{name}' did not answer within {timeout_s:g} s (--timeout-s). {advice}")


class Answer(NamedTuple):
    """A request's response, with what `KaonApp.finish` records once it has been written."""

    response: Response
    request_id: str
    label: str  # the route as metrics name it
    method: str
    path: str
    request: Request | None  # None when the request failed before it was read (e.g. its body was too large)


class EndpointBugError(RuntimeError):
    """A mistake in an endpoint's own code found by kaon: a 500 whose details go to the log, not the body."""


def _label(route: tuple[str, Handler] | None, is_v2: bool) -> str:
    """The route as metrics name it: the route's path, "/v2" for the V2 routes, "other" for the rest."""
    return route[0] if route else ("/v2" if is_v2 else "other")


def answer_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    """A response's own headers, on either path (the security headers are the same on every response)."""
    response = answer.response
    return [(b"content-type", response.content_type), (b"x-request-id", answer.request_id.encode()),
            (b"content-length", str(len(response.body)).encode()), *response.headers]


def _refuse_unbatched_item(data: Any, param: str, info: TensorInfo) -> None:
    """One input sent without its batch axis (`{"inputs": [13 numbers]}` for items of shape (13,), or one image)
    fails each of its rows as an item: one error that says so, instead of a "Received: shape []" per row. Only
    when its rows are not items themselves (a batch of (H, W) images with a bad value is that value's error)."""
    items = data.get(param, data.get(BATCH_ALIAS)) if isinstance(data, dict) else None
    got: list[int] = []
    while isinstance(items, list):  # the shape along the first elements: cheap for a body of any size
        got.append(len(items))
        items = items[0] if items else None
    shape = tuple(got)
    if shape and item_shape_accepted(info, shape) and not item_shape_accepted(info, shape[1:]):
        field = param if param in data else BATCH_ALIAS
        raise InvalidInputError(
            f"'{field}' is a list of inputs, each of shape {list(info.shape)}. Received: one input of shape "
            f"{list(shape)}, without the batch axis. Send a list of inputs: {{\"{field}\": [...]}} around it (a batch "
            f"of one).",
            fields=[{"name": field, "expected": f"a list of arrays of shape {list(info.shape)}",
                     "received": f"an array of shape {list(shape)}"}],
        )


def _client_request_id(value: str | None) -> str | None:
    """A client's own x-request-id, echoed and logged only when it is short printable ASCII."""
    if value and len(value) <= 128 and value.isascii() and value.isprintable():
        return value
    return None


def _threads() -> int:
    return max(4, os.cpu_count() or 1)


def _depth_of(batcher: Batcher) -> Callable[[], float]:
    return lambda: float(batcher.queue_depth)


class KaonApp:
    """The ASGI application for one Service instance."""

    def __init__(self, service: Service | type[Service], config: ServeConfig | None = None,
                 guards: list[Guard] | None = None) -> None:
        self.config = config or ServeConfig()
        self.service = service() if isinstance(service, type) else service
        self.name = service_name(type(self.service))
        self.specs = endpoint_specs(type(self.service), self.config.max_batch_size, self.config.max_wait_ms)
        self.guards = guards or []
        # A guard with a synchronous check (kaon's own) is called without a coroutine per request.
        self._checks = [getattr(guard, "check", guard) for guard in self.guards]
        from kaon.security.headers import security_headers

        self._security_headers = security_headers(tls=bool(self.config.tls_cert))
        self.security_header_lines = b"".join(name + b": " + value + b"\r\n" for name, value in self._security_headers)
        self.metrics = ServerMetrics()
        self.ready = False
        self.in_flight = 0  # a plain int read by the gauge: a locked Gauge.inc per request costs more
        self.metrics.gauge_function(self.metrics.in_flight, lambda: float(self.in_flight))
        self._id_prefix = os.urandom(4).hex()  # request ids: a per-process prefix and a counter, no uuid4 per request
        self._ids = itertools.count(1)
        self.batchers: dict[str, Batcher] = {}
        self._deadlines: list[Deadlines] = []
        self._batcher_by_path: dict[str, Batcher] = {}
        self._executor = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="kaon")
        self._endpoint_executors: list[ThreadPoolExecutor] = []
        self._v2: V2Routes | None = None
        self.observers: Any = None  # request log + drift/outlier monitor, fed off the hot path
        self._docs_app: Any = None
        # Set by `kaon serve` (kaon.serving.server) for a single process: the lifespan starts the app in the
        # background, so the port answers /healthz (200) and /readyz (503 "starting") while setup() loads a model;
        # then one of the callbacks. Otherwise (a worker of --workers N, whose siblings take the traffic meanwhile;
        # another ASGI host such as Ray Serve) setup runs inside the lifespan: nothing is accepted before it is
        # done, and a setup that fails is reported to the host as lifespan.startup.failed.
        self.background_setup = False
        self.on_ready: Callable[[], None] | None = None
        self.on_setup_failed: Callable[[BaseException], None] | None = None
        self.setup_error: BaseException | None = None
        self._starting: asyncio.Task[None] | None = None
        self._set_up = False
        self.routes: dict[tuple[str, str], tuple[str, Handler]] = {
            ("GET", "/healthz"): ("/healthz", self._healthz),
            ("GET", "/readyz"): ("/readyz", self._readyz),
            ("GET", "/metrics"): ("/metrics", self._metrics),
            ("GET", "/"): ("/", self._index),
        }
        for spec in self.specs:
            self.routes[("POST", spec.path)] = (spec.path, self._endpoint_handler(spec))

    # lifecycle -------------------------------------------------------------------------------

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.service.setup)
        self._set_up = True
        for spec in self.specs:  # `self.predict = kaon.load(...)` in setup() would hide the endpoint: every call a 500
            bound = vars(self.service).get(spec.method_name)  # a wrapper that setup() put there is the user's choice
            if bound is not None and not callable(bound):
                raise ConfigError(
                    f"{type(self.service).__name__}.setup() set self.{spec.method_name} (type "
                    f"{type(bound).__name__}), which hides the endpoint '{spec.method_name}': an attribute and an "
                    f"endpoint share that name. Rename the attribute (for example self.{spec.method_name}_model)."
                )
        warm_up = getattr(self.service, "warm_up", None)
        for spec in self.specs:
            if spec.batched and callable(warm_up):  # e.g. capture CUDA graphs before the first request
                await loop.run_in_executor(self._executor, warm_up, spec.name, spec.max_batch_size)
            if spec.batched:
                method = getattr(self.service, spec.method_name)
                queue_gauge = self.metrics.queue_depth.labels(spec.name)
                batch_hist = self.metrics.batch_size.labels(spec.name)
                self.batchers[spec.name] = Batcher(
                    method, max_batch_size=spec.max_batch_size, max_wait_ms=spec.max_wait_ms,
                    max_queue=self.config.max_queue, is_async=spec.is_async, name=spec.name,
                    on_batch=batch_hist.observe,
                )
                self.metrics.gauge_function(queue_gauge, _depth_of(self.batchers[spec.name]))
                self._batcher_by_path[spec.path] = self.batchers[spec.name]
        # V2 server routes (health, metadata) answer for every Service, one with no models too
        self._v2 = V2Routes(self.service.models, self.config, self.metrics,
                            version=getattr(self.service, "model_version", None))
        for guard in self.guards:
            start = getattr(guard, "start", None)
            if start is not None:
                await start()
        from kaon.serving.observers import build_observers

        self.observers = build_observers(self, self.config)
        if self.observers is not None:
            self.observers.start()
        gc.collect()
        gc.freeze()  # the model and app live for the whole process: keep them out of every GC pass
        self.ready = True

    async def _start_in_background(self) -> None:
        try:
            await self.startup()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported, and the server told to exit (code 1)
            log.error("setup of %s failed: %s", self.name, exc, exc_info=not isinstance(exc, KaonError))
            self.setup_error = exc
            if self.on_setup_failed is not None:
                self.on_setup_failed(exc)
            return
        if self.on_ready is not None:
            self.on_ready()

    async def shutdown(self) -> None:
        self.ready = False
        starting = self._starting
        if starting is not None and not starting.done():  # stopped while setup() runs: do not wait for it
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        if self.observers is not None:
            self.observers.stop()
        for batcher in self.batchers.values():
            await batcher.stop()
        for deadlines in self._deadlines:
            deadlines.close()
        if self._v2 is not None:
            await self._v2.stop()
        try:
            if self._set_up:  # teardown undoes setup; a setup that never finished has nothing to undo
                self.service.teardown()
        except Exception:  # noqa: BLE001 - a failing teardown must not hide the shutdown
            log.exception("teardown of %s failed", self.name)
        for executor in (self._executor, *self._endpoint_executors):
            executor.shutdown(wait=False)

    # ASGI --------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.background_setup:  # the server accepts at once, answering 503 "starting" until set up
                    self._starting = asyncio.create_task(self._start_in_background())
                    await send({"type": "lifespan.startup.complete"})
                    continue
                try:
                    await self.startup()
                except BaseException as exc:  # noqa: BLE001 - reported to the host, which exits
                    log.error("setup of %s failed: %s", self.name, exc, exc_info=not isinstance(exc, KaonError))
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
                if self.on_ready is not None:
                    self.on_ready()
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        headers = decode_headers(scope["headers"])
        client = scope.get("client")
        answer = await self.answer(scope["method"], scope["path"], headers, None,
                                   scope.get("query_string", b"").decode(), client[0] if client else None,
                                   receive=receive, docs=(scope, send))
        if answer is None:  # FastAPI served the docs itself
            return
        await send({"type": "http.response.start", "status": answer.response.status,
                    "headers": [*answer_headers(answer), *self._security_headers]})
        await send({"type": "http.response.body", "body": answer.response.body})
        self.finish(answer, started)

    def announce(self, method: str, path: str) -> Batcher | None:
        """Count a request as on its way in to its batcher (which then waits for it before flushing a batch)
        while its body arrives; `answer(..., announced=)` settles the count. None: no batcher for it."""
        batcher = self._batcher_by_path.get(path) if method == "POST" else None
        if batcher is not None:
            batcher.arriving()
        return batcher

    async def answer(self, method: str, path: str, headers: dict[str, str], body: bytes | None, query: str = "",
                     client: str | None = None, *, receive: Any = None,
                     docs: tuple[dict[str, Any], Any] | None = None,
                     announced: Batcher | None = None) -> Answer | None:
        """The response to one request: auth, routing, the endpoint, errors mapped to responses. `body` is the
        whole body, or None to read it with the ASGI `receive`. None back: the docs app answered (`docs`).
        `announced`: the batcher `announce` already counted this request at (else it is counted here)."""
        request_id = _client_request_id(headers.get("x-request-id")) or self._next_request_id()
        route = self.routes.get((method, path))
        if route is None and method == "HEAD":  # a GET route's headers (the server leaves the body out)
            route = self.routes.get(("GET", path))
        is_v2 = path.startswith("/v2")
        label = _label(route, is_v2)
        self.in_flight += 1
        arriving = announced if announced is not None else self.announce(method, path)
        request = None
        try:
            if body is None:
                body = await self._read_body(headers, receive)
            encoding = headers.get("content-encoding")
            if encoding is not None and encoding != "identity":
                body = decompressed(body, encoding, self.config.max_body_bytes)
            request = Request(method, path, headers, body, request_id, query, client=client, arriving=arriving)
            for check in self._checks:
                pending = check(request)
                if pending is not None:
                    await pending
            if route is not None:
                response = await route[1](request)
            elif is_v2 and self._v2 is not None:
                response = await self._v2.handle(request)
            elif is_v2 and not self.ready:  # the V2 routes exist once setup() is done
                if path == "/v2/health/live":
                    response = Response.json({"live": True})
                else:
                    raise OverloadedError("the service is still starting; retry shortly.", retry_after_s=1)
            elif docs is not None and self._is_docs(path):
                await self._docs(docs[0], body, docs[1], request_id)
                return None
            else:
                response = self._not_found(request)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an error response
            if isinstance(exc, asyncio.CancelledError):
                raise
            response = error_response(exc, request_id, v2=is_v2)
        finally:
            if request is not None:
                request.settle_arrival()
                release_request(request)  # a per-token concurrency slot, when auth took one
            elif arriving is not None:
                arriving.arrived()
            self.in_flight -= 1
        observers = self.observers
        if observers is not None and request is not None:
            annotating = observers.annotate(request, response)
            if annotating is not None:
                await annotating
        return Answer(response, request_id, label, method, path, request)

    def failed_answer(self, method: str, path: str, exc: BaseException,
                      headers: dict[str, str] | None = None) -> Answer:
        """The error answer for a request `answer` did not answer: the 500 for one it failed on itself (a bug,
        logged with its trace and request id), or the server's 408 for a body that did not arrive in time.
        `headers`: the request's, when they are known (a client's own x-request-id is echoed)."""
        sent = headers.get("x-request-id") if headers else None
        request_id = _client_request_id(sent) or self._next_request_id()
        is_v2 = path.startswith("/v2")
        return Answer(error_response(exc, request_id, v2=is_v2), request_id,
                      _label(self.routes.get((method, path)), is_v2), method, path, None)

    def _next_request_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def finish(self, answer: Answer, started: float) -> None:
        """After the response has been written: metrics, the observers (request log, drift), the log line."""
        elapsed_s = time.perf_counter() - started
        response = answer.response
        self.metrics.observe(answer.label, response.status, elapsed_s)
        observers = self.observers
        if observers is not None and answer.request is not None:
            observers.observe(answer.request, response, elapsed_s)
        if log.isEnabledFor(logging.INFO):  # one line per request, carrying its id (--log-level info)
            log.info("%s %s %d %.1fms request_id=%s", answer.method, answer.path, response.status, elapsed_s * 1000,
                     answer.request_id)

    async def _read_body(self, headers: dict[str, str], receive: Any) -> bytes:
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(
                f"the request body is {declared} bytes; the limit is {limit} bytes (--max-body-bytes). "
                f"Send fewer or smaller inputs per request, or compress images as PNG/JPEG."
            )
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"the request body is over the limit of {limit} bytes (--max-body-bytes)."
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # endpoints ---------------------------------------------------------------------------------

    def _endpoint_handler(self, spec: EndpointSpec) -> Handler:
        adapter = pydantic.TypeAdapter(spec.request_model)
        response_adapter = pydantic.TypeAdapter(spec.return_type)
        image_param = spec.batch_param if spec.item_type is not None and is_image_type(spec.item_type) else None
        timeout_s = self.config.timeout_s
        in_flight = [0]  # unbatched calls running now; bounded by max_queue like a batcher's queue
        max_items = self.config.max_queue
        info = tensor_info(spec.item_type) if spec.item_type is not None else None
        batch_param = spec.batch_param or ""
        fast = (batch_fast_path(batch_param, info)
                if info is not None and batch_param and list(spec.params) == [batch_param] else None)
        deadlines = Deadlines(timeout_s, partial(_timeout_error, spec.name, timeout_s))
        self._deadlines.append(deadlines)
        threads = None
        if not spec.batched and not spec.is_async:
            # its own threads: a call still running past its timeout (a thread cannot be stopped) holds this
            # endpoint's threads, never those the other endpoints and big-body decoding use
            threads = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix=f"kaon-{spec.name}")
            self._endpoint_executors.append(threads)

        def decode(request: Request) -> dict[str, Any]:
            if request.content_type in IMAGE_TYPES:
                if image_param is None:
                    raise InvalidInputError(
                        f"endpoint '{spec.name}' does not take image bodies. Received: Content-Type "
                        f"{request.content_type}. Send JSON: {{{', '.join(repr(p) for p in spec.params)}: ...}}."
                    )
                return {image_param: adapter.validate_python({image_param: [request.body]}).__dict__[image_param]}
            if not request.body:
                raise InvalidInputError(f"the request body is empty. Expected a JSON object with fields "
                                        f"{list(spec.params)}.")
            if spec.batch_param is not None and len(request.body) > LARGE_BODY_BYTES:
                # count the inputs before validating each: millions of bad items would take seconds
                data = request.json()
                items = data.get(spec.batch_param) if isinstance(data, dict) else None
                if info is not None:  # before the count: one long row without its batch axis is not 60,000 inputs
                    _refuse_unbatched_item(data, batch_param, info)
                if isinstance(items, list):  # counted before each is validated: millions would take seconds
                    check_request_size(len(items), max_items, f"inputs in '{spec.batch_param}'")
                model = adapter.validate_python(data)
                return {name: getattr(model, name) for name in spec.params}
            if fast is not None:
                items = fast(request.body)
                if items is not None:
                    return {batch_param: items}
            try:
                model = adapter.validate_json(request.body)
            except pydantic.ValidationError as exc:
                if any(e.get("type") == "json_invalid" for e in exc.errors()):
                    request.json()  # raises MalformedRequestError with the parser's reason
                if info is not None:
                    _refuse_unbatched_item(request.json(), batch_param, info)
                raise
            return {name: getattr(model, name) for name in spec.params}

        # A return type that a value can fail to match is checked: a mismatch (a dict where a model is declared,
        # numpy scalars) is validated into the type, and what still does not match is a 500, never a body that
        # contradicts the schema. list[dict[str, Any]] (what a served model answers) takes anything JSON.
        loose = spec.return_type in (Any, list[Any], dict[str, Any], list[dict[str, Any]])
        shaped = _LOOSE_SHAPES.get(spec.return_type) if loose else None

        def encode(result: Any) -> bytes:
            if shaped is not None and shaped(result):
                # plain JSON values and numpy: orjson writes the same bytes as pydantic in a quarter the time (a value
                # of another shape goes to pydantic, which warns the endpoint's author that it is not the declared type)
                try:
                    return orjson.dumps(result, default=numpy_to_json, option=_PLAIN_JSON_ONLY)
                except orjson.JSONEncodeError:
                    pass  # anything else (a model, a datetime, a huge int): pydantic's rules, as declared
            try:
                return response_adapter.dump_json(result, fallback=numpy_to_json, warnings=True if loose else "error")
            except PydanticSerializationError:
                pass
            try:
                return response_adapter.dump_json(response_adapter.validate_python(result), fallback=numpy_to_json)
            except (pydantic.ValidationError, PydanticSerializationError) as exc:
                raise EndpointBugError(f"endpoint '{spec.name}' returned a value that does not match its return "
                                       f"type {spec.return_type}: {exc}") from exc

        async def handle(request: Request) -> Response:
            if not self.ready:
                raise OverloadedError("the service is still starting; retry shortly.", retry_after_s=1)
            if len(request.body) > LARGE_BODY_BYTES:  # parse big bodies off the event loop: others keep moving
                kwargs = await asyncio.get_running_loop().run_in_executor(self._executor, decode, request)
            else:
                kwargs = decode(request)
            try:
                batcher = self.batchers.get(spec.name)
                if batcher is not None:
                    assert spec.batch_param is not None
                    items = kwargs[spec.batch_param]
                    if not items:
                        return Response(200, b"[]")
                    future = batcher.submit(items)
                    request.settle_arrival()  # queued now: no longer "on its way in"
                    deadlines.add(future)  # fails it with a 504 if it is not answered within --timeout-s
                    result = await future
                else:
                    if in_flight[0] >= self.config.max_queue:
                        raise OverloadedError(
                            f"endpoint '{spec.name}' is already serving {in_flight[0]} requests "
                            f"(max_queue={self.config.max_queue}). Retry after a short wait.", retry_after_s=1.0)
                    in_flight[0] += 1
                    try:
                        method = getattr(self.service, spec.method_name)
                        result = await self._await(
                            call_unbatched(method, spec.is_async, threads or self._executor, kwargs), timeout_s,
                            spec.name, spec.is_async)
                    finally:
                        in_flight[0] -= 1
            except pydantic.ValidationError as exc:  # the endpoint's own code, after the request was valid
                raise EndpointBugError(f"endpoint '{spec.name}' raised a pydantic ValidationError of its own (the "
                                       f"request matched its schema): {exc}") from exc
            return Response(200, encode(result))

        return handle

    async def _await(self, awaitable: Any, timeout_s: float, name: str, is_async: bool = False) -> Any:
        try:
            return await asyncio.wait_for(awaitable, timeout=timeout_s)
        except asyncio.TimeoutError:
            raise _timeout_error(name, timeout_s, batched=False, is_async=is_async) from None

    # operational routes ------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return Response.json({"status": "alive"})

    async def _readyz(self, request: Request) -> Response:
        if self.ready:
            return Response.json({"status": "ready"})
        return Response.json({"status": "starting"}, status=503)

    async def _metrics(self, request: Request) -> Response:
        return Response(200, self.metrics.render(), content_type=self.metrics.content_type.encode())

    async def _index(self, request: Request) -> Response:
        return Response.json({
            "service": self.name,
            "ready": self.ready,
            "endpoints": [{"path": s.path, "batched": s.batched, "max_batch_size": s.max_batch_size}
                          for s in self.specs],
            "models": sorted(self.service.models) if self.ready else [],
            "docs": "/docs",
        })

    def _not_found(self, request: Request) -> Response:
        allowed = sorted(method for (method, path) in self.routes if path == request.path)
        if allowed:
            return error_response(MethodNotAllowedError(
                f"{request.path} does not take {request.method}; it takes {', '.join(allowed)}.",
                allowed=allowed), request.request_id)
        models = self.service.models if self.ready else {}
        known = sorted({p for (_, p) in self.routes} | {"/v2", "/docs", "/openapi.json"}
                       | {f"/v2/models/{name}/infer" for name in models})
        return error_response(NotFoundError(
            f"no route {request.method} {request.path}. Routes: {', '.join(known)}."), request.request_id)

    # docs (FastAPI renders them) ---------------------------------------------------------------

    @staticmethod
    def _is_docs(path: str) -> bool:
        return path in ("/docs", "/openapi.json", "/redoc") or path.startswith("/docs/")

    async def _docs(self, scope: dict[str, Any], body: bytes, send: Any, request_id: str) -> None:
        if self._docs_app is None:
            from kaon.serving.openapi import docs_app

            self._docs_app = docs_app(self)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:  # Starlette listens for a disconnect while it streams a file: none comes, it is cancelled
                await asyncio.Future()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self._docs_app(scope, receive, send)
