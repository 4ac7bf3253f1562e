"""kaon.security: API tokens (hashed, scoped, rate-limited), route scopes, security headers and TLS.

Pure parts only: the registry stores tokens (`kaon.registry.tokens`), serving enforces them
(`kaon.serving.guards`).
"""

from kaon.security.headers import cors_headers, security_headers
from kaon.security.ratelimit import Bucket, RateLimit
from kaon.security.routes import AUTHENTICATED, PUBLIC_ROUTES, required_scope
from kaon.security.tls import check_tls_files
from kaon.security.tokens import (
    SCOPES,
    NewToken,
    bearer_token,
    generate_token,
    has_scope,
    hash_secret,
    parse_duration_s,
    parse_rate,
    parse_scopes,
    token_id_of,
    verify_secret,
)

__all__ = [
    "AUTHENTICATED", "PUBLIC_ROUTES", "SCOPES", "Bucket", "NewToken", "RateLimit", "bearer_token",
    "check_tls_files", "cors_headers", "generate_token", "has_scope", "hash_secret", "parse_duration_s",
    "parse_rate", "parse_scopes", "required_scope", "security_headers", "token_id_of", "verify_secret",
]
