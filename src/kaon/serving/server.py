"""Run an app with uvicorn: banner, graceful shutdown on Ctrl-C / SIGTERM (finish in-flight, exit 0)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from kaon.config import ServeConfig
from kaon.serving.app import KaonApp
from kaon.serving.service import Service
from kaon.serving.tensors import is_image_type

log = logging.getLogger("kaon.serving")
# After a shutdown, how long kaon's threads get to end before the process leaves the ones still running
STUCK_CALL_GRACE_S = 2.0


def banner(app: KaonApp, config: ServeConfig) -> str:
    scheme = "https" if config.tls_cert else "http"
    local = f"{scheme}://{config.host}:{config.port}"
    # behind a proxy or a deployment's router, the URLs a client can use are the public ones
    base = config.public_url.rstrip("/") if config.public_url else local
    lines = [f"kaon is serving '{app.name}' at {local}" + (f"; clients reach it at {base}" if base != local else ""),
             ""]
    for spec in app.specs:
        mode = (f"batched up to {spec.max_batch_size}, wait {spec.max_wait_ms:g} ms"
                if spec.batched and spec.max_batch_size > 1 else "unbatched")
        lines.append(f"  POST {base}{spec.path}   ({mode})")
    models = list(getattr(app.service, "models", {}) or {})
    for name in models:
        lines.append(f"  POST {base}/v2/models/{name}/infer   (Open Inference Protocol V2)")
    lines += [f"  docs {base}/docs   metrics {base}/metrics   health {base}/healthz {base}/readyz"]
    monitoring = [line for line in (_monitoring_line(app, config), _request_log_line(config)) if line]
    lines += [*monitoring, ""]
    # the example: /predict when there is one (a model's main route), else the first endpoint
    first = next((spec for spec in app.specs if spec.path == "/predict"), app.specs[0] if app.specs else None)
    value = _example_value(first) if first is not None else None
    example = json.dumps(value)  # for curl; the Python line writes it as a Python literal
    if first is not None and first.item_type is not None and is_image_type(first.item_type) and len(example) > 400:
        # a big image: a picture's bytes, not a page of zeros as nested arrays
        lines += [
            "Try it (a JPEG or PNG of the model's input size):",
            f"  curl -s -X POST {base}{first.path} -H 'content-type: image/jpeg' --data-binary @picture.jpg",
        ]
    elif first is not None:
        field = next(iter(first.params))
        call = "predict(" if first.path == "/predict" else f"call('{first.path[1:]}', "
        auth = any(getattr(guard, "is_on", lambda: False)() for guard in app.guards)
        header = " -H \"authorization: Bearer $KAON_TOKEN\"" if auth else ""
        token = ", token=os.environ['KAON_TOKEN']" if auth else ""
        if auth:
            lines += ["auth: on; requests need a token (kaon token create --name NAME --scopes predict, then "
                      "export KAON_TOKEN=...)", ""]
        lines += [
            "Try it:",
            f"  curl -s -X POST {base}{first.path} -H 'content-type: application/json'{header} "
            f"-d '{{\"{field}\": {example}}}'",
            f"  python -c \"import {'os, ' if auth else ''}kaon; print(kaon.Client('{base}'{token}).{call}{field}="
            f"{value!r}))\"",
        ]
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def _example_value(spec: Any) -> Any:
    schema = spec.request_model.model_json_schema()
    field = next(iter(spec.params))
    prop = schema.get("properties", {}).get(field, {})
    return _zeros(prop, schema.get("$defs", {}), depth=0)


def _zeros(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if depth > 8:
        return 0
    if "$ref" in schema:
        return _zeros(defs.get(schema["$ref"].split("/")[-1], {}), defs, depth + 1)
    if "anyOf" in schema:
        return _zeros(schema["anyOf"][0], defs, depth + 1)
    kind = schema.get("type")
    if kind == "array":
        count = schema.get("minItems", 1) or 1
        item = _zeros(schema.get("items", {}), defs, depth + 1)
        return [item for _ in range(count)]
    if kind == "object":
        return {k: _zeros(v, defs, depth + 1) for k, v in schema.get("properties", {}).items()}
    if kind == "string":
        return ""
    if kind == "boolean":
        return False
    return 0


def serve(target: Service | type[Service] | KaonApp, config: ServeConfig | None = None,
          print_banner: bool = True, **overrides: Any) -> None:
    """Serve in the foreground until Ctrl-C or SIGTERM. `overrides` are ServeConfig fields."""
    import uvicorn

    config = config or ServeConfig.from_env(**overrides)
    from kaon.security.tls import check_tls_files

    tls = check_tls_files(config.tls_cert, config.tls_key)  # a bad pair fails before the server starts
    if isinstance(target, KaonApp):
        app = target
    else:
        from kaon.serving.guards import build_guards

        app = KaonApp(target, config, guards=build_guards(config))
    logging.basicConfig(level=getattr(logging, config.log_level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = _GracefulServer(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
        lifespan="on", timeout_graceful_shutdown=max(5, int(config.timeout_s)), server_header=False,
        http=_http_protocol(app), loop="uvloop" if _has("uvloop") else "asyncio",
        **tls,
    ))
    from kaon.serving.workers import (
        LISTEN_FD_ENV,
        REUSE_PORT_ENV,
        bind_listener,
        mark_ready,
        reuse_port_socket,
        watch_supervisor,
    )

    listen_fd = os.environ.get(LISTEN_FD_ENV)
    if listen_fd or os.environ.get(REUSE_PORT_ENV) == "1":  # a worker of `kaon serve --workers N`, banner to it
        # set up before accepting (the lifespan waits for it): the other workers take the traffic meanwhile; its own
        # socket (SO_REUSEPORT) listens only from then on, so the kernel sends it no connection before
        app.on_ready = lambda: mark_ready(banner(app, config))
        watch_supervisor()
        sock = socket.socket(fileno=int(listen_fd)) if listen_fd else reuse_port_socket(config.host, config.port)
        server.run(sockets=[sock])
    else:
        # one process: accept at once, so health probes are answered while setup() loads the model
        app.background_setup = True
        app.on_setup_failed = lambda exc: setattr(server, "should_exit", True)  # logged by the app; exit code 1
        sock = bind_listener(config.host, config.port)  # a taken port is a clear error, before the banner
        if print_banner:  # the banner once setup() is done: it names the models it loaded, and says "serving" truly
            scheme = "https" if config.tls_cert else "http"
            print(f"kaon: setting up '{app.name}' on {scheme}://{config.host}:{config.port} (/healthz answers "
                  f"meanwhile; /readyz once it is ready)", flush=True)
            app.on_ready = lambda: print(banner(app, config), flush=True)
        server.run(sockets=[sock])
    if not server.started or app.setup_error is not None:
        raise SystemExit(1)


def leave_stuck_calls(grace_s: float = STUCK_CALL_GRACE_S) -> None:
    """End the process now if a call of the user's code is still running in one of kaon's threads after the
    server stopped: it already got its 504 (--timeout-s), and a thread cannot be stopped, so waiting for it
    (what Python does at exit) could outlast a Kubernetes grace period. For the CLI, which owns the process."""
    deadline = time.monotonic() + grace_s
    ours = [t for t in threading.enumerate() if t.name.startswith("kaon") and not t.daemon]
    for thread in ours:  # idle pool threads end within moments of their pool's shutdown
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = sorted(t.name for t in ours if t.is_alive())
    if not stuck:
        return
    log.warning("%d call(s) still running after shutdown (a setup() or an endpoint past --timeout-s; thread %s); "
                "exiting without waiting for them", len(stuck), ", ".join(stuck))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _monitoring_line(app: KaonApp, config: ServeConfig) -> str:
    from kaon.monitoring import REFERENCE_FILENAME
    from kaon.monitoring.alerts import describe_url

    models = getattr(app.service, "models", None) or {}
    if not models:
        return ""  # a Service of the user's own: kaon does not know what its inputs are
    if not config.monitor:
        return "  drift: off (--no-monitor)"
    if config.drift_reference:
        webhook = f"; alerts POSTed to {describe_url(config.alert_webhook)}" if config.alert_webhook else ""
        return f"  drift: inputs checked against {config.drift_reference} (window {config.drift_window}){webhook}"
    for model in models.values():
        record = getattr(model, "version", None)
        if record is not None and REFERENCE_FILENAME in (getattr(record, "files", None) or {}):
            webhook = f", and POSTed to {describe_url(config.alert_webhook)}" if config.alert_webhook else ""
            return (f"  drift: inputs checked against {record.ref}'s {REFERENCE_FILENAME} (window "
                    f"{config.drift_window}); alerts in the log and on /metrics (kaon_drift_alert){webhook}")
    return ("  drift: off (no reference statistics: register with kaon.register(..., reference_data=x_train) "
            "or pass --drift-reference)")


def _request_log_line(config: ServeConfig) -> str:
    if not config.request_log:
        return ""
    sample = f"{config.request_log_sample:.0%} of requests" if config.request_log_sample < 1 else "requests"
    marked = f", and {config.redact_fields}" if config.redact_fields.strip() else ""
    return (f"  request log: {sample} (at most {config.request_log_max_per_s}/s) to {config.request_log}, "
            f"e-mails, phone and card numbers masked{marked}")


def _http_protocol(app: KaonApp) -> Any:
    """httptools with one send() per response and `app`'s POST routes answered directly
    (kaon.serving._protocol), else uvicorn's h11."""
    if not _has("httptools"):
        return "h11"
    from kaon.serving._protocol import KaonHttpToolsProtocol

    return KaonHttpToolsProtocol.for_app(app)


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown, so the process dies by the signal.
        A stop asked for is a clean exit for kaon: in-flight requests finished, exit code 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return GracefulServer


def _GracefulServer(config: Any) -> Any:  # noqa: N802 - a class built on first use, uvicorn imported lazily
    return _graceful_server_class()(config)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
