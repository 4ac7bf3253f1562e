"""Serve settings and targets a user can get wrong: each a ConfigError that says what to do, before serving."""

from __future__ import annotations

import numpy as np
import pytest

import kaon
from kaon.config import ServeConfig
from kaon.errors import ConfigError, InvalidInputError


@pytest.mark.parametrize("settings, words", [
    ({"log_level": "loud"}, "log_level must be one of critical, error, warning"),  # was uvicorn's KeyError
    ({"name": "my model/x"}, "part of the V2 routes' paths"),  # its V2 routes could not be reached
    ({"max_batch": 3}, "did you mean max_batch_size?"),  # was a raw TypeError from the dataclass
    ({"read_timeout_s": 0}, r"read_timeout_s must be a number > 0. Received: read_timeout_s=0"),
])
def test_bad_settings_are_config_errors_naming_the_fix(settings, words):
    with pytest.raises(ConfigError, match=words):
        ServeConfig.from_env(**settings)


def test_read_timeout_s_is_60_s_unless_its_flag_or_variable_says_otherwise(monkeypatch):
    assert ServeConfig().read_timeout_s == 60.0  # nginx's client_header_timeout and client_body_timeout
    monkeypatch.setenv("KAON_READ_TIMEOUT_S", "2.5")
    assert ServeConfig.from_env().read_timeout_s == 2.5
    assert ServeConfig.from_env(read_timeout_s=7).read_timeout_s == 7  # the flag wins


def test_serving_a_live_module_says_to_register_or_save_it_first():
    import torch

    with pytest.raises(ConfigError, match=r"not a live Linear object. Register it first: kaon.register"):
        kaon.serve(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="cannot serve a int"):
        kaon.serve(3)


def test_client_infer_with_a_second_array_says_to_pass_a_dict():
    client = kaon.Client("http://127.0.0.1:9")  # refused before any request is sent
    with pytest.raises(InvalidInputError, match=r"pass|one dict"):
        client.infer(np.zeros((1, 2)), np.zeros((1, 3)))  # type: ignore[arg-type]


def test_a_bad_host_is_not_blamed_on_the_port():
    from kaon.serving.workers import bind_listener

    with pytest.raises(ConfigError, match="Check --host") as info:
        bind_listener("999.1.1.1", 8000)
    assert "--port" not in info.value.message


def test_add_the_batch_axis_is_said_only_when_that_is_what_is_missing():
    from kaon.types import TensorSpec

    spec = TensorSpec("image", "float32", (-1, 8, 8, 1))
    with pytest.raises(InvalidInputError, match="Add the batch axis"):
        spec.validate(np.zeros((8, 8, 1), np.float32))
    with pytest.raises(InvalidInputError) as info:
        spec.validate(np.zeros((8, 8, 8), np.float32))  # the channel axis is what is missing
    assert "batch axis" not in info.value.message


def test_a_non_numeric_inference_header_length_is_named():
    import asyncio

    from kaon.models import Model
    from kaon.serving.app import KaonApp
    from kaon.serving.targets import resolve_target
    from kaon.types import Signature, TensorSpec

    class Doubler(Model):
        framework = "numpy"

        def _run(self, inputs):
            return {"y": inputs["x"] * 2}

    model = Doubler(Signature([TensorSpec("x", "float32", (-1, 2))], [TensorSpec("y", "float32", (-1, 2))]), "dbl")
    app = KaonApp(resolve_target(model), ServeConfig())

    async def send() -> tuple[int, bytes]:
        await app.startup()
        try:
            answer = await app.answer("POST", "/v2/models/dbl/infer", {"inference-header-content-length": "ten"},
                                      b'{"inputs": []}')
            assert answer is not None
            return answer.response.status, answer.response.body
        finally:
            await app.shutdown()

    status, body = asyncio.run(send())
    assert status == 400 and b"Inference-Header-Content-Length" in body


def test_half_precision_on_the_cpu_is_served_with_a_warning(models_dir, caplog):
    """--precision bf16 on a CPU ran silently: slower than fp32 there, and probabilities came back rounded."""
    import logging

    from kaon.serving.targets import resolve_target

    with caplog.at_level(logging.WARNING, logger="kaon.serving"):
        resolve_target(str(models_dir / "digits.pt2"), device="cpu", precision="bf16")
    assert "--precision bf16 on the CPU" in caplog.text and "Serve with fp32 here" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kaon.serving"):
        resolve_target(str(models_dir / "digits.pt2"), device="cpu", precision="fp32")
    assert "precision" not in caplog.text
