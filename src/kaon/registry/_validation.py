"""Argument checks shared by the Registry's methods: one wording for each kind of mistake."""

from __future__ import annotations

import json
import math
import numbers
import sys
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


_MAX_FLOAT = sys.float_info.max


def to_metrics(metrics: object, *, finite: bool) -> dict[str, float]:
    """`metrics` as {name: int or float}, or InvalidInputError naming the first value that is not a number.

    A run's curve may hold NaN and infinity (a diverged loss is worth seeing), so `finite=False` keeps them;
    a version's metrics are what versions are compared by, and are stored as JSON: `finite=True` refuses them.
    """
    if not isinstance(metrics, Mapping):
        raise InvalidInputError(
            f"metrics must be a dict of name -> number, e.g. {{'loss': 0.25}}. Received: {metrics!r:.200}"
        )
    return {check_text(key, "metric name", max_length=255): to_number(key, value, finite=finite)
            for key, value in metrics.items()}


def to_number(key: str, value: object, *, finite: bool) -> float:
    """A metric value as a plain int or float. Numpy scalars and 0-d arrays or tensors convert; text, bools,
    None, containers and arrays of more than one dimension do not, whatever float() would make of them."""
    number: Any = value
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        number = number.item()  # np.float32(0.5), np.array(0.5), torch.tensor(0.5)
    if isinstance(number, numbers.Real) and not isinstance(number, bool):
        if isinstance(number, numbers.Integral) and abs(int(number)) <= _MAX_FLOAT:
            return int(number)
        try:
            number = float(number)
        except OverflowError:  # an int beyond float's range: stored like 1e400
            number = math.inf if number > 0 else -math.inf
        if finite and not math.isfinite(number):
            raise InvalidInputError(
                f"metric '{key}' must be a finite number: a model version is compared with others by its "
                f"metrics, and NaN or infinity compares with nothing. Received: {value!r:.100}. Register the "
                "version without that metric, or evaluate the model again, e.g. on more samples."
            )
        return number
    hint = (" (for a yes/no, log float(x): 1.0 or 0.0)" if isinstance(number, bool)
            else " (for a tensor or array of one value, pass x.item())" if getattr(value, "ndim", 0) else "")
    raise InvalidInputError(
        f"metric '{key}' must be a number: an int, a float, a numpy scalar or a 0-d tensor{hint}. "
        f"Received: {value!r:.100} ({type(value).__name__}). Pass a float, e.g. loss.item() or float(x)."
    )


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
