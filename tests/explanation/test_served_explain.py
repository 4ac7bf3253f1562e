"""`POST /explain` beside `/predict`: a real `kaon serve` of a torch.export program, the same app in process
for ONNX, and the batching of concurrent explanations."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

import kaon.explanation as ke
from kaon.serving.explain import ExplainQueue
from tests.servers import Server


@pytest.fixture(scope="module")
def pt2_server(model_files, tmp_path_factory):
    server = Server(["serve", str(model_files["pt2"])],
                    env={"KAON_HOME": str(tmp_path_factory.mktemp("home"))}).wait_ready()
    yield server
    server.stop()


def post_in_process(model, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """The same ASGI app `kaon serve` runs, driven in this process (one real server per test file is enough)."""
    from kaon.serving import KaonApp, model_service

    async def scenario():
        app = KaonApp(model_service(model))
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kaon") as client:
                return [await client.post(path, json=body, timeout=30) for body in bodies]
        finally:
            await app.shutdown()

    return asyncio.run(scenario())


def test_explain_answers_what_kaon_explain_computes(pt2_server, program, probe):
    x, y = probe
    response = httpx.post(pt2_server.url + "/explain", json={"inputs": x[:3].tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    rows = response.json()
    local = ke.explain(program, x[:3], method="integrated_gradients")
    np.testing.assert_allclose([r["attributions"] for r in rows], local.attributions, atol=1e-5)
    assert [r["target"] for r in rows] == y[:3].tolist() == [r["label"] for r in rows]
    assert all(r["method"] == "integrated_gradients" and "heatmap" not in r for r in rows)
    assert np.argmax(rows[0]["prediction"]) == rows[0]["target"]
    # /predict is untouched beside it
    assert httpx.post(pt2_server.url + "/predict", json={"inputs": x[:1].tolist()}).status_code == 200


def test_explain_returns_heatmaps_and_takes_targets_and_png_inputs(pt2_server, probe):
    x, _ = probe
    buffer = io.BytesIO()
    Image.fromarray((x[0, 0] * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    body = {"inputs": [x[1].tolist(), base64.b64encode(buffer.getvalue()).decode()], "method": "saliency",
            "target": [4, 5], "heatmap": True}
    rows = httpx.post(pt2_server.url + "/explain", json=body, timeout=30).json()
    assert [r["target"] for r in rows] == [4, 5]
    image = Image.open(io.BytesIO(base64.b64decode(rows[0]["heatmap"])))
    assert image.format == "PNG" and image.size == (256, 256)
    assert np.asarray(rows[1]["attributions"]).shape == (1, 8, 8)


@pytest.mark.parametrize("body, words", [
    ({"inputs": [[[0.0] * 8] * 8], "target": 10}, "target 10 is out of range"),
    ({"inputs": [[[0.0] * 8] * 8], "target": [1, 2]}, "one integer per input (1)"),
    ({"inputs": [[0.0, 1.0]]}, "expected shape [1, 8, 8]"),
    ({"inputs": [[[0.0] * 8] * 8], "method": "attention"}, "Methods that work for this model: saliency"),
    ({"inputs": [[[0.0] * 8] * 8], "method": "deep_magic"}, "'integrated_gradients'"),
])
def test_bad_explain_requests_are_422_with_the_error_envelope(pt2_server, body, words):
    response = httpx.post(pt2_server.url + "/explain", json=body, timeout=30)
    assert response.status_code == 422
    error = response.json()["error"]
    assert words in error["message"] and error["request_id"] == response.headers["x-request-id"]


def test_onnx_models_explain_without_gradients_and_say_which_methods_work(onnx_model, pt2_server, probe):
    x, _ = probe
    body = {"inputs": x[:2].tolist(), "method": "occlusion"}
    refused, answered, default = post_in_process(
        onnx_model, "/explain", [{"inputs": x[:1].tolist(), "method": "integrated_gradients"}, body,
                                 {"inputs": x[:2].tolist()}])
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert "onnxruntime" in message and "occlusion, kernel_shap, lime" in message
    on_onnx = answered.json()
    assert default.status_code == 200 and default.json() == on_onnx  # no method: occlusion, which works here
    on_torch = httpx.post(pt2_server.url + "/explain", json=body, timeout=30).json()
    np.testing.assert_allclose([r["attributions"] for r in on_onnx], [r["attributions"] for r in on_torch],
                               atol=1e-4)


def test_explain_is_in_the_openapi_schema(pt2_server):
    spec = httpx.get(pt2_server.url + "/openapi.json").json()
    assert "/explain" in spec["paths"] and "DigitsExplainRequest" in spec["components"]["schemas"]
    method = spec["components"]["schemas"]["DigitsExplainRequest"]["properties"]["method"]
    assert "integrated_gradients" in str(method)


def test_concurrent_explains_share_one_pass_and_each_gets_its_own_rows(program, probe):
    x, _ = probe
    queue = ExplainQueue(program, max_batch_size=32)
    sizes: list[int] = []
    explain_now = queue.explain_now

    def recording(inputs, targets, method, heatmap):  # the real method, with the batch size noted
        sizes.append(len(inputs))
        return explain_now(inputs, targets, method, heatmap)

    queue.explain_now = recording  # type: ignore[method-assign]

    async def scenario():
        calls = [queue.explain([x[i]], "integrated_gradients", None, False) for i in range(8)]
        results = await asyncio.gather(*calls)
        queue.close()
        return results

    results = asyncio.run(scenario())
    assert sum(sizes) == 8 and max(sizes) > 1  # at least one pass carried several requests
    together = ke.explain(program, x, method="integrated_gradients")
    for i, rows in enumerate(results):
        np.testing.assert_allclose(rows[0]["attributions"], together.attributions[i], atol=1e-5)


def test_shap_permutation_is_served_for_onnx_models(onnx_model, probe):
    """The shap extra's methods are in the served request schema too (one list of methods, kaon.explanation's)."""
    x, _ = probe
    (answered,) = post_in_process(onnx_model, "/explain", [{"inputs": x[:1].tolist(), "method": "shap_permutation"}])
    assert answered.status_code == 200, answered.text
    attributions = np.asarray(answered.json()[0]["attributions"])
    assert attributions.shape == x[0].shape and np.isfinite(attributions).all() and np.abs(attributions).sum() > 0
