"""The request log: JSON lines of sampled requests and responses, redacted, rotated and size-capped.

`log.jsonl` grows to `max_bytes`, then becomes `log.jsonl.1` (the older ones shift to `.2` ...
`.<num_backups>`, the oldest is deleted), so the log never takes more than
`max_bytes * (num_backups + 1)` on disk. A record never holds the Authorization header or a token::

    {"time": "2026-05-21T10:00:00.123Z", "request_id": "9f..", "method": "POST", "path": "/predict",
     "status": 200, "latency_ms": 1.8, "client": "127.0.0.1", "token": "ci",
     "request": {"inputs": [[...]]}, "response": [{"label": 3, ...}]}
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from kaon.errors import ConfigError
from kaon.monitoring.redaction import Redactor

try:
    import fcntl
except ImportError:  # Windows: one process per log
    fcntl = None  # type: ignore[assignment]

#: Headers worth keeping in a record (everything else, credentials included, is dropped).
KEPT_HEADERS = ("content-type", "user-agent", "content-length")


@dataclass
class Exchange:
    """One request and its response, as the server saw them (bodies raw)."""

    request_id: str
    method: str
    path: str
    status: int
    latency_ms: float
    request_body: bytes
    response_body: bytes
    request_headers: dict[str, str]
    response_content_type: str = "application/json"
    client: str | None = None
    token_name: str | None = None
    time_s: float = 0.0


class RequestLog:
    """Appends redacted records to `path`, rotating by size. Thread-safe; meant for one writer thread."""

    def __init__(self, path: str | Path, *, max_bytes: int = 64 * 1024 * 1024, num_backups: int = 3,
                 redactor: Redactor | None = None, max_body_bytes: int = 256 * 1024) -> None:
        if max_bytes < 4096:
            raise ConfigError(f"the request log's max_bytes must be >= 4096. Received: max_bytes={max_bytes}")
        if num_backups < 0:
            raise ConfigError(f"num_backups must be >= 0. Received: num_backups={num_backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.num_backups = num_backups
        self.redactor = redactor or Redactor()
        self.max_body_bytes = max_body_bytes
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._size = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise ConfigError(f"the request log {str(self.path)!r} cannot be written: {exc}. "
                              f"Pick a writable path for --request-log.") from exc

    def _open(self) -> None:
        # owner-only (0600): the log holds request bodies. os.open's mode applies to a file it creates
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = open(fd, "ab")  # noqa: SIM115 - kept open; closed by close()/rotation
        self._size = self._file.tell()

    def record(self, exchange: Exchange) -> dict[str, Any]:
        """The redacted JSON-ready record of one exchange."""
        masked: set[str] = set()  # the request's marked values, masked in the response too
        return {
            "time": _iso(exchange.time_s or time.time()),
            "request_id": exchange.request_id,
            "method": exchange.method,
            "path": exchange.path,
            "status": exchange.status,
            "latency_ms": round(exchange.latency_ms, 3),
            "client": exchange.client,
            "token": exchange.token_name,
            "headers": {k: self.redactor.redact_text(v) for k, v in exchange.request_headers.items()
                        if k in KEPT_HEADERS},
            "request": self._body(exchange.request_body, exchange.request_headers.get("content-type", ""), masked),
            "response": self.redactor.hide(self._body(exchange.response_body, exchange.response_content_type),
                                           masked),
        }

    def _body(self, body: bytes, content_type: str, masked: set[str] | None = None) -> Any:
        """The body as redacted JSON; a byte count for what is not JSON (images, tensors) or too large.
        JSON sent as text/plain or application/*+json is read too: an endpoint may parse it anyway."""
        if not body:
            return None
        kind = content_type.split(";", 1)[0].strip().lower()
        json_like = kind in ("application/json", "", "text/plain") or kind.endswith("+json")
        if not json_like or len(body) > self.max_body_bytes:
            return {"bytes": len(body), "content_type": kind or None}
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {"bytes": len(body), "content_type": kind or None, "json": False}
        return self.redactor.redact(value, masked=masked)

    def write(self, exchanges: list[Exchange]) -> None:
        """Append one line per exchange (one write and flush for the whole list)."""
        lines = [self._line(self.record(e)) for e in exchanges]
        with self._lock:
            if self._file is None:
                return
            self._follow()
            for line in lines:
                if self._file is None:
                    return
                if self._size + len(line) > self.max_bytes and self._size > 0:
                    self._rotate()
                self._file.write(line)
                self._size += len(line)
            if self._file is not None:
                self._file.flush()

    def _line(self, record: dict[str, Any]) -> bytes:
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        if len(line) > min(self.max_bytes // 4, self.max_body_bytes * 2):  # keep the envelope, drop the bodies
            record = {**record, "request": {"truncated": True}, "response": {"truncated": True}}
            line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        return line

    def _follow(self) -> None:
        """Several processes (`kaon serve --workers N`) append to one log: write to the file at `path` now
        (another may have rotated it away), and count what all of them wrote towards `max_bytes`."""
        assert self._file is not None
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != os.fstat(self._file.fileno()).st_ino:
            self._file.close()
            self._open()
        else:
            self._size = current.st_size

    def _rotate(self) -> None:
        """Move the log to .1 (the backups up one) and start a new one. With several processes on one log, one
        rotates at a time, under a lock held across the renames and the new file's creation; a process that then
        finds another file at `path` than the one it was writing (another rotated it) only follows it."""
        assert self._file is not None
        with self._rotation_lock():
            mine = os.fstat(self._file.fileno()).st_ino
            try:
                current: int | None = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            self._file.close()
            self._file = None
            try:
                if current == mine:
                    if self.num_backups == 0:
                        os.remove(self.path)
                    else:
                        for index in range(self.num_backups - 1, 0, -1):
                            older = self.path.with_name(f"{self.path.name}.{index}")
                            if older.exists():
                                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
                        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            finally:
                self._open()

    @contextlib.contextmanager
    def _rotation_lock(self) -> Iterator[None]:
        if fcntl is None:  # Windows: one process per log
            yield
            return
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # and its lock

    def files(self) -> list[Path]:
        """The log and its backups that exist, newest first."""
        names = [self.path] + [self.path.with_name(f"{self.path.name}.{i}") for i in range(1, self.num_backups + 1)]
        return [p for p in names if p.exists()]

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def _iso(seconds: float) -> str:
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{whole}.{int(seconds % 1 * 1000):03d}Z"
