"""fit/evaluate/predict on real data: learning, History, inputs, custom steps, seeds, output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kaon.errors import ConfigError, InvalidInputError
from kaon.training import Callback, History, Trainer
from kaon.training.metrics import TopKAccuracy

from .conftest import make_model


def test_fit_digits_cnn_reaches_95_percent_test_accuracy_in_10_epochs(digits):
    x_train, y_train, x_test, y_test = digits
    # lr=3e-3: 0.956..0.978 over seeds 0-5 (lr=1e-3 gives 0.950..0.967), a margin for other CPUs
    trainer = Trainer(make_model(), lr=3e-3, seed=0, track=False)
    trainer.fit(x_train, y_train, epochs=10, verbose=False)
    assert trainer.evaluate(x_test, y_test)["accuracy"] >= 0.95


def test_history_has_one_value_per_epoch_for_loss_metrics_and_validation(small):
    x_train, y_train, x_test, y_test = small
    history = Trainer(make_model(), seed=0, track=False).fit(
        x_train, y_train, epochs=3, validation_data=(x_test, y_test), verbose=False)
    assert isinstance(history, History)
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(values) == 3 for values in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.epsilon is None and history.run_id is None
    assert history.params["epochs"] == 3 and history.params["batch_size"] == 32


def test_validation_values_equal_evaluate_on_the_same_data(small):
    x_train, y_train, x_test, y_test = small
    trainer = Trainer(make_model(), seed=0, track=False)
    history = trainer.fit(x_train, y_train, epochs=1, validation_data=(x_test, y_test), verbose=False)
    scores = trainer.evaluate(x_test, y_test, batch_size=32)
    assert scores["loss"] == pytest.approx(history.history["val_loss"][-1], rel=1e-5)
    assert scores["accuracy"] == pytest.approx(history.history["val_accuracy"][-1])


def test_validation_split_rounds_as_keras_does():
    from kaon.training._data import split_validation

    for count, fraction, kept in ((1000, 0.18, 820), (10, 0.25, 7), (400, 0.25, 300)):
        x_train, _, (x_val, _) = split_validation(np.zeros((count, 2)), np.zeros(count), fraction)
        assert (len(x_train), len(x_val)) == (kept, count - kept)


def test_validation_split_holds_out_the_last_fraction_as_keras_does(small):
    x_train, y_train, _, _ = small
    split = Trainer(make_model(), seed=0, track=False)
    history = split.fit(x_train, y_train, epochs=2, validation_split=0.25, verbose=False)
    explicit = Trainer(make_model(), seed=0, track=False)
    expected = explicit.fit(x_train[:300], y_train[:300], epochs=2, validation_data=(x_train[300:], y_train[300:]),
                            verbose=False)
    assert history.params["num_samples"] == 300
    assert history.history == expected.history  # the same 300 trained on, the same 100 validated on


@pytest.mark.parametrize("kwargs, words", [
    ({"validation_split": 1.5}, "between 0 and 1"),
    ({"validation_split": 0.999}, "no training samples"),
    ({"validation_split": 0.2, "validation_data": "set"}, "not both"),
])
def test_bad_validation_splits_are_clear_errors(small, kwargs, words):
    x_train, y_train, x_test, y_test = small
    if kwargs.get("validation_data") == "set":
        kwargs["validation_data"] = (x_test, y_test)
    with pytest.raises(InvalidInputError, match=words):
        Trainer(make_model(), track=False).fit(x_train, y_train, epochs=1, verbose=False, **kwargs)
    loader = DataLoader(TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)), batch_size=32)
    with pytest.raises(InvalidInputError, match="validation_data="):
        Trainer(make_model(), track=False).fit(loader, epochs=1, validation_split=0.2, verbose=False)


def test_evaluate_returns_floats_and_predict_returns_one_row_per_sample(small):
    x_train, y_train, x_test, y_test = small
    # top_K_accuracy takes its K from the name (top_k_accuracy is 5; on 3 classes it was always 1.0)
    trainer = Trainer(make_model(), metrics=["accuracy", "top_2_accuracy", "top_k_accuracy"], track=False)
    trainer.fit(x_train, y_train, epochs=1, verbose=False)
    scores = trainer.evaluate(x_test, y_test)
    assert set(scores) == {"loss", "accuracy", "top_2_accuracy", "top_k_accuracy"}
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["accuracy"] <= scores["top_2_accuracy"] <= scores["top_k_accuracy"]
    assert trainer.metrics_[1].k == 2 and trainer.metrics_[2].k == 5
    with pytest.raises(ConfigError, match="top_0_accuracy"):
        Trainer(make_model(), metrics=["top_0_accuracy"], track=False)
    predictions = trainer.predict(x_test, batch_size=64)
    assert isinstance(predictions, np.ndarray)
    assert predictions.shape == (200, 10) and predictions.dtype == np.float32
    assert (predictions.argmax(1) == y_test).mean() == pytest.approx(scores["accuracy"])


def test_fit_accepts_a_dataset_and_a_dataloader(small):
    x_train, y_train, x_test, y_test = small
    dataset = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    val_loader = DataLoader(TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)), batch_size=50)
    trainer = Trainer(make_model(), track=False)
    history = trainer.fit(dataset, epochs=2, batch_size=40, validation_data=val_loader, verbose=False)
    assert len(history.history["val_accuracy"]) == 2
    history = trainer.fit(DataLoader(dataset, batch_size=40, shuffle=True), epochs=1, verbose=False)
    assert history.history["accuracy"][0] > 0.3  # chance is 0.1
    assert trainer.predict(DataLoader(TensorDataset(torch.from_numpy(x_test)), batch_size=64)).shape == (200, 10)


def test_float64_inputs_and_int32_labels_are_converted(small):
    x_train, y_train, _, _ = small
    history = Trainer(make_model(), track=False).fit(
        x_train.astype(np.float64), y_train.astype(np.int32), epochs=1, verbose=False)
    assert np.isfinite(history.history["loss"][0])


def test_overridden_train_step_is_used_and_its_logs_reach_history(small):
    x_train, y_train, _, _ = small

    class PenalizedTrainer(Trainer):
        steps = 0

        def train_step(self, batch):
            x, y = batch
            self.steps += 1
            y_pred = self.model(x)
            penalty = 1e-4 * sum(p.square().sum() for p in self.model.parameters())
            loss = self.compute_loss(y_pred, y) + penalty
            self.optimizer_.zero_grad()
            loss.backward()
            self.optimizer_.step()
            return {"loss": float(loss.detach()), "penalty": float(penalty.detach())}

    trainer = PenalizedTrainer(make_model(), track=False)
    history = trainer.fit(x_train, y_train, epochs=2, batch_size=100, verbose=False)
    assert trainer.steps == 8
    assert set(history.history) == {"loss", "penalty"}
    assert history.history["penalty"][0] > 0


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(small):
    x_train, y_train, _, _ = small

    def weights(seed: int) -> list[torch.Tensor]:
        model = make_model(0)
        Trainer(model, seed=seed, track=False).fit(x_train, y_train, epochs=2, verbose=False)
        return [p.detach().clone() for p in model.parameters()]

    first, second, other = weights(7), weights(7), weights(8)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(a, c) for a, c in zip(first, other, strict=True))


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
def test_each_named_optimizer_trains(small, optimizer):
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 1e-3, track=False)
    history = trainer.fit(x_train, y_train, epochs=2, verbose=False)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_optimizer_object_factory_and_metric_objects_and_functions(small):
    x_train, y_train, _, _ = small
    model = make_model()

    def error_rate(y_pred, y):
        return (y_pred.argmax(1) != y).float().mean()

    trainer = Trainer(model, optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                      metrics=[TopKAccuracy(k=3), error_rate], track=False)
    history = trainer.fit(x_train, y_train, epochs=2, verbose=False)
    assert set(history.history) == {"loss", "top_3_accuracy", "error_rate"}
    assert isinstance(trainer.optimizer_, torch.optim.SGD)
    own = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert Trainer(model, optimizer=own, track=False).fit(x_train, y_train, verbose=False)
    assert own.state  # the given optimizer object did the steps


def test_regression_with_mse_has_no_accuracy_by_default():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    history = Trainer(model, loss="mse", metrics=["mae"], lr=0.05, track=False).fit(
        x, y, epochs=20, verbose=False)
    assert set(history.history) == {"loss", "mae"}
    assert history.history["loss"][-1] < 0.05 * history.history["loss"][0]


def test_one_hot_targets_with_categorical_crossentropy(small):
    x_train, y_train, _, _ = small
    one_hot = np.eye(10, dtype=np.float32)[y_train]
    history = Trainer(make_model(), loss="categorical_crossentropy", track=False).fit(
        x_train, one_hot, epochs=3, verbose=False)
    assert history.history["accuracy"][-1] > 0.5


def test_binary_crossentropy_on_one_logit():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.float32)
    torch.manual_seed(0)
    history = Trainer(torch.nn.Linear(2, 1), loss="binary_crossentropy", lr=0.05, track=False).fit(
        x, y, epochs=10, verbose=False)
    assert history.history["accuracy"][-1] > 0.9


def test_a_callback_sees_batches_and_can_stop_training(small):
    x_train, y_train, _, _ = small

    class StopAfterFiveSteps(Callback):
        def __init__(self):
            super().__init__()
            self.steps = []

        def on_train_batch_end(self, step, logs):
            self.steps.append((step, float(logs["loss"])))
            if len(self.steps) == 5:
                self.trainer.stop_training = True

    callback = StopAfterFiveSteps()
    history = Trainer(make_model(), track=False).fit(x_train, y_train, epochs=5, callbacks=[callback],
                                                     verbose=False)
    assert len(history.epoch) == 1  # stops at the end of the epoch in which it was asked
    assert [s for s, _ in callback.steps[:3]] == [0, 1, 2]


def test_output_is_one_line_per_epoch_when_not_a_terminal_and_nothing_when_quiet(small, capsys):
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), track=False)
    trainer.fit(x_train, y_train, epochs=2)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "loss=" in lines[0]
    trainer.fit(x_train, y_train, epochs=2, verbose=False)
    assert capsys.readouterr().out == ""


def test_progress_bar_runs_on_a_terminal(small, monkeypatch):
    x_train, y_train, _, _ = small
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    history = Trainer(make_model(), track=False).fit(x_train, y_train, epochs=1)
    assert len(history.epoch) == 1


def test_unknown_names_are_config_errors_that_list_the_valid_ones():
    model = make_model()
    with pytest.raises(ConfigError, match=r"unknown optimizer 'adma'\. Expected one of: adam, adamw.*"
                                          r"Received: optimizer='adma'"):
        Trainer(model, optimizer="adma")
    with pytest.raises(ConfigError, match=r"unknown loss 'crossentropy'.*cross_entropy.*Received: loss="):
        Trainer(model, loss="crossentropy")
    with pytest.raises(ConfigError, match=r"unknown metric 'acuracy'.*accuracy.*Received: metric="):
        Trainer(model, metrics=["acuracy"])
    with pytest.raises(ConfigError, match="metrics must be a list"):
        Trainer(model, metrics="accuracy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="precision"):
        Trainer(model, precision="fp8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="lr must be"):
        Trainer(model, lr=0)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        Trainer("model")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="Received: device='gpu0'"):
        Trainer(model, device="gpu0")


def test_bad_fit_arguments_are_config_errors(small):
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), track=False)
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1. Received: epochs=0"):
        trainer.fit(x_train, y_train, epochs=0)
    with pytest.raises(ConfigError, match="batch_size"):
        trainer.fit(x_train, y_train, batch_size=0)
    with pytest.raises(ConfigError, match="add the parentheses"):
        trainer.fit(x_train, y_train, callbacks=[Callback])  # type: ignore[list-item]


def test_precision_bf16_on_cpu_warns_and_trains_in_fp32(small):
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), precision="bf16", device="cpu", track=False)
    with pytest.warns(RuntimeWarning, match="CUDA only"):
        history = trainer.fit(x_train, y_train, epochs=1, verbose=False)
    assert np.isfinite(history.history["loss"][0])


def test_fit_accepts_an_iterable_dataset(small):
    x_train, y_train, _, _ = small

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(torch.from_numpy(x_train), torch.from_numpy(y_train), strict=True))

    history = Trainer(make_model(), track=False).fit(Stream(), epochs=2, batch_size=50, verbose=False)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_an_optimizer_built_on_another_models_parameters_is_refused(small):
    """The notebook cell re-run: a new model, the optimizer still on the old one's weights, trained nothing."""
    x_train, y_train, _, _ = small
    stale = torch.optim.Adam(make_model(seed=1).parameters())
    with pytest.raises(ConfigError, match="updates none of the model's parameters"):
        Trainer(make_model(), optimizer=stale, track=False).fit(x_train, y_train, epochs=1, verbose=False)
    model = make_model()
    Trainer(model, optimizer=torch.optim.Adam(model.parameters()), track=False).fit(
        x_train, y_train, epochs=1, verbose=False)


def test_class_weight_weighs_each_training_samples_loss_by_its_class(small):
    """Keras' class_weight (a TypeError before): weights of 0.5 halve the loss of one training step; a weight
    on one class scales only its samples' losses."""
    x_train, y_train, _, _ = small
    x, y = x_train[:32], y_train[:32]

    def first_step_loss(class_weight):
        trainer = Trainer(make_model(), seed=0, track=False)
        trainer.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=False, class_weight=class_weight)
        return float(trainer.logs_["loss"])

    plain = first_step_loss({c: 1.0 for c in range(10)})
    assert first_step_loss({c: 0.5 for c in range(10)}) == pytest.approx(plain / 2, rel=1e-5)
    model = make_model()
    with torch.no_grad():
        per_sample = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long(),
                                                       reduction="none")
    threes = torch.from_numpy(y == 3)
    expected = float((per_sample + 2 * per_sample * threes).mean())  # class 3 weighs 3, the others 1
    assert first_step_loss({3: 3.0}) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match=r"class_weight maps class indices to weights > 0"):
        Trainer(make_model(), track=False).fit(x, y, epochs=1, class_weight={"a": 1}, verbose=False)
    for typo in (12, 10**12):  # 10**12 was a raw 'can't allocate memory' (a table that long)
        with pytest.raises(ConfigError, match=f"class_weight names class {typo}, but the model predicts 10"):
            Trainer(make_model(), track=False).fit(x, y, epochs=1, class_weight={typo: 2.0}, verbose=False)


class _TwoInputs(torch.nn.Module):
    """Token ids through an embedding, and dense features, as a text + tabular model takes them."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 4)
        self.dense = torch.nn.Linear(3, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, ids, features):
        return self.head(self.embed(ids).mean(dim=1) + self.dense(features))


def _two_input_data():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 20, (400, 5))
    features = rng.normal(size=(400, 3)).astype(np.float32)
    y = ((ids < 10).sum(1) + features[:, 0] > 2.5).astype(np.int64)  # both inputs matter
    return ids, features, y


def test_a_model_with_two_inputs_trains_on_a_list_or_a_dict_as_in_keras():
    """fit((x1, x2), y) was numpy's 'inhomogeneous shape' ValueError."""
    ids, features, y = _two_input_data()
    results = {}
    for form, x in (("list", [ids, features]), ("dict", {"ids": ids, "features": features})):
        torch.manual_seed(0)
        trainer = Trainer(_TwoInputs(), lr=0.05, seed=0, track=False)
        history = trainer.fit(x, y, epochs=8, validation_split=0.25, verbose=False)
        results[form] = history.history
        assert history.history["val_accuracy"][-1] > 0.8
        x_test = [ids[:7], features[:7]] if form == "list" else {"ids": ids[:7], "features": features[:7]}
        assert trainer.predict(x_test).shape == (7, 2)
        assert set(trainer.evaluate(x_test, y[:7])) == {"loss", "accuracy"}
    assert results["list"] == results["dict"]  # the same model calls: model(ids, features) and by keyword
    with pytest.raises(InvalidInputError, match="same number of samples"):
        Trainer(_TwoInputs(), track=False).fit([ids, features[:10]], y, epochs=1, verbose=False)
    with pytest.raises(ConfigError, match="adversarial training perturbs a model's one input"):
        import kaon

        Trainer(_TwoInputs(), adversarial=kaon.FGSM(0.1), track=False).fit([ids, features], y, epochs=1,
                                                                           verbose=False)


def test_a_list_of_samples_for_a_one_input_model_is_still_stacked(small):
    """Regression of multi-input fit: list(x) for a one-input model was taken as 400 inputs."""
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), seed=0, track=False)
    history = trainer.fit(list(x_train), y_train, epochs=1, validation_split=0.2, verbose=False)
    assert history.params["num_samples"] == 320
    assert trainer.predict(list(x_train[:3])).shape == (3, 10)
    assert trainer.predict([x_train[0], x_train[1]]).shape == (2, 10)  # two samples, not two inputs
