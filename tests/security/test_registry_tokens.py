"""Tokens in the registry: only hashes stored, names unique among live tokens, revocation, the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaon.errors import InvalidInputError, NotFoundError
from kaon.registry import Registry
from kaon.security import generate_token, verify_secret


def create(registry: Registry, name: str, **options):
    new = generate_token()
    record = registry.tokens.create(name, token_id=new.token_id, secret_hash=new.secret_hash, **options)
    return new.token, record


def test_the_database_holds_the_hash_never_the_token(kaon_home: Path) -> None:
    with Registry() as registry:
        token, record = create(registry, "ci", scopes=("predict", "explain"), rate_per_s=50.0, burst=10)
        (active,) = registry.tokens.active()
    assert active.scopes == ("explain", "predict") and active.rate_per_s == 50.0 and active.burst == 10
    assert verify_secret(token, active.secret_hash)
    secret = token.split("_", 2)[2].encode()
    for path in kaon_home.glob("kaon.db*"):  # the database and its WAL
        assert secret not in path.read_bytes()
    assert "secret_hash" not in repr(record)


def test_names_are_unique_among_live_tokens_and_free_again_after_revocation() -> None:
    with Registry() as registry:
        create(registry, "ci", scopes=("predict",))
        with pytest.raises(InvalidInputError, match=r"already exists.*kaon token revoke ci"):
            create(registry, "ci", scopes=("predict",))
        revoked = registry.tokens.revoke("ci")
        assert revoked.revoked_at is not None and revoked.status() == "revoked"
        create(registry, "ci", scopes=("admin",))
        assert [t.scopes for t in registry.tokens.active()] == [("admin",)]
        assert len(registry.tokens.list(include_revoked=True)) == 2
        with pytest.raises(NotFoundError, match="no token named"):
            registry.tokens.revoke("nobody")


def test_revoke_by_public_id() -> None:
    with Registry() as registry:
        _, record = create(registry, "ci", scopes=("predict",))
        registry.tokens.revoke(record.token_id)
        assert registry.tokens.active() == []


def test_expired_tokens_are_not_active() -> None:
    with Registry() as registry:
        create(registry, "short", scopes=("predict",), expires_in_s=-1.0)
        create(registry, "long", scopes=("predict",), expires_in_s=3600.0)
        assert [t.name for t in registry.tokens.active()] == ["long"]
        assert {t.name: t.status() for t in registry.tokens.list()} == {"short": "expired", "long": "active"}


@pytest.mark.parametrize(("options", "message"), [
    ({"scopes": ()}, "at least one scope"),
    ({"scopes": ("predict",), "burst": 0}, "burst must be"),
    ({"scopes": ("predict",), "max_concurrent": -1}, "max_concurrent must be"),
    ({"scopes": ("predict",), "rate_per_s": 0.0}, "rate_per_s must be"),
])
def test_bad_token_options_are_refused(options: dict, message: str) -> None:
    with Registry() as registry, pytest.raises(InvalidInputError, match=message):
        create(registry, "ci", **options)


def test_the_audit_log_records_who_did_what(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KAON_ACTOR", "alice")
    with Registry() as registry:
        _, record = create(registry, "ci", scopes=("predict",))
        registry.tokens.revoke("ci")
        for index in (1, 2):
            weights = tmp_path / f"model{index}.onnx"
            weights.write_bytes(b"weights %d" % index)
            registry.register_version("digits", {"model.onnx": weights}, framework="onnx")
        registry.set_alias("digits", "production", 1)
        registry.create_run("not-an-admin-action")
        log = registry.tokens.audit_log()
    assert [e["kind"] for e in log] == ["alias.moved", "token.revoked", "token.created"]
    assert log[1]["payload"] == {"token_id": record.token_id, "actor": "alice"}
    assert log[2]["payload"]["actor"] == "alice" and log[2]["payload"]["scopes"] == ["predict"]
    assert all("hash" not in str(e["payload"]) for e in log)
