"""API tokens: how they look, how they are hashed, and how scopes, rates and lifetimes are written.

A token is `kaon_<id>_<secret>`: the 12-hex-digit id is public (it finds the stored row without
hashing anything), the secret is 32 random bytes. Only `hash_secret(secret)` is ever stored: scrypt
with a per-token salt, compared in constant time::

    >>> new = generate_token()
    >>> verify_secret(new.token, new.secret_hash)
    True
    >>> verify_secret(new.token + "x", new.secret_hash)
    False
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from kaon.errors import InvalidInputError

#: What a token may do. `admin` implies every other scope.
SCOPES = ("predict", "explain", "metrics", "admin")
PREFIX = "kaon_"
_TOKEN_RE = re.compile(r"^kaon_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
# scrypt cost: ~16 MiB and ~20-50 ms per hash. Verification happens once per token per cache TTL.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024
_DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RATE_UNITS_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


@dataclass(frozen=True)
class NewToken:
    """A freshly made token: `token` is shown once and never stored; `secret_hash` is what is stored."""

    token: str
    token_id: str
    secret_hash: str


def generate_token() -> NewToken:
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)  # 43 characters
    token = f"{PREFIX}{token_id}_{secret}"
    return NewToken(token, token_id, hash_secret(token))


def token_id_of(token: str) -> str | None:
    """The public id inside a well-formed token, else None (a malformed token never reaches scrypt)."""
    match = _TOKEN_RE.match(token)
    return match.group(1) if match else None


def hash_secret(token: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$salt$hash` (base64) of the whole token string."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(token.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(digest)])


def verify_secret(token: str, stored: str) -> bool:
    """True when `token` hashes to `stored`; the comparison takes the same time wherever they differ."""
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest)
        actual = hashlib.scrypt(token.encode(), salt=base64.urlsafe_b64decode(salt), n=int(n), r=int(r),
                                p=int(p), maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def parse_scopes(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'predict,explain' -> ('explain', 'predict'); raises InvalidInputError naming the known scopes."""
    items = text.split(",") if isinstance(text, str) else list(text)
    scopes = sorted({s.strip().lower() for s in items if s.strip()})
    unknown = [s for s in scopes if s not in SCOPES]
    if not scopes or unknown:
        raise InvalidInputError(
            f"scopes must be a comma-separated list of {', '.join(SCOPES)}. Received: {text!r}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            + ". Example: --scopes predict,explain"
        )
    return tuple(scopes)


def has_scope(scopes: tuple[str, ...] | frozenset[str], needed: str) -> bool:
    return needed in scopes or "admin" in scopes


def parse_duration_s(text: str) -> float:
    """'30d', '12h', '90m', '45s', '2w' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise InvalidInputError(
            f"a duration is a positive number and a unit s, m, h, d or w, e.g. 30d or 12h. Received: {text!r}"
        )
    return float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]


def parse_rate(text: str) -> float:
    """'50/s', '3000/min', '100/h' -> requests per second."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*", (text or "").lower())
    if not match or match.group(2) not in _RATE_UNITS_S or float(match.group(1)) <= 0:
        raise InvalidInputError(
            f"a rate is a positive number of requests per s, min or h, e.g. 50/s or 3000/min. Received: {text!r}"
        )
    return float(match.group(1)) / _RATE_UNITS_S[match.group(2)]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()
