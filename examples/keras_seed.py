"""The seed example users bring: a small Keras CNN on scikit-learn's digits, on the torch backend.

Run: python examples/keras_seed.py   (KERAS_BACKEND must be 'torch' before keras is imported)
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import Input, Sequential  # noqa: E402
from keras.layers import Conv2D, Dense, Flatten, MaxPooling2D  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def load_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]  # (N, 8, 8, 1) in [0, 1]
    y = keras.utils.to_categorical(digits.target, 10)  # one-hot, (N, 10)
    x_train, x_test, y_train_onehot, y_test_onehot = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=digits.target
    )
    return x_train, y_train_onehot, x_test, y_test_onehot


def build_model() -> keras.Model:
    model = Sequential([
        Input((8, 8, 1)),
        Conv2D(32, (3, 3), activation="relu"),
        MaxPooling2D((2, 2)),
        Flatten(),
        Dense(64, activation="relu"),
        Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def main(epochs: int = 10, verbose: int = 2) -> tuple[keras.Model, float]:
    """Train and evaluate; return the model and its test accuracy."""
    x_train, y_train_onehot, x_test, y_test_onehot = load_data()
    model = build_model()
    model.fit(x_train, y_train_onehot, epochs=epochs, batch_size=32,
              validation_data=(x_test, y_test_onehot), verbose=verbose)
    test_loss, test_accuracy = model.evaluate(x_test, y_test_onehot, verbose=0)
    print(f"backend={keras.backend.backend()} test_loss={test_loss:.4f} test_accuracy={test_accuracy:.4f}")
    return model, float(test_accuracy)


if __name__ == "__main__":
    main()
