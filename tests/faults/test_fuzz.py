"""A bounded fuzz of malformed bodies against a real server: every one a 4xx, and the server alive and
answering correctly afterwards."""

from __future__ import annotations

import base64
import io
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest

from tests.faults.conftest import DIGITS

ROW = "[" + ",".join(["0.5"] * 8) + "]"
IMAGE = "[" + ",".join([ROW] * 8) + "]"


def png(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG")
    return buffer.getvalue()


def v2(header: dict, binary: bytes = b"") -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(header)
    headers = {"inference-header-content-length": str(len(head)), "content-type": "application/octet-stream"}
    return head + binary, headers


JSON = {"content-type": "application/json"}
PREDICT_CASES: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty": (b"", JSON),
    "truncated": (b'{"inputs": [' + IMAGE[:40].encode(), JSON),
    "not json": (b"inputs=1", JSON),
    "invalid utf-8": (b'{"inputs": "\xff\xfe"}', JSON),
    "null": (b"null", JSON),
    "a list": (b"[]", JSON),
    "a string": (b'"inputs"', JSON),
    "a number": (b"123", JSON),
    "inputs a string": (b'{"inputs": "abc"}', JSON),
    "inputs an object": (b'{"inputs": {"a": 1}}', JSON),
    "inputs null": (b'{"inputs": null}', JSON),
    "items of strings": (b'{"inputs": [[["a"]]]}', JSON),
    "items of booleans": (b'{"inputs": [true, false]}', JSON),
    "ragged": (b'{"inputs": [[[0.1, 0.2], [0.3]]]}', JSON),
    "wrong shape": (b'{"inputs": [[0.1, 0.2, 0.3]]}', JSON),
    "unknown field": (('{"inputs": [' + IMAGE + '], "extra": 1}').encode(), JSON),
    "NaN literal": (('{"inputs": [' + IMAGE.replace("0.5", "NaN", 1) + "]}").encode(), JSON),
    "Infinity literal": (('{"inputs": [' + IMAGE.replace("0.5", "-Infinity", 1) + "]}").encode(), JSON),
    "float over float64": (('{"inputs": [' + IMAGE.replace("0.5", "1e999", 1) + "]}").encode(), JSON),
    "float over float32": (('{"inputs": [' + IMAGE.replace("0.5", "7.7e273", 1) + "]}").encode(), JSON),
    "integer of 400 digits": (('{"inputs": [' + IMAGE.replace("0.5", "9" * 400, 1) + "]}").encode(), JSON),
    "deep nesting": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON),
    "10 MB string": (orjson.dumps({"inputs": ["A" * 10_000_000]}), JSON),
    "10 MB key": (b'{"' + b"k" * 10_000_000 + b'": 1}', JSON),
    "many numbers": (b'{"inputs": [' + b",".join([b"0"] * 6_000_000) + b"]}", JSON),
    "base64 not an image": (orjson.dumps({"inputs": [base64.b64encode(b"not an image").decode()]}), JSON),
    "garbage image body": (b"\x89PNG\r\n\x1a\nrubbish", {"content-type": "image/png"}),
    "image body of the wrong size": (png(16, 16), {"content-type": "image/png"}),
    "raw PNG decompression bomb": (png(20_000, 20_000), {"content-type": "image/png"}),
    "wrong content type": (b"\x00\x01\x02", {"content-type": "application/x-unknown"}),
}
V2_CASES: dict[str, tuple[bytes, dict[str, str]]] = {
    "v2 not json": (b"{", JSON),
    "v2 no inputs": (b"{}", JSON),
    "v2 tensor without shape": (orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "data": [1]}]}), JSON),
    "v2 negative shape": (orjson.dumps({"inputs": [{"name": "input", "shape": [-1, 1, 8, 8], "datatype": "FP32",
                                                    "data": [0.0] * 64}]}), JSON),
    "v2 huge shape": (orjson.dumps({"inputs": [{"name": "input", "shape": [10**12, 1, 8, 8], "datatype": "FP32",
                                                "data": [0.0] * 64}]}), JSON),
    "v2 BYTES": (orjson.dumps({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}), JSON),
    "v2 wrong name": (orjson.dumps({"inputs": [{"name": "nope", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                                "data": [0.0] * 64}]}), JSON),
    "v2 header length past the body": (b'{"inputs": []}', {"inference-header-content-length": "999"}),
    "v2 binary shorter than announced": v2({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                                                        "parameters": {"binary_data_size": 256}}]}, b"\x00" * 100),
    "v2 binary size that lies": v2({"inputs": [{"name": "input", "shape": [1000, 1, 8, 8], "datatype": "FP32",
                                                "parameters": {"binary_data_size": 256}}]}, b"\x00" * 256),
}


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_malformed_predict_bodies_are_4xx(fault_server, name: str) -> None:
    body, headers = PREDICT_CASES[name]
    answer = httpx.post(fault_server.url + "/predict", content=body, headers=headers, timeout=60)
    assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text[:300])
    assert answer.json()["error"]["code"] in ("malformed_request", "invalid_input", "payload_too_large")


@pytest.mark.parametrize("name", list(V2_CASES))
def test_malformed_v2_bodies_are_4xx(fault_server, name: str) -> None:
    body, headers = V2_CASES[name]
    answer = httpx.post(fault_server.url + "/v2/models/digits/infer", content=body, headers=headers, timeout=60)
    assert 400 <= answer.status_code < 500, (name, answer.status_code, answer.text[:300])
    assert isinstance(answer.json()["error"], str)


def test_a_base64_png_decompression_bomb_is_a_4xx(fault_server) -> None:
    """Found by this fuzz: a 400-megapixel PNG (388 kB) sent base64 inside JSON reaches PIL, whose
    DecompressionBombError is not caught by kaon.serving.tensors.decode_image_bytes: a 500 (and under
    PIL's 2x limit, a full decode of up to 179 M pixels before the size check). See the report."""
    body = orjson.dumps({"inputs": [base64.b64encode(png(20_000, 20_000)).decode()]})
    answer = httpx.post(fault_server.url + "/predict", content=body, headers=JSON, timeout=60)
    assert 400 <= answer.status_code < 500, answer.text[:300]


def test_many_invalid_items_are_refused_fast_and_stall_no_one(fault_server) -> None:
    """Found by this fuzz: a 400 kB body of 200,000 invalid items ({"inputs": [0, 0, ...]}) is validated on
    the event loop (pydantic collects 200,000 errors, ~3 s) and answered with every error listed (~26 MB),
    while every other request waits. 6 M items (12 MB) stalled the server for minutes. See the report."""
    body = b'{"inputs": [' + b",".join([b"0"] * 200_000) + b"]}"
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(httpx.post, fault_server.url + "/predict", content=body, headers=JSON, timeout=120)
        time.sleep(0.3)
        started = time.monotonic()
        health = httpx.get(fault_server.url + "/healthz", timeout=60)
        health_s = time.monotonic() - started
        answer = slow.result()
    assert health.status_code == 200
    assert 400 <= answer.status_code < 500
    assert len(answer.content) < 100_000, f"the error answer is {len(answer.content):,} bytes"
    assert health_s < 1.5, f"/healthz waited {health_s:.1f} s behind one bad request"  # the stall was ~3 s


def test_random_byte_flips_of_a_valid_body_are_never_5xx(fault_server) -> None:
    valid = orjson.dumps({"inputs": DIGITS.tolist()})
    rng = random.Random(0)
    with httpx.Client(base_url=fault_server.url, timeout=30) as client:
        for _ in range(150):
            body = bytearray(valid)
            for _ in range(rng.randint(1, 8)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            cut = body[: rng.randint(0, len(body))] if rng.random() < 0.3 else body
            answer = client.post("/predict", content=bytes(cut), headers=JSON)
            assert answer.status_code < 500, (bytes(cut)[:200], answer.status_code, answer.text[:300])


def test_the_server_is_alive_and_correct_after_the_fuzz(fault_server, fault_model) -> None:
    from kaon.models import load_file

    expected = load_file(fault_model).predict(DIGITS)
    with httpx.Client(base_url=fault_server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        answer = client.post("/predict", json={"inputs": DIGITS.tolist()})
    assert answer.status_code == 200
    got = np.array([next(v for k, v in row.items() if k != "label") for row in answer.json()])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert fault_server.proc.poll() is None
