"""A Keras 3 model (torch backend) saved as .keras is served like any other model."""

from __future__ import annotations

import os

import httpx
import numpy as np

import kaon
from tests.servers import Server


def test_keras_model_is_served_and_matches_keras_predict(tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, (3, 3), activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    path = tmp_path / "kdigits.keras"
    model.save(path)
    x = np.random.default_rng(0).random((3, 8, 8, 1), dtype=np.float32)
    expected = model.predict(x, verbose=0)

    server = Server(["serve", str(path)], env={"KERAS_BACKEND": "torch"}).wait_ready()
    try:
        rows = httpx.post(server.url + "/predict", json={"inputs": x.tolist()}).json()
        np.testing.assert_allclose([r["output"] for r in rows], expected, atol=1e-5)
        # an (8, 8) image without the channel axis is accepted too
        rows = httpx.post(server.url + "/predict", json={"inputs": [x[0, ..., 0].tolist()]}).json()
        np.testing.assert_allclose(rows[0]["output"], expected[0], atol=1e-5)
        with kaon.Client(server.url) as client:
            np.testing.assert_allclose(client.infer(x, model="kdigits")["output"], expected, atol=1e-5)
    finally:
        assert server.stop() == 0
