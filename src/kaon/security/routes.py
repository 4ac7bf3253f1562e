"""Which scope each route needs: a pure function of (method, path).

    >>> required_scope("GET", "/healthz") is None          # the health probes are public
    True
    >>> required_scope("POST", "/predict"), required_scope("GET", "/metrics")
    ('predict', 'metrics')
"""

from __future__ import annotations

#: Routes answered without a token: the liveness and readiness probes of kaon and of V2.
PUBLIC_ROUTES = frozenset({("GET", "/healthz"), ("GET", "/readyz"),
                           ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")})
#: Scope that only says "a valid token": the index, docs, schemas and model metadata.
AUTHENTICATED = "authenticated"
#: Path prefixes of management routes (model repository, deployments, tokens): admin only.
ADMIN_PREFIXES = ("/admin", "/v2/repository", "/deployments", "/tokens")


def required_scope(method: str, path: str) -> str | None:
    """None for a public route; else 'predict', 'explain', 'metrics', 'admin' or AUTHENTICATED."""
    method = method.upper()
    if (method, path) in PUBLIC_ROUTES or (method == "HEAD" and ("GET", path) in PUBLIC_ROUTES):
        return None
    if path.startswith(ADMIN_PREFIXES):
        return "admin"
    if path == "/metrics":
        return "metrics"
    if path.startswith("/explain") or path.endswith("/explain"):
        return "explain"
    if method in ("GET", "HEAD", "OPTIONS"):
        return AUTHENTICATED
    return "predict"  # every other write: an endpoint, a V2 infer call, or a route that does not exist
