from __future__ import annotations

from typing import Any

import numpy as np
import pydantic
import pytest

import kaon
from kaon.errors import ConfigError
from kaon.serving.service import endpoint_specs
from kaon.testing import ServiceContractError, check_service

Image8 = kaon.Image(8, 8)


class Prediction(pydantic.BaseModel):
    label: int
    score: float


class Digits(kaon.Service):
    def setup(self):
        self.bias = 1

    @kaon.endpoint(max_batch_size=32, max_wait_ms=5)
    def predict(self, images: list[Image8]) -> list[Prediction]:
        return [Prediction(label=int(img.sum()) % 10, score=float(img.mean())) for img in images]

    @kaon.endpoint
    async def describe(self, text: str, repeat: int = 1) -> dict[str, str]:
        return {"text": text * repeat}


def test_schema_names_are_service_plus_endpoint():
    specs = {s.name: s for s in endpoint_specs(Digits)}
    assert specs["predict"].request_model.__name__ == "DigitsPredictRequest"
    assert specs["predict"].response_model.__name__ == "DigitsPredictResponse"
    assert specs["describe"].request_model.__name__ == "DigitsDescribeRequest"


def test_list_in_list_out_endpoints_are_batched_and_others_are_not():
    specs = {s.name: s for s in endpoint_specs(Digits)}
    assert specs["predict"].batched and specs["predict"].max_batch_size == 32
    assert specs["predict"].max_wait_ms == 5
    assert not specs["describe"].batchable and specs["describe"].is_async


def test_request_schema_documents_images_as_arrays_or_base64():
    schema = endpoint_specs(Digits)[1].request_model.model_json_schema()
    item = schema["properties"]["images"]["items"]
    kinds = {option["type"] for option in item["anyOf"]}
    assert kinds == {"array", "string"}


def test_missing_type_hint_is_a_clear_error():
    class Bad(kaon.Service):
        @kaon.endpoint
        def predict(self, x) -> list[int]:
            return x

    with pytest.raises(ConfigError, match="parameter 'x' has no type hint"):
        endpoint_specs(Bad)


def test_batching_a_non_list_signature_is_refused():
    class Bad(kaon.Service):
        @kaon.endpoint(max_batch_size=8)
        def predict(self, x: int) -> int:
            return x

    with pytest.raises(ConfigError, match="needs a batchable signature"):
        endpoint_specs(Bad)


def test_check_service_accepts_a_good_service_and_runs_examples():
    specs = check_service(Digits, examples={"predict": {"images": [np.zeros((8, 8)).tolist()]}})
    assert {s.name for s in specs} == {"predict", "describe"}


def test_check_service_lists_every_problem():
    class Broken(kaon.Service):
        def __init__(self, path):
            self.path = path

    with pytest.raises(ServiceContractError) as info:
        check_service(Broken)
    message = info.value.message
    assert "no required arguments" in message and "no method is decorated" in message


def test_check_service_catches_a_batched_endpoint_returning_too_few_results():
    class Short(kaon.Service):
        @kaon.endpoint
        def predict(self, xs: list[int]) -> list[int]:
            return xs[:1]

    with pytest.raises(ServiceContractError, match="returned 1 results for 2 inputs"):
        check_service(Short, examples={"predict": {"xs": [1, 2]}})


def test_image_type_accepts_hw_chw_hwc_and_base64_png():
    import base64
    import io

    from PIL import Image as PILImage

    adapter = pydantic.TypeAdapter(Image8)
    flat = np.arange(64, dtype=np.float32).reshape(8, 8)
    assert adapter.validate_python(flat.tolist()).shape == (1, 8, 8)
    assert adapter.validate_python(flat[None].tolist()).shape == (1, 8, 8)
    assert adapter.validate_python(flat[..., None].tolist()).shape == (1, 8, 8)
    buffer = io.BytesIO()
    PILImage.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(buffer, format="PNG")
    decoded = adapter.validate_python(base64.b64encode(buffer.getvalue()).decode())
    assert decoded.shape == (1, 8, 8) and decoded.max() == pytest.approx(1.0)
    with pytest.raises(pydantic.ValidationError, match=r"expected shape \[1, 8, 8\]"):
        adapter.validate_python(np.zeros((4, 4)).tolist())
    with pytest.raises(pydantic.ValidationError, match="not valid base64"):
        adapter.validate_python("not an image!")


@pytest.mark.parametrize("simd", [True, False], ids=["simdjson", "orjson"])
def test_the_batch_fast_path_agrees_with_the_validator_and_leaves_every_other_case_to_it(simd):
    """`{param: [items]}` of plain numbers is decoded in one pass; anything else returns None (pydantic decides)."""
    import functools

    import orjson

    from kaon.serving import tensors
    from kaon.serving.tensors import Image, Tensor, tensor_info

    batch_fast_path = functools.partial(tensors.batch_fast_path, simd=simd)
    decode = batch_fast_path("inputs", tensor_info(Tensor((2, 3))))
    assert ("_parsed_floats" in decode.__qualname__) is simd  # pysimdjson is a dependency: its path is the one used
    items = [[[1, 2, 3], [4, 5, 6]], [[0.5, 0, 0], [0, 0, 1e30]]]
    fast = decode(orjson.dumps({"inputs": items}))
    assert fast is not None and len(fast) == 2 and all(a.dtype == np.float32 and a.shape == (2, 3) for a in fast)
    np.testing.assert_array_equal(np.stack(fast), np.asarray(items, dtype=np.float32))
    not_mine = [
        b'{"inputs": [[[1, 2, 3], [4, 5, 6]]], "extra": 1}',  # extra field: the schema's 422
        b'{"inputs": [[[1, 2, 3]]]}',  # wrong item shape
        b'{"inputs": [[[1, 2, 3], [4, 5]]]}',  # ragged
        b'{"inputs": [[["a", 2, 3], [4, 5, 6]]]}',  # not a number
        b'{"inputs": [[[1e400, 2, 3], [4, 5, 6]]]}',  # infinity
        b'{"inputs": [[[1e39, 2, 3], [4, 5, 6]]]}',  # finite in JSON, infinite as float32
        b'{"inputs": []}', b'{"inputs": 3}', b"[1, 2]", b"{not json",
    ]
    assert [decode(body) for body in not_mine] == [None] * len(not_mine)
    free = batch_fast_path("inputs", tensor_info(Tensor((-1, 3))))  # a dynamic dimension takes any size
    assert [a.shape for a in free(b'{"inputs": [[[1, 2, 3], [4, 5, 6]]]}')] == [(2, 3)]
    assert free(b'{"inputs": [[[1, 2, 3, 4]]]}') is None and free(b'{"inputs": [[1, 2, 3]]}') is None
    half = batch_fast_path("inputs", tensor_info(Tensor((2,), "float16")))
    assert half(b'{"inputs": [[1, 70000]]}') is None and half(b'{"inputs": [[1, 60000]]}') is not None
    wide = batch_fast_path("inputs", tensor_info(Tensor((2,), "float64")))
    assert wide(b'{"inputs": [[1e300, -1e300]]}')[0].tolist() == [1e300, -1e300]
    assert wide(b'{"inputs": [[null, 1.0]]}') is None  # numpy reads null as NaN: the validator's 422 decides it
    flags = batch_fast_path("inputs", tensor_info(Tensor((2,), "bool")))
    assert flags(b'{"inputs": [[true, false]]}') is None and flags(b'{"inputs": [[2, 0.5]]}') is None
    assert wide(b'{"inputs": [[1, 2]]}')[0].flags.writeable  # an endpoint may change its inputs in place
    lone = batch_fast_path("inputs", tensor_info(Tensor(())))
    assert lone(b'{"inputs": ["1.5"]}') is None  # a string is not a number, though numpy would cast it
    assert tensor_info(Image(8, 8)).shape == (1, 8, 8) and tensor_info(int) is None


def test_the_simdjson_path_checks_the_shape_that_flattening_hides():
    """simdjson's buffer flattens nested arrays whatever their shape: the skeleton of brackets and commas decides.
    Every body here that is not a regular batch of (2, 3) items is the validator's to word."""
    import json

    from kaon.serving.tensors import Tensor, batch_fast_path, tensor_info

    decode = batch_fast_path("x", tensor_info(Tensor((2, 3))))
    items = [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12.5]]]
    for body in (json.dumps({"x": items}), json.dumps({"x": items}, indent=2), json.dumps({"inputs": items}),
                 '\r\n {"x" :[[[1,2,3] , [4,5,6]],[[7,8,9],[10,11,12.5]]]}\t'):
        got = decode(body.encode())
        assert got is not None, body
        np.testing.assert_array_equal(np.stack(got), np.asarray(items, dtype=np.float32))
    not_mine = [
        b'{"x": [[[1, 2, 3, 4], [5, 6]], [[7, 8, 9], [10, 11, 12]]]}',  # ragged, the same count of numbers
        b'{"x": [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]}',  # flat items of the right size
        b'{"x": [[[[1, 2, 3]], [[4, 5, 6]]], [[[7, 8, 9]], [[10, 11, 12]]]]}',  # one axis too many
        b'{"x": [[[1, 2, 3], [4, 5, 6]]], "x": [[[1, 2, 3], [4, 5, 6]]]}',  # a repeated key
        b'{"x": [[[1, 2, 3], [4, 5, 6]]], "inputs": [[[1, 2, 3], [4, 5, 6]]]}',  # both names
        b'{"\\u0078": [[[1, 2, 3], [4, 5, 6]]]}',  # an escaped name: the validator reads it
        b'{"x": [[[1, 2, 3], [4, 5, true]]]}', b'{"x": [[[1, 2, 3], [4, 5, {"a": 1}]]]}',
        b'{"x": [[[1, 2, 3], [4, 5, 6]]]} trailing', b'{"x": [[[1, 2, 3], [4, 5, 123456789012345678901234]]]}',
        b'{"x": [[[1, 2, 3], [4, 5, 01]]]}', b'{"x": [[[1, 2, 3], [4, 5, 3.5e38]]]}',  # past float32's range
    ]
    assert [decode(body) for body in not_mine] == [None] * len(not_mine)
    assert decode(b'{"x": [[[1, 2, 3], [4, 5, 3.4e38]]]}')[0][1, 2] == np.float32(3.4e38)  # within it
    assert decode(b'{"x": [[[1, 2, 3], [4, 5, 1e200]]]}') is None  # its square is past float64's range too
    single = batch_fast_path("x", tensor_info(Tensor((2, 1))))  # "[5]" and "[]" leave the same skeleton
    for _ in range(2):  # the second time from the cache of skeletons already seen
        assert [a.tolist() for a in single(b'{"x": [[[5], [6]]]}')] == [[[5.0], [6.0]]]
        assert single(b'{"x": [[[], []]]}') is None and single(b'{"x": [[[5], []]]}') is None
    half = batch_fast_path("x", tensor_info(Tensor((64,), "float16")))  # many numbers, each within range
    assert half(json.dumps({"x": [[1000.5] * 64] * 100}).encode()) is not None
    assert half(json.dumps({"x": [[1000.5] * 63 + [65520.0]]}).encode()) is None


@pytest.mark.parametrize(("item", "sent"), [((1, 4, 4), (4, 4)), ((3, 4, 4), (4, 4, 3)), ((4, 4, 1), (4, 4)),
                                            ((4, 4, 3), (3, 4, 4))])
@pytest.mark.parametrize("simd", [True, False], ids=["simdjson", "orjson"])
def test_the_batch_fast_path_takes_an_image_in_each_layout_the_validator_takes(item, sent, simd):
    """An (H, W) image for a one-channel model, or channels at the other end: the same arrays as the per-item
    validator gives (the benchmark's digits arrive as 8x8 for a (1, 8, 8) model), not the slower path."""
    import orjson
    import pydantic

    from kaon.serving.tensors import Tensor, _array_validator, batch_fast_path, tensor_info

    image = Tensor(item, image=True)
    validate = _array_validator(item, "float32", image=True)
    items = np.random.default_rng(0).random((2, *sent)).round(3).tolist()
    fast = batch_fast_path("inputs", tensor_info(image), simd=simd)(orjson.dumps({"inputs": items}))
    assert fast is not None, "the fast path left a valid layout to the slow path"
    for got, one in zip(fast, items, strict=True):
        expected = validate(one)
        assert got.shape == item == expected.shape and got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)
    assert pydantic.TypeAdapter(list[image]).validate_python(items)[0].shape == item
    wrong = np.zeros((1, 5, *sent[1:])).tolist()  # neither layout: left to the validator, which words the error
    assert batch_fast_path("inputs", tensor_info(image), simd=simd)(orjson.dumps({"inputs": wrong})) is None


@pytest.mark.parametrize("shape", [(8, 8), (2, 3, 8, 8), (4,)])
def test_an_image_tensor_of_another_rank_sent_the_wrong_shape_is_the_validators_error_not_a_crash(shape):
    """Only a 3-D image item has other layouts; any other rank's wrong shape is a 422, as before."""
    import orjson
    import pydantic

    from kaon.serving.tensors import Tensor, batch_fast_path, tensor_info

    image = Tensor(shape, image=True)
    body = {"inputs": [np.zeros((8, 9)).tolist()]}
    assert batch_fast_path("inputs", tensor_info(image))(orjson.dumps(body)) is None
    with pytest.raises(pydantic.ValidationError, match="expected shape"):
        pydantic.TypeAdapter(list[image]).validate_python(body["inputs"])


def test_warm_up_runs_before_ready_for_each_batched_endpoint():
    import asyncio

    from kaon.config import ServeConfig
    from kaon.serving.app import KaonApp

    calls = []

    class Warm(kaon.Service):
        @kaon.endpoint(max_batch_size=8)
        def predict(self, xs: list[float]) -> list[float]:
            return xs

        @kaon.endpoint
        def info(self, name: str) -> dict:  # not a list: unbatched, nothing to warm up
            return {}

        def warm_up(self, endpoint: str, max_batch_size: int) -> None:
            calls.append((endpoint, max_batch_size, app.ready))

    app = KaonApp(Warm, ServeConfig())

    async def scenario():
        await app.startup()
        ready = app.ready
        await app.shutdown()
        return ready

    assert asyncio.run(scenario()) is True
    assert calls == [("predict", 8, False)]  # once per batched endpoint, before the server said ready


def test_numpy_values_in_an_answer_are_written_as_json_and_an_unschemable_return_type_is_a_config_error():
    import asyncio

    import httpx

    from kaon.config import ServeConfig
    from kaon.errors import ConfigError
    from kaon.serving.app import KaonApp
    from kaon.serving.service import endpoint_specs

    class Stats(kaon.Service):
        @kaon.endpoint
        def stats(self, values: list[float]) -> dict:
            array = np.asarray(values, dtype=np.float32)
            return {"max": array.max(), "sorted": np.sort(array), "count": np.int64(len(array))}

        @kaon.endpoint
        def rows(self, n: int) -> list[list[float]]:
            return [np.arange(n, dtype=np.float32)]

    async def scenario():
        app = KaonApp(Stats, ServeConfig())
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kaon") as client:
                return (await client.post("/stats", json={"values": [3, 1, 2]}),
                        await client.post("/rows", json={"n": 3}))
        finally:
            await app.shutdown()

    stats, rows = asyncio.run(scenario())
    assert stats.status_code == 200 and stats.json() == {"max": 3.0, "sorted": [1.0, 2.0, 3.0], "count": 3}
    assert rows.status_code == 200 and rows.json() == [[0.0, 1.0, 2.0]]

    import datetime
    import enum

    class Kind(str, enum.Enum):
        DIGIT = "digit"

    class Point(pydantic.BaseModel):
        x: int

    everything = {"when": datetime.datetime(2026, 11, 27, 12, 0), 7: "int key", "huge": 2**70, "set": {1},
                  "model": Point(x=1), "kind": Kind.DIGIT, "scalar": np.float32(0.1), "tuple": (1, 2.5, None),
                  "floats": [1e-05, 0.1 + 0.2, 1e300, float("nan"), -0.0]}

    plain = {k: everything[k] for k in ("kind", "scalar", "tuple", "floats")}

    class Loose(kaon.Service):
        @kaon.endpoint
        def anything(self, n: int) -> dict:
            return everything if n == 1 else plain

    async def loose():
        app = KaonApp(Loose, ServeConfig())
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kaon") as client:
                return [await client.post("/anything", json={"n": n}) for n in (1, 2)]
        finally:
            await app.shutdown()

    # orjson writes plain values, pydantic the rest (a datetime, an int key, a model): the bytes are pydantic's
    from kaon.serving.tensors import numpy_to_json

    for answer, sent in zip(asyncio.run(loose()), (everything, plain), strict=True):
        assert answer.status_code == 200
        assert answer.content == pydantic.TypeAdapter(dict).dump_json(sent, fallback=numpy_to_json)
    assert answer.json() == {"kind": "digit", "scalar": 0.10000000149011612, "tuple": [1, 2.5, None],
                             "floats": [1e-05, 0.30000000000000004, 1e300, None, -0.0]}

    class Rows(kaon.Service):  # declares rows of fields, returns numbers: written as sent, and its author warned
        @kaon.endpoint
        def rows(self, n: int) -> list[dict[str, Any]]:
            return [1, n]

    async def rows():
        app = KaonApp(Rows, ServeConfig())
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kaon") as client:
                return await client.post("/rows", json={"n": 2})
        finally:
            await app.shutdown()

    with pytest.warns(UserWarning, match="Expected `dict"):
        wrong = asyncio.run(rows())
    assert wrong.status_code == 200 and wrong.content == b"[1,2]"

    class Raw(kaon.Service):
        @kaon.endpoint
        def arrays(self, n: int) -> list[np.ndarray]:
            return []

    with pytest.raises(ConfigError, match=r"Raw.arrays: the return type list\[numpy.ndarray\] has no JSON schema"):
        endpoint_specs(Raw)


def test_sync_calls_stuck_past_their_timeout_do_not_hold_the_other_endpoints_threads():
    import asyncio
    import threading

    import httpx

    from kaon.config import ServeConfig
    from kaon.serving.app import KaonApp

    release = threading.Event()

    class Mixed(kaon.Service):
        @kaon.endpoint
        def slow(self, n: int) -> int:
            release.wait(10)  # a thread cannot be stopped: it runs on after its request got a 504
            return n

        @kaon.endpoint
        def fast(self, n: int) -> int:
            return n + 1

    async def scenario():
        app = KaonApp(Mixed, ServeConfig(timeout_s=0.3))
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kaon") as client:
                stuck = await asyncio.gather(*(client.post("/slow", json={"n": i}) for i in range(8)))
                return stuck, await client.post("/fast", json={"n": 1})
        finally:
            release.set()
            await app.shutdown()

    stuck, fast = asyncio.run(scenario())
    assert {r.status_code for r in stuck} == {504}
    assert "goes on in its thread" in stuck[0].json()["error"]["message"]
    assert fast.status_code == 200 and fast.json() == 2


def test_integer_inputs_take_whole_numbers_only():
    import orjson

    from kaon.serving.tensors import Tensor, _array_validator, batch_fast_path, tensor_info

    validate = _array_validator((2,), "int32", False, False)
    assert validate([1, 2]).dtype == np.int32 and validate([1.0, -2.0]).tolist() == [1, -2]
    for value, words in (([1.7, 2], "numbers with a fraction"), (["1", "2"], "strings"), ([True, False], "booleans"),
                         ([1, 2**40], "within int32's range"),
                         ([2, 10**20], "within int32's range.*to 100000000000000000000")):  # was 'non-integer values'
        with pytest.raises(ValueError, match=words):
            validate(value)
    fast = batch_fast_path("inputs", tensor_info(Tensor((2,), "int64")))
    assert fast(b'{"inputs": [[1, 2]]}')[0].tolist() == [1, 2]
    assert [fast(orjson.dumps({"inputs": [v]})) for v in ([1.7, 2], ["1", "2"], [True, False])] == [None] * 3


def test_v2_infer_answers_504_after_the_servers_timeout_and_names_an_unknown_version():
    import asyncio
    import time

    import httpx

    from kaon.config import ServeConfig
    from kaon.models.model import Model
    from kaon.serving.app import KaonApp
    from kaon.types import Signature, TensorSpec

    class Slow(Model):
        framework = "test"

        def _run(self, inputs):
            time.sleep(0.6)  # longer than the server's --timeout-s below
            return {"y": inputs["x"] * 2}

    slow = Slow(Signature([TensorSpec("x", "float32", (-1, 2))], [TensorSpec("y", "float32", (-1, 2))]), "slow")

    class Holder(kaon.Service):
        @property
        def models(self):
            return {"slow": slow}

        @kaon.endpoint
        def ping(self, n: int) -> int:
            return n

    async def scenario():
        app = KaonApp(Holder, ServeConfig(timeout_s=0.2))
        await app.startup()
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kaon") as client:
                body = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
                started = time.perf_counter()
                late = await client.post("/v2/models/slow/infer", json=body)
                waited = time.perf_counter() - started
                return late, waited, await client.get("/v2/models/slow/versions/7")
        finally:
            await app.shutdown()

    late, waited, version = asyncio.run(scenario())
    assert late.status_code == 504 and "within 0.2 s (--timeout-s)" in late.json()["error"] and waited < 0.55
    assert version.status_code == 404 and version.json()["error"] == (
        "model 'slow' has no version '7'; served: version '1'.")


@pytest.mark.parametrize("simd", [True, False], ids=["simdjson", "orjson"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_the_batch_fast_path_leaves_strings_and_booleans_among_numbers_to_the_validator(simd, dtype):
    """numpy casts "0.5" and true to a float, and true to an int: such a body is the validator's to refuse."""
    import functools

    import orjson

    from kaon.serving import tensors
    from kaon.serving.tensors import Tensor, tensor_info

    decode = functools.partial(tensors.batch_fast_path, simd=simd)("inputs", tensor_info(Tensor((2, 3), dtype)))
    assert decode(b'{"inputs": [[[1, 2, 3], [4, 5, 6]]]}')[0].tolist() == [[1, 2, 3], [4, 5, 6]]
    for odd in ('"1"', '"0.5"', "true", "false"):
        body = b'{"inputs": [[[1, 2, 3], [4, 5, %s]]]}' % odd.encode()
        assert decode(body) is None, body
    assert decode(orjson.dumps({"inputs": [[[True, False, True], [False, True, False]]]})) is None


@pytest.mark.parametrize("dtype", ["float32", "float16", "int64", "int32"])
def test_a_tensor_refuses_strings_and_booleans_that_numpy_would_cast(dtype):
    from kaon.serving.tensors import Tensor

    adapter = pydantic.TypeAdapter(list[Tensor((2, 2), dtype)])
    assert adapter.validate_python([[[1, 2], [3, 4]]])[0].dtype == np.dtype(dtype)
    for item, received in (([["1", 2], [3, 4]], "strings"), ([[True, 2], [3, 4]], "booleans"),
                           ([[True, False], [False, True]], "booleans")):
        with pytest.raises(pydantic.ValidationError, match=f"expected (numbers|integers) \\({dtype}\\)\\. Received: "
                                                           f"{received}"):
            adapter.validate_python([item])
