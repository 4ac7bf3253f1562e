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


def test_readme_training_lines_name_the_callbacks_and_their_adversarial_example_runs():
    """README's training section named neither the callbacks nor records_epoch, nor the adv_* values."""
    import torch

    import kaon.training
    from kaon.training import Callback, EarlyStopping, Trainer

    text = README.read_text()
    section = text[text.index("Training in Python:"):text.index("## Layout")]
    spans = re.findall(r"`([^`]+)`", section)
    exported = [getattr(kaon.training, name) for name in kaon.training.__all__]
    callbacks = [value.__name__ for value in exported if isinstance(value, type) and issubclass(value, Callback)
                 and value.__name__ not in ("Callback", "History")]  # the base class; History: fit's own
    assert set(callbacks) <= set(spans) and "records_epoch = True" in spans

    make_trainer = next(span for span in spans if "adversarial=" in span).replace("...", "model, track=False")
    stopping = next(span for span in spans if span.startswith("EarlyStopping("))
    torch.manual_seed(0)
    namespace = {"kaon": kaon, "Trainer": Trainer, "EarlyStopping": EarlyStopping, "model": torch.nn.Linear(5, 3)}
    trainer = eval(make_trainer, namespace)  # noqa: S307 - our own README
    history = trainer.fit(torch.rand(40, 5).numpy(), torch.randint(0, 3, (40,)).numpy(), epochs=2,
                          validation_split=0.25, callbacks=[eval(stopping, namespace)], verbose=False)  # noqa: S307
    logged = [span.replace("<metric>", "accuracy") for span in spans if re.fullmatch(r"(val_)?adv_[a-z_<>]+", span)]
    assert logged and set(logged) <= set(history.history)
