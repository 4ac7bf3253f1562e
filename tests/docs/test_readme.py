"""The README's snippets run as written."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import numpy as np

import kaon
from kaon.serving import KaonApp
from kaon.testing import check_service

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _register_digits() -> np.ndarray:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.Softmax(dim=1))
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    kaon.register(model, "digits", input_example=x[:2])
    return x


def test_readme_service_snippet_defines_a_working_service():
    x = _register_digits()
    service_block = next(b for b in _python_blocks() if "class Digits(kaon.Service)" in b)
    namespace: dict[str, object] = {}
    exec(compile(service_block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    digits = namespace["Digits"]
    check_service(digits, examples={"predict": {"images": [x[0, 0].tolist()]}})

    async def scenario():
        app = KaonApp(digits)
        await app.startup()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kaon") as client:
                response = await client.post("/predict", json={"images": [x[i, 0].tolist() for i in range(3)]})
                schema = (await client.get("/openapi.json")).json()
            # "Call it": client.predict(images) sends {"inputs": images}, which every batched endpoint takes
            # (it was a 422 "images: Field required" for this very Service)
            async with kaon.AsyncClient("http://kaon", transport=transport) as sdk:
                predicted = await sdk.predict(x[:2, 0])
        finally:
            await app.shutdown()
        return response, schema, predicted

    response, schema, predicted = asyncio.run(scenario())
    assert [set(p) for p in predicted] == [{"label", "confidence"}] * 2
    assert schema["components"]["schemas"]["DigitsPredictRequest"]["required"] == ["images"]
    assert response.status_code == 200 and len(response.json()) == 3
    assert set(response.json()[0]) == {"label", "confidence"}
    assert {"DigitsPredictRequest", "DigitsPredictResponse"} <= set(schema["components"]["schemas"])


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "bash install.sh && kaon quickstart" in text and "python -m pytest -q" in text
