"""Guards: what a request must pass before it is routed. Each is `async guard(request) -> None` that
raises a KaonError (401, 403, 413, 429, 503); KaonApp runs them in order for every request. The guards
here also have `check(request)`, which KaonApp calls instead: it admits or refuses at once and returns
None, or returns an awaitable for the rest (a token seen for the first time is hashed in a thread). Every
request passes through them, and a coroutine per guard per request cost more than most checks do.

| guard | what | answers |
| --- | --- | --- |
| `AuthGuard` | Bearer token, the route's scope, token-bucket rate, requests in flight | 401, 403, 429 |
| `TensorLimitGuard` | numbers in a JSON body, pixels of an image body, elements of V2 tensors | 413 |

Auth is on once any token was created in the registry (revoked ones count), or with `require_auth=True`;
`/healthz`, `/readyz` and `/v2/health/*` never need a token. A token is verified once with scrypt
(in a thread, never on the event loop) and then found in an in-memory cache. The token table is
re-read from the registry every `cache_ttl_s` (5 s) in the background, so a revoked or new token
takes effect within about 5 seconds (the TTL, `token_cache_ttl_s`). Rate and concurrency limits
are per token and per replica.

    app = KaonApp(service, config, guards=build_guards(config))

A guard that admits a request with a concurrency slot must see it released:
`release_request(request)` once the response is ready (KaonApp does it in `_http`'s finally).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from kaon.errors import (
    ForbiddenError,
    PayloadTooLargeError,
    RateLimitedError,
    RegistryError,
    UnauthorizedError,
)
from kaon.security import (
    AUTHENTICATED,
    Bucket,
    RateLimit,
    bearer_token,
    has_scope,
    required_scope,
    token_id_of,
    verify_secret,
)
from kaon.security.tokens import PREFIX

log = logging.getLogger("kaon.serving")

Guard = Callable[[Any], Awaitable[None]]
DEFAULT_CACHE_TTL_S = 5.0
DEFAULT_MAX_TENSOR_ELEMENTS = 4_000_000  # 16 MB of float32: what --max-body-bytes lets through in binary
DEFAULT_MAX_CONCURRENT_PER_TOKEN = 256
# Token verifications that fail, per second, before further unknown secrets are refused without
# hashing: scrypt costs ~30 ms of CPU, and a flood of wrong secrets must not become a way to burn it.
MAX_FAILED_VERIFICATIONS_PER_S = 10.0
_SLOT = "_kaon_slot"
_PRINCIPAL = "principal"
_PUBLIC = "public"
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class Principal:
    """Who a request is from: the token's public id, name and scopes (never its secret)."""

    token_id: str
    name: str
    scopes: frozenset[str]


@dataclass
class _Entry:
    principal: Principal
    secret_hash: str = field(repr=False)
    expires_at_s: float | None  # wall clock (time.time)
    rate: RateLimit | None
    max_concurrent: int


@dataclass
class _Table:
    by_id: dict[str, _Entry]
    auth_on: bool
    loaded_at_s: float


@dataclass
class _Verified:
    token_id: str
    secret_hash: str = field(repr=False)
    checked_at_s: float


class _Usage:
    """One token's use of this replica: its rate bucket (made on first use) and its requests in flight."""

    __slots__ = ("bucket", "in_flight")

    def __init__(self) -> None:
        self.bucket: Bucket | None = None
        self.in_flight = 0


def release_request(request: Any) -> None:
    """Give back the concurrency slot an AuthGuard took for `request` (safe to call more than once)."""
    usage = request.__dict__.pop(_SLOT, None)
    if usage is not None:
        usage.in_flight -= 1


def principal_of(request: Any) -> Principal | None:
    """The token a request was admitted with, or None (auth off, or a public route)."""
    return request.__dict__.get(_PRINCIPAL)


def _what_was_sent(header: str | None) -> str:
    """The Authorization header without a usable bearer token, described without echoing a secret."""
    value = (header or "").strip()
    if not value:
        return "none was sent"
    if value.startswith(PREFIX):
        return "the Authorization header holds a kaon token without the 'Bearer ' in front of it"
    scheme = value.partition(" ")[0]
    if scheme.lower() in _KNOWN_SCHEMES:  # named only when it is one: anything else may be a secret
        return f"an Authorization header of scheme '{scheme}' was sent"
    return "the Authorization header is not 'Bearer <token>'"


_KNOWN_SCHEMES = frozenset({"basic", "digest", "token", "negotiate", "ntlm", "hoba", "mutual", "apikey", "dpop"})


def unauthorized(message: str, scope: str = "predict") -> UnauthorizedError:
    """A 401 saying how to send a token, and how to create one with the scope the route needs."""
    scopes = "predict" if scope == AUTHENTICATED else scope
    return UnauthorizedError(
        f"{message} Send the header 'Authorization: Bearer <token>'; create a token with: "
        f"kaon token create --name NAME --scopes {scopes}"
    )


class Checks(abc.ABC):
    """A guard made of a synchronous `check(request)`: calling it runs the check and awaits what it returns."""

    @abc.abstractmethod
    def check(self, request: Any) -> Awaitable[None] | None:
        """None once `request` is admitted, an awaitable that admits it or raises, or raise now."""

    async def __call__(self, request: Any) -> None:
        pending = self.check(request)
        if pending is not None:
            await pending


class AuthGuard(Checks):
    """Bearer tokens from the registry: 401 without a valid one, 403 without the scope, 429 over its limits."""

    def __init__(self, load_tokens: Callable[[], list[Any]], *, require_auth: bool = False,
                 cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
                 max_concurrent_per_token: int = DEFAULT_MAX_CONCURRENT_PER_TOKEN,
                 max_stale_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.load_tokens = load_tokens
        self.require_auth = require_auth
        self.cache_ttl_s = cache_ttl_s
        self.max_concurrent_per_token = max_concurrent_per_token
        self.max_stale_s = max_stale_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._table: _Table | None = None
        self._first_load: asyncio.Future[None] | None = None
        self._refresher: asyncio.Future[None] | None = None
        self._scopes: dict[tuple[str, str], str] = {}
        self._verified: dict[str, _Verified] = {}
        self._rejected: dict[str, float] = {}  # token -> when it failed verification
        self._pending: dict[str, asyncio.Future[bool]] = {}
        self._usage: dict[str, _Usage] = {}
        self._failure_limit = RateLimit(MAX_FAILED_VERIFICATIONS_PER_S, int(MAX_FAILED_VERIFICATIONS_PER_S))
        self._failures = Bucket(self._failure_limit, 0.0)

    # the token table -----------------------------------------------------------------------------

    def is_on(self) -> bool:
        """Whether requests need a token (--require-auth, or any token was ever created); False if unreadable."""
        if self.require_auth:
            return True
        try:
            return bool(self.load_tokens())
        except Exception:  # noqa: BLE001 - the banner only; requests report the registry's error themselves
            return False

    def _build_table(self, now_s: float) -> _Table:
        records = self.load_tokens()  # revoked and expired ones too: they keep auth on
        at = datetime.fromtimestamp(self.wall_clock(), timezone.utc)
        by_id = {}
        for record in records:
            if not record.is_active(at):
                continue
            rate = (RateLimit.per_second(record.rate_per_s, record.burst)
                    if record.rate_per_s is not None else None)
            by_id[record.token_id] = _Entry(
                Principal(record.token_id, record.name, frozenset(record.scopes)), record.secret_hash,
                record.expires_at.timestamp() if record.expires_at is not None else None, rate,
                record.max_concurrent or self.max_concurrent_per_token)
        # Auth is on once any token was created: revoking (or outliving) the last one must not open a server to
        # everyone, this one or one started later (a restarted worker, a new replica)
        was_on = self._table is not None and self._table.auth_on
        if was_on and not by_id and not self.require_auth:
            log.warning("no active API tokens remain; requests without one are refused, as while they existed. "
                        "Create one with: kaon token create --name NAME")
        return _Table(by_id, self.require_auth or bool(records) or was_on, now_s)

    async def start(self) -> None:
        """Load the token table before the server says it is ready, so the first request does not wait for
        it (the registry's import alone is a quarter of a replica's cold start). A registry that cannot be
        read now is not fatal: requests are refused, saying why, until it can."""
        try:
            await self._ensure_table(self.clock())
        except RegistryError as exc:
            log.error("%s", exc.message)

    async def _ensure_table(self, now_s: float) -> _Table:
        """The token table; the first call loads it (and starts the refresher), later ones never wait."""
        table = self._table
        if table is None:
            if self._first_load is None:
                self._first_load = asyncio.ensure_future(self._load())
            first = self._first_load
            try:
                await asyncio.shield(first)
            finally:
                if first.done() and first.exception() is not None:
                    self._first_load = None  # the next request tries again
            if self._refresher is None:
                self._refresher = asyncio.ensure_future(self._refresh_forever())
            table = self._table
            assert table is not None
        elif now_s - table.loaded_at_s > self.max_stale_s:
            raise RegistryError(
                f"the server could not re-read its API tokens from the registry for "
                f"{now_s - table.loaded_at_s:.0f} s; it refuses requests until it can (the server log has the "
                f"reason). Check KAON_HOME / KAON_DATABASE_URL."
            )
        return table

    async def _load(self) -> None:
        started_s = self.clock()
        try:
            table = await asyncio.get_running_loop().run_in_executor(None, self._build_table, started_s)
        except Exception as exc:
            raise RegistryError(
                f"the server cannot read its API tokens from the registry ({exc}); it refuses requests until "
                f"it can. Check KAON_HOME / KAON_DATABASE_URL."
            ) from exc
        self._table = table
        if len(self._rejected) > _MAX_CACHED:
            self._rejected.clear()

    async def _refresh_forever(self) -> None:
        """Re-read the tokens every cache_ttl_s: a revoked token is refused within about that long."""
        failures = 0
        while True:
            await asyncio.sleep(self.cache_ttl_s)
            try:
                await self._load()
                failures = 0
            except RegistryError as exc:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.error("could not re-read the API tokens (%d tries): %s", failures, exc.message)

    # the check -----------------------------------------------------------------------------------

    def check(self, request: Any) -> Awaitable[None] | None:
        """Admit `request` or raise. A token already verified is checked here and now (about 1 us, nothing
        awaited); the first request with a token, or before the token table is loaded, gets an awaitable that
        does the rest (KaonApp awaits it)."""
        key = (request.method, request.path)
        scope = self._scopes.get(key)
        if scope is None:
            scope = required_scope(request.method, request.path) or _PUBLIC
            if len(self._scopes) < _MAX_CACHED:
                self._scopes[key] = scope
        if scope == _PUBLIC:
            return None
        now_s = self.clock()
        table = self._table
        if table is None or now_s - table.loaded_at_s > self.max_stale_s:
            return self._check_slowly(request, scope, now_s)
        if not table.auth_on:
            return None
        header = request.headers.get("authorization")
        verified = self._verified.get(header) if header is not None else None
        if verified is None:
            return self._check_slowly(request, scope, now_s)
        self._admit(request, scope, table, verified, header, now_s)
        return None

    async def _check_slowly(self, request: Any, scope: str, now_s: float) -> None:
        """`check` for a request that needs the token table loaded, or its token verified with scrypt."""
        table = self._table
        if table is None or now_s - table.loaded_at_s > self.max_stale_s:
            table = await self._ensure_table(now_s)
        if not table.auth_on:
            return
        header = request.headers.get("authorization")
        verified = self._verified.get(header) if header is not None else None
        if verified is None:  # verified once per token; the table (re-read every TTL) says if it still holds
            token = bearer_token(header)
            if token is None:
                raise unauthorized(f"{request.method} {request.path} needs an API token; {_what_was_sent(header)}.",
                                   scope)
            verified = await self._verify(token, table, now_s)
            if len(self._verified) >= _MAX_CACHED:
                self._verified.clear()
            self._verified[header] = verified  # type: ignore[index]
        self._admit(request, scope, table, verified, header, now_s)

    def _admit(self, request: Any, scope: str, table: _Table, verified: _Verified, header: str | None,
               now_s: float) -> None:
        """The token still exists, is unexpired, has the scope, and is under its rate and concurrency limits:
        take one request from each, or raise."""
        entry = table.by_id.get(verified.token_id)
        if entry is None or entry.secret_hash != verified.secret_hash:
            self._verified.pop(header, None)  # type: ignore[arg-type]
            raise unauthorized(f"the API token (id {verified.token_id}) has been revoked or has expired.")
        if entry.expires_at_s is not None and self.wall_clock() >= entry.expires_at_s:
            raise unauthorized(f"the API token '{entry.principal.name}' expired.")
        principal = entry.principal
        if scope != AUTHENTICATED and not has_scope(principal.scopes, scope):
            raise ForbiddenError(
                f"token '{principal.name}' has scopes {', '.join(sorted(principal.scopes))}; "
                f"{request.method} {request.path} needs the '{scope}' scope. Received: token id "
                f"{principal.token_id}. Create a token with it: kaon token create --name NAME --scopes {scope}"
            )
        usage = self._usage.get(principal.token_id)
        if usage is None:
            usage = self._usage[principal.token_id] = _Usage()
        rate = entry.rate
        if rate is not None:
            bucket = usage.bucket
            if bucket is None:
                bucket = usage.bucket = Bucket(rate, now_s)
            wait_s = bucket.take(rate, now_s)
            if wait_s:
                retry_after_s = max(1, math.ceil(wait_s))  # whole seconds, as the Retry-After header sends it
                raise RateLimitedError(
                    f"token '{principal.name}' is over its rate limit of {rate.rate_per_s:g} requests/s "
                    f"(burst {rate.burst}). Retry after {retry_after_s} s.",
                    retry_after_s=float(retry_after_s))
        if usage.in_flight >= entry.max_concurrent:
            raise RateLimitedError(
                f"token '{principal.name}' already has {usage.in_flight} requests in flight, its limit "
                f"(max_concurrent={entry.max_concurrent}). Wait for answers before sending more.",
                retry_after_s=1.0)
        usage.in_flight += 1
        request.__dict__[_SLOT] = usage
        request.__dict__[_PRINCIPAL] = principal

    async def _verify(self, token: str, table: _Table, now_s: float) -> _Verified:
        token_id = token_id_of(token)
        entry = table.by_id.get(token_id) if token_id is not None else None
        if entry is None:
            raise unauthorized("the API token is not valid: unknown, malformed, revoked or expired.")
        rejected_at = self._rejected.get(token)
        if rejected_at is not None and now_s - rejected_at <= self.cache_ttl_s:
            raise unauthorized(f"the API token (id {token_id}) is not valid.")
        pending = self._pending.get(token)
        if pending is None:  # concurrent first requests with one token share one scrypt
            self._failures.take(self._failure_limit, now_s, cost=0.0)  # refill only
            if self._failures.tokens < 1.0:
                raise unauthorized("too many invalid API tokens were sent; the server refuses to check more "
                                   "for a moment.")
            loop = asyncio.get_running_loop()
            pending = loop.run_in_executor(None, verify_secret, token, entry.secret_hash)
            self._pending[token] = pending
            try:
                ok = await pending
            finally:
                self._pending.pop(token, None)
        else:
            ok = await pending
        if not ok:
            self._failures.take(self._failure_limit, self.clock())  # now: the check took a while
            if len(self._rejected) < _MAX_CACHED:
                self._rejected[token] = now_s
            raise unauthorized(f"the API token (id {token_id}) is not valid.")
        return _Verified(entry.principal.token_id, entry.secret_hash, now_s)


class TensorLimitGuard(Checks):
    """413 for a request that would become more than `max_elements` numbers once decoded.

    JSON bodies: each number needs a separator, so `commas + 1` bounds the count from above at
    C speed. Image bodies: the header's width x height x channels (read without decoding pixels).
    V2 binary bodies: the shapes in the JSON header.
    """

    def __init__(self, max_elements: int = DEFAULT_MAX_TENSOR_ELEMENTS) -> None:
        self.max_elements = max_elements

    def check(self, request: Any) -> None:
        body = request.body
        if len(body) < 64:
            return
        if body[:4] == b"\x89PNG" or body[:3] == b"\xff\xd8\xff":  # a few kB of PNG can hold a gigapixel
            count = _image_elements(body)
        elif "inference-header-content-length" in request.headers:  # V2 binary: at least a byte per number
            if len(body) <= self.max_elements:
                return
            count = _v2_elements(body, request.headers["inference-header-content-length"])
        else:  # JSON: a number and its separator take at least two bytes
            if len(body) // 2 <= self.max_elements:
                return
            count = body.count(b",") + 1
        if count > self.max_elements:
            raise PayloadTooLargeError(
                f"the request holds about {count:,} numbers; the limit is {self.max_elements:,} "
                f"(--max-tensor-elements). Send fewer or smaller inputs per request."
            )


def _image_elements(body: bytes) -> int:
    from kaon.serving.images import image_frame, open_header

    frame = image_frame(body)  # a JPEG's or PNG's header in ~1 us; PIL's open (~40 us) for the rest
    if frame is not None:
        return frame[0] * frame[1] * max(1, frame[2])
    try:
        # the header only, without PIL's own pixel check: its warning (over 89 M pixels) would be noise beside
        # the count checked here, and its error (over 179 M) would hide the count
        with open_header(body) as image:
            return image.width * image.height * max(1, len(image.getbands()))
    except Exception:  # noqa: BLE001 - not an image: the endpoint says so with a 4xx
        return 0


def _v2_elements(body: bytes, raw_length: str) -> int:
    if not raw_length.isdigit() or int(raw_length) > len(body):
        return 0
    try:
        header = orjson.loads(body[: int(raw_length)])
        total = 0
        for tensor in header.get("inputs", []):
            count = 1
            for dim in tensor.get("shape", []):
                count *= int(dim)
            total += count
        return total
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 0  # the V2 decoder answers 400 with the reason


def registry_tokens(url: str | None = None) -> Callable[[], list[Any]]:
    """A loader of every token of the registry at `url` (default: KAON_HOME), revoked ones included (they keep
    auth on), opened on first use."""
    opened: list[Any] = []

    def load() -> list[Any]:
        if not opened:
            from kaon.registry import Registry

            opened.append(Registry(url))
        return list(opened[0].tokens.list(include_revoked=True))

    return load


def build_guards(config: Any = None, *, load_tokens: Callable[[], list[Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> list[Guard]:
    """The guards for a server: auth (always: it turns itself on when tokens exist), then tensor limits.

    Reads from `config` (a ServeConfig) when present: `require_auth`, `max_tensor_elements`,
    `max_concurrent_per_token`, `token_cache_ttl_s`.
    """
    guards: list[Guard] = [AuthGuard(
        load_tokens or registry_tokens(),
        require_auth=bool(getattr(config, "require_auth", False)),
        cache_ttl_s=float(getattr(config, "token_cache_ttl_s", DEFAULT_CACHE_TTL_S)),
        max_concurrent_per_token=int(getattr(config, "max_concurrent_per_token",
                                             DEFAULT_MAX_CONCURRENT_PER_TOKEN)),
        clock=clock,
    )]
    max_elements = int(getattr(config, "max_tensor_elements", DEFAULT_MAX_TENSOR_ELEMENTS) or 0)
    if max_elements > 0:
        guards.append(TensorLimitGuard(max_elements))
    return guards


__all__ = ["AuthGuard", "Guard", "Principal", "TensorLimitGuard", "build_guards", "principal_of",
           "registry_tokens", "release_request"]
