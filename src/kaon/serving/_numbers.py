"""JSON numbers as arrays: what every path that decodes a JSON tensor checks (the per-item validator of
`kaon.serving.tensors` and the V2 JSON tensors). numpy casts too much without a word: "0.5" and true to a float,
1.7 and true to an int, null to NaN; each is a ValueError here that says what was received and what is expected.

    >>> numbers_to_array([[1, 2.5]], np.dtype("float32"), "numbers").tolist()
    [[1.0, 2.5]]
"""

from __future__ import annotations

import warnings
from itertools import chain
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydantic_core import SchemaValidator, core_schema

# A number too large for a float32 input becomes infinity in the cast and is refused as not finite (a 422):
# numpy's warning of it would be a line in the server's log per bad request's first sighting, with no request id
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, module=__name__)


def numbers_to_array(value: Any, dtype: np.dtype, expected: str) -> np.ndarray:
    """JSON numbers (nested lists) as an array of `dtype`, or ValueError saying what is wrong: ragged or
    non-numeric values, strings or booleans among numbers, null/NaN/infinity or a value too large for a float
    dtype, a fraction or an out-of-range value for an integer dtype. `expected` names the shape wanted, for the
    message."""
    integers = dtype.kind in "iu"
    try:
        array = np.asarray(value, dtype=None if integers or dtype.kind == "b" else dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ValueError(f"expected {expected}. Received: a ragged or non-numeric value ({exc}).") from exc
    if integers:
        return _as_integers(array, dtype, value)
    if dtype.kind == "b":
        if array.dtype.kind != "b" and not (array.dtype.kind in "iu" and np.isin(array, (0, 1)).all()):
            raise ValueError(f"expected booleans (true/false, or 0/1). Received: {array.dtype} values.")
        return array.astype(bool, copy=False)
    odd = _non_numbers(value)
    if odd is not None:
        fix = 'numbers without quotes: 0.5, not "0.5"' if odd == "strings" else "1 and 0, not true and false"
        raise ValueError(f"expected numbers ({dtype}). Received: {odd}. Send {fix}.")
    check_finite(array)
    return array


# One strict validator per nesting depth: JSON numbers pass, a string or a boolean does not. pydantic-core checks a
# number in ~9 ns where set(map(type, ...)) takes ~20 (784 numbers: +8 us instead of +17, on np.asarray's 17)
_NUMBER_LISTS: dict[int, SchemaValidator] = {}
_MAX_CHECKED_DEPTH = 8


def _number_lists(depth: int) -> SchemaValidator:
    validator = _NUMBER_LISTS.get(depth)
    if validator is None:
        schema: core_schema.CoreSchema = core_schema.float_schema(strict=True)  # an int is a float; bool, str not
        for _ in range(depth):
            schema = core_schema.list_schema(schema)
        validator = _NUMBER_LISTS[depth] = SchemaValidator(schema)
    return validator


def _non_numbers(value: Any) -> str | None:
    """'strings' or 'booleans' when nested lists that np.asarray took as an array (so regular) hold any: numpy
    casts "0.5" and true to a float, and true to an int, without a word. None when all are numbers (or values of
    other kinds, such as null, that the caller's own checks word)."""
    depth, first = 0, value
    while type(first) is list and first:
        depth, first = depth + 1, first[0]
    if depth <= _MAX_CHECKED_DEPTH:
        try:
            _number_lists(depth).validate_python(value)
            return None  # the common case: numbers only
        except ValidationError:
            pass  # which kind it is, and whether it is one of these, is read below
    if type(value) is not list:
        kinds = {type(value)}
    elif not value or type(value[0]) is not list:
        kinds = set(map(type, value))
    else:  # lists of lists: flattened down to the last level, whose values are read without a list of them
        while value[0] and type(value[0][0]) is list:
            value = list(chain.from_iterable(value))
        kinds = set(map(type, chain.from_iterable(value)))
    if str in kinds or np.str_ in kinds:
        return "strings"
    if bool in kinds or np.bool_ in kinds:
        return "booleans"
    return None


def check_finite(array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"expected finite numbers ({array.dtype}). Received: null, NaN, infinity, or a value too "
                         f"large for {array.dtype}.")


def _as_integers(array: np.ndarray, dtype: np.dtype, value: Any = None) -> np.ndarray:
    """JSON values for an integer input: whole numbers within `dtype`'s range (2.0 is one), never a cast
    without a word of 1.7 to 1, or of "1" and true to 1. `value`: what `array` was made of, where a boolean
    among numbers may hide (numpy makes [true, 2] an int64 array)."""
    if value is not None and array.dtype.kind in "iuf" and _non_numbers(value) == "booleans":
        raise ValueError(f"expected integers ({dtype}). Received: booleans. Send whole numbers, such as token ids.")
    whole = array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all()
    if array.dtype.kind == "O" and all(type(v) is int for v in array.flat):  # past 64 bits, numpy keeps Python ints
        info = np.iinfo(dtype)
        raise ValueError(f"expected integers within {dtype}'s range [{info.min}, {info.max}]. Received: values "
                         f"from {min(array.flat)} to {max(array.flat)}.")
    if array.dtype.kind not in "iu" and not whole:  # 2.0 is a whole number; its range is checked below
        kind = {"f": "numbers with a fraction", "b": "booleans", "U": "strings"}.get(
            array.dtype.kind, "non-integer values")
        raise ValueError(f"expected integers ({dtype}). Received: {kind}. Send whole numbers, such as token ids.")
    if array.size and array.dtype != dtype:
        info = np.iinfo(dtype)
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise ValueError(f"expected integers within {dtype}'s range [{info.min}, {info.max}]. "
                             f"Received: values from {low} to {high}.")
    return array.astype(dtype, copy=False)
