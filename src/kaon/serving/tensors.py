"""Endpoint parameter types for arrays and images.

`Image(28, 28)` accepts, per item, a nested array `(28, 28)`, `(1, 28, 28)` or `(28, 28, 1)`, or a
base64 PNG/JPEG string (a `data:` URI too); the endpoint receives a float32 numpy array
`(C, H, W)`. Pixels from PNG/JPEG are scaled to [0, 1]; arrays are used as sent.
An item shape of `(H, W, C)` (Keras' channels-last) is kept channels-last.
`Tensor((10,))` accepts a nested array of that shape (-1 = any size).
"""

from __future__ import annotations

import base64
import binascii
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import PlainSerializer, PlainValidator, WithJsonSchema

from kaon.serving._numbers import check_finite as _check_finite
from kaon.serving._numbers import numbers_to_array
from kaon.serving.images import EncodedImage, decode_image_bytes
from kaon.serving.service import BATCH_ALIAS

# A number too large for a float32 input becomes infinity in the cast and is refused as not finite (a 422):
# numpy's warning of it would be a line in the server's log per bad request's first sighting, with no request id
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, module=__name__)
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, module=__name__)  # the same, in
# _parsed_floats' range check: a sum of squares past float64's range is refused, as it should be, without a line


def _from_base64(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            f"expected a nested array or a base64-encoded PNG/JPEG string. Received a string of "
            f"{len(text)} characters that is not valid base64."
        ) from exc


def _array_validator(shape: tuple[int, ...], dtype: str, image: bool, encoded: bool = False) -> Any:
    want = tuple(shape)
    channels_last = _channels_last(want, image)

    def matches(got: tuple[int, ...]) -> bool:
        return len(got) == len(want) and all(w in (-1, g) for w, g in zip(want, got, strict=True))

    def validate(value: Any) -> np.ndarray | EncodedImage:
        if isinstance(value, np.ndarray):
            array = value
        elif isinstance(value, (str, bytes)):
            if not image:
                raise ValueError(f"expected a nested array of shape {list(want)}. Received: a string.")
            raw = value if isinstance(value, bytes) else _from_base64(value)
            if encoded:  # JPEGs stay bytes until their batch is decoded where the model runs
                size = (want[0], want[1]) if channels_last else (want[1], want[2])
                channels = want[2] if channels_last else want[0]
                lazy = EncodedImage.check(raw, channels, size, channels_last)
                if lazy is not None:
                    return lazy
            if channels_last:
                return decode_image_bytes(raw, want[2], (want[0], want[1])).transpose(1, 2, 0)
            return decode_image_bytes(raw, want[0], (want[1], want[2]))
        else:
            array = numbers_to_array(value, np.dtype(dtype), f"a nested array of numbers with shape {list(want)}")
        if array.dtype != np.dtype(dtype):
            array = array.astype(dtype)
        _check_finite(array)
        got = tuple(array.shape)
        if matches(got):
            return array
        laid_out = _image_layout(array, got, want, channels_last, 0) if image else None
        if laid_out is not None:
            return laid_out
        raise ValueError(f"expected shape {list(want)}. Received: shape {list(got)}.")

    return validate


def _channels_last(want: tuple[int, ...], image: bool) -> bool:
    """An image item is (C, H, W), or (H, W, C) as Keras models take it."""
    return image and want[0] not in (1, 3) and want[-1] in (1, 3)


def _other_layout(got: tuple[int, ...], want: tuple[int, ...], channels_last: bool) -> str | None:
    """How an image item of shape `got` becomes the layout `want` takes: "axis" (an (H, W) image for one
    channel), "channels" (the channels at the other end), or None when `got` is neither."""
    if len(want) != 3 or len(got) not in (2, 3):  # an image item is (C, H, W) or (H, W, C); else no other layout
        return None
    h, w, c = want if channels_last else (want[1], want[2], want[0])
    if c == 1 and got == (h, w):
        return "axis"
    return "channels" if got == ((c, h, w) if channels_last else (h, w, c)) else None


def _image_layout(array: np.ndarray, got: tuple[int, ...], want: tuple[int, ...], channels_last: bool,
                  lead: int) -> np.ndarray | None:
    """`array` (`lead` batch axes, then an item of shape `got`) with items in the layout `want` takes, when
    `got` is one of the other layouts an image item may come in (see `_other_layout`). None otherwise."""
    how = _other_layout(got, want, channels_last)
    return None if how is None else _relayout(how, channels_last, lead)(array)


def _relayout(how: str, channels_last: bool, lead: int) -> Callable[[np.ndarray], np.ndarray]:
    """The function that lays an array out as `_other_layout`'s `how` says (`lead`: its batch axes, 0 or 1)."""
    if how == "axis":
        if channels_last:
            return lambda array: array[..., None]
        return (lambda array: array[:, None]) if lead else (lambda array: array[None])  # expand_dims: 2 us more
    if channels_last:
        return lambda array: np.moveaxis(array, lead, -1)
    return lambda array: np.moveaxis(array, -1, lead)


def item_shape_accepted(info: TensorInfo, got: tuple[int, ...]) -> bool:
    """Whether one item of shape `got` is what a parameter of `info` takes, in any layout it accepts."""
    want = info.shape
    if len(got) == len(want) and all(w in (-1, g) for w, g in zip(want, got, strict=True)):
        return True
    return info.image and _other_layout(got, want, _channels_last(want, True)) is not None


def _array_schema(shape: tuple[int, ...], dtype: str, image: bool) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "number" if np.dtype(dtype).kind == "f" else "integer"}
    for dim in reversed(shape):
        schema = {"type": "array", "items": schema}
        if dim != -1:
            schema["minItems"] = schema["maxItems"] = dim
    if image:
        return {"anyOf": [schema, {"type": "string", "contentEncoding": "base64",
                                   "description": "a PNG or JPEG image, base64-encoded"}]}
    return schema


def _serialize(array: np.ndarray) -> Any:
    return array.tolist()


def numpy_to_json(value: Any) -> Any:
    """For pydantic's `dump_json(fallback=)`: numpy arrays and scalars in an endpoint's answer (under a `dict`,
    `Any` or `list[float]` return type) become lists and numbers instead of failing the request."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"a {type(value).__name__} is not JSON; return numbers, strings, lists, dicts or numpy arrays")


@dataclass(frozen=True)
class TensorInfo:
    """What a Tensor/Image parameter type takes, kept in its Annotated metadata (see `tensor_info`)."""

    shape: tuple[int, ...]
    dtype: str
    image: bool
    encoded: bool = False


def Tensor(shape: tuple[int, ...], dtype: str = "float32", image: bool = False,  # noqa: N802
           encoded: bool = False) -> Any:
    """A parameter type for one array of `shape` (one item of a batch), received as a numpy array.
    `encoded=True` (images only): a JPEG arrives as a `kaon.serving.images.EncodedImage`, its header
    checked, for the endpoint to decode with its batch (`images.decode_batch`, on a GPU)."""
    return Annotated[
        Any,
        PlainValidator(_array_validator(tuple(shape), dtype, image, encoded and image)),
        PlainSerializer(_serialize, when_used="json"),
        WithJsonSchema(_array_schema(tuple(shape), dtype, image)),
        TensorInfo(tuple(shape), dtype, image, encoded and image),
    ]


def tensor_info(tp: Any) -> TensorInfo | None:
    return next((meta for meta in getattr(tp, "__metadata__", ()) if isinstance(meta, TensorInfo)), None)


def batch_fast_path(param: str, info: TensorInfo, simd: bool = True) -> Callable[[bytes], list[np.ndarray] | None]:
    """A decoder for the common body `{param: [item, ...]}` of well-formed numbers, or None to say "not
    that case": the endpoint's own validation then decides, and words the error. Same result as the
    per-item validator (`np.asarray(item, dtype)`, finite, the exact item shape) at about half the cost:
    one orjson parse and one array for the whole batch instead of a pydantic pass and one per item.
    A float item of a fixed shape is parsed by simdjson where it is installed (`_parsed_floats`; `simd=False`:
    orjson's path all the same)."""
    want, dtype = info.shape, np.dtype(info.dtype)
    if dtype.kind not in "iuf" or not want:
        # numpy casts any value to a bool, and a lone "1.5" to a number: the validator decides those
        return lambda body: None
    # orjson gives finite numbers, but numpy makes NaN of a null, and a cast to a narrower float can overflow
    check_finite = dtype.kind == "f"
    integers = dtype.kind in "iu"  # numpy would cast 1.7, "1" and true: the validator decides those
    fixed = -1 not in want  # the item shape is one tuple comparison (each a microsecond matters here)
    image, channels_last = info.image, _channels_last(want, info.image)
    # an image may come as (H, W) or with its channels at the other end, as the validator takes it: each item shape
    # taken, found once (a dict lookup per request instead of _image_layout's checks), with how a batch of it is
    # laid out as want: None for a reshape (want itself, or an image without its one channel's axis), else the
    # function that moves the channels
    layouts: dict[tuple[int, ...], Callable[[np.ndarray], np.ndarray] | None] = {want: None}
    if image and len(want) == 3:
        for other in {want[1:], want[:2], (*want[1:], want[0]), (want[2], *want[:2])}:
            how = _other_layout(other, want, channels_last)
            if how is not None:
                layouts[other] = None if how == "axis" else _relayout(how, channels_last, 1)
    if simd and dtype.kind == "f" and fixed:
        parsed = _parsed_floats(param, want, dtype, layouts)
        if parsed is not None:
            return parsed
    isfinite, all_of = np.isfinite, np.logical_and.reduce

    def decode(body: bytes) -> list[np.ndarray] | None:
        # numpy casts "0.5" and true to a float, and true to an int (a string fails an int's dtype check below): a
        # string or a boolean in the array is the validator's to refuse. Past the array's first bracket, numbers
        # have no quote, t or f (memchr each: 0.2-0.4 us on an 8x8 body, where `in` and count took 1.1 us)
        start = body.find(b"[")
        if (body.find(b"t", start) >= 0 or body.find(b"f", start) >= 0
                or (not integers and body.find(b'"', start) >= 0)):
            return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not dict or len(data) != 1:
            return None
        items = data.get(param)
        if items is None:
            items = data.get(BATCH_ALIAS)  # every batched endpoint takes {"inputs": [...]} too
        if type(items) is not list or not items:
            return None
        try:
            batch = np.asarray(items, dtype=None if integers else dtype)
        except (ValueError, TypeError, OverflowError):
            return None
        if integers and batch.dtype != dtype:
            return None
        got = batch.shape[1:]
        if got != want and (fixed or len(got) != len(want)
                            or any(w not in (-1, g) for w, g in zip(want, got, strict=True))):
            if got not in layouts:
                return None
            mover = layouts[got]
            batch = batch.reshape(len(batch), *want) if mover is None else mover(batch)
        if check_finite and not all_of(isfinite(batch), axis=None):
            return None
        return list(batch)

    return decode


# What a JSON number and the whitespace between values are made of: deleted, a document of nested arrays of numbers
# leaves its skeleton of brackets and commas, which says whether the arrays are regular and of which shape
_NUMBER_BYTES = b"0123456789+-.eE \t\n\r"
_SKELETON_CACHE_BYTES = 4 * 1024 * 1024  # body skeletons whose layout is kept, per endpoint


def _parsed_floats(param: str, want: tuple[int, ...], dtype: np.dtype[Any],
                   layouts: dict[tuple[int, ...], Callable[[np.ndarray], np.ndarray] | None],
                   ) -> Callable[[bytes], list[np.ndarray] | None] | None:
    """`batch_fast_path` for a float item of a fixed shape, with simdjson (pysimdjson): the numbers go from the
    body to one float64 buffer without a Python float each, 2-3x faster than orjson + `np.asarray` (a 28x28
    item: 12 us instead of 36; 8x8: 2 us instead of 4.6). simdjson validates the document, numbers included, as
    strictly as JSON says; `as_buffer` flattens nested arrays whatever their shape, so the shape is checked on
    the body's skeleton. `layouts`: each item shape taken, and how a batch of it becomes `want`'s layout (None:
    a reshape). None when pysimdjson is not installed (the orjson decoder is used)."""
    try:
        import simdjson
    except ImportError:
        return None
    parser = simdjson.Parser()
    object_type, array_type = simdjson.Object, simdjson.Array
    prefixes = {key: f'{{"{key}":'.encode().translate(None, _NUMBER_BYTES) for key in (param, BATCH_ALIAS)}
    # a body's skeleton (numbers and whitespace deleted) -> its items' shape, how they are laid out as want, and
    # the count of numbers: the same skeleton means the same batch size and item shape, so a client sending the
    # same batch again pays one dict lookup
    known: dict[bytes, tuple[tuple[int, ...], Callable[[np.ndarray], np.ndarray] | None, int]] = {}
    cached = [0]  # their bytes: a client sending every batch size cannot grow the cache past the bound
    narrow = dtype != np.float64  # float64 takes every number simdjson parses (it refuses 1e400)
    largest = float(np.finfo(dtype).max)
    limit = largest ** 2 if narrow else math.inf

    def layout_of(frame: bytes, key: str, count: int, numbers: int,
                  ) -> tuple[tuple[int, ...], Callable[[np.ndarray], np.ndarray] | None, int] | None:
        """The layout whose skeleton `frame` is, for `count` items of `numbers` numbers in all; None if none."""
        prefix = prefixes[key]
        if not frame.startswith(prefix) or frame[-1:] != b"}":
            return None
        skeleton = frame[len(prefix):-1]
        for shape, mover in layouts.items():
            if count * math.prod(shape) == numbers and skeleton == _skeleton((count, *shape)):
                if cached[0] + len(frame) <= _SKELETON_CACHE_BYTES:
                    known[frame] = (shape, mover, numbers)
                    cached[0] += len(frame)
                return shape, mover, numbers
        return None

    def decode(body: bytes) -> list[np.ndarray] | None:
        try:
            document = parser.parse(body)
        except (ValueError, RuntimeError):  # not JSON, a number out of range: the validator words the error
            return None
        try:  # document and arrays refer to the parser's memory: they are released before the next parse
            if type(document) is not object_type or len(document) != 1:
                return None
            key = param
            items = document.get(param)
            if items is None:
                key = BATCH_ALIAS
                items = document.get(BATCH_ALIAS)  # every batched endpoint takes {"inputs": [...]} too
            if type(items) is not array_type or not len(items):
                return None
            count = len(items)
            try:
                flat = np.frombuffer(items.as_buffer(of_type="d"), np.float64)  # a copy: it outlives the parser
            except (TypeError, ValueError, RuntimeError):  # a string, null, bool or object among the numbers
                return None
        finally:
            document = items = None
        frame = body.translate(None, _NUMBER_BYTES)
        layout = known.get(frame) or layout_of(frame, key, count, len(flat))
        if layout is None:
            return None
        shape, mover, numbers = layout
        if len(flat) != numbers:  # "[]" is also the skeleton of "[5]": an empty array is not one
            return None
        # a number past the dtype's range would cast to infinity: the sum of squares says none is (0.4 us), or
        # else the largest magnitude decides (1 us; float16's range is soon summed past)
        if narrow and not flat.dot(flat) <= limit and not np.abs(flat).max() <= largest:
            return None
        if mover is None:  # want's layout, or an image without its one channel's axis: a reshape to want
            if count == 1:  # most requests: one array, not a batch of one to split (0.5 us)
                return [flat.astype(dtype).reshape(want)]
            return list(flat.astype(dtype).reshape(count, *want))  # writable arrays, as the validator's
        return list(mover(flat.astype(dtype).reshape(count, *shape)))

    return decode


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a regular nested array of `shape` written as JSON."""
    if not shape:
        return b""
    inner = _skeleton(shape[1:])
    return b"[" + b",".join([inner] * shape[0]) + b"]"


def Image(height: int, width: int, channels: int = 1, encoded: bool = False) -> Any:  # noqa: N802
    """A parameter type for one image: nested array or base64 PNG/JPEG in, float32 (C, H, W) out.
    `encoded=True`: JPEGs arrive as `EncodedImage`s for `kaon.serving.images.decode_batch` (see Tensor)."""
    return Tensor((channels, height, width), "float32", image=True, encoded=encoded)


def is_image_type(tp: Any) -> bool:
    for meta in getattr(tp, "__metadata__", ()):
        schema = getattr(meta, "json_schema", None)
        if isinstance(schema, dict) and "anyOf" in schema:
            return True
    return False
