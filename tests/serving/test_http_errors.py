from __future__ import annotations

import orjson
import pydantic
import pytest

import kaon
from kaon.errors import InvalidInputError, NotFoundError, OverloadedError
from kaon.serving.http import error_response
from kaon.serving.tensors import Image, Tensor


def test_error_envelope_shape_is_pinned():
    response = error_response(InvalidInputError("bad", fields=[{"name": "x"}]), "rid-1")
    assert response.status == 422
    assert orjson.loads(response.body) == {
        "error": {"code": "invalid_input", "message": "bad", "fields": [{"name": "x"}], "request_id": "rid-1"}
    }


def test_v2_routes_answer_a_plain_error_string():
    response = error_response(NotFoundError("no model"), "rid", v2=True)
    assert response.status == 404 and orjson.loads(response.body) == {"error": "no model"}


def test_overload_sets_retry_after():
    response = error_response(OverloadedError("full", retry_after_s=2.4), "rid")
    assert response.status == 503 and (b"retry-after", b"2") in response.headers


def test_unexpected_exception_is_500_without_internals(caplog):
    response = error_response(RuntimeError("secret path /etc/passwd"), "rid-9")
    body = orjson.loads(response.body)
    assert response.status == 500
    assert "secret" not in response.body.decode() and "rid-9" in body["error"]["message"]
    assert any("rid-9" in r.getMessage() for r in caplog.records)


def test_pydantic_errors_become_422_with_fields():
    class Body(pydantic.BaseModel):
        x: int

    with pytest.raises(pydantic.ValidationError) as info:
        Body.model_validate({"x": "nope"})
    response = error_response(info.value, "rid")
    body = orjson.loads(response.body)["error"]
    assert response.status == 422 and body["fields"][0]["name"] == "x" and body["fields"][0]["received"] == "'nope'"


def test_one_input_sent_without_its_batch_axis_is_one_error_that_says_so():
    """client.predict(x[0]) for items of shape (13,) gave 13 errors 'expected shape [13]. Received: shape []'."""
    import asyncio

    from kaon.config import ServeConfig
    from kaon.serving.app import KaonApp

    class Tabular(kaon.Service):
        @kaon.endpoint(max_batch_size=8)
        def predict(self, rows: list[Tensor((13,))]) -> list[float]:
            return [float(r.sum()) for r in rows]

        @kaon.endpoint(max_batch_size=8)
        def digits(self, images: list[Image(8, 8)]) -> list[float]:
            return [float(i.sum()) for i in images]

        @kaon.endpoint(max_batch_size=8)
        def long(self, rows: list[Tensor((60000,))]) -> list[float]:
            return [float(r.sum()) for r in rows]

    async def send(path: str, body: dict) -> tuple[int, dict]:
        app = KaonApp(Tabular, ServeConfig())
        await app.startup()
        try:
            answer = await app.answer("POST", path, {"content-type": "application/json"}, orjson.dumps(body))
            return answer.response.status, orjson.loads(answer.response.body)
        finally:
            await app.shutdown()

    status, body = asyncio.run(send("/predict", {"inputs": [0.5] * 13}))
    assert status == 422 and len(body["error"]["fields"]) == 1, body
    assert "one input of shape [13], without the batch axis" in body["error"]["message"]
    status, body = asyncio.run(send("/digits", {"images": [[0.0] * 8] * 8}))  # an 8x8 image, not a list of them
    assert status == 422 and "one input of shape [8, 8], without the batch axis" in body["error"]["message"]
    assert '{"images": [...]}' in body["error"]["message"]
    status, body = asyncio.run(send("/predict", {"inputs": [[0.5] * 12]}))  # a batch, of a wrong shape: as before
    assert status == 422 and "expected shape [13]" in str(body) and "batch axis" not in str(body)
    assert asyncio.run(send("/predict", {"inputs": [[0.5] * 13]}))[0] == 200
    # a batch of one (H, W) image with a bad value: the value's error, not a missing batch axis
    status, body = asyncio.run(send("/digits", {"images": [[[0.0] * 8] * 7 + [[None] + [0.0] * 7]]}))
    assert status == 422 and "batch axis" not in str(body) and "finite" in str(body)
    status, body = asyncio.run(send("/long", {"rows": [0.25] * 60000}))  # a body over 256 KiB: the other path
    assert status == 422 and "one input of shape [60000], without the batch axis" in body["error"]["message"]


def _digits_like_model():
    """A numpy model taking (N, 1, 8, 8) float32: the digits' input, on the image fast path."""
    from kaon.models import Model
    from kaon.types import Signature, TensorSpec

    class Sums(Model):
        framework = "numpy"

        def _run(self, inputs):
            return {"y": inputs["image"].reshape(len(inputs["image"]), -1).sum(axis=1, keepdims=True)}

    return Sums(Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))], [TensorSpec("y", "float32", (-1, 1))]),
                "sums")


def _answers(service, bodies: list[tuple[str, bytes]]) -> list[tuple[int, dict]]:
    import asyncio

    from kaon.config import ServeConfig
    from kaon.serving.app import KaonApp

    async def send() -> list[tuple[int, dict]]:
        app = KaonApp(service, ServeConfig())
        await app.startup()
        try:
            answers = []
            for path, body in bodies:
                answer = await app.answer("POST", path, {"content-type": "application/json"}, body)
                answers.append((answer.response.status, orjson.loads(answer.response.body)))
            return answers
        finally:
            await app.shutdown()

    return asyncio.run(send())


@pytest.mark.parametrize("simd", [True, False], ids=["simdjson", "orjson"])
def test_strings_and_booleans_in_a_numeric_tensor_are_a_422_on_every_json_path(simd, monkeypatch):
    """numpy casts "0.5" and true to numbers: a float model took {"inputs": [[["0.5", ...]]]} as 0.5, and true as 1.0,
    on the orjson fast path and in the per-item validator (simdjson's path leaves them to the validator)."""
    import functools

    from kaon.serving import app as app_module
    from kaon.serving import tensors
    from kaon.serving.targets import resolve_target

    monkeypatch.setattr(app_module, "batch_fast_path", functools.partial(tensors.batch_fast_path, simd=simd))
    good = [[[0.5] * 8 for _ in range(8)]]  # one (1, 8, 8) item
    digits = [[[0, 1] * 4 for _ in range(8)]]  # whole numbers are numbers too
    texts = [[["0.5"] + [0.5] * 7] + [[0.5] * 8 for _ in range(7)]]
    flags = [[[True] + [0.5] * 7] + [[0.5] * 8 for _ in range(7)]]
    only_flags = [[[True, False] * 4 for _ in range(8)]]
    bodies = [orjson.dumps({"inputs": [item]}) for item in (good, digits, texts, flags, only_flags)]
    answers = _answers(resolve_target(_digits_like_model()), [("/predict", body) for body in bodies])
    assert [status for status, _ in answers] == [200, 200, 422, 422, 422], answers
    for (_, body), received in zip(answers[2:], ("strings", "booleans", "booleans"), strict=True):
        error = body["error"]
        assert set(error) == {"code", "message", "fields", "request_id"} and error["code"] == "invalid_input"
        assert f"expected numbers (float32). Received: {received}" in error["message"], error
        assert error["fields"] and error["fields"][0]["name"].startswith("inputs.0")


def test_strings_and_booleans_in_a_v2_json_tensor_are_a_422():
    """The V2 protocol's JSON data are numbers (booleans only for BOOL): "0.5" and true were cast."""
    from kaon.serving.targets import resolve_target

    def infer(datatype: str, data: list) -> tuple[str, bytes]:
        tensor = {"name": "image", "shape": [1, 1, 8, 8], "datatype": datatype, "data": data}
        return "/v2/models/sums/infer", orjson.dumps({"inputs": [tensor]})

    numbers = [0.5] * 64
    answers = _answers(resolve_target(_digits_like_model()), [
        infer("FP32", numbers), infer("FP32", [0, 1] * 32), infer("FP32", ["0.5"] + numbers[1:]),
        infer("FP32", [True] + numbers[1:]), infer("INT64", [True] + [1] * 63), infer("INT64", ["1"] + [1] * 63),
    ])
    assert [status for status, _ in answers] == [200, 200, 422, 422, 422, 422], answers
    messages = [body["error"] for _, body in answers[2:]]
    assert "input 'image': expected numbers (float32). Received: strings" in messages[0]
    assert "input 'image': expected numbers (float32). Received: booleans" in messages[1]
    assert "expected integers (int64). Received: booleans" in messages[2]
    assert "expected integers (int64). Received: strings" in messages[3]
