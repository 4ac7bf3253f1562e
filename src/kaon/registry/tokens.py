"""API tokens in the registry, and the audit log of admin actions.

The registry stores what `kaon.security.generate_token()` hands it: a public id, a name, scopes,
limits and a salted hash. The token itself is never stored. Every change is one transaction that
also appends an event (`token.created`, `token.revoked`) naming who did it; those events, with
alias moves and version deletions, are the audit log::

    >>> store = Registry("sqlite:///:memory:").tokens             # doctest: +SKIP
    >>> store.create("ci", token_id="0123456789ab", secret_hash="scrypt$...", scopes=("predict",))  # doctest: +SKIP
"""

from __future__ import annotations

import builtins
import getpass
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from kaon.errors import InvalidInputError, NotFoundError
from kaon.registry._queries import log_event, now, utc
from kaon.registry._schema import EventRow, TokenRow
from kaon.registry._validation import check_limit, check_text

if TYPE_CHECKING:
    from kaon.registry.registry import Registry

#: Event kinds that are admin actions: what `audit_log` returns.
ADMIN_EVENT_KINDS = ("token.created", "token.revoked", "alias.moved", "version.deleted",
                     "deployment.created", "deployment.changed", "deployment.deleted")


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    scopes: tuple[str, ...]
    rate_per_s: float | None
    burst: int | None
    max_concurrent: int | None
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    secret_hash: str = field(repr=False, default="")

    def is_active(self, at: datetime | None = None) -> bool:
        at = at or now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > at)

    def status(self, at: datetime | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (at or now()):
            return "expired"
        return "active"


def current_actor() -> str:
    """Who runs this process, for the audit log (the OS user; KAON_ACTOR overrides it)."""
    import os

    actor = os.environ.get("KAON_ACTOR")
    if actor:
        return actor[:128]
    try:
        return getpass.getuser()[:128]
    except (OSError, KeyError):
        return "unknown"


class TokenStore:
    """Tokens of one Registry. Get it as `registry.tokens`."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def create(self, name: str, *, token_id: str, secret_hash: str, scopes: Sequence[str],
               rate_per_s: float | None = None, burst: int | None = None, max_concurrent: int | None = None,
               expires_in_s: float | None = None, actor: str | None = None) -> TokenRecord:
        """Store a new token. Names are unique among tokens that are not revoked."""
        check_text(name, "token name", max_length=128)
        if not scopes:
            raise InvalidInputError(f"a token needs at least one scope. Received: scopes={list(scopes)!r}")
        for label, value in (("burst", burst), ("max_concurrent", max_concurrent)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidInputError(f"{label} must be an integer >= 1. Received: {label}={value!r}")
        if rate_per_s is not None and not rate_per_s > 0:
            raise InvalidInputError(f"rate_per_s must be > 0. Received: rate_per_s={rate_per_s!r}")
        created = now()
        expires = created + timedelta(seconds=expires_in_s) if expires_in_s is not None else None
        actor = actor if actor is not None else current_actor()
        with self._registry._writing() as session:
            clash = session.scalars(
                select(TokenRow).where(TokenRow.name == name, TokenRow.revoked_at.is_(None))
            ).first()
            if clash is not None and _record(clash).is_active(created):
                raise InvalidInputError(
                    f"a token named '{name}' already exists (id {clash.token_id}). Received: name={name!r}. "
                    f"Pick another name, or revoke it first: kaon token revoke {name}."
                )
            row = TokenRow(token_id=token_id, name=name, scopes={"scopes": sorted(set(scopes))},
                           secret_hash=secret_hash, rate_per_s=rate_per_s, burst=burst,
                           max_concurrent=max_concurrent, created_by=actor, created_at=created,
                           expires_at=expires, revoked_at=None)
            session.add(row)
            session.flush()
            log_event(session, "token.created", f"token/{name}", {
                "token_id": token_id, "scopes": sorted(set(scopes)), "rate_per_s": rate_per_s,
                "burst": burst, "max_concurrent": max_concurrent,
                "expires_at": expires.isoformat() if expires else None, "actor": actor,
            })
            return _record(row)

    def revoke(self, name_or_id: str, actor: str | None = None) -> TokenRecord:
        """Revoke the active token with this name (or public id). Servers stop accepting it within seconds."""
        actor = actor if actor is not None else current_actor()
        with self._registry._writing() as session:
            rows = session.scalars(
                select(TokenRow).where(TokenRow.revoked_at.is_(None),
                                       (TokenRow.name == name_or_id) | (TokenRow.token_id == name_or_id))
            ).all()
            if not rows:
                known = [r.name for r in session.scalars(select(TokenRow).where(TokenRow.revoked_at.is_(None)))]
                shown = name_or_id if not name_or_id.startswith("kaon_") else name_or_id[:17] + "..."  # no secret
                raise NotFoundError(
                    f"no token named (or with id) {shown!r} that is not already revoked. "
                    f"Tokens: {', '.join(sorted(known)) or 'none'}. List them with: kaon token list."
                )
            revoked = now()
            for row in rows:
                row.revoked_at = revoked
                log_event(session, "token.revoked", f"token/{row.name}",
                          {"token_id": row.token_id, "actor": actor})
            return _record(rows[0])

    def list(self, include_revoked: bool = False) -> builtins.list[TokenRecord]:
        """Tokens, oldest first (hashes included in the records, never printed)."""
        query = select(TokenRow).order_by(TokenRow.id)
        if not include_revoked:
            query = query.where(TokenRow.revoked_at.is_(None))
        with self._registry._reading() as session:
            return [_record(row) for row in session.scalars(query)]

    def active(self) -> builtins.list[TokenRecord]:
        """Tokens a server accepts now: not revoked, not expired."""
        at = now()
        return [record for record in self.list() if record.is_active(at)]

    def audit_log(self, limit: int = 100) -> builtins.list[dict[str, Any]]:
        """The `limit` most recent admin actions, newest first: {id, time, kind, subject, payload}."""
        check_limit(limit)
        with self._registry._reading() as session:
            rows = session.scalars(
                select(EventRow).where(EventRow.kind.in_(ADMIN_EVENT_KINDS)).order_by(EventRow.id.desc()).limit(limit)
            )
            return [{"id": row.id, "time": utc(row.time), "kind": row.kind, "subject": row.subject,
                     "payload": row.payload} for row in rows]


def _record(row: TokenRow) -> TokenRecord:
    return TokenRecord(
        token_id=row.token_id, name=row.name, scopes=tuple((row.scopes or {}).get("scopes", [])),
        rate_per_s=row.rate_per_s, burst=row.burst, max_concurrent=row.max_concurrent,
        created_by=row.created_by, created_at=utc(row.created_at),
        expires_at=utc(row.expires_at) if row.expires_at else None,
        revoked_at=utc(row.revoked_at) if row.revoked_at else None, secret_hash=row.secret_hash,
    )
