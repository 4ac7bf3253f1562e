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
])
def test_bad_settings_are_config_errors_naming_the_fix(settings, words):
    with pytest.raises(ConfigError, match=words):
        ServeConfig.from_env(**settings)


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
