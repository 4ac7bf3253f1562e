"""Observers: the request log and the drift/outlier monitor, fed off the hot path.

`observe(request, response, elapsed_s)` is all a request pays: a sampling draw and an append to a
bounded deque (when it is full the request is counted in `kaon_monitor_dropped_total` and not
observed). At most `max_logged_per_s` requests a second are logged (default 100) and at most
`max_monitored_per_s` are monitored (default 100): a 200-input drift window every 2 s, and a bounded
cost however busy the server is (at 200 a second the monitor took ~4% of a busy digits server's CPU).
One thread wakes up every `interval_s` (0.5 s) and drains the deque in batches: it writes the redacted
request log and decodes the inputs of successful predictions to feed the Monitor, which re-runs the
model's feature extractor on them (penultimate-layer embeddings) in batches of up to 256. Large batches,
few wake-ups: the thread rarely competes with serving for the GIL, and a batch of 50 digits costs the
monitor 60-80 us of CPU per input where batches of 10 (a 0.1 s wake-up) cost 150-190 (the feature
extractor's per-call overhead).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pydantic

from kaon.errors import ConfigError, KaonError
from kaon.monitoring import (
    REFERENCE_FILENAME,
    Exchange,
    Monitor,
    MonitorMetrics,
    Redactor,
    Reference,
    RequestLog,
    WebhookSink,
    feature_extractor,
    log_sink,
)
from kaon.serving.guards import principal_of
from kaon.serving.images import as_array
from kaon.serving.service import BATCH_ALIAS
from kaon.serving.tensors import is_image_type
from kaon.serving.workers import WORKER_INDEX_ENV

log = logging.getLogger("kaon.serving")

OUTLIER_HEADER = "x-kaon-outlier"
OUTLIER_SCORE_HEADER = b"x-kaon-outlier-score"
IMAGE_TYPES = ("image/png", "image/jpeg", "image/jpg")
#: Probes and scrapes are not worth a log record each.
UNLOGGED_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
Decoder = Callable[[Any], np.ndarray]


class Observers:
    def __init__(self, *, request_log: RequestLog | None = None, log_sample_rate: float = 1.0,
                 max_logged_per_s: int = 100, monitor_factory: Callable[[], Monitor] | None = None,
                 max_monitored_per_s: int = 100, decoders: dict[str, Decoder] | None = None,
                 metrics: MonitorMetrics | None = None, max_pending: int = 8192, max_batch: int = 256,
                 interval_s: float = 0.5, closers: list[Callable[[], None]] | None = None) -> None:
        if not 0.0 <= log_sample_rate <= 1.0:
            raise ConfigError(f"the request log sample rate must be in [0, 1]. Received: {log_sample_rate!r}")
        self.request_log = request_log
        self.log_sample_rate = log_sample_rate
        self.monitor: Monitor | None = None
        self.decoders = decoders or {}
        self.metrics = metrics
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.interval_s = interval_s
        # At most this many requests a second are logged / monitored: the cost stays bounded however
        # busy the server is (a per-second quota, reset on the first request of each second).
        self.max_logged_per_s = max_logged_per_s
        self.max_monitored_per_s = max_monitored_per_s
        self._second = 0
        self._logged_this_second = 0
        self._monitored_this_second = 0
        self.dropped = 0
        self._monitor_factory = monitor_factory
        self._monitor_wanted = monitor_factory is not None
        self._closers = closers or []
        self._pending: collections.deque[tuple[Any, Any, float, float, bool, bool]] = collections.deque()
        self._random = random.random
        self._stopping = threading.Event()  # set by stop(); wakes the thread at once
        self._disabled_paths: set[str] = set()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()

    # the hot path --------------------------------------------------------------------------------

    def observe(self, request: Any, response: Any, elapsed_s: float) -> None:
        """Queue one finished request for the observer thread. Never blocks, never raises."""
        now_s = time.time()
        second = int(now_s)
        if second != self._second:
            self._second, self._logged_this_second, self._monitored_this_second = second, 0, 0
        log_it = (self.request_log is not None and self._logged_this_second < self.max_logged_per_s
                  and request.path not in UNLOGGED_PATHS
                  and (self.log_sample_rate >= 1.0 or self._random() < self.log_sample_rate))
        monitor_it = (self._monitor_wanted and response.status == 200 and request.method == "POST"
                      and self._monitored_this_second < self.max_monitored_per_s)
        if not (log_it or monitor_it):
            return
        self._logged_this_second += log_it
        self._monitored_this_second += monitor_it
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.dropped.inc()
            return
        self._pending.append((request, response, elapsed_s, now_s, log_it, monitor_it))

    def annotate(self, request: Any, response: Any) -> Awaitable[None] | None:
        """What adds X-Kaon-Outlier-Score to `response` when the request asked for it with X-Kaon-Outlier: 1
        (await it), else None: a request that did not ask costs no coroutine."""
        flag = request.headers.get(OUTLIER_HEADER)
        monitor = self.monitor
        if flag is None or flag.lower() not in ("1", "true", "yes") or response.status != 200 or monitor is None:
            return None
        decoder = self._decoder(request.path)
        if decoder is None:
            return None
        return self._annotate(request, response, monitor, decoder)

    async def _annotate(self, request: Any, response: Any, monitor: Monitor, decoder: Decoder) -> None:
        loop = asyncio.get_running_loop()
        try:
            scores = await loop.run_in_executor(None, lambda: monitor.score(decoder(request)))
        except (KaonError, ValueError, pydantic.ValidationError):
            return
        response.headers.append((OUTLIER_SCORE_HEADER, ",".join(f"{float(s):.3f}" for s in scores).encode()))

    # the observer thread -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kaon-observers", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Observe what is queued (up to `timeout_s`), then close the request log and the alert sinks."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.request_log is not None:
            self.request_log.close()
        for close in self._closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - closing must not fail a shutdown
                log.exception("closing an observer failed")

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """True once the monitor is built (its thresholds calibrated); for tests and benchmarks."""
        return self.ready.wait(timeout_s)

    def _run(self) -> None:
        if self._monitor_factory is not None:
            try:
                self.monitor = self._monitor_factory()
            except Exception:  # noqa: BLE001 - monitoring off, serving on
                log.exception("the drift monitor could not start; requests are served without it")
                self._monitor_wanted = False
            else:
                # The monitor (reference arrays, a copy of the model's graph) lives as long as the server: keep
                # its objects out of every garbage collection, as serving does with the model (gc.freeze).
                gc.collect()
                gc.freeze()
        single_blas = _single_threaded_blas()
        self.ready.set()
        while True:
            # Wake up a few times a second and take everything queued: large batches cost far less per
            # request than small ones, and the thread competes for the GIL with serving rarely.
            if len(self._pending) < self.max_batch:
                if self._stopping.is_set() and not self._pending:
                    return
                self._stopping.wait(self.interval_s)
            while self._pending:
                batch: list[tuple[Any, Any, float, float, bool, bool]] = []
                while self._pending and len(batch) < self.max_batch:
                    batch.append(self._pending.popleft())
                try:
                    with single_blas():
                        self._process(batch)
                except Exception:  # noqa: BLE001 - an observer bug must not stop observing
                    log.exception("observing %d requests failed", len(batch))
                time.sleep(0)  # let the serving threads have the GIL between batches

    def _process(self, batch: list[tuple[Any, Any, float, float, bool, bool]]) -> None:
        if self.request_log is not None:
            exchanges = [_exchange(req, resp, elapsed_s, at_s) for req, resp, elapsed_s, at_s, log_it, _ in batch
                         if log_it]
            if exchanges:
                try:
                    self.request_log.write(exchanges)
                except OSError:  # a full disk, say: drift monitoring goes on
                    log.exception("writing %d records to the request log failed", len(exchanges))
                else:
                    if self.metrics is not None:
                        self.metrics.logged.inc(len(exchanges))
        monitor = self.monitor
        if monitor is None:
            return
        inputs: list[np.ndarray] = []
        for req, _, _, _, _, monitor_it in batch:
            if not monitor_it:
                continue
            decoder = self._decoder(req.path)
            if decoder is None:
                continue
            try:
                x = decoder(req)
            except (KaonError, ValueError, pydantic.ValidationError) as exc:  # this request only
                log.debug("drift monitoring skipped request %s: %s", req.request_id, getattr(exc, "message", exc))
                continue
            if len(x) == 0:  # {"inputs": []}: nothing to watch
                continue
            try:
                inputs.append(monitor.check_input(x))
            except (KaonError, ValueError) as exc:  # the route's inputs are not what the reference describes
                self._disabled_paths.add(req.path)
                log.warning("drift monitoring is off for %s: its inputs do not match the reference (%s)",
                            req.path, getattr(exc, "message", exc))
        if inputs:
            x = np.concatenate(inputs)
            for start in range(0, len(x), 256):
                monitor.observe(x[start:start + 256])

    def _decoder(self, path: str) -> Decoder | None:
        if path in self._disabled_paths:
            return None
        decoder = self.decoders.get(path)
        if decoder is None and path.startswith("/v2/models/") and path.endswith("/infer"):
            decoder = self.decoders.get("/v2/infer")
        return decoder


def _single_threaded_blas() -> Callable[[], Any]:
    """BLAS on one thread while the observer works: the detectors' small matrix products are faster so, and a
    multi-threaded BLAS spinning beside the serving threads on a busy machine costs them ~10x its own work."""
    import contextlib

    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, BLAS keeps its own setting
        return contextlib.nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")


def _exchange(request: Any, response: Any, elapsed_s: float, at_s: float) -> Exchange:
    principal = principal_of(request)
    content_type = response.content_type
    return Exchange(
        request_id=request.request_id, method=request.method, path=request.path, status=response.status,
        latency_ms=elapsed_s * 1000.0, request_body=request.body, response_body=response.body,
        request_headers=request.headers,
        response_content_type=content_type.decode() if isinstance(content_type, bytes) else str(content_type),
        client=request.client, token_name=principal.name if principal is not None else None, time_s=at_s,
    )


# building them for an app ------------------------------------------------------------------------

def check_observer_settings(config: Any) -> None:
    """Files the monitoring flags name must be usable before the server starts: they failed after its banner,
    as a failed model setup."""
    if config.request_log:
        path = Path(config.request_log)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))  # request bodies: owner only
        except OSError as exc:
            raise ConfigError(f"the request log {str(path)!r} cannot be written: {exc.strerror or exc}. "
                              "Pick a writable path for --request-log.") from exc
    if config.drift_reference and not Path(config.drift_reference).is_file():
        raise ConfigError(f"--drift-reference {config.drift_reference!r} is not a file. Pass a reference.npz "
                          "written by kaon.monitoring.fit_reference (or kaon.register(..., reference_data=x)).")
    if config.alert_webhook and not config.monitor:
        log.warning("--alert-webhook is ignored: --no-monitor turns drift alerts off")


def find_reference(service: Any) -> Path | None:
    """`reference.npz` registered with the served model's version, materialized and hash-checked."""
    for model in (getattr(service, "models", None) or {}).values():
        record = getattr(model, "version", None)
        files = getattr(record, "files", None) or {}
        if record is not None and REFERENCE_FILENAME in files:
            from kaon.registry import Registry

            with Registry() as registry:
                return registry.materialize(record) / REFERENCE_FILENAME
    return None


def model_decoders(app: Any, model: Any) -> dict[str, Decoder]:
    """How to get `model`'s input batch back out of a request, for each route that carries one."""
    decoders: dict[str, Decoder] = {}
    shape = tuple(model.signature.inputs[0].shape[1:])  # one input of the model, without the batch axis
    dtype = np.dtype(model.signature.inputs[0].dtype)
    for spec in getattr(app, "specs", []):
        if spec.batch_param is None or spec.item_type is None:
            continue
        adapter = pydantic.TypeAdapter(spec.request_model)
        param = spec.batch_param
        image = is_image_type(spec.item_type)

        def decode(request: Any, adapter: Any = adapter, param: str = param, image: bool = image,
                   shape: tuple[int, ...] = shape, dtype: np.dtype = dtype) -> np.ndarray:
            if image and request.content_type in IMAGE_TYPES:
                items = getattr(adapter.validate_python({param: [request.body]}), param)
                return np.stack([as_array(item) for item in items])
            try:  # the common case, nested arrays of numbers: 5x faster than the endpoint's own validation
                data = orjson.loads(request.body)
                batch = np.asarray(data[param] if param in data else data[BATCH_ALIAS], dtype=dtype)
                if batch.ndim == len(shape) + 1 and all(w in (-1, g) for w, g in zip(shape, batch.shape[1:],
                                                                                       strict=True)):
                    return batch
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                pass
            items = getattr(adapter.validate_json(request.body), param)  # base64 images, (H, W) items, ...
            return np.stack([as_array(item) for item in items]) if items else np.empty((0, *shape), dtype)

        decoders[spec.path] = decode
    input_name = model.signature.inputs[0].name

    def decode_v2(request: Any) -> np.ndarray:
        from kaon.serving.v2 import decode_infer_request

        raw = request.headers.get("inference-header-content-length")
        infer = decode_infer_request(request.body, int(raw) if raw is not None and raw.isdigit() else None)
        return model.validate(infer.inputs)[input_name]

    decoders["/v2/infer"] = decode_v2
    return decoders


def build_observers(app: Any, config: Any) -> Observers | None:
    """Observers for a started KaonApp (its models loaded), from ServeConfig fields; None when nothing is asked.

    Fields read (all optional): `request_log` (path), `request_log_sample` (0..1), `request_log_max_per_s`,
    `request_log_max_bytes`, `request_log_backups`, `redact_fields` (comma-separated), `monitor` (bool,
    default True), `monitor_max_per_s`,
    `drift_reference` (path; default: the version's registered reference.npz), `drift_window`,
    `drift_stride`, `drift_alpha`, `alert_webhook` (URL).
    """
    log_path = getattr(config, "request_log", None)
    models = getattr(app.service, "models", None) or {}
    model = next(iter(models.values()), None)
    reference_path = None
    if getattr(config, "monitor", True) and model is not None:
        reference_path = getattr(config, "drift_reference", None) or find_reference(app.service)
    if not log_path and reference_path is None:
        return None
    metrics = MonitorMetrics(app.metrics.registry)
    request_log = None
    if log_path:
        fields = [f for f in str(getattr(config, "redact_fields", "") or "").split(",") if f.strip()]
        request_log = RequestLog(log_path, max_bytes=int(getattr(config, "request_log_max_bytes", 64 * 1024 * 1024)),
                                 num_backups=int(getattr(config, "request_log_backups", 3)),
                                 redactor=Redactor(fields))
    factory = None
    closers: list[Callable[[], None]] = []
    decoders: dict[str, Decoder] = {}
    # With `kaon serve --workers N`, each worker watches the requests it answers (a client's keep-alive
    # connection stays on one worker, so no single worker sees a sample of everything); its alerts name it.
    worker = os.environ.get(WORKER_INDEX_ENV)
    source = socket.gethostname() + (f" worker {worker}" if worker is not None else "")
    if reference_path is not None and model is not None:
        reference = Reference.load(reference_path)  # fails the startup early on a broken file
        sinks: list[Any] = [log_sink]
        webhook = getattr(config, "alert_webhook", None)
        if webhook:
            sink = WebhookSink(webhook)
            sinks.append(sink)
            closers.append(sink.close)
        window = int(getattr(config, "drift_window", 200))
        stride = int(getattr(config, "drift_stride", 20))
        alpha = float(getattr(config, "drift_alpha", 0.002))
        record = getattr(model, "version", None)
        name = str(getattr(record, "ref", None) or getattr(model, "name", "model"))  # digits@2: the version

        def factory() -> Monitor:
            return Monitor(reference, feature_extractor(model), window=window, stride=stride, alpha=alpha,
                           metrics=metrics, sinks=sinks, model_name=name, source=source)

        decoders = model_decoders(app, model)
    return Observers(request_log=request_log, log_sample_rate=float(getattr(config, "request_log_sample", 1.0)),
                     max_logged_per_s=int(getattr(config, "request_log_max_per_s", 100)),
                     monitor_factory=factory, max_monitored_per_s=int(getattr(config, "monitor_max_per_s", 100)),
                     decoders=decoders, metrics=metrics, closers=closers)
