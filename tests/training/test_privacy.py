"""Differential privacy through Opacus: the budget is respected and the model still learns."""

from __future__ import annotations

import builtins
import math

import pytest
import torch

from kaon.errors import ConfigError, MissingDependencyError
from kaon.training import DifferentialPrivacy, Trainer

from .conftest import make_model


@pytest.mark.parametrize("mode", ["ghost", "standard"])
def test_private_fit_spends_at_most_the_target_epsilon_and_learns(digits, mode):
    x_train, y_train, x_test, y_test = digits
    privacy = DifferentialPrivacy(target_epsilon=8.0, mode=mode)
    trainer = Trainer(make_model(), lr=1e-2, seed=0, privacy=privacy, track=False)
    history = trainer.fit(x_train, y_train, epochs=3, batch_size=64, verbose=False)
    assert history.epsilon is not None and math.isfinite(history.epsilon)
    assert 0 < history.epsilon <= 8.0
    assert history.history["epsilon"] == sorted(history.history["epsilon"])  # spent, never returned
    assert trainer.evaluate(x_test, y_test)["accuracy"] > 0.5  # chance is 0.1
    assert type(trainer.optimizer_) is torch.optim.Adam  # the plain optimizer is back after fit


def test_ghost_and_standard_clipping_train_the_same_weights(small):
    x_train, y_train, _, _ = small

    def weights(mode):
        model = make_model()
        Trainer(model, seed=3, privacy=DifferentialPrivacy(4.0, mode=mode), track=False).fit(
            x_train, y_train, epochs=1, batch_size=50, verbose=False)
        return [p.detach() for p in model.parameters()]

    for ghost, standard in zip(weights("ghost"), weights("standard"), strict=True):
        torch.testing.assert_close(ghost, standard, rtol=1e-4, atol=1e-5)


def test_private_run_summary_reports_epsilon(small):
    from kaon.training._tracking import _registry_class

    x_train, y_train, _, _ = small
    history = Trainer(make_model(), privacy=DifferentialPrivacy(5.0), run_name="dp").fit(
        x_train, y_train, epochs=1, verbose=False)
    run = _registry_class()().get_run(history.run_id)
    assert run.summary["epsilon"] == pytest.approx(history.epsilon)
    assert run.summary["delta"] == 1e-5 and run.params["privacy"]["mode"] == "ghost"


@pytest.mark.parametrize("field, value", [("target_epsilon", 0.0), ("target_delta", 1.5),
                                          ("max_grad_norm", -1.0), ("mode", "fast")])
def test_invalid_privacy_settings_are_config_errors(field, value):
    arguments = {"target_epsilon": 1.0, field: value}
    with pytest.raises(ConfigError, match=f"Received: {field}="):
        DifferentialPrivacy(**arguments)


def test_batchnorm_models_are_refused_with_the_fix(small):
    x_train, y_train, _, _ = small
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(144, 10))
    with pytest.raises(ConfigError, match="ModuleValidator.fix"):
        Trainer(model, privacy=DifferentialPrivacy(1.0), track=False).fit(x_train, y_train, verbose=False)


def test_missing_opacus_names_the_extra(small, monkeypatch):
    x_train, y_train, _, _ = small
    real_import = builtins.__import__

    def no_opacus(name, *args, **kwargs):
        if name == "opacus" or name.startswith("opacus."):
            raise ImportError("No module named 'opacus'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_opacus)
    monkeypatch.setattr("importlib.import_module", lambda name, *a: no_opacus(name))
    with pytest.raises(MissingDependencyError, match=r"pip install 'kaon\[privacy\]'"):
        Trainer(make_model(), privacy=DifferentialPrivacy(1.0), track=False).fit(x_train, y_train)


def test_cached_epsilon_equals_opacus_accountant(small):
    from torch.utils.data import DataLoader, TensorDataset

    from kaon.training.losses import CrossEntropy
    from kaon.training.privacy import PrivateTraining

    x_train, y_train, _, _ = small
    model = make_model()
    loader = DataLoader(TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)), batch_size=50)
    private = PrivateTraining(DifferentialPrivacy(3.0), model=model, optimizer=torch.optim.SGD(
        model.parameters(), lr=0.1), loss_fn=CrossEntropy(), loader=loader, epochs=2)
    assert private.epsilon() == 0.0
    for steps in (3, 9):
        for _ in range(steps):
            private.engine.accountant.step(noise_multiplier=private.noise_multiplier, sample_rate=1 / 8)
        assert private.epsilon() == pytest.approx(private.engine.get_epsilon(1e-5), rel=1e-9)
    private.close()


def test_a_second_private_fit_on_the_same_model_reports_the_total_spent(small):
    """Privacy loss adds up: a second fit on the same model said epsilon 2.0 again, as if nothing was spent."""
    x_train, y_train, _, _ = small
    model = make_model()
    first = Trainer(model, seed=0, privacy=DifferentialPrivacy(2.0), track=False).fit(
        x_train, y_train, epochs=2, batch_size=50, verbose=False)
    with pytest.warns(RuntimeWarning, match="already spent epsilon="):
        second = Trainer(model, seed=0, privacy=DifferentialPrivacy(2.0), track=False).fit(
            x_train, y_train, epochs=2, batch_size=50, verbose=False)
    assert first.epsilon is not None and second.epsilon is not None
    assert first.epsilon <= 2.0 < second.epsilon
    assert second.history["epsilon"][0] > first.epsilon  # counted from what the first fit spent


def test_a_private_fit_resumed_from_a_checkpoint_counts_what_was_spent_before(small, tmp_path):
    """A checkpoint kept weights (and the optimizer) but not the privacy spent: a private fit resumed from it in
    a new process started a fresh budget and reported only its own epsilon."""
    from kaon.training import ModelCheckpoint

    x_train, y_train, _, _ = small
    first = Trainer(make_model(), seed=0, privacy=DifferentialPrivacy(2.0), track=False).fit(
        x_train, y_train, epochs=2, batch_size=50, verbose=False,
        callbacks=[ModelCheckpoint(tmp_path / "{epoch}.safetensors")])
    resumed = Trainer(make_model(seed=1), seed=0, privacy=DifferentialPrivacy(2.0), track=False)
    epoch = resumed.load_weights(tmp_path / "2.safetensors")
    with pytest.warns(RuntimeWarning, match="already spent epsilon="):
        history = resumed.fit(x_train, y_train, epochs=3, initial_epoch=epoch, batch_size=50, verbose=False)
    assert first.epsilon is not None and history.epsilon is not None
    assert history.epsilon > first.epsilon  # the total: the first two epochs, then this one
