"""Where kaon keeps its state, and the settings every layer reads.

KAON_HOME holds the registry database (`kaon.db`) and the content-addressed artifacts.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kaon.errors import ConfigError


def kaon_home() -> Path:
    """The folder for kaon's state: $KAON_HOME, else ~/.kaon. Created on first use."""
    home = Path(os.environ.get("KAON_HOME") or Path.home() / ".kaon").expanduser()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a read-only disk, no permission
        raise ConfigError(f"kaon keeps its state in {str(home)!r} (KAON_HOME, else ~/.kaon), which cannot be "
                          f"created as a folder: {exc.strerror}. Point KAON_HOME at a folder kaon can write.") from exc
    return home


def database_url() -> str:
    """$KAON_DATABASE_URL (any SQLAlchemy URL), else SQLite in KAON_HOME/kaon.db."""
    url = os.environ.get("KAON_DATABASE_URL")
    if url:
        return url
    return f"sqlite:///{kaon_home() / 'kaon.db'}"


def artifacts_dir() -> Path:
    path = kaon_home() / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


_PARSERS: dict[str, Callable[[str], object]] = {"bool": _parse_bool, "int": int, "float": float, "str": str}


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
# What a model (and alias) may be called: it is a registry key and part of the V2 routes' paths
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_EXPECTED = "1 to 128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


def _is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass(frozen=True)
class ServeConfig:
    """How one server runs. Each field is also a `kaon serve` flag and a KAON_<NAME> variable."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    timeout_s: float = 30.0
    # a request must arrive in full, headers and body, within this of its first byte (Go's http.Server ReadTimeout;
    # nginx's client_header_timeout and client_body_timeout are 60 s each): else a 408 and the connection closes, so
    # a client that stalls in its headers (slowloris) or mid-body does not hold a connection and its buffer
    read_timeout_s: float = 60.0
    max_queue: int = 1024
    max_body_bytes: int = 16 * 1024 * 1024
    trust_pickle: bool = False
    require_auth: bool = False  # auth is on anyway once any token was created (revoked ones count)
    max_tensor_elements: int = 50_000_000
    tls_cert: str | None = None
    tls_key: str | None = None
    request_log: str | None = None  # JSON lines, rotated and redacted (kaon.monitoring)
    request_log_max_per_s: int = 100
    request_log_sample: float = 1.0  # the share of requests logged (then capped by request_log_max_per_s)
    request_log_max_bytes: int = 64 * 1024 * 1024  # the log rotates at this size, keeping 3 old files
    redact_fields: str = ""  # comma-separated field names masked in the request log (beside e-mails, cards...)
    monitor: bool = True  # drift and outlier detection, when the model version has a reference
    monitor_max_per_s: int = 100  # requests a second fed to drift detection (a 200-input window in 2 s)
    drift_window: int = 200
    drift_reference: str | None = None  # a reference.npz to use instead of the version's own
    alert_webhook: str | None = None  # drift alerts are also POSTed here (JSON, retried)
    device: str = "auto"  # a model file's device: auto (a CUDA GPU when torch sees one), cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32 | bf16 | fp16 for a torch model (.pt2); bf16/fp16 are for GPUs
    top_k: int = 0  # > 0: a classifier model answers with its k best labels and probabilities instead of all
    workers: int = 1  # server processes on one port (kaon.serving.workers); each loads its own model copy
    name: str | None = None
    # the URL clients reach this server at when a proxy or a kaon deployment's router stands in front of it:
    # the banner's URLs and examples use it (a deployment's replicas get their router's)
    public_url: str | None = None
    log_level: str = "warning"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            ("port", 0 <= self.port <= 65535, "an integer in [0, 65535]"),
            ("max_batch_size", self.max_batch_size >= 1, "an integer >= 1"),
            ("max_wait_ms", self.max_wait_ms >= 0, "a number >= 0"),
            ("timeout_s", self.timeout_s > 0, "a number > 0"),
            ("read_timeout_s", self.read_timeout_s > 0, "a number > 0"),
            ("max_queue", self.max_queue >= 1, "an integer >= 1"),
            ("max_body_bytes", self.max_body_bytes >= 1024, "an integer >= 1024"),
            ("request_log_sample", 0.0 <= self.request_log_sample <= 1.0, "a number in [0, 1]"),
            ("request_log_max_bytes", self.request_log_max_bytes >= 4096, "an integer >= 4096"),
            ("precision", self.precision in ("fp32", "bf16", "fp16"), "one of fp32, bf16, fp16"),
            ("top_k", self.top_k >= 0, "an integer >= 0 (0: every class's score)"),
            ("workers", self.workers >= 1, "an integer >= 1"),
            ("drift_window", self.drift_window >= 20, "an integer >= 20 (inputs per drift test)"),
            ("alert_webhook", self.alert_webhook is None or _is_http_url(self.alert_webhook),
             "an http(s) URL with a host, e.g. http://alerts.internal:9000/kaon"),
            ("public_url", self.public_url is None or _is_http_url(self.public_url),
             "an http(s) URL with a host, e.g. https://models.example.com"),
            ("log_level", str(self.log_level).lower() in _LOG_LEVELS, f"one of {', '.join(_LOG_LEVELS)}"),
            ("name", self.name is None or NAME_PATTERN.fullmatch(self.name) is not None,
             f"{NAME_EXPECTED} (it is part of the V2 routes' paths)"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(
                    f"{name} must be {expected}. Received: {name}={getattr(self, name)!r}",
                    fields=[{"name": name, "expected": expected}],
                )

    @classmethod
    def from_env(cls, **overrides: object) -> ServeConfig:
        """Settings from KAON_* variables; explicit arguments (not None) win."""
        values: dict[str, object] = {}
        for name, default in cls.__dataclass_fields__.items():
            if name == "extra":
                continue
            raw = os.environ.get(f"KAON_{name.upper()}")
            if raw is None:
                continue
            kind = type(default.default).__name__ if default.default is not None else "str"
            try:
                values[name] = _PARSERS[kind](raw)
            except ValueError as exc:
                words = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "text"}
                raise ConfigError(f"KAON_{name.upper()} must be {words.get(kind, kind)}. Received: {raw!r}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            close = {u: difflib.get_close_matches(u, cls.__dataclass_fields__, n=1) for u in unknown}
            hints = ", ".join(f"{u}" + (f" (did you mean {c[0]}?)" if c else "") for u, c in close.items())
            known = ", ".join(sorted(cls.__dataclass_fields__))
            raise ConfigError(f"unknown serve settings: {hints}. Settings: {known}.")
        return cls(**values)  # type: ignore[arg-type]
