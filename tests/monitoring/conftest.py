"""A digits model trained with kaon, registered with its reference statistics, and the shifts it meets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest


def rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.ndimage import rotate as nd_rotate

    return np.stack([nd_rotate(im[0], degrees, reshape=False, order=1, mode="constant")[None]
                     for im in x]).astype(np.float32)


def shifts(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Real shifts of real digits: the same images turned 30 degrees, in Gaussian noise (sigma 0.4), inverted."""
    rng = np.random.default_rng(seed)
    return {
        "rotated": rotate(x, 30.0),
        "noisy": np.clip(x + rng.normal(0.0, 0.4, x.shape), 0.0, 1.0).astype(np.float32),
        "inverted": (1.0 - x).astype(np.float32),
    }


@pytest.fixture(scope="session")
def digits_data():
    from kaon.training.data import load_digits

    return load_digits(seed=0)


@pytest.fixture(scope="session")
def digits_registry(digits_data, tmp_path_factory) -> Path:
    """KAON_HOME holding `digits@1`: a DigitsCNN trained with kaon's Trainer, with reference.npz from its
    training data, registered the way `kaon.register(..., reference_data=x_train)` does it."""
    import torch

    from kaon.models import load_file, save_model
    from kaon.monitoring import fit_reference
    from kaon.registry import Registry
    from kaon.training import Trainer
    from kaon.training.models import DigitsCNN
    from kaon.types import Signature, TensorSpec

    x_train, y_train, x_test, y_test = digits_data
    home = tmp_path_factory.mktemp("digits-home")
    model = DigitsCNN()
    trainer = Trainer(model, optimizer="adam", loss="cross_entropy", metrics=["accuracy"], lr=3e-3, seed=0,
                      track=False)
    trainer.fit(x_train, y_train, epochs=8, batch_size=32, verbose=False)
    assert trainer.evaluate(x_test, y_test)["accuracy"] > 0.9
    served = torch.nn.Sequential(model.eval(), torch.nn.Softmax(dim=1))
    folder = tmp_path_factory.mktemp("digits-files")
    saved = save_model(served, folder, input_example=x_test[:2])
    fit_reference(load_file(folder / "model.pt2"), x_train).save(folder / "reference.npz")
    signature = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                          [TensorSpec("probabilities", "float32", (-1, 10))])
    previous = os.environ.get("KAON_HOME")
    os.environ["KAON_HOME"] = str(home)  # the artifacts go under KAON_HOME too
    try:
        with Registry() as registry:
            registry.register_version("digits", {**saved.files, "reference.npz": folder / "reference.npz"},
                                      framework="torch", signature=signature.to_dict())
    finally:
        if previous is None:
            os.environ.pop("KAON_HOME", None)
        else:
            os.environ["KAON_HOME"] = previous
    return home
