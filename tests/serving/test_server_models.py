"""`kaon serve` on model files: a real server on loopback, real clients (httpx, tritonclient, kaon.Client)."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

import kaon
from tests.servers import Server


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray((array * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_predict_json_matches_the_model(onnx_server, probe):
    x, expected = probe
    response = httpx.post(onnx_server.url + "/predict", json={"inputs": x.tolist()})
    assert response.status_code == 200
    rows = response.json()
    got = np.array([row["probabilities"] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [row["label"] for row in rows] == expected.argmax(1).tolist()
    assert response.headers["x-request-id"]


def test_predict_accepts_base64_png_and_raw_png_body(onnx_server):
    image = np.random.default_rng(1).random((8, 8), dtype=np.float32)
    png = _png(image)
    pixels = np.asarray(PILImage.open(io.BytesIO(png)), dtype=np.float32)[None, None] / 255
    as_json = httpx.post(onnx_server.url + "/predict", json={"inputs": [base64.b64encode(png).decode()]})
    as_bytes = httpx.post(onnx_server.url + "/predict", content=png, headers={"content-type": "image/png"})
    as_arrays = httpx.post(onnx_server.url + "/predict", json={"inputs": pixels[0].tolist() and [pixels[0].tolist()]})
    assert as_json.status_code == as_bytes.status_code == as_arrays.status_code == 200
    assert as_json.json() == as_bytes.json()
    np.testing.assert_allclose(as_json.json()[0]["probabilities"], as_arrays.json()[0]["probabilities"], atol=1e-6)


def test_tritonclient_sync_json_and_binary(onnx_server, probe):
    import tritonclient.http as triton

    x, expected = probe
    client = triton.InferenceServerClient(onnx_server.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    for binary in (False, True):
        tensor = triton.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
        result = client.infer("digits", [tensor], outputs=[wanted])
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)
    default = triton.InferInput("image", list(x.shape), "FP32")
    default.set_data_from_numpy(x)  # the client's defaults: binary in, binary out
    np.testing.assert_allclose(client.infer("digits", [default]).as_numpy("probabilities"), expected, atol=1e-5)


def test_tritonclient_aio(onnx_server, probe):
    import tritonclient.http.aio as triton_aio

    x, expected = probe

    async def scenario():
        client = triton_aio.InferenceServerClient(onnx_server.url.removeprefix("http://"))
        try:
            tensor = triton_aio.InferInput("image", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            result = await client.infer("digits", [tensor])
            return result.as_numpy("probabilities")
        finally:
            await client.close()

    np.testing.assert_allclose(asyncio.run(scenario()), expected, atol=1e-5)


def test_tritonclient_model_config_statistics_and_repository_index(onnx_server, probe):
    import tritonclient.http as triton

    x, _ = probe
    client = triton.InferenceServerClient(onnx_server.url.removeprefix("http://"))
    config = client.get_model_config("digits")
    assert config["max_batch_size"] == 64  # kaon serve's default --max-batch-size
    assert config["input"] == [{"name": "image", "data_type": "TYPE_FP32", "dims": [1, 8, 8]}]
    assert config["output"][0]["dims"] == [10] and config["output"][0]["data_type"] == "TYPE_FP32"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] > 0
    assert client.get_model_repository_index() == [{"name": "digits", "version": "1", "state": "READY"}]

    def counts():
        (stats,) = client.get_inference_statistics("digits")["model_stats"]
        return stats

    before = counts()
    tensor = triton.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("digits", [tensor])
    wrong = triton.InferInput("image", [1, 64], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 64), np.float32))
    with pytest.raises(triton.InferenceServerException):
        client.infer("digits", [wrong])
    after = counts()
    delta = {k: after["inference_stats"][k]["count"] - before["inference_stats"][k]["count"]
             for k in ("success", "fail", "queue", "compute_infer")}
    assert delta == {"success": 3, "fail": 1, "queue": 3, "compute_infer": 3}
    assert after["inference_count"] - before["inference_count"] == 3 * len(x)
    assert after["execution_count"] - before["execution_count"] == 3
    assert after["inference_stats"]["success"]["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["last_inference"] > 0
    assert any(b["batch_size"] == len(x) for b in after["batch_stats"])
    every = client.get_inference_statistics()["model_stats"]
    assert [s["name"] for s in every] == ["digits"]
    assert httpx.get(onnx_server.url + "/v2/models/digits/versions/1/config").status_code == 200


def test_kaon_client_predict_infer_and_async(onnx_server, probe):
    x, expected = probe
    with kaon.Client(onnx_server.url) as client:
        assert client.ready()
        np.testing.assert_allclose(client.infer(x)["probabilities"], expected, atol=1e-5)
        assert [r["label"] for r in client.predict(x)] == expected.argmax(1).tolist()

    async def scenario():
        async with kaon.AsyncClient(onnx_server.url) as client:
            return await client.infer({"image": x}, model="digits")

    np.testing.assert_allclose(asyncio.run(scenario())["probabilities"], expected, atol=1e-5)


def test_kaon_client_takes_big_endian_arrays_and_says_when_no_server_is_there(onnx_server, probe):
    from kaon.sdk.client import ServerUnreachableError
    from tests.servers import free_port

    x, expected = probe
    with kaon.Client(onnx_server.url) as client:
        np.testing.assert_allclose(client.infer(x.astype(">f4"))["probabilities"], expected, atol=1e-5)
        with pytest.raises(TypeError, match="V2 protocol cannot carry"):
            client.infer(x.astype(np.complex64))
    nowhere = f"http://127.0.0.1:{free_port()}"
    with kaon.Client(nowhere, max_retries=2, backoff_s=0.01) as client:
        assert client.ready() is False
        with pytest.raises(ServerUnreachableError, match=rf"could not reach the kaon server at {nowhere}.*3 attempt"):
            client.predict(x)

    async def scenario():
        async with kaon.AsyncClient(nowhere, max_retries=1, backoff_s=0.01) as client:
            assert await client.ready() is False
            with pytest.raises(ServerUnreachableError, match="Is it running"):
                await client.infer({"image": x}, model="digits")

    asyncio.run(scenario())
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with kaon.Client(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout_s=0.3) as client, \
                pytest.raises(ServerUnreachableError, match="did not answer in time .*Raise the client's timeout_s"):
            client.predict(x)


def test_v2_routes_and_errors(onnx_server):
    url = onnx_server.url
    assert httpx.get(url + "/v2").json()["extensions"] == ["binary_tensor_data", "model_configuration", "statistics"]
    assert httpx.get(url + "/v2/models/digits/versions/1").status_code == 200
    assert httpx.get(url + "/v2/models/digits/versions/1/ready").status_code == 200
    missing = httpx.get(url + "/v2/models/nope")
    assert missing.status_code == 404 and "digits" in missing.json()["error"]
    rows = 4097  # onnx_server runs with --max-queue 4096
    too_many = httpx.post(url + "/v2/models/digits/infer", json={"inputs": [
        {"name": "image", "shape": [rows, 1, 8, 8], "datatype": "FP32", "data": [0.0] * (rows * 64)}]})
    assert too_many.status_code == 413 and "Split it" in too_many.json()["error"]
    wrong = httpx.post(url + "/v2/models/digits/infer",
                       json={"inputs": [{"name": "image", "shape": [1, 8, 8], "datatype": "FP32", "data": [0] * 64}]})
    assert wrong.status_code == 422 and "expected shape (N, 1, 8, 8)" in wrong.json()["error"]


@pytest.mark.parametrize("body, status, words", [
    (b'{"inputs": [[[', 400, "not valid JSON"),
    (b'{"wrong": []}', 422, "inputs"),
    (b'{"inputs": [[1, 2, 3]]}', 422, "expected shape [1, 8, 8]"),
    (b'{"inputs": [["a"]]}', 422, "non-numeric"),
    (b"", 422, "empty"),
])
def test_bad_bodies_get_the_error_envelope(onnx_server, body, status, words):
    response = httpx.post(onnx_server.url + "/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"] and error["request_id"] == response.headers["x-request-id"]


def test_unknown_route_is_404_listing_routes(onnx_server):
    response = httpx.get(onnx_server.url + "/nope")
    message = response.json()["error"]["message"]
    assert response.status_code == 404 and "/predict" in message and "/v2/models/digits/infer" in message


def test_metrics_count_requests_and_batches(onnx_server, probe):
    x, _ = probe
    httpx.post(onnx_server.url + "/predict", json={"inputs": x.tolist()})
    text = httpx.get(onnx_server.url + "/metrics").text
    assert 'kaon_requests_total{route="/predict",status="200"}' in text
    assert "kaon_request_latency_seconds_bucket" in text and 'kaon_batch_size_count{endpoint="predict"}' in text
    assert "kaon_queue_depth" in text and "kaon_in_flight_requests" in text


def test_concurrent_requests_are_batched_and_correct(onnx_server, probe):
    x, expected = probe

    async def scenario():
        async with httpx.AsyncClient(base_url=onnx_server.url) as client:
            calls = [client.post("/predict", json={"inputs": [x[i % 5].tolist()]}) for i in range(64)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(scenario())
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):
        np.testing.assert_allclose(response.json()[0]["probabilities"], expected[i % 5], atol=1e-5)
    text = httpx.get(onnx_server.url + "/metrics").text
    # at least one forward pass carried more than one request
    singles = 'kaon_batch_size_bucket{endpoint="predict",le="1.0"}'
    counts = [line for line in text.splitlines() if line.startswith(singles)]
    total = [line for line in text.splitlines() if line.startswith('kaon_batch_size_count{endpoint="predict"}')]
    assert float(counts[0].split()[-1]) < float(total[0].split()[-1])


def test_openapi_and_docs(onnx_server):
    spec = httpx.get(onnx_server.url + "/openapi.json").json()
    assert "DigitsPredictRequest" in spec["components"]["schemas"]
    assert "/predict" in spec["paths"]
    docs = httpx.get(onnx_server.url + "/docs")
    assert docs.status_code == 200 and "/docs/static/swagger-ui-bundle.js" in docs.text
    assert "https://" not in docs.text  # Swagger UI comes from the server: /docs works with no internet access
    script = httpx.get(onnx_server.url + "/docs/static/swagger-ui-bundle.js")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.text
    assert httpx.get(onnx_server.url + "/docs/static/swagger-ui.css").status_code == 200
    redoc = httpx.get(onnx_server.url + "/redoc")
    assert redoc.status_code == 200 and "https://" not in redoc.text.replace("https://fonts.googleapis.com", "")
    # errors are documented as kaon writes them, not as FastAPI's {"detail": [...]}
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    assert {"413", "503", "504"} <= set(responses) and "HTTPValidationError" not in spec["components"]["schemas"]
    infer = spec["paths"]["/v2/models/digits/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/V2InferRequest")


def test_external_data_onnx_and_name_flag(models_dir, probe):
    x, expected = probe
    server = Server(["serve", str(models_dir / "digits_ext.onnx"), "--name", "mnist"]).wait_ready()
    try:
        with kaon.Client(server.url) as client:
            np.testing.assert_allclose(client.infer(x, model="mnist")["probabilities"], expected, atol=1e-5)
    finally:
        assert server.stop() == 0


def test_pt2_program_is_served(models_dir, probe):
    x, expected = probe
    server = Server(["serve", str(models_dir / "digits.pt2")]).wait_ready()
    try:
        rows = httpx.post(server.url + "/predict", json={"inputs": x.tolist()}).json()
        np.testing.assert_allclose([r["output"] for r in rows], expected, atol=1e-5)
        assert httpx.get(server.url + "/v2/models/digits").json()["platform"] == "kaon_torch"
    finally:
        server.stop()


def test_request_body_over_the_limit_is_413(models_dir):
    server = Server(["serve", str(models_dir / "digits.onnx"), "--max-body-bytes", "2048"]).wait_ready()
    try:
        big = {"inputs": np.zeros((20, 1, 8, 8)).tolist()}
        response = httpx.post(server.url + "/predict", json=big)
        assert response.status_code == 413 and "2048" in response.json()["error"]["message"]
        assert httpx.get(server.url + "/healthz").status_code == 200
    finally:
        server.stop()


def test_compressed_bodies_methods_and_content_types(onnx_server, probe):
    import gzip
    import zlib

    import tritonclient.http as triton

    x, expected = probe
    url = onnx_server.url
    plain = orjson_bytes({"inputs": x.tolist()})
    zipped = httpx.post(url + "/predict", content=gzip.compress(plain),
                        headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert zipped.status_code == 200, zipped.text
    np.testing.assert_allclose([r["probabilities"] for r in zipped.json()], expected, atol=1e-5)
    client = triton.InferenceServerClient(url.removeprefix("http://"))
    for algorithm in ("gzip", "deflate"):
        tensor = triton.InferInput("image", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("digits", [tensor], request_compression_algorithm=algorithm)
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-5)

    bomb = gzip.compress(b"0" * (17 * 1024 * 1024))  # ~17 KB that inflates past the 16 MiB --max-body-bytes
    for content, encoding, status, words in (
        (bomb, "gzip", 413, "inflates to more than"), (b"not gzip", "gzip", 400, "not valid gzip"),
        (zlib.compress(plain), "br", 415, "Content-Encoding 'br'"),
    ):
        answer = httpx.post(url + "/predict", content=content,
                            headers={"content-type": "application/json", "content-encoding": encoding})
        assert answer.status_code == status and words in answer.json()["error"]["message"], answer.text

    octets = httpx.post(url + "/predict", content=b"\x00\x01binary",
                        headers={"content-type": "application/octet-stream"})
    assert octets.status_code == 400 and "Content-Type 'application/octet-stream'" in octets.json()["error"]["message"]
    wrong_method = httpx.get(url + "/predict")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert "it takes POST" in wrong_method.json()["error"]["message"]
    head = httpx.head(url + "/healthz")
    assert head.status_code == 200 and head.content == b""
    # the V2 routes answer a wrong method the same way (they answered 404 'no V2 route')
    for method, path, allow in (("GET", "/v2/models/digits/infer", "POST"), ("POST", "/v2/models/digits", "GET, HEAD"),
                                ("DELETE", "/v2/health/ready", "GET, HEAD"), ("GET", "/v2/repository/index", "POST")):
        refused = httpx.request(method, url + path)
        assert refused.status_code == 405 and refused.headers["allow"] == allow, (path, refused.text)
        assert f"it takes {allow.split(',')[0]}" in refused.json()["error"]  # V2 errors are a string
    assert httpx.head(url + "/v2/models/digits/ready").status_code == 200
    assert httpx.get(url + "/v2/models/digits/nope").status_code == 404


def orjson_bytes(value) -> bytes:
    import orjson

    return orjson.dumps(value)
