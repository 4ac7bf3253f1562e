"""Each bad input fails with one clear error that says what was received and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kaon.errors import InvalidInputError, TrainingError
from kaon.training import Trainer

from .conftest import make_model


def test_x_and_y_of_different_lengths(small):
    x_train, y_train, _, _ = small
    with pytest.raises(InvalidInputError) as info:
        Trainer(make_model(), track=False).fit(x_train, y_train[:-3])
    assert "Received: len(x)=400, len(y)=397" in str(info.value)
    assert "same number of samples" in str(info.value)


def test_images_without_the_channel_axis_explain_the_shapes_and_the_fix(small):
    x_train, y_train, _, _ = small
    with pytest.raises(TrainingError) as info:
        Trainer(make_model(), track=False).fit(x_train[:, 0], y_train)
    message = str(info.value)
    assert "Expected: (N, 1, H, W)" in message
    assert "Received: x of shape (N, 8, 8), float32" in message
    assert "x.reshape(-1, 1, 8, 8)" in message


def test_channels_last_images_are_recognised(small):
    x_train, y_train, _, _ = small
    with pytest.raises(TrainingError, match=r"channels-last.*transpose\(0, 3, 1, 2\)"):
        Trainer(make_model(), track=False).fit(x_train.transpose(0, 2, 3, 1), y_train)


def test_unflattened_input_to_a_linear_model(small):
    x_train, y_train, _, _ = small
    model = torch.nn.Sequential(torch.nn.Linear(64, 10))
    with pytest.raises(TrainingError) as info:
        Trainer(model, track=False).evaluate(x_train, y_train)
    assert "(N, ..., 64)" in str(info.value) and "(N, 1, 8, 8)" in str(info.value)
    assert "nn.Flatten()" in str(info.value)


def test_validation_data_of_the_wrong_shape_is_named(small):
    x_train, y_train, x_test, y_test = small
    with pytest.raises(TrainingError, match="validation_data"):
        Trainer(make_model(), track=False).fit(x_train, y_train, validation_data=(x_test[:, 0], y_test))


def test_labels_out_of_range_for_the_number_of_outputs(small):
    x_train, y_train, _, _ = small
    with pytest.raises(InvalidInputError) as info:
        Trainer(make_model(num_classes=5), track=False).fit(x_train, y_train)
    message = str(info.value)
    assert "class indices in [0, 4]" in message and "the model has 5 outputs" in message
    assert "Received: label" in message and "give the model 10 outputs" in message


def test_negative_labels_in_a_dataloader_are_caught_before_the_loss(small):
    x_train, y_train, _, _ = small
    labels = torch.from_numpy(y_train).clone()
    labels[130] = -1
    loader = DataLoader(TensorDataset(torch.from_numpy(x_train), labels), batch_size=64)
    with pytest.raises(InvalidInputError, match=r"Received: label -1 \(x batch 3;"):
        Trainer(make_model(), track=False).fit(loader, verbose=False)


def test_one_hot_width_that_does_not_match_the_outputs(small):
    x_train, y_train, _, _ = small
    one_hot = np.eye(12, dtype=np.float32)[y_train]
    with pytest.raises(InvalidInputError, match=r"one-hot targets of shape \(N, 10\).*y.shape=\(400, 12\)"):
        Trainer(make_model(), loss="categorical_crossentropy", track=False).fit(x_train, one_hot)


def test_nan_in_arrays_is_named_before_training(small):
    x_train, y_train, _, _ = small
    x_bad = x_train.copy()
    x_bad[70, 0, 3, 3] = np.nan
    x_bad[90] = np.inf
    with pytest.raises(InvalidInputError, match=r"x holds NaN or infinite values in 2 of its 400 samples \(the "
                                                r"first at index 70\)"):
        Trainer(make_model(), track=False).fit(x_bad, y_train, epochs=1, verbose=False)


def test_nan_loss_stops_and_names_the_epoch_and_step(small):
    x_train, y_train, _, _ = small
    x_bad = x_train.copy()
    x_bad[70] = np.nan  # sample 70 is in the third batch of 32 (a DataLoader's data is not checked up front)
    loader = DataLoader(TensorDataset(torch.from_numpy(x_bad), torch.from_numpy(y_train)), batch_size=32)
    with pytest.raises(TrainingError) as info:
        Trainer(make_model(), track=False).fit(loader, epochs=3, verbose=False)
    message = str(info.value)
    assert "the loss became nan at epoch 1, step 3" in message
    assert "Lower the learning rate (lr=0.001)" in message
    assert info.value.history.epoch == []  # type: ignore[attr-defined]


def test_diverging_learning_rate_is_reported_as_non_finite_loss(small):
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), optimizer="sgd", lr=1e12, track=False)
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch \d+, step \d+"):
        trainer.fit(x_train, y_train, epochs=5, verbose=False)


def test_y_with_a_dataset_is_rejected(small):
    x_train, y_train, _, _ = small
    dataset = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    with pytest.raises(InvalidInputError, match="y must be None when x is a TensorDataset"):
        Trainer(make_model(), track=False).fit(dataset, y_train)


def test_non_numeric_input_and_bad_validation_data():
    trainer = Trainer(make_model(), track=False)
    with pytest.raises(InvalidInputError, match="x must hold numbers. Received: dtype=<U1"):
        trainer.fit(np.array(["a", "b"]), np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="validation_data must be a pair"):
        trainer.fit(np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64), validation_data=(1, 2, 3))


def test_evaluate_without_targets_says_to_pass_y(small):
    _, _, x_test, _ = small
    with pytest.raises(InvalidInputError, match=r"need targets.*with y=None\. Pass y="):
        Trainer(make_model(), track=False).evaluate(x_test)


def test_a_metric_that_does_not_fit_the_outputs_is_named_not_the_input(small):
    """metrics=['mae'] on a classifier was reported as 'the model could not run on the input ... start the model
    with nn.Flatten()' for a model that starts with nn.Flatten: the metric failed, not the forward pass."""
    x_train, y_train, _, _ = small
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(TrainingError) as info:
        Trainer(model, metrics=["mae"], track=False).fit(x_train, y_train, epochs=1, verbose=False)
    message = str(info.value)
    assert "metric 'mae' could not compare predictions of shape (32, 10) with targets of shape (32,)" in message
    assert "metrics=['accuracy']" in message and "could not run on the input" not in message
