"""Model references and names: what parses, and what each mistake tells the user."""

from __future__ import annotations

import pytest

from kaon.errors import InvalidInputError
from kaon.registry import parse_ref


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("digits", ("digits", None)),
        ("digits@3", ("digits", "3")),
        ("digits@production", ("digits", "production")),
        ("digits@latest", ("digits", "latest")),
        ("resnet18_int8.v2@staging-eu", ("resnet18_int8.v2", "staging-eu")),
        ("9lives", ("9lives", None)),
        ("a" * 128, ("a" * 128, None)),
    ],
)
def test_parse_ref_splits_name_and_selector(ref: str, expected: tuple[str, str | None]) -> None:
    assert parse_ref(ref) == expected


@pytest.mark.parametrize(
    "ref",
    ["", "@3", "digits@", "digits@@3", "digits@3@4", "my model@1", "_x", "a" * 129, "digits@-1", "digits/1"],
)
def test_parse_ref_refuses_malformed_refs_and_shows_them(ref: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_ref(ref)
    assert repr(ref) in info.value.message
    assert info.value.status_code == 422


def test_parse_ref_refuses_non_strings() -> None:
    with pytest.raises(InvalidInputError, match="must be a string like 'digits@3'. Received: 3"):
        parse_ref(3)  # type: ignore[arg-type]
