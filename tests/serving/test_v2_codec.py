from __future__ import annotations

import numpy as np
import orjson
import pytest

from kaon.errors import InvalidInputError, MalformedRequestError
from kaon.serving.v2 import decode_infer_request, encode_infer_response


def _binary_request(arrays: dict[str, np.ndarray]) -> tuple[bytes, int]:
    header = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": v.nbytes}} for k, v in arrays.items()],
              "parameters": {"binary_data_output": True}}
    head = orjson.dumps(header)
    return head + b"".join(v.tobytes() for v in arrays.values()), len(head)


def test_json_tensors_round_trip():
    body = orjson.dumps({"id": "7", "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                                "data": [1, 2, 3, 4]}]})
    request = decode_infer_request(body, None)
    assert request.inputs["x"].dtype == np.float32 and request.inputs["x"].tolist() == [[1, 2], [3, 4]]
    out, headers = encode_infer_response("m", "1", request, {"y": np.array([[0.5, 0.5]], dtype=np.float32)})
    data = orjson.loads(out)
    assert data["id"] == "7" and data["outputs"][0]["data"] == [0.5, 0.5]
    assert headers["content-type"] == "application/json"


def test_binary_tensors_round_trip():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    z = np.ones((2, 1), dtype=np.float32)
    body, head_len = _binary_request({"x": x, "z": z})
    request = decode_infer_request(body, head_len)
    np.testing.assert_array_equal(request.inputs["x"], x)
    np.testing.assert_array_equal(request.inputs["z"], z)
    out, headers = encode_infer_response("m", None, request, {"y": x * 2})
    length = int(headers["inference-header-content-length"])
    meta = orjson.loads(out[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    np.testing.assert_array_equal(np.frombuffer(out[length:], dtype=np.float32).reshape(2, 3), x * 2)


def test_wrong_value_count_is_rejected_with_numbers():
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]})
    with pytest.raises(InvalidInputError, match="needs 4 values. Received: 3"):
        decode_infer_request(body, None)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_binary_floats_are_checked_as_json_ones_are(bad):
    """NaN in a binary FP32 tensor answered 200 with NaN (null) outputs; JSON tensors and /predict say 422."""
    x = np.array([[1.0, bad, 3.0]], dtype=np.float32)
    body, head_len = _binary_request({"x": x})
    with pytest.raises(InvalidInputError, match="expected finite numbers \\(FP32\\).*binary data"):
        decode_infer_request(body, head_len)


def test_truncated_binary_body_is_malformed():
    body, head_len = _binary_request({"x": np.zeros((4,), dtype=np.float32)})
    with pytest.raises(MalformedRequestError):
        decode_infer_request(body[:-3], head_len)


def test_header_length_past_the_body_is_malformed():
    with pytest.raises(MalformedRequestError, match="Inference-Header-Content-Length"):
        decode_infer_request(b"{}", 99)


def test_unknown_datatype_names_the_supported_ones():
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8", "data": [1]}]})
    with pytest.raises(InvalidInputError, match="FP32"):
        decode_infer_request(body, None)


@pytest.mark.parametrize("body, words", [
    ({"inputs": [{"name": "", "shape": [], "datatype": {}, "data": None}]}, "'name' and 'datatype' are strings"),
    ({"inputs": [{"name": {}, "shape": [1], "datatype": "FP32", "data": [1]}]}, "'name' and 'datatype' are strings"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1], "parameters": []}]}, "is an object"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": "4"}}]},
     "binary_data_size must be a byte count"),
    ({"inputs": [], "parameters": [1]}, "the request: 'parameters' is an object"),
    ({"inputs": [], "outputs": [{"name": {}}]}, "needs a 'name' string"),
    ({"inputs": [{"name": "x", "shape": [2**62, 2**62], "datatype": "FP32", "data": [1]}]}, "needs 2126764793255"),
])
def test_malformed_v2_fields_are_4xx_errors_never_crashes(body, words):
    """Found by schemathesis once the infer route was in /openapi.json: a dict as datatype was a 500."""
    with pytest.raises((MalformedRequestError, InvalidInputError), match=words):
        decode_infer_request(orjson.dumps(body), None)


@pytest.mark.parametrize("datatype, data, words", [
    ("UINT8", [300, 1], "within uint8's range"),  # was an OverflowError: a 500
    ("FP32", [None, 1.0], "finite numbers"),  # was NaN in, null out, 200
    ("FP32", [1e300, 1.0], "finite numbers"),  # inf in float32
    ("INT64", [1.5, 2], "numbers with a fraction"),  # was truncated to 1
    ("BOOL", [2, 0], "booleans"),
    ("FP32", ["a", "b"], "non-numeric"),
])
def test_json_data_is_checked_as_predict_checks_it(datatype, data, words):
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]})
    with pytest.raises(InvalidInputError, match=words):
        decode_infer_request(body, None)


def test_whole_floats_are_integers_and_an_input_given_twice_is_refused():
    ok = orjson.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", "data": [2.0, 3]}]})
    assert decode_infer_request(ok, None).inputs["x"].tolist() == [2, 3]
    tensor = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}
    with pytest.raises(InvalidInputError, match="given twice"):
        decode_infer_request(orjson.dumps({"inputs": [tensor, tensor]}), None)
