"""Trainer(backend="ray", num_workers=2) on a real Ray: Ray Train's TorchTrainer, DDP over gloo on 2 CPUs.

Like test_ray_backend.py, it runs when KAON_TEST_RAY=1 (CI sets it), in its own network and PID
namespaces (root and `unshare`): kaon starts a Ray for the fit there, on 127.0.0.1, and every Ray process
ends with the scenario. About 45 s on 2 cores. The same distributed fit without Ray runs in every job
(tests/training/test_distributed.py).
"""

from __future__ import annotations

import os

import pytest

from tests.cluster.helpers import run_ray_scenario

EPOCHS = 5


@pytest.mark.skipif(os.environ.get("KAON_TEST_RAY") != "1",
                    reason="set KAON_TEST_RAY=1 to start a real Ray (root, unshare)")
def test_trainer_fits_digits_on_two_ray_train_workers_and_returns_weights_history_and_run():
    pytest.importorskip("ray.train.torch")
    result = run_ray_scenario("_ray_train_scenario.py", str(EPOCHS), timeout_s=240)
    assert result["weights_changed"]  # rank 0's weights, loaded into the driver's model
    assert result["accuracy"] >= 0.9, result  # 0.94 on the test digits after 5 epochs (seed 0)
    assert result["epoch"] == list(range(EPOCHS))
    assert list(result["history"]) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert result["history"]["loss"][-1] < result["history"]["loss"][0] / 5
    assert result["history"]["val_accuracy"][-1] == pytest.approx(result["accuracy"])
    assert result["params"] == {"backend": "ray", "num_workers": 2, "batch_size": 32, "num_samples": 1437}
    assert result["run"] == {"status": "completed", "name": "digits-ray", "logged_epochs": list(range(EPOCHS))}
