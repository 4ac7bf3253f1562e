"""Fit on several workers: the training side of `Trainer(..., backend="ray", num_workers=N)`.

The training layer knows no cluster. A backend is named in BACKENDS as "module:function" and imported
when a fit starts (as pandas finds its plotting backends), so `kaon.training` imports neither
`kaon.cluster` nor `ray`. A backend function runs `job` on `num_workers` processes whose
torch.distributed process group is up, relays what rank 0 sends to `on_message` on the driver as it
arrives, and returns what rank 0's job returned:

    run(job, *, num_workers, address, use_gpu, on_message) -> object   # job(rank, world_size, send)

What a distributed fit keeps from a local one, and what it changes:
- The same model, optimizer, loss, metrics, seed and custom train_step/test_step: each worker runs an
  unbuilt copy of the Trainer, with the model wrapped in DistributedDataParallel (gloo on CPU, NCCL on
  GPUs) for training steps. The data is checked on the driver first, with local fit's errors.
- Arrays or a Dataset are split into equal shards, one per worker (padded by repeating samples, as
  DistributedSampler does, so every worker takes the same number of steps). `batch_size` still counts
  the samples of one step: each worker takes batch_size / num_workers of them.
- The epoch logs (and val_* logs) are averaged over the workers, weighted by their samples.
- Callbacks run on rank 0, with those logs; what they decide (stop_training, learning rates) is sent to
  the other workers after each epoch. Files they write land on rank 0's machine.
- The driver gets each epoch's logs as it ends (progress lines, the registry Run), then rank 0's weights,
  loaded into the driver's model. Not supported yet: privacy, Keras models, DataLoaders (pass the Dataset).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from kaon.errors import ConfigError
from kaon.training._callback_list import CallbackList, check_callbacks
from kaon.training._data import ArrayBatches, Inputs, validation_pair
from kaon.training._progress import EpochLines
from kaon.training._tracking import RunTracker, run_params, run_summary
from kaon.training.callbacks import Callback
from kaon.training.history import History

if TYPE_CHECKING:
    from kaon.training.trainer import Trainer

Backend = Literal["local", "ray"]
# name -> "module:function" of the backend's run(...) (see the module docstring), imported at fit time.
BACKENDS: dict[str, str] = {"ray": "kaon.cluster.backends.ray:run_on_ray"}
Send = Callable[[Any], None]


def check_backend(backend: object, num_workers: object, address: object) -> None:
    """Validate Trainer(backend=, num_workers=, address=) (one wording per problem)."""
    if backend != "local" and backend not in BACKENDS:
        names = ", ".join(repr(name) for name in ["local", *BACKENDS])
        raise ConfigError(f"unknown backend {backend!r}. Expected one of: {names}. Received: backend={backend!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"num_workers must be an integer >= 1. Received: num_workers={num_workers!r}")
    if backend == "local" and num_workers != 1:
        raise ConfigError("num_workers applies to a distributed backend; a local fit runs in this process. "
                          f"Received: backend='local', num_workers={num_workers}. Pass backend='ray' as well.")
    if address is not None:
        if backend == "local":
            raise ConfigError("address applies to backend='ray'. Received: backend='local', "
                              f"address={address!r}. Pass backend='ray' as well, or drop address.")
        if not isinstance(address, str) or ":" not in address:
            raise ConfigError(f"address must be the cluster's HOST:PORT. Received: address={address!r}. "
                              "Leave it out to start a Ray on this machine for the fit.")


def load_backend(name: str) -> Callable[..., Any]:
    module, _, function = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), function)  # type: ignore[no-any-return]


@dataclass
class WorkerFit:
    """What each worker is sent: an unbuilt copy of the Trainer, the data and fit's arguments."""

    trainer: Trainer
    x: Any  # a tensor or a Dataset
    y: torch.Tensor | None
    validation: tuple[Any, torch.Tensor | None] | None
    epochs: int
    batch_size: int
    callbacks: list[Callback]
    shuffle: bool


@dataclass
class WorkerResult:
    """What rank 0 sends back when its fit ends."""

    state: dict[str, torch.Tensor]
    stopped_early: bool


def fit_distributed(trainer: Trainer, x: Any, y: Any, *, epochs: int, batch_size: int, validation_data: Any,
                    callbacks: Sequence[Callback], shuffle: bool, verbose: bool | None) -> History:
    """Trainer.fit on trainer.num_workers workers of trainer.backend (see the module docstring)."""
    run = load_backend(trainer.backend)
    check_callbacks(callbacks)
    _check_supported(trainer, x, validation_data)
    job_trainer = worker_copy(trainer)
    trainer._build()
    trainer._check_logged(callbacks, validation=validation_data is not None)  # before the workers start
    train = trainer._batches(x, y, batch_size, shuffle=False, name="x")  # local fit's checks, on the driver
    validation = None
    if validation_data is not None:
        vx, vy = validation_pair(validation_data)
        validation = _payload(trainer._batches(vx, vy, batch_size, shuffle=False, name="validation_data"), vx)
    spec = WorkerFit(job_trainer, *_payload(train, x), validation, epochs, batch_size,
                     [_detached(c) for c in callbacks], shuffle)

    history = History()
    history.params = {**run_params(trainer, epochs=epochs, batch_size=batch_size, num_samples=train.num_samples),
                      "backend": trainer.backend, "num_workers": trainer.num_workers}
    progress = None if verbose is False else EpochLines(epochs=epochs, steps=None)  # no steps reach the driver
    chain = CallbackList([history, *([progress] if progress else [])], trainer)
    tracker = None
    if trainer.track:
        tracker = RunTracker(trainer.run_name or type(trainer.model).__name__, history.params)
        history.run_id = tracker.run_id

    def on_message(message: tuple[str, int, dict[str, float]]) -> None:  # from rank 0's _Relay, as it happens
        event, epoch, logs = message
        if event == "epoch_begin":
            chain.on_epoch_begin(epoch, logs)
            return
        chain.on_epoch_end(epoch, logs)
        if tracker is not None:
            tracker.log(epoch, logs)

    started, error = time.perf_counter(), None
    trainer.stop_training = False
    chain.on_train_begin({})
    try:
        result = run(_Job(spec), num_workers=trainer.num_workers, address=trainer.address,
                     use_gpu=trainer.device_.type == "cuda", on_message=on_message)
        trainer.model.load_state_dict(result.state)
        trainer.stop_training = result.stopped_early
        chain.on_train_end({k: v[-1] for k, v in history.history.items() if v})
    except BaseException as exc:
        error = exc
        with contextlib.suppress(AttributeError):
            exc.history = history  # type: ignore[attr-defined]
        raise
    finally:
        chain.close()
        if tracker is not None:
            summary = run_summary(history, stopped_early=trainer.stop_training, private=None,
                                  duration_s=time.perf_counter() - started, error=error, problems=[])
            tracker.finish(history, summary, error=error)
    return history


def worker_copy(trainer: Trainer) -> Trainer:
    """`trainer` as constructed (no optimizer, device or metric state) and set to fit locally, untracked."""
    clone = copy.copy(trainer)
    for name in list(vars(clone)):
        if name.endswith("_") or name in _BUILT:
            delattr(clone, name)
    clone.model = copy.deepcopy(trainer.model).cpu()
    clone.backend, clone.num_workers, clone.address, clone.track = "local", 1, None, False
    clone._built = False
    return clone


# What Trainer._build adds besides the learned state whose names end in _.
_BUILT = frozenset({"_is_keras", "_forward_train", "_forward_eval", "_forward", "_loss_in_use", "_loss_mean",
                    "_adversarial_loss", "_adversarial_metrics", "_autocast_dtype", "_scaler", "_generator", "_sync"})


class _Job:
    """fit_worker bound to its WorkerFit: what the backend runs on each worker (picklable)."""

    def __init__(self, spec: WorkerFit) -> None:
        self.spec = spec

    def __call__(self, rank: int, world_size: int, send: Send) -> WorkerResult | None:
        return fit_worker(self.spec, rank, world_size, send)


def fit_worker(spec: WorkerFit, rank: int, world_size: int, send: Send) -> WorkerResult | None:
    """One worker's part of a distributed fit; rank 0 returns the result. The process group is up
    when world_size > 1 (the backend's job)."""
    trainer = spec.trainer
    trainer._build()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        device = trainer.device_
        ddp = torch.nn.parallel.DistributedDataParallel(
            trainer.model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        trainer._forward_train = trainer._forward = ddp  # eval steps use the plain model: no collectives
    trainer._sync = WorkerSync(world_size)
    seed = trainer.seed if trainer.seed is not None else 0
    x, y = _shard(spec.x, spec.y, rank, world_size, seed, shuffle=spec.shuffle)
    validation = None
    if spec.validation is not None:
        validation = _as_pair(*_shard(*spec.validation, rank, world_size, seed, shuffle=False))
    try:
        with warnings.catch_warnings():
            # DDP's note on a size-1 axis (a 1-channel conv): strides differ only where they do not matter
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            trainer.fit(x, y, epochs=spec.epochs, batch_size=math.ceil(spec.batch_size / world_size),
                        validation_data=validation,
                        callbacks=[*spec.callbacks, _Relay(send)] if rank == 0 else (),
                        shuffle=spec.shuffle, verbose=False)
    except BaseException as exc:
        with contextlib.suppress(AttributeError):
            del exc.history  # type: ignore[attr-defined]  # holds this worker's DDP module: cannot travel
        raise
    if rank != 0:
        return None
    state = {name: value.detach().cpu() for name, value in trainer.model.state_dict().items()}
    return WorkerResult(state=state, stopped_early=trainer.stop_training)


class WorkerSync:
    """Keeps the workers of one fit in step: the same averaged logs, and rank 0's callbacks' decisions."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size

    def average(self, logs: dict[str, float], num_samples: int | None) -> dict[str, float]:
        if self.world_size == 1:
            return logs
        weight = float(num_samples or 1)
        totals = self._tensor([logs[key] * weight for key in logs] + [weight])  # same keys, same order on all
        torch.distributed.all_reduce(totals)
        return {key: float(totals[i] / totals[-1]) for i, key in enumerate(logs)}

    def share_decisions(self, trainer: Trainer) -> None:
        """After rank 0's callbacks: its stop_training and learning rates, on every worker."""
        if self.world_size == 1:
            return
        groups = trainer.optimizer_.param_groups
        decisions = self._tensor([float(trainer.stop_training), *(float(g["lr"]) for g in groups)])
        torch.distributed.broadcast(decisions, src=0)
        trainer.stop_training = bool(decisions[0])
        for group, lr in zip(groups, decisions[1:].tolist(), strict=True):
            group["lr"] = lr

    @staticmethod
    def _tensor(values: list[float]) -> torch.Tensor:
        nccl = torch.distributed.get_backend() == "nccl"
        return torch.tensor(values, dtype=torch.float64, device="cuda" if nccl else "cpu")


class _Relay(Callback):
    """Rank 0's last callback: each epoch's start and logs, to the driver (its History, progress and Run)."""

    def __init__(self, send: Send) -> None:
        super().__init__()
        self.send = send

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        self.send(("epoch_begin", epoch, {}))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.send(("epoch_end", epoch, dict(logs)))


def _check_supported(trainer: Trainer, x: Any, validation_data: Any) -> None:
    where = f"backend={trainer.backend!r}"
    if trainer.privacy is not None:
        raise ConfigError(f"privacy is not supported with {where} yet. Received: privacy={trainer.privacy!r}; "
                          "train with backend='local'.")
    from kaon.training._weights import is_keras_model

    if is_keras_model(trainer.model):
        raise ConfigError(f"Keras models train with backend='local' only. Received: {where} and a "
                          f"{type(trainer.model).__name__}.")
    for name, data in (("x", x), ("validation_data", validation_data)):
        if isinstance(data, DataLoader | IterableDataset):
            raise ConfigError(f"{name} must be arrays or a map-style Dataset with {where}: each worker takes a "
                              f"shard and batches it. Received: {name} of type {type(data).__name__}; pass "
                              "its dataset and batch_size instead.")


def _payload(batches: Any, data: Any) -> tuple[Any, torch.Tensor | None]:
    """What travels to the workers: the checked tensors (on the CPU) for arrays, else the Dataset."""
    if isinstance(batches, ArrayBatches):
        if isinstance(batches.x, Inputs):
            raise ConfigError("a distributed fit trains models with one input here. Received: several inputs "
                              f"({batches.x.describe()}); use backend='local', or a Dataset that yields them.")
        return batches.x.cpu(), None if batches.y is None else batches.y.cpu()
    if not isinstance(data, Dataset):
        raise ConfigError(f"unsupported data for a distributed fit. Received: {type(data).__name__}")
    return data, None


def _shard(x: Any, y: torch.Tensor | None, rank: int, world_size: int, seed: int, *,
           shuffle: bool) -> tuple[Any, torch.Tensor | None]:
    """Worker `rank`'s equal share of the samples (padded with the first ones, as DistributedSampler does)."""
    count = len(x)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(count)
    total = math.ceil(count / world_size) * world_size
    index = order[torch.arange(total) % count][rank::world_size]
    if isinstance(x, Dataset):
        return Subset(x, index.tolist()), None
    return x[index], None if y is None else y[index]


def _as_pair(x: Any, y: torch.Tensor | None) -> Any:
    return x if y is None else (x, y)


def _detached(callback: Callback) -> Callback:
    """A copy of `callback` without the Trainer of an earlier fit (which would travel with it)."""
    clone = copy.copy(callback)
    clone.trainer = None
    return clone
