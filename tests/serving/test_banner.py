"""The banner's "Try it" lines are requests that work: sent as printed, they get a 200."""

from __future__ import annotations

import ast
import asyncio
import json
import re

import pydantic

import kaon
from kaon.config import ServeConfig
from kaon.serving.app import KaonApp
from kaon.serving.server import banner


class Point(pydantic.BaseModel):
    label: str
    x: float
    visible: bool = True


class Labeller(kaon.Service):
    @kaon.endpoint(max_batch_size=8)
    def predict(self, points: list[Point]) -> list[str]:
        return [f"{p.label}:{p.x}" for p in points]


def _try_lines(app: KaonApp) -> tuple[str, str]:
    text = banner(app, ServeConfig())
    curl_body = re.search(r"-d '(.*)'$", text, re.MULTILINE)
    python_call = re.search(r"\.predict\((.*)\)\)\"$", text, re.MULTILINE)
    assert curl_body and python_call, text
    return curl_body.group(1), python_call.group(1)


def test_the_examples_of_an_endpoint_taking_objects_are_json_for_curl_and_python_for_python():
    app = KaonApp(Labeller, ServeConfig())
    body, call = _try_lines(app)
    field, _, value = call.partition("=")
    assert json.loads(body) == {field: ast.literal_eval(value)}  # same request both ways

    async def send() -> int:
        await app.startup()
        try:
            answer = await app.answer("POST", "/predict", {"content-type": "application/json"}, body.encode())
            assert answer is not None
            return answer.response.status
        finally:
            await app.shutdown()

    assert asyncio.run(send()) == 200


def test_with_auth_on_the_banner_says_so_and_its_examples_send_a_token():
    from kaon.serving.guards import build_guards

    config = ServeConfig(require_auth=True)
    app = KaonApp(Labeller, config, guards=build_guards(config, load_tokens=lambda: []))
    text = banner(app, config)
    assert "auth: on" in text
    assert '-H "authorization: Bearer $KAON_TOKEN"' in text and "token=os.environ['KAON_TOKEN']" in text

    async def metrics_without_a_token() -> str:
        await app.startup()
        try:
            answer = await app.answer("GET", "/metrics", {}, b"")
            assert answer is not None and answer.response.status == 401
            return answer.response.body.decode()
        finally:
            await app.shutdown()

    assert "--scopes metrics" in asyncio.run(metrics_without_a_token())  # it said predict, then 403'd that token


def test_behind_a_proxy_the_banner_gives_the_public_url_to_send_requests_to():
    config = ServeConfig(port=8123, public_url="https://models.example.com/")
    text = banner(KaonApp(Labeller, config), config)
    assert text.startswith("kaon is serving 'Labeller' at http://127.0.0.1:8123; clients reach it at "
                           "https://models.example.com\n"), text
    assert "curl -s -X POST https://models.example.com/predict" in text
    assert "kaon.Client('https://models.example.com')" in text and "8123/" not in text
