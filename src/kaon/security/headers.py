"""Security headers for API responses, and CORS (off unless origins are allowed explicitly).

The headers OWASP's REST Security Cheat Sheet asks of an API: responses are JSON that no browser
should sniff, frame or cache (and, over TLS, HSTS). Four headers, on every response: each costs the
server a little on every request. `/docs` (Swagger UI) is rendered separately and keeps its own
headers, because a strict Content-Security-Policy would block its scripts.
"""

from __future__ import annotations

HSTS_MAX_AGE_S = 2 * 365 * 86400

_BASE = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cache-control", b"no-store"),
)


def security_headers(tls: bool = False) -> list[tuple[bytes, bytes]]:
    """The headers every API response carries; HSTS too when the server speaks TLS."""
    headers = list(_BASE)
    if tls:
        headers.append((b"strict-transport-security", f"max-age={HSTS_MAX_AGE_S}; includeSubDomains".encode()))
    return headers


def cors_headers(origin: str | None, allowed_origins: frozenset[str]) -> list[tuple[bytes, bytes]]:
    """CORS response headers for `origin`: none unless it is allowed (CORS is off by default).

    `allowed_origins` holds exact origins (`https://app.example.com`); `*` allows any origin but never
    with credentials.
    """
    if not origin or not allowed_origins:
        return []
    if origin in allowed_origins:
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
    if "*" in allowed_origins:
        return [(b"access-control-allow-origin", b"*")]
    return []
