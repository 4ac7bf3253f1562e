"""Targets and inputs in the shapes and dtypes a notebook hands over: the same numbers train the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kaon.errors import InvalidInputError
from kaon.training import Trainer

from .conftest import make_model


class Squeezed(torch.nn.Module):
    """A regression model whose forward ends in .squeeze(-1): outputs (N,)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


def _regression():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 3)).astype(np.float32)
    return x, (x @ np.array([1.5, -2.0, 0.5], dtype=np.float32) + 0.3)


def test_a_column_of_regression_targets_is_not_broadcast_against_every_sample():
    x, y = _regression()
    flat = Trainer(Squeezed(), loss="mse", metrics=["mse"], lr=0.05, track=False)
    column = Trainer(Squeezed(), loss="mse", metrics=["mse"], lr=0.05, track=False)
    flat_history = flat.fit(x, y, epochs=15, batch_size=32, shuffle=False)
    # (N, 1) targets for (N,) outputs
    column_history = column.fit(x, y.reshape(-1, 1), epochs=15, batch_size=32, shuffle=False)
    # the same numbers: the same training, and a loss that agrees with the mse metric (it was ~var(y), flat)
    np.testing.assert_allclose(column_history.history["loss"], flat_history.history["loss"], rtol=1e-5)
    assert column_history.history["loss"][-1] < 0.01 * float(np.var(y))
    assert column_history.history["loss"][-1] == pytest.approx(column_history.history["mse"][-1], rel=1e-3)


def test_targets_that_cannot_match_the_outputs_name_both_shapes():
    x, y = _regression()
    three = torch.nn.Linear(3, 3)
    # the shapes of all of y, not of the two samples the first-batch probe runs (it said (2,) and (2, 3))
    with pytest.raises(InvalidInputError, match=r"targets of shape \(256,\) for outputs of shape \(256, 3\). "
                                                r"Reshape y to \(256, 3\)"):
        Trainer(three, loss="mse", track=False).fit(x, y, epochs=1)


def test_class_labels_as_a_float_or_column_array_train_like_integers(small):
    x_train, y_train, x_test, y_test = small
    reference = Trainer(make_model(), metrics=["accuracy"], track=False)
    reference_history = reference.fit(x_train, y_train, epochs=2, batch_size=64, shuffle=False)
    for labels in (y_train.astype(np.float32), y_train.reshape(-1, 1), y_train.astype(np.float64).reshape(-1, 1)):
        trainer = Trainer(make_model(), metrics=["accuracy"], track=False)
        history = trainer.fit(x_train, labels, epochs=2, batch_size=64, shuffle=False)
        assert history.history["loss"] == pytest.approx(reference_history.history["loss"], rel=1e-5)
        evaluated = trainer.evaluate(x_test, y_test.reshape(-1, 1))  # accuracy reads a (N, 1) column too
        assert evaluated["accuracy"] == pytest.approx(reference.evaluate(x_test, y_test)["accuracy"])
    with pytest.raises(InvalidInputError, match=r"class indices .* fractions such as \d+\.5 \(in y\)"):
        Trainer(make_model(), track=False).fit(x_train, y_train + 0.5, epochs=1)


def test_integer_pixels_feed_a_conv_model_and_token_ids_stay_integers(small):
    x_train, y_train, _, _ = small
    pixels = np.round(x_train * 16).astype(np.uint8)  # 0..16 as uint8, as load_digits().images gives them
    history = Trainer(make_model(), track=False).fit(pixels, y_train, epochs=1)
    assert np.isfinite(history.history["loss"][0])

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(17, 4)
            self.head = torch.nn.Linear(4, 10)

        def forward(self, ids):
            return self.head(self.embed(ids).mean(dim=1))

    ids = pixels.reshape(len(pixels), -1)
    assert np.isfinite(Trainer(Bag(), track=False).fit(ids, y_train, epochs=1).history["loss"][0])

    class Indexing(torch.nn.Module):  # reads indices without an nn.Embedding: a torch tensor keeps its dtype
        def __init__(self) -> None:
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(17, 10))

        def forward(self, ids):
            return self.table[ids].mean(dim=1)

    history = Trainer(Indexing(), track=False).fit(torch.from_numpy(ids.astype(np.int64)), y_train, epochs=1)
    assert np.isfinite(history.history["loss"][0])


def test_register_takes_a_float64_example_and_leaves_the_module_as_it_was(tmp_path, monkeypatch):
    import kaon

    monkeypatch.setenv("KAON_HOME", str(tmp_path / "home"))
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2))
    module.train()
    record = kaon.register(module, "f64", input_example=np.zeros((2, 4)))  # float64, as numpy makes it
    assert record.signature["inputs"][0]["dtype"] == "float32" and module.training
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(kaon.load("f64").predict(x), expected, atol=1e-6)


def test_a_run_keeps_the_best_of_each_validation_metric_in_its_own_direction():
    from kaon.training._tracking import run_summary
    from kaon.training.history import History

    history = History()
    for epoch, (loss, f1, mae) in enumerate(((0.9, 0.69, 3.0), (0.5, 0.94, 1.0), (0.6, 0.90, 2.0))):
        history.on_epoch_end(epoch, {"val_loss": loss, "val_f1": f1, "val_mae": mae})
    summary = run_summary(history, stopped_early=False, private=None, duration_s=1.0, error=None, problems=[])
    assert (summary["best_val_loss"], summary["best_val_f1"], summary["best_val_mae"]) == (0.5, 0.94, 1.0)


def test_a_batch_of_one_at_a_batch_norm_says_so_and_read_only_arrays_train_without_a_warning():
    import warnings

    from kaon.errors import TrainingError

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(65, 5)).astype(np.float32), rng.integers(0, 2, 65)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    with pytest.raises(TrainingError, match=r"a batch of 1 sample reached a BatchNorm layer.*pick another batch_size"):
        Trainer(model, track=False).fit(x, y, epochs=1, batch_size=32, shuffle=False)
    x.flags.writeable = False  # as a pandas DataFrame's .values can be
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Trainer(model, track=False).fit(x, y, epochs=1, batch_size=13)  # 65 = 5 x 13: no batch of one
