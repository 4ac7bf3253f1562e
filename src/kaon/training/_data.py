"""Turn what fit/evaluate/predict receive into batches on the training device.

In-memory arrays are moved to the device once and indexed with slices of a shuffled permutation:
no DataLoader, no collate, no per-sample Python. Datasets and DataLoaders are iterated as given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from kaon.errors import InvalidInputError

# Arrays up to this size move to an accelerator whole; larger ones move batch by batch.
_MAX_DEVICE_BYTES = 1 << 30

Batch = Any  # (x, y) or (x,) as tensors for the default steps; any structure for a custom step


class Inputs:
    """A model's several inputs for the same samples, as `fit([x1, x2], y)` or `fit({"ids": ..., "mask": ...}, y)`
    give them (Keras' convention): the model is called model(x1, x2) or model(ids=..., mask=...). Indexing takes
    the same rows of each, so batches are made as for one tensor."""

    def __init__(self, args: tuple[torch.Tensor, ...] = (), kwargs: dict[str, torch.Tensor] | None = None) -> None:
        self.args = args
        self.kwargs = kwargs or {}

    def tensors(self) -> list[torch.Tensor]:
        return [*self.args, *self.kwargs.values()]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
        return Inputs(tuple(fn(t) for t in self.args), {k: fn(v) for k, v in self.kwargs.items()})

    def __getitem__(self, index: Any) -> Inputs:
        return self.map(lambda t: t[index])

    def __len__(self) -> int:
        return int(self.tensors()[0].shape[0])

    @property
    def shape(self) -> torch.Size:  # the batch axis is shared; code reading x.shape[0] works unchanged
        return self.tensors()[0].shape

    @property
    def device(self) -> torch.device:
        return self.tensors()[0].device

    def to(self, device: torch.device, non_blocking: bool = False) -> Inputs:
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Inputs:
        return self.map(lambda t: t.pin_memory())

    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in self.tensors())

    def call(self, fn: Callable[..., Any], *, as_one_argument: bool = False) -> Any:
        """fn(*args, **kwargs); a Keras model takes its inputs as one list or dict instead."""
        if as_one_argument:
            return fn(list(self.args) if self.args else self.kwargs)
        return fn(*self.args, **self.kwargs)

    def describe(self) -> str:
        parts = [tuple(t.shape) for t in self.args] or {k: tuple(v.shape) for k, v in self.kwargs.items()}
        return f"inputs {parts}"


def several_inputs(x: Any, input_count: int | None = None) -> bool:
    """Whether x is a model's several inputs: a dict of arrays, or a list/tuple whose items are all arrays. With
    `input_count` (how many the model's forward takes), a list for a one-input model is its samples, stacked as
    always, and a list for a k-input model is its inputs only when it holds k arrays."""
    if isinstance(x, DataLoader | Dataset):
        return False
    if isinstance(x, dict):
        return bool(x)
    if input_count == 1 or not isinstance(x, tuple | list) or (input_count is not None and len(x) != input_count):
        return False
    return (len(x) > 1 and all(isinstance(item, np.ndarray | torch.Tensor) or hasattr(item, "__array__") for item in x)
            and not all(np.ndim(item) == 0 for item in x))


class ArrayBatches:
    """Batches of in-memory tensors: x[perm[i:i + batch_size]]."""

    def __init__(self, x: torch.Tensor | Inputs, y: torch.Tensor | None, *, batch_size: int, shuffle: bool,
                 generator: torch.Generator | None, device: torch.device) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.device = device
        self.num_samples = int(x.shape[0])

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        x, y, size = self.x, self.y, self.batch_size
        on_device = x.device == self.device
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=self.generator)
            if x.device != order.device:
                order = order.to(x.device)
            for start in range(0, self.num_samples, size):
                index = order[start:start + size]
                xb = x[index]
                yb = None if y is None else y[index]
                yield (xb, yb) if on_device else _to_device((xb, yb), self.device)
        else:
            for start in range(0, self.num_samples, size):
                xb = x[start:start + size]
                yb = None if y is None else y[start:start + size]
                yield (xb, yb) if on_device else _to_device((xb, yb), self.device)

    def sample(self, count: int = 2) -> Batch:
        y = None if self.y is None else self.y[:count]
        return _to_device((self.x[:count], y), self.device)

    def labels(self) -> torch.Tensor | None:
        return self.y


class PoissonBatches(ArrayBatches):
    """Poisson sampling, as differential privacy's accounting assumes: each sample joins each batch
    independently with probability `sample_rate`, for `steps` batches per epoch (sizes vary)."""

    def __init__(self, batches: ArrayBatches, *, sample_rate: float, steps: int) -> None:
        super().__init__(batches.x, batches.y, batch_size=batches.batch_size, shuffle=True,
                         generator=batches.generator, device=batches.device)
        self.sample_rate = sample_rate
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        x, y = self.x, self.y
        for _ in range(self.steps):
            chosen = torch.rand(self.num_samples, generator=self.generator) < self.sample_rate
            index = chosen.nonzero().reshape(-1).to(x.device)
            batch = (x[index], None if y is None else y[index])
            yield batch if x.device == self.device else _to_device(batch, self.device)


class LoaderBatches:
    """Batches from a DataLoader, moved to the device; `check` sees each batch first (on the host)."""

    def __init__(self, loader: DataLoader, *, device: torch.device,
                 check: Callable[[Batch, int], None] | None = None) -> None:
        self.loader = loader
        self.device = device
        self.check = check
        try:
            self.num_samples: int | None = len(loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            self.num_samples = None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        check, device = self.check, self.device
        for step, batch in enumerate(self.loader):
            if check is not None:
                check(batch, step)
            yield _to_device(batch, device)

    def sample(self, count: int = 2) -> Batch | None:
        """A batch of the first `count` samples, read without touching the loader's sampler."""
        dataset = self.loader.dataset
        try:
            items = [dataset[i] for i in range(min(count, len(dataset)))]  # type: ignore[arg-type]
        except (TypeError, NotImplementedError, IndexError, KeyError):
            return None  # an iterable dataset: no random access
        collate = self.loader.collate_fn or torch.utils.data.default_collate
        return _to_device(collate(items), self.device)

    def labels(self) -> torch.Tensor | None:
        return None


Batches = ArrayBatches | PoissonBatches | LoaderBatches


def make_batches(x: Any, y: Any, *, batch_size: int, shuffle: bool, device: torch.device,
                 dtype: torch.dtype, generator: torch.Generator | None = None,
                 check: Callable[[Batch, int], None] | None = None, name: str = "x",
                 integer_x: bool = False, input_count: int | None = None) -> Batches:
    """Batches over arrays (x, y), a Dataset (y=None) or a DataLoader (y=None). An integer array x (uint8
    pixels, say) becomes `dtype` like float x, unless `integer_x` (a model that reads indices: an embedding)."""
    if isinstance(x, DataLoader | Dataset):
        if y is not None:
            raise InvalidInputError(
                f"y must be None when {name} is a {type(x).__name__}: it yields the targets itself. "
                f"Received: y of type {type(y).__name__}. Pass the dataset alone, or pass arrays for both."
            )
        iterable = isinstance(x, torch.utils.data.IterableDataset)  # no random access: no shuffling
        loader = x if isinstance(x, DataLoader) else DataLoader(
            x, batch_size=batch_size, shuffle=shuffle and not iterable, generator=generator)
        return LoaderBatches(loader, device=device, check=check)
    several = several_inputs(x, input_count)
    x_t = _several_tensors(x, name, dtype, integer_x) if several else _input_tensor(x, name, dtype, integer_x)
    y_t = None if y is None else as_tensor(y, "y" if name == "x" else f"{name} y", dtype)
    if y_t is not None and y_t.shape[0] != x_t.shape[0]:
        raise InvalidInputError(
            f"{name} and its targets must have the same number of samples. "
            f"Received: len(x)={x_t.shape[0]}, len(y)={y_t.shape[0]}. "
            "Check that both come from the same split, in the same order.",
            fields=[{"name": "y", "expected": int(x_t.shape[0]), "received": int(y_t.shape[0])}],
        )
    if x_t.shape[0] == 0:
        raise InvalidInputError(f"{name} has no samples. Received: shape={tuple(x_t.shape)}")
    named = _named_tensors(x_t, name)
    for label, tensor in (*named, ("y" if name == "x" else f"{name} y", y_t)):
        if tensor is not None and tensor.is_floating_point():
            _check_finite(tensor, label)
    x_bytes = x_t.nbytes() if isinstance(x_t, Inputs) else x_t.element_size() * x_t.nelement()
    nbytes = x_bytes + (0 if y_t is None else y_t.element_size() * y_t.nelement())
    if device.type == "cpu" or nbytes <= _MAX_DEVICE_BYTES:
        x_t = x_t.to(device)
        y_t = None if y_t is None else y_t.to(device)
    elif device.type == "cuda":
        x_t, y_t = x_t.pin_memory(), None if y_t is None else y_t.pin_memory()
    return ArrayBatches(x_t, y_t, batch_size=batch_size, shuffle=shuffle, generator=generator, device=device)


def _input_tensor(x: Any, name: str, dtype: torch.dtype, integer_x: bool) -> torch.Tensor:
    tensor = as_tensor(x, name, dtype)
    if not integer_x and not isinstance(x, torch.Tensor) and not tensor.is_floating_point():
        tensor = tensor.to(dtype)  # an array's integer dtype is incidental; a torch tensor's is the caller's choice
    return tensor


def _several_tensors(x: Any, name: str, dtype: torch.dtype, integer_x: bool) -> Inputs:
    if isinstance(x, dict):
        inputs = Inputs(kwargs={str(k): _input_tensor(v, f"{name}[{k!r}]", dtype, integer_x) for k, v in x.items()})
    else:
        inputs = Inputs(tuple(_input_tensor(v, f"{name}[{i}]", dtype, integer_x) for i, v in enumerate(x)))
    counts = {label: int(t.shape[0]) for label, t in _named_tensors(inputs, name)}
    if len(set(counts.values())) > 1:
        raise InvalidInputError(f"a model's inputs must have the same number of samples. Received: {counts}.")
    return inputs


def _named_tensors(x: torch.Tensor | Inputs, name: str) -> list[tuple[str, torch.Tensor]]:
    if not isinstance(x, Inputs):
        return [(name, x)]
    return [(f"{name}[{i}]", t) for i, t in enumerate(x.args)] + [(f"{name}[{k!r}]", t) for k, t in x.kwargs.items()]


def split_validation(x: Any, y: Any, fraction: Any, input_count: int | None = None
                     ) -> tuple[Any, Any, tuple[Any, Any]]:
    """(x_train, y_train, (x_val, y_val)): the last `fraction` of the samples held out, as Keras'
    validation_split does (before any shuffling: shuffle arrays sorted by class first)."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise InvalidInputError(
            f"validation_split is the fraction of the samples held out for validation, a number between 0 and 1 "
            f"(0.2 holds out the last 20%). Received: validation_split={fraction!r}")
    if isinstance(x, DataLoader | Dataset) or y is None:
        raise InvalidInputError(
            f"validation_split splits arrays (x, y); a {type(x).__name__} cannot be split here. Pass "
            f"validation_data=(x_val, y_val), a Dataset or a DataLoader instead.")
    if not hasattr(y, "__getitem__") or isinstance(y, list | tuple):
        y = np.asarray(y)
    if several_inputs(x, input_count):  # split each input the same way
        parts = x if isinstance(x, dict) else dict(enumerate(x))
        rows = {len(v) for v in parts.values()}
        if len(rows) > 1 or len(y) not in rows:
            raise InvalidInputError(f"x's inputs and y must have the same number of samples. Received: "
                                    f"{ {k: len(v) for k, v in parts.items()} } and len(y)={len(y)}.")
        keep = math.floor(len(y) * (1.0 - fraction))  # as Keras computes it
        _check_split(fraction, len(y), keep)
        first = {k: v[:keep] for k, v in parts.items()}
        rest = {k: v[keep:] for k, v in parts.items()}
        if isinstance(x, dict):
            return first, y[:keep], (rest, y[keep:])
        return list(first.values()), y[:keep], (list(rest.values()), y[keep:])
    if not hasattr(x, "__getitem__") or isinstance(x, list | tuple):
        x = np.asarray(x)
    count = len(x)
    if len(y) != count:
        raise InvalidInputError(
            f"x and y must have the same number of samples. Received: len(x)={count}, len(y)={len(y)}. "
            "Check that both come from the same split, in the same order.")
    keep = math.floor(count * (1.0 - fraction))  # as Keras computes it
    _check_split(fraction, count, keep)
    return x[:keep], y[:keep], (x[keep:], y[keep:])


def _check_split(fraction: float, count: int, keep: int) -> None:
    if keep == 0 or keep == count:
        raise InvalidInputError(
            f"validation_split={fraction} of {count} samples leaves {'no training' if keep == 0 else 'no validation'} "
            f"samples. Use a split that holds out at least one sample and keeps at least one.")


def validation_pair(data: Any) -> tuple[Any, Any]:
    """(x, y) from validation_data given as a pair, a Dataset or a DataLoader."""
    if isinstance(data, DataLoader | Dataset):
        return data, None
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0], data[1]
    raise InvalidInputError(
        "validation_data must be a pair (x_val, y_val), a torch Dataset or a DataLoader. "
        f"Received: {type(data).__name__}"
        + (f" of length {len(data)}" if isinstance(data, tuple | list) else "")
    )


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    """NaN or infinity in the data: said before training, not found later as a NaN loss."""
    finite = torch.isfinite(tensor.reshape(tensor.shape[0], -1)).all(dim=1)
    if bool(finite.all()):
        return
    bad = (~finite).nonzero().flatten()
    raise InvalidInputError(
        f"{name} holds NaN or infinite values in {len(bad)} of its {tensor.shape[0]} samples (the first at index "
        f"{int(bad[0])}). Drop those samples or fill the gaps (e.g. np.nan_to_num, or your pipeline's imputer) first.",
        fields=[{"name": name, "received": "non-finite values", "first_index": int(bad[0])}],
    )


def as_tensor(data: Any, name: str, float_dtype: torch.dtype) -> torch.Tensor:
    """A tensor from an array-like: floats in the model's dtype, integers as int64."""
    if isinstance(data, torch.Tensor):
        tensor = data
    else:
        array = np.asarray(data)
        if array.dtype.kind not in "fiub":
            raise InvalidInputError(
                f"{name} must hold numbers. Received: dtype={array.dtype}, shape={array.shape}. "
                "Convert it with np.asarray(..., dtype=np.float32) first."
            )
        if not array.flags.writeable:  # a pandas column's values, say: torch warns on a read-only array
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 0:
        raise InvalidInputError(f"{name} must have a batch axis. Received: a scalar ({tensor!r})")
    if tensor.is_floating_point():
        return tensor.to(float_dtype)
    if tensor.dtype == torch.bool:
        return tensor.to(float_dtype)
    return tensor.long()


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Inputs):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device != device else batch
    if isinstance(batch, tuple | list):
        return type(batch)(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch
