"""Model references: `name` (the latest version), `name@3` (a version), `name@production` (an alias).

    >>> parse_ref("digits@production")
    ('digits', 'production')
"""

from __future__ import annotations

from kaon.config import NAME_EXPECTED, NAME_PATTERN
from kaon.errors import InvalidInputError

LATEST = "latest"


def check_name(value: object, what: str = "model name") -> str:
    """Return `value` if it is a valid name, else raise InvalidInputError saying what was wrong."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidInputError(
            f"{what} must be {NAME_EXPECTED}. Received: {value!r}. "
            "Rename it, e.g. 'digits-mlp' or 'resnet18_int8'.",
            fields=[{"name": what, "expected": NAME_PATTERN.pattern, "received": repr(value)}],
        )
    return value


def check_alias(value: object) -> str:
    """An alias is a name that is not a number (a number selects a version)."""
    alias = check_name(value, "alias")
    if alias.isdigit():
        raise InvalidInputError(
            f"alias must not be a number: 'name@{alias}' already means version {alias}. "
            f"Received: alias={alias!r}. Use a word such as 'production' or 'staging'."
        )
    return alias


def check_settable_alias(value: object) -> str:
    """An alias a user may point: `check_alias`, and not 'latest', which the registry keeps."""
    alias = check_alias(value)
    if alias == LATEST:
        raise InvalidInputError(
            "alias 'latest' is kept by the registry: it always points at the newest version. "
            f"Received: alias={alias!r}. Use another alias, e.g. 'production'."
        )
    return alias


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split 'name@selector' into (name, selector); a bare name gives (name, None).

    The selector is a version number ('3') or an alias ('production', 'latest').
    """
    if not isinstance(ref, str):
        raise InvalidInputError(f"a model reference must be a string like 'digits@3'. Received: {ref!r}")
    name, sep, selector = ref.partition("@")
    if NAME_PATTERN.fullmatch(name) and (not sep or NAME_PATTERN.fullmatch(selector)):
        return name, selector if sep else None
    raise InvalidInputError(
        f"a model reference is 'name', 'name@<version>' or 'name@<alias>', where name and alias are "
        f"{NAME_EXPECTED}. Received: {ref!r}. Expected e.g. 'digits', 'digits@3' or 'digits@production'."
    )
