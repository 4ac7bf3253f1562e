"""Trainer trains a Keras 3 model (torch backend) through its trainable variables."""

from __future__ import annotations

import keras  # noqa: E402 - tests/conftest.py sets KERAS_BACKEND=torch before this import
import numpy as np
import pytest
from safetensors.torch import load_file

from kaon.errors import ConfigError
from kaon.training import DifferentialPrivacy, EarlyStopping, ModelCheckpoint, Trainer

assert keras.backend.backend() == "torch", "keras was imported before KERAS_BACKEND=torch was set"


def seed_model():
    keras.utils.set_random_seed(0)
    from keras import layers

    return keras.Sequential([
        keras.Input((8, 8, 1)), layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
        layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax"),
    ])


def test_trainer_fits_a_keras_softmax_model_with_one_hot_targets(digits, tmp_path):
    x_train, y_train, x_test, y_test = digits
    x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)  # channels-last
    one_hot = np.eye(10, dtype=np.float32)
    model = seed_model()
    trainer = Trainer(model, loss="categorical_crossentropy", seed=0, track=False)
    path = tmp_path / "best.safetensors"
    history = trainer.fit(x_train, one_hot[y_train], epochs=3, validation_data=(x_test, one_hot[y_test]),
                          callbacks=[ModelCheckpoint(path, save_best_only=True),
                                     EarlyStopping(patience=5, restore_best_weights=True)], verbose=False)
    assert history.history["val_accuracy"][-1] > 0.7
    probabilities = trainer.predict(x_test)
    assert probabilities.shape == (360, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # the model's own softmax
    assert set(load_file(path)) == {v.path for v in model.weights}
    # integer labels work too: the softmax output is read as probabilities, not logits
    scores = Trainer(model, loss="cross_entropy", track=False).evaluate(x_test, y_test)
    assert scores["accuracy"] == pytest.approx(history.history["val_accuracy"][-1])


def test_privacy_with_a_keras_model_is_refused(digits):
    x_train, y_train, _, _ = digits
    trainer = Trainer(seed_model(), privacy=DifferentialPrivacy(1.0), track=False)
    with pytest.raises(ConfigError, match="torch.nn.Module models"):
        trainer.fit(x_train[:64].transpose(0, 2, 3, 1), y_train[:64], verbose=False)
