"""Alerts and where they go: a log line, a Prometheus gauge (see `metrics.py`), an optional webhook.

A webhook POSTs the alert as JSON from its own thread, retried with backoff on connection errors
and 5xx answers, bounded in attempts, time and pending alerts, so a slow or dead receiver never
slows serving. The log names the webhook by scheme and host only: webhook URLs often carry secrets.
"""

from __future__ import annotations

import base64
import collections
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

log = logging.getLogger("kaon.monitoring")
AlertSink = Callable[["Alert"], None]


@dataclass(frozen=True)
class Alert:
    detector: str  # 'embedding_mmd', 'features_ks', 'features_psi', 'predicted_classes', 'outlier_rate'
    state: Literal["firing", "resolved"]
    statistic: float
    threshold: float
    model: str
    observed: int  # inputs seen by the monitor when the state changed
    window: int
    time_s: float
    source: str = ""  # which server saw it: host, and the worker of `kaon serve --workers N`

    @property
    def message(self) -> str:
        verb = "drifted" if self.state == "firing" else "is back to normal"
        where = f" on {self.source}" if self.source else ""
        return (f"kaon alert {self.state}: model '{self.model}' {verb} on {self.detector}{where} "
                f"(statistic {self.statistic:.4g}, threshold {self.threshold:.4g}, window {self.window}, "
                f"after {self.observed} inputs)")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


def log_sink(alert: Alert) -> None:
    """One WARNING line per alert, when it fires and when it resolves: a log that showed only the firing (the
    resolution was INFO, below the default level) read as drift that never ended."""
    log.warning("%s", alert.message)


def describe_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}/..."


class WebhookSink:
    """POSTs each alert as JSON to `url`; `max_attempts` tries, backoff doubling from `backoff_s`."""

    def __init__(self, url: str, *, max_attempts: int = 3, timeout_s: float = 2.0, backoff_s: float = 0.5,
                 max_pending: int = 100, headers: dict[str, str] | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            from kaon.errors import ConfigError

            raise ConfigError(f"the alert webhook must be an http(s) URL. Received: {describe_url(url)!r}")
        parts = urllib.parse.urlsplit(url)
        credentials = {}
        if parts.username is not None:  # http://user:pass@host/...: urllib sends no credentials from a URL
            pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            credentials = {"authorization": "Basic " + base64.b64encode(pair.encode()).decode()}
            url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))  # [::1] kept
        self.url = url
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.headers = {"content-type": "application/json", "user-agent": "kaon-alerts", **credentials,
                        **(headers or {})}
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._pending: collections.deque[Alert] = collections.deque()
        self._max_pending = max_pending
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="kaon-webhook", daemon=True)
        self._thread.start()

    def __call__(self, alert: Alert) -> None:
        if len(self._pending) >= self._max_pending:
            self.dropped += 1
            return
        self._pending.append(alert)
        self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is pending (up to `timeout_s`), then stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._pending:
                self._deliver(self._pending.popleft())
            if self._stopping:
                return

    def _deliver(self, alert: Alert) -> None:
        body = orjson.dumps(alert.to_dict())
        delay_s = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            request = urllib.request.Request(self.url, data=body, method="POST", headers=self.headers)
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:  # noqa: S310 - http(s) only
                    if answer.status < 300:
                        self.sent += 1
                        return
                    reason = f"HTTP {answer.status}"
            except urllib.error.HTTPError as exc:
                reason = f"HTTP {exc.code}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this alert: retrying will not help
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                cause = getattr(exc, "reason", None) or exc  # URLError wraps the socket's error
                reason = f"{type(exc).__name__}: {getattr(cause, 'strerror', None) or cause}"
            if attempt < self.max_attempts and not self._stopping:
                time.sleep(delay_s)
                delay_s *= 2
        self.failed += 1
        log.warning("alert webhook %s failed after %d attempts (%s): %s", describe_url(self.url), attempt,
                    reason, alert.message)
