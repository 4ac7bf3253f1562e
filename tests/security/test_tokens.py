"""Tokens: format, salted scrypt hashes, constant-time verification, and how scopes, rates and lifetimes parse."""

from __future__ import annotations

import pytest

from kaon.errors import InvalidInputError
from kaon.security import (
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


def test_a_token_verifies_against_its_hash_and_nothing_else_does() -> None:
    new = generate_token()
    assert new.token.startswith(f"kaon_{new.token_id}_")
    assert verify_secret(new.token, new.secret_hash)
    other = generate_token()
    assert not verify_secret(other.token, new.secret_hash)
    assert not verify_secret(new.token[:-1] + ("A" if new.token[-1] != "A" else "B"), new.secret_hash)
    assert not verify_secret(new.token, "not-a-hash")
    assert not verify_secret(new.token, "bcrypt$1$2$3$x$y")


def test_the_stored_hash_is_salted_scrypt_and_holds_no_part_of_the_secret() -> None:
    new = generate_token()
    secret = new.token.split("_", 2)[2]
    assert new.secret_hash.startswith("scrypt$16384$8$1$")
    assert secret not in new.secret_hash
    # the same token hashed twice gives two different hashes (a random salt each time); both verify
    again = hash_secret(new.token)
    assert again != new.secret_hash
    assert verify_secret(new.token, again)


def test_token_id_only_from_well_formed_tokens() -> None:
    new = generate_token()
    assert token_id_of(new.token) == new.token_id
    for bad in ["", "kaon_", "Bearer " + new.token, new.token + "x", new.token.replace("kaon_", "kaon-"),
                "kaon_ABCDEF012345_" + "a" * 43]:
        assert token_id_of(bad) is None, bad


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None
    assert bearer_token(None) is None


def test_scopes_parse_and_admin_implies_every_scope() -> None:
    assert parse_scopes("predict, explain") == ("explain", "predict")
    assert parse_scopes(["admin"]) == ("admin",)
    with pytest.raises(InvalidInputError, match=r"unknown: write.*--scopes predict,explain"):
        parse_scopes("predict,write")
    with pytest.raises(InvalidInputError):
        parse_scopes(" , ")
    assert has_scope(("admin",), "predict") and has_scope(("admin",), "metrics")
    assert has_scope(("predict",), "predict") and not has_scope(("predict",), "explain")


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                               ("2w", 14 * 86400), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize(("text", "per_s"), [("50/s", 50.0), ("3000/min", 50.0), ("360/h", 0.1), ("2.5/sec", 2.5)])
def test_rates(text: str, per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(per_s)


@pytest.mark.parametrize("text", ["50", "50/day", "0/s", "-1/s", "fast"])
def test_bad_rates_say_what_is_expected(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"e\.g\. 50/s"):
        parse_rate(text)


@pytest.mark.parametrize("text", ["30", "0d", "3y", ""])
def test_bad_durations_say_what_is_expected(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"e\.g\. 30d"):
        parse_duration_s(text)
