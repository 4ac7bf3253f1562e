"""Callbacks on real fits: early stopping, checkpoints, LR schedule, CSV and TensorBoard files."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

from kaon.errors import ConfigError, InvalidInputError, TrainingError
from kaon.training import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
    Trainer,
)

from .conftest import make_model


class ScriptedLoss(Callback):
    """Overwrites val_loss with scripted values, so the monitored curve is known in advance."""

    def __init__(self, values):
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch, logs):
        logs["val_loss"] = self.values[epoch]


class KeepWeights(Callback):
    def __init__(self):
        super().__init__()
        self.by_epoch = {}

    def on_epoch_end(self, epoch, logs):
        self.by_epoch[epoch] = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(small):
    x_train, y_train, _, _ = small
    keep = KeepWeights()
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    trainer = Trainer(make_model(), track=False)
    history = trainer.fit(x_train, y_train, epochs=20, verbose=False,
                          callbacks=[ScriptedLoss([1.0, 0.5, 0.7, 0.8, 0.9] + [1.0] * 15), keep, stopper])
    assert history.epoch == [0, 1, 2, 3]
    assert stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    assert trainer.stop_training
    restored = trainer.model.state_dict()
    assert all(torch.equal(restored[k], keep.by_epoch[1][k]) for k in restored)


def test_early_stopping_on_accuracy_maximizes(small):
    x_train, y_train, x_test, y_test = small
    stopper = EarlyStopping(monitor="val_accuracy", patience=0)
    assert stopper.mode == "max"
    Trainer(make_model(), track=False).fit(x_train, y_train, epochs=2, validation_data=(x_test, y_test),
                                           callbacks=[stopper], verbose=False)
    assert stopper.best > 0.1


def test_model_checkpoint_keeps_the_best_weights_in_safetensors(small, tmp_path):
    x_train, y_train, _, _ = small
    keep = KeepWeights()
    path = tmp_path / "ckpt" / "best.safetensors"
    checkpoint = ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    trainer = Trainer(make_model(), track=False)
    trainer.fit(x_train, y_train, epochs=4, verbose=False,
                callbacks=[ScriptedLoss([0.9, 0.4, 0.6, 0.5]), keep, checkpoint])
    saved = load_file(path)
    assert set(saved) == set(keep.by_epoch[1])
    assert all(torch.equal(saved[k], keep.by_epoch[1][k]) for k in saved)
    assert not all(torch.equal(saved[k], keep.by_epoch[3][k]) for k in saved)
    model = make_model(seed=1)
    model.load_state_dict(saved)  # loads into a fresh model
    assert checkpoint.best_path == path and checkpoint.best == 0.4


def test_model_checkpoint_every_epoch_with_a_name_pattern(small, tmp_path):
    x_train, y_train, _, _ = small
    pattern = str(tmp_path / "epoch{epoch:02d}-{loss:.2f}.safetensors")
    Trainer(make_model(), track=False).fit(x_train, y_train, epochs=3, verbose=False,
                                           callbacks=[ModelCheckpoint(pattern, monitor="loss")])
    files = sorted(p.name for p in tmp_path.glob("epoch*.safetensors"))
    assert [f[:7] for f in files] == ["epoch01", "epoch02", "epoch03"]


def test_reduce_lr_on_plateau_lowers_the_rate_and_logs_it(small):
    x_train, y_train, _, _ = small
    trainer = Trainer(make_model(), lr=0.01, track=False)
    reduce = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_lr=0.003)
    history = trainer.fit(x_train, y_train, epochs=6, verbose=False,
                          callbacks=[ScriptedLoss([1.0, 1.0, 1.0, 1.0, 1.0, 1.0]), reduce])
    assert history.history["lr"] == pytest.approx([0.01, 0.005, 0.003, 0.003, 0.003, 0.003])
    assert trainer.optimizer_.param_groups[0]["lr"] == pytest.approx(0.003)


def test_csv_logger_writes_one_row_per_epoch(small, tmp_path):
    x_train, y_train, x_test, y_test = small
    path = tmp_path / "log.csv"
    history = Trainer(make_model(), track=False).fit(
        x_train, y_train, epochs=3, validation_data=(x_test, y_test), callbacks=[CSVLogger(path)], verbose=False)
    rows = list(csv.DictReader(path.open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(history.history["val_loss"])


def test_csv_logger_appends_to_an_existing_log(small, tmp_path):
    x_train, y_train, _, _ = small
    path = tmp_path / "log.csv"
    trainer = Trainer(make_model(), track=False)
    trainer.fit(x_train, y_train, epochs=2, callbacks=[CSVLogger(path)], verbose=False)
    trainer.fit(x_train, y_train, epochs=1, callbacks=[CSVLogger(path, append=True)], verbose=False)
    assert len(list(csv.DictReader(path.open()))) == 3


def test_tensorboard_writes_event_files_that_tensorboard_reads(small, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    x_train, y_train, x_test, y_test = small
    history = Trainer(make_model(), track=False).fit(
        x_train, y_train, epochs=3, validation_data=(x_test, y_test),
        callbacks=[TensorBoard(tmp_path / "tb")], verbose=False)
    train = EventAccumulator(str(tmp_path / "tb" / "train"))
    train.Reload()
    validation = EventAccumulator(str(tmp_path / "tb" / "validation"))
    validation.Reload()
    assert {"epoch_loss", "epoch_accuracy"} <= set(train.Tags()["scalars"])
    losses = train.Scalars("epoch_loss")
    assert [e.step for e in losses] == [0, 1, 2]
    assert [e.value for e in losses] == pytest.approx(history.history["loss"])
    assert [e.value for e in validation.Scalars("epoch_accuracy")] == pytest.approx(
        history.history["val_accuracy"])


def test_a_callback_that_raises_is_named_and_the_history_is_kept(small, tmp_path):
    x_train, y_train, _, _ = small

    class Broken(Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                raise ZeroDivisionError("boom")

    csv_path = tmp_path / "log.csv"
    with pytest.raises(TrainingError) as info:
        Trainer(make_model(), track=False).fit(
            x_train, y_train, epochs=5, verbose=False, callbacks=[CSVLogger(csv_path), Broken()])
    message = str(info.value)
    assert "callback Broken raised ZeroDivisionError in on_epoch_end (epoch 2): boom" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert info.value.history.epoch == [0]  # type: ignore[attr-defined]
    # header + epoch 0, flushed and closed: the recorders run after Broken, so the CSV keeps the epochs History does
    assert len(csv_path.read_text().splitlines()) == 2


class CountEpochs(Callback):
    def __init__(self):
        super().__init__()
        self.epochs = 0

    def on_epoch_begin(self, epoch, logs):
        self.epochs += 1


def test_monitoring_a_value_that_is_not_logged_lists_the_logged_ones(small):
    """Known before training starts (the metric names are): it failed only after epoch 1 had trained."""
    x_train, y_train, x_test, y_test = small
    counter = CountEpochs()
    with pytest.raises(ConfigError) as info:
        Trainer(make_model(), track=False).fit(
            x_train, y_train, verbose=False, callbacks=[EarlyStopping(monitor="val_loss"), counter])
    message = str(info.value)
    assert "EarlyStopping monitors 'val_loss', which fit does not log: this fit has no validation data" in message
    assert "Expected one of: loss, accuracy" in message and "validation_data" in message
    with pytest.raises(ConfigError, match=r"monitors 'val_acc', .*did you mean 'val_accuracy'\?"):
        Trainer(make_model(), track=False).fit(x_train, y_train, validation_data=(x_test, y_test), verbose=False,
                                               callbacks=[ReduceLROnPlateau("loss"), EarlyStopping("val_acc")])
    assert counter.epochs == 0


def test_a_checkpoint_path_field_that_is_not_logged_fails_before_training(small, tmp_path):
    """It raised KeyError: 'val_los' after the first epoch, without the fields it could have named."""
    x_train, y_train, x_test, y_test = small
    counter = CountEpochs()
    with pytest.raises(ConfigError) as info:
        Trainer(make_model(), track=False).fit(
            x_train, y_train, validation_data=(x_test, y_test), verbose=False,
            callbacks=[ModelCheckpoint(tmp_path / "{epoch:02d}-{val_los:.2f}.safetensors"), counter])
    assert counter.epochs == 0
    message = str(info.value)
    assert "names the field 'val_los', which fit does not log (did you mean 'val_loss'?)" in message
    assert "Available fields: epoch, loss, accuracy, val_loss, val_accuracy" in message
    with pytest.raises(ConfigError, match=r"'val_loss', which fit does not log \(this fit has no validation data"):
        Trainer(make_model(), track=False).fit(x_train, y_train, verbose=False,
                                               callbacks=[ModelCheckpoint(tmp_path / "{val_loss:.2f}.safetensors")])
    with pytest.raises(ConfigError, match="could not fill in its path .*Unknown format code 'd'"):
        Trainer(make_model(), track=False).fit(x_train, y_train, verbose=False,
                                               callbacks=[ModelCheckpoint(tmp_path / "{loss:02d}.safetensors")])


def test_values_a_callback_adds_to_the_logs_can_be_monitored_and_are_checked_when_saved(small, tmp_path):
    """A callback of the user's may log its own values: what follows it is checked when it runs."""
    x_train, y_train, _, _ = small

    class F1(Callback):
        def on_epoch_end(self, epoch, logs):
            logs["val_f1"] = 0.5 + epoch

    history = Trainer(make_model(), track=False).fit(
        x_train[:100], y_train[:100], epochs=2, verbose=False,
        callbacks=[F1(), EarlyStopping("val_f1"), ModelCheckpoint(tmp_path / "{epoch}-{val_f1:.1f}.safetensors")])
    assert history.epoch == [0, 1] and (tmp_path / "2-1.5.safetensors").exists()
    with pytest.raises(TrainingError) as info:
        Trainer(make_model(), track=False).fit(
            x_train[:100], y_train[:100], verbose=False,
            callbacks=[F1(), ModelCheckpoint(tmp_path / "{epoch}-{val_f:.1f}.safetensors")])
    message = str(info.value)
    assert "callback ModelCheckpoint raised ConfigError in on_epoch_end (epoch 1)" in message
    assert "names the field 'val_f', which fit does not log (did you mean 'val_f1'?)" in message
    assert "Available fields: epoch, loss, accuracy, val_f1. Received: path=" in message
    assert "safetensors'. Training stopped" in message  # one full stop, not two


def test_a_run_resumes_from_a_checkpoint_with_load_weights_and_initial_epoch(small, tmp_path):
    """Keras' load_weights + fit(initial_epoch=): there was no way to resume from what ModelCheckpoint wrote."""
    from kaon.errors import ConfigError, InvalidInputError

    x_train, y_train, _, _ = small
    first = make_model()
    Trainer(first, seed=0, track=False).fit(x_train, y_train, epochs=2, verbose=False,
                                            callbacks=[ModelCheckpoint(tmp_path / "{epoch:02d}.safetensors")])
    resumed = Trainer(make_model(seed=1), seed=0, track=False)
    epoch = resumed.load_weights(tmp_path / "02.safetensors")
    assert epoch == 2
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor)
    history = resumed.fit(x_train, y_train, epochs=4, initial_epoch=epoch, verbose=False)
    assert history.epoch == [2, 3] and len(history.history["loss"]) == 2
    with pytest.raises(InvalidInputError, match="no weights file"):
        resumed.load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(ConfigError, match="do not fit Linear"):
        Trainer(torch.nn.Linear(3, 2), track=False).load_weights(tmp_path / "02.safetensors")
    with pytest.raises(ConfigError, match="initial_epoch is the number of epochs already trained"):
        resumed.fit(x_train, y_train, epochs=2, initial_epoch=2, verbose=False)


def test_weights_that_do_not_fit_name_the_keys_and_shapes(tmp_path):
    """The message stopped at torch's first line, 'Error(s) in loading state_dict for Sequential:.', dropping the
    keys and shapes on the lines after it."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)

    def build(hidden=16, *, dropout=False):
        torch.manual_seed(0)
        middle = [torch.nn.Dropout(0.1)] if dropout else []
        return torch.nn.Sequential(torch.nn.Linear(6, hidden), torch.nn.ReLU(), *middle, torch.nn.Linear(hidden, 2))

    Trainer(build(), track=False).fit(x, y, verbose=False,
                                      callbacks=[ModelCheckpoint(tmp_path / "{epoch:02d}.safetensors")])
    weights = tmp_path / "01.safetensors"
    with pytest.raises(ConfigError) as info:
        Trainer(build(32), track=False).load_weights(weights)
    message = str(info.value)
    assert "do not fit Sequential: 3 weights differ in shape ('0.weight' is (16, 6) in the file and (32, 6) in " \
           "the model, '0.bias' is (16,) in the file and (32,) in the model, '2.weight' is (2, 16) in the file " \
           "and (2, 32) in the model). Build the model as it was" in message
    with pytest.raises(ConfigError) as info:
        Trainer(build(dropout=True), track=False).load_weights(weights)
    message = str(info.value)
    assert "2 of the model's weights are not in the file ('3.weight', '3.bias')" in message
    assert "2 weights in the file are not in the model ('2.bias', '2.weight')" in message
    assert ":." not in message and "Error(s)" not in message
    many = torch.nn.Sequential(*[torch.nn.Identity() for _ in range(3)], *[torch.nn.Linear(6, 6) for _ in range(4)])
    with pytest.raises(ConfigError, match=r"8 of the model's weights are not in the file \('3.weight', '3.bias', "
                                          r"'4.weight' and 5 more\); 4 weights in the file"):
        Trainer(many, track=False).load_weights(weights)

    with pytest.raises(InvalidInputError) as info:  # the optimizer's file beside it, picked by mistake
        Trainer(build(), track=False).load_weights(tmp_path / "01.safetensors.optimizer")
    message = str(info.value)
    assert "is the optimizer state file that ModelCheckpoint writes beside the weights" in message
    assert f"load_weights({str(weights)!r})" in message


def test_a_rebuilt_keras_model_loads_its_checkpoint(tmp_path):
    """Keras numbers its layers per process ('sequential_1/dense_1/kernel' the second time), so a model rebuilt the
    same way did not fit its own checkpoint: its variables are matched by position, shapes checked."""
    import keras
    import numpy as np

    x = np.random.default_rng(0).random((32, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.int64)

    def build():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    first = build()
    Trainer(first, track=False).fit(x, y, epochs=1, verbose=False,
                                    callbacks=[ModelCheckpoint(tmp_path / "k{epoch:02d}.safetensors")])
    again = Trainer(build(), track=False)
    assert again.load_weights(tmp_path / "k01.safetensors") == 1
    for saved, loaded in zip(first.weights, again.model.weights, strict=True):
        np.testing.assert_allclose(np.asarray(loaded.value.detach()), np.asarray(saved.value.detach()))


def test_a_resumed_fit_continues_the_optimizer_where_it_stopped(tmp_path):
    """Checkpoints held weights only: a resumed Adam restarted its moments (and its bias correction), so the
    resumed fit took other steps than the fit that was not stopped. Now it takes the same ones."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((96, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)

    def build():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def trainer(model):
        return Trainer(model, optimizer="adam", lr=0.01, seed=0, track=False)

    whole = build()
    trainer(whole).fit(x, y, epochs=4, batch_size=32, shuffle=False, verbose=False,
                       callbacks=[ModelCheckpoint(tmp_path / "{epoch}.safetensors")])
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [f"{e}.safetensors" for e in (1, 2, 3, 4)]
    resumed = trainer(build())
    epoch = resumed.load_weights(tmp_path / "2.safetensors")
    resumed.fit(x, y, epochs=4, initial_epoch=epoch, batch_size=32, shuffle=False, verbose=False)
    for name, tensor in whole.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor)

    (tmp_path / "2.safetensors.optimizer").unlink()  # weights only: Adam starts afresh, other steps
    fresh = trainer(build())
    fresh.fit(x, y, epochs=4, initial_epoch=fresh.load_weights(tmp_path / "2.safetensors"), batch_size=32,
              shuffle=False, verbose=False)
    assert not torch.equal(fresh.model[0].weight, whole[0].weight)
    sgd = Trainer(build(), optimizer="sgd", track=False)
    with pytest.warns(RuntimeWarning, match="of class Adam, and this Trainer uses SGD"):
        sgd.load_weights(tmp_path / "3.safetensors")

    # fine-tuning at another rate keeps it (the checkpoint's lr was restored silently), moments come along
    tuned = Trainer(build(), optimizer="adam", lr=1e-4, track=False)
    with pytest.warns(RuntimeWarning, match=r"ran at lr=0.01 .*this Trainer's lr=0.0001 is kept"):
        tuned.load_weights(tmp_path / "3.safetensors")
    assert tuned.optimizer_.param_groups[0]["lr"] == 1e-4 and tuned.optimizer_.state

    # a rerun without the optimizer's state: the file left by the first run is not loaded with new weights
    trainer(build()).fit(x, y, epochs=1, batch_size=32, verbose=False,
                         callbacks=[ModelCheckpoint(tmp_path / "again{epoch}.safetensors")])
    (tmp_path / "again1.safetensors.optimizer").rename(tmp_path / "kept.optimizer")
    trainer(build()).fit(x, y, epochs=1, batch_size=32, verbose=False,
                         callbacks=[ModelCheckpoint(tmp_path / "again{epoch}.safetensors", save_optimizer=False)])
    assert not (tmp_path / "again1.safetensors.optimizer").exists()  # removed, not left stale
    (tmp_path / "kept.optimizer").rename(tmp_path / "again1.safetensors.optimizer")  # a stale copy put back
    stale = trainer(build())
    with pytest.warns(RuntimeWarning, match="was not saved with these weights"):
        stale.load_weights(tmp_path / "again1.safetensors")
    assert not stale.optimizer_.state


@pytest.mark.parametrize("logger_first", [True, False], ids=["logger-listed-first", "logger-listed-last"])
def test_csv_logger_records_the_reduced_rate_wherever_it_is_listed(small, tmp_path, logger_first):
    """Listed before ReduceLROnPlateau, CSVLogger wrote its rows before 'lr' was logged: no lr column at all."""
    x_train, y_train, _, _ = small
    path = tmp_path / "log.csv"
    scripted, reduce = ScriptedLoss([1.0] * 4), ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    callbacks = [CSVLogger(path), scripted, reduce] if logger_first else [scripted, reduce, CSVLogger(path)]
    history = Trainer(make_model(), lr=0.01, track=False).fit(x_train[:100], y_train[:100], epochs=4,
                                                              verbose=False, callbacks=callbacks)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "lr"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    assert [float(r["lr"]) for r in rows] == pytest.approx(history.history["lr"])


def test_a_checkpoint_listed_before_reduce_lr_on_plateau_can_name_the_rate_it_sets(small, tmp_path):
    """It was refused before training ('lr' is not logged yet where the checkpoint ran), though the rate is known."""
    x_train, y_train, _, _ = small
    checkpoint = ModelCheckpoint(tmp_path / "{epoch}-lr{lr:g}.safetensors", monitor="val_loss")
    Trainer(make_model(), lr=0.01, track=False).fit(
        x_train[:100], y_train[:100], epochs=3, verbose=False,
        callbacks=[checkpoint, ScriptedLoss([1.0] * 3), ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)])
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "1-lr0.01.safetensors", "2-lr0.005.safetensors", "3-lr0.0025.safetensors"]
    assert load_file_metadata(tmp_path / "3-lr0.0025.safetensors")["lr"] == repr(0.0025)


def load_file_metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


@pytest.mark.parametrize(("name", "suggested"), [
    ("best.h5", "best.safetensors"),
    ("best.weights.h5", "best.weights.safetensors"),
    ("model.keras", "model.safetensors"),
    ("best.pt", "best.safetensors"),
    ("ckpt/{epoch:02d}-{val_loss:.3f}", "ckpt/{epoch:02d}-{val_loss:.3f}.safetensors"),
])
def test_model_checkpoint_refuses_a_path_that_names_another_format(tmp_path, name, suggested):
    """ModelCheckpoint('best.h5') wrote safetensors under the name of Keras' HDF5 format."""
    path = tmp_path / name
    with pytest.raises(ConfigError) as info:
        ModelCheckpoint(path)
    message = str(info.value)
    assert "ModelCheckpoint writes safetensors files: its path must end in '.safetensors'" in message
    assert f"Received: path={str(path)!r}" in message
    assert f"path={str(tmp_path / suggested)!r}" in message.split("Received:")[1]
    assert not list(tmp_path.iterdir())
    assert ModelCheckpoint(tmp_path / "BEST.SafeTensors").path.endswith("BEST.SafeTensors")
