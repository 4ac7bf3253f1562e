"""Trainer(backend=..., num_workers=N): argument checks, the missing extra, and a real 2-process DDP fit.

The fit runs on tests/training/_processes.py, a backend of local processes in one gloo group, so the
distributed code (shards, DDP, averaged logs, rank 0's decisions shared) is tested without Ray; the Ray
backend itself is tested in tests/cluster/test_ray_train.py.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from kaon.errors import ConfigError, MissingDependencyError, TrainingError
from kaon.training import Callback, Trainer, distributed
from kaon.training._tracking import _registry_class

from ._processes import RecordingTrainer, StopAndHalveLR
from .conftest import make_model


@pytest.fixture
def processes(monkeypatch):
    monkeypatch.setitem(distributed.BACKENDS, "processes", "tests.training._processes:run_in_processes")
    return "processes"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"backend": "spark"}, "unknown backend 'spark'. Expected one of: 'local', 'ray'. Received: backend='spark'"),
    ({"backend": "ray", "num_workers": 0}, "num_workers must be an integer >= 1. Received: num_workers=0"),
    ({"backend": "ray", "num_workers": -2}, "Received: num_workers=-2"),
    ({"backend": "ray", "num_workers": 2.0}, "Received: num_workers=2.0"),
    ({"backend": "ray", "num_workers": True}, "Received: num_workers=True"),
    ({"num_workers": 2}, "Received: backend='local', num_workers=2. Pass backend='ray' as well."),
    ({"address": "10.0.0.1:6379"}, "address applies to backend='ray'"),
    ({"backend": "ray", "address": "10.0.0.1"}, "address must be the cluster's HOST:PORT. Received: address='10.0"),
])
def test_bad_backend_arguments_fail_when_the_trainer_is_made(kwargs, message):
    with pytest.raises(ConfigError) as info:
        Trainer(make_model(), **kwargs)
    assert message in str(info.value)


def test_backend_ray_without_ray_installed_names_the_extra(small, monkeypatch):
    for name in ("ray", "ray.train", "ray.train.torch"):
        monkeypatch.setitem(sys.modules, name, None)  # import ray -> ImportError
    x_train, y_train, _, _ = small
    with pytest.raises(MissingDependencyError, match=r"pip install 'kaon\[ray\]'"):
        Trainer(make_model(), backend="ray", num_workers=2, track=False).fit(x_train, y_train, verbose=False)


def test_unsupported_inputs_for_a_distributed_fit_say_what_to_pass(small, processes):
    x_train, y_train, _, _ = small
    loader = DataLoader(TensorDataset(torch.as_tensor(x_train), torch.as_tensor(y_train)), batch_size=32)
    with pytest.raises(ConfigError, match="Received: x of type DataLoader; pass its dataset and batch_size"):
        Trainer(make_model(), backend=processes, num_workers=2, track=False).fit(loader)


def test_shards_are_equal_disjoint_where_possible_and_cover_every_sample():
    x = torch.arange(10)
    shards = [distributed._shard(x, x * 10, rank, 4, seed=0, shuffle=True) for rank in range(4)]
    assert [len(sx) for sx, _ in shards] == [3, 3, 3, 3]  # 12 = 10 + 2 repeated, as DistributedSampler pads
    assert set(torch.cat([sx for sx, _ in shards]).tolist()) == set(range(10))
    assert all(torch.equal(sy, sx * 10) for sx, sy in shards)
    dataset = TensorDataset(x)
    assert [len(distributed._shard(dataset, None, r, 3, seed=0, shuffle=False)[0]) for r in range(3)] == [4, 4, 4]


def test_two_process_ddp_fit_learns_shares_rank0_decisions_and_tracks_the_run(small, processes, tmp_path):
    x_train, y_train, x_test, y_test = small
    model = make_model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = RecordingTrainer(model, lr=4e-3, seed=0, run_name="ddp", backend=processes, num_workers=2)
    trainer.record_to = str(tmp_path)
    history = trainer.fit(x_train, y_train, epochs=4, batch_size=32, validation_data=(x_test, y_test),
                          callbacks=[StopAndHalveLR()], verbose=False)

    # rank 0's callback stopped after epoch 1 and halved the lr each epoch: both workers followed it
    assert history.epoch == [0, 1] and trainer.stop_training
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    lrs = [sorted({float(v) for v in (tmp_path / f"lr-{rank}").read_text().split()}) for rank in (0, 1)]
    assert lrs[0] == lrs[1] == [0.002, 0.004]
    steps = [len((tmp_path / f"lr-{rank}").read_text().split()) for rank in (0, 1)]
    assert steps[0] == steps[1] == 2 * 13  # 400 samples: 200 per worker, 16 per step (batch_size 32 over 2)

    # the trained weights are in the driver's model, and they learned
    assert any(not torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert trainer.evaluate(x_test, y_test)["accuracy"] >= 0.6
    assert history.history["val_accuracy"][-1] == pytest.approx(trainer.evaluate(x_test, y_test)["accuracy"])

    registry = _registry_class()()
    run = registry.get_run(history.run_id)
    assert run.status == "completed" and run.name == "ddp"
    assert run.params["backend"] == "processes" and run.params["num_workers"] == 2
    assert [step for step, _ in registry.metric_history(history.run_id)["val_loss"]] == [0, 1]
    assert run.summary["stopped_early"] is True


def test_a_worker_error_travels_without_the_workers_history(small):
    """Ray pickles a worker's exception to the driver; the History on it would drag the DDP module along."""
    x_train, y_train, _, _ = small

    class Broken(Callback):
        def on_epoch_end(self, epoch, logs):
            raise RuntimeError("disk full")

    trainer = distributed.worker_copy(Trainer(make_model(), track=False))
    spec = distributed.WorkerFit(trainer, torch.as_tensor(x_train), torch.as_tensor(y_train), None, epochs=2,
                                 batch_size=32, callbacks=[Broken()], shuffle=True)
    with pytest.raises(TrainingError, match="callback Broken raised RuntimeError") as info:
        distributed.fit_worker(spec, 0, 1, send=lambda message: None)
    assert not hasattr(info.value, "history")
