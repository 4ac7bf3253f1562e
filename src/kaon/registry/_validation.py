"""Argument checks shared by the Registry's methods: one wording for each kind of mistake."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaon.errors import InvalidInputError


def check_text(value: object, what: str, *, max_length: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > max_length or not value.isprintable():
        raise InvalidInputError(
            f"{what} must be a non-empty printable string of at most {max_length} characters. "
            f"Received: {value!r}"
        )
    return value


MAX_ID = 2**31 - 1  # the INTEGER columns hold 32 bits on PostgreSQL


def check_run_id(run_id: object) -> int:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 1 <= run_id <= MAX_ID:
        raise InvalidInputError(
            f"a run id is an integer between 1 and {MAX_ID}, e.g. 3. Received: run_id={run_id!r}"
        )
    return run_id


def check_limit(limit: object) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidInputError(f"limit must be an integer >= 1. Received: limit={limit!r}")


def check_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_ID:
        raise InvalidInputError(
            f"a version is an integer between 1 and {MAX_ID}. Received: version={version!r}"
        )
    return version


def to_float(key: str, value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]  # numpy and torch scalars convert too
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"metric '{key}' must be a number. Received: {value!r} ({type(value).__name__}). "
            "Log a float, e.g. loss.item()."
        ) from exc


def to_json(value: object, what: str) -> dict[str, Any]:
    """A plain-JSON copy of `value` (numpy scalars and arrays and paths converted), or a clear error."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{what} must be a dict. Received: {type(value).__name__} {value!r:.200}")
    try:
        return json.loads(json.dumps(dict(value), default=json_default, allow_nan=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{what} must hold only JSON values (str, finite numbers, bool, None, lists, dicts). "
            f"Received: {value!r:.200} ({exc}). Convert the offending value, e.g. str(x) or float(x)."
        ) from exc


def json_default(value: object) -> Any:
    if isinstance(value, Path):
        return str(value)
    for method in ("tolist", "item"):  # numpy arrays and scalars, torch tensors
        if callable(getattr(value, method, None)):
            return getattr(value, method)()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
