"""kaon.register / kaon.load: torch modules and Keras models round-trip through the registry."""

from __future__ import annotations

import os

import numpy as np
import pytest

import kaon
from kaon.errors import IntegrityError, InvalidInputError, NotFoundError


def _torch_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


def test_torch_module_round_trips_with_equal_outputs():
    import torch

    model = _torch_model()
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    version = kaon.register(model, "lin", input_example=x[:2], metrics={"accuracy": 0.5})
    assert version.ref == "lin@1" and version.framework == "torch" and "latest" in version.aliases
    loaded = kaon.load("lin@latest")
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(loaded.predict(x), expected, atol=1e-6)
    assert loaded.signature.inputs[0].shape == (-1, 1, 8, 8)
    assert kaon.register(model, "lin", input_example=x[:1]).version == 2  # batch of 1 exports too
    np.testing.assert_allclose(kaon.load("lin@2").predict(x[:1]), expected[:1], atol=1e-6)


def test_register_without_example_says_how_to_fix():
    with pytest.raises(InvalidInputError, match="input_example=x"):
        kaon.register(_torch_model(), "lin")


def test_one_sample_as_the_example_says_to_pass_a_batch():
    import torch

    from kaon.errors import ModelLoadError

    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    with pytest.raises(ModelLoadError, match=r"axis 0 is not a batch axis.*input_example=x\[:2\], not one sample"):
        kaon.register(model, "row", input_example=np.zeros(4, np.float32))  # x[0]: 'Constraints violated (batch)'


def test_an_example_of_the_wrong_width_is_one_error_without_torchs_logged_traceback(capfd):
    """torch's fake-tensor logger printed ~20 lines of traceback (E... lines) before kaon's error, which ended '..'."""
    import torch

    from kaon.errors import ModelLoadError

    model = torch.nn.Sequential(torch.nn.Linear(13, 3)).eval()
    with pytest.raises(ModelLoadError, match=r"got \[s\d+, 7\] X \[13, 3\]\. Expected a module") as info:
        kaon.register(model, "wide", input_example=np.zeros((4, 7), np.float32))
    assert ".." not in str(info.value)
    assert "Traceback" not in capfd.readouterr().err


def test_a_version_that_takes_other_inputs_than_the_one_before_is_warned_about():
    """An unrelated nn.Linear(13, 3) registered as 'lin' quietly became lin@2 and lin@latest."""
    import warnings

    import torch

    x = np.zeros((2, 1, 8, 8), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same inputs again: nothing to say
        kaon.register(_torch_model(), "lin", input_example=x)
        kaon.register(_torch_model(), "lin", input_example=x)
    with pytest.warns(UserWarning, match=r"lin@3 takes other inputs than lin@2: .*\(-1, 13\).*\(-1, 1, 8, 8\)"):
        kaon.register(torch.nn.Linear(13, 3), "lin", input_example=np.zeros((2, 13), np.float32))


class _ValueBranch:  # built lazily: torch is imported by the test
    @staticmethod
    def make():
        import torch

        class ValueBranch(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = torch.nn.Linear(4, 2)

            def forward(self, x):
                if x.sum() > 0:  # control flow on values: torch.export cannot trace it
                    return self.linear(x)
                return -self.linear(x)

        return ValueBranch()


def test_an_untraceable_forward_names_its_line_without_the_exporter_dump(capfd):
    """torch.export printed its partial graph to stderr (dozens of lines) before kaon's error; the error had
    torch's advice on guard_or_false and a link, not the user's line."""
    from kaon.errors import ModelLoadError

    with pytest.raises(ModelLoadError) as info:
        kaon.register(_ValueBranch.make(), "branchy", input_example=np.zeros((2, 4), np.float32))
    message = str(info.value)
    assert "data-dependent" in message and "in forward" in message and "torch.where or torch.cond" in message
    assert "guard_or_false" not in message and "docs.google" not in message
    out, err = capfd.readouterr()
    assert "def forward" not in out + err and "symbolic_shapes" not in out + err, out + err


def test_unknown_reference_lists_what_exists():
    kaon.register(_torch_model(), "lin", input_example=np.zeros((2, 1, 8, 8), np.float32))
    with pytest.raises(NotFoundError) as info:
        kaon.load("lin@production")
    assert "lin" in info.value.message


def test_tampered_artifact_refuses_to_load(kaon_home):
    version = kaon.register(_torch_model(), "lin", input_example=np.zeros((2, 1, 8, 8), np.float32))
    sha = version.files["model.pt2"]
    target = next(p for p in (kaon_home / "artifacts").rglob("*") if p.is_file() and sha in p.name)
    target.chmod(0o644)
    with open(target, "r+b") as fh:
        fh.seek(100)
        fh.write(b"tampered!")
    import shutil

    shutil.rmtree(kaon_home / "cache", ignore_errors=True)
    with pytest.raises(IntegrityError):
        kaon.load("lin")


def test_keras_seed_model_registers_and_loads_with_equal_outputs():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, (3, 3), activation="relu"),
        keras.layers.MaxPooling2D((2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    version = kaon.register(model, "keras-digits")
    assert version.framework == "keras"
    loaded = kaon.load("keras-digits")
    np.testing.assert_allclose(loaded.predict(x), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"metrics": {"accuracy": "high"}}, InvalidInputError, r"metric 'accuracy' must be a number.*Received: 'high'"),
    ({"metrics": {"loss": float("nan")}}, InvalidInputError, r"metric 'loss' must be a finite number"),
    ({"metrics": [0.5]}, InvalidInputError, r"metrics must be a dict of name -> number"),
    ({"description": 3}, InvalidInputError, r"description must be a string. Received: 3"),
    ({"run_id": 0}, InvalidInputError, r"a run id is an integer between 1 and"),
    ({"run_id": 999}, NotFoundError, r"no run with id 999"),
    ({"parent": "nosuch@1"}, NotFoundError, r"nosuch"),
    ({"signature": 42}, InvalidInputError, r"signature must be a kaon.types.Signature or a dict. Received: int"),
])
def test_bad_arguments_are_refused_before_the_model_is_exported(kwargs, error, message):
    """kaon.register exported the model (seconds for a real one: torch.export traces it) and only then found a bad
    metric, run or parent, so every mistake cost an export before its error."""
    from kaon.registry import Registry

    model = _torch_model()
    forward_calls: list[int] = []
    model.register_forward_pre_hook(lambda module, args: forward_calls.append(1))  # torch.export runs forward
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(error, match=message):
        kaon.register(model, "lin", input_example=x, **kwargs)
    assert forward_calls == []
    with Registry() as registry, pytest.raises(NotFoundError):
        registry.list_versions("lin")
    kaon.register(model, "lin", input_example=x, metrics={"accuracy": 0.5})
    assert forward_calls  # the hook does see an export


def test_load_and_register_close_the_registry_they_open():
    """Each call opened a Registry and left its database connections to the garbage collector: 26 open files
    after 100 kaon.load calls, until a collection ran."""
    import gc

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    kaon.register(_torch_model(), "closing", input_example=x)
    kaon.load("closing")  # warm: imports, caches
    gc.collect()
    gc.disable()  # what is still open after the calls is what they left open, not what a collection missed
    try:
        before = open_files()
        for _ in range(10):
            kaon.load("closing")
        kaon.register(_torch_model(), "closing", input_example=x)
        assert open_files() <= before
    finally:
        gc.enable()
