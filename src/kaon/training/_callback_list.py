"""Call every callback's hook in order (at an epoch's end, the recording ones last); a callback that raises stops fit
with an error naming it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kaon.errors import ConfigError, TrainingError
from kaon.training.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TensorBoard,
)

if TYPE_CHECKING:
    from kaon.training.trainer import Trainer


def check_callbacks(callbacks: Sequence[object]) -> None:
    if isinstance(callbacks, Callback):
        raise ConfigError(f"callbacks must be a list. Received: callbacks={callbacks!r}; "
                          f"write callbacks=[{type(callbacks).__name__}(...)]")
    for callback in callbacks:
        if not isinstance(callback, Callback):
            raise ConfigError(
                "each callback must be an instance of kaon.training.Callback. "
                f"Received: {callback!r} of type {type(callback).__name__}"
                + (" (a class: add the parentheses)" if isinstance(callback, type) else "")
            )


# kaon's callbacks, which add nothing to the epoch logs but ReduceLROnPlateau's 'lr'
_KNOWN_LOGS = {EarlyStopping: (), ModelCheckpoint: (), ReduceLROnPlateau: ("lr",), TensorBoard: (), CSVLogger: ()}


def end_order(callbacks: Sequence[Callback]) -> list[Callback]:
    """The order the callbacks run in at the end of an epoch and of training: as listed, but those that record the
    epoch (records_epoch) after the others, so that a CSVLogger writes the 'lr' a ReduceLROnPlateau listed after it
    sets, and every recorder writes the same values whatever its place in the list."""
    return ([callback for callback in callbacks if not callback.records_epoch]
            + [callback for callback in callbacks if callback.records_epoch])


def check_logged(callbacks: Sequence[Callback], logged: Sequence[str]) -> None:
    """Before training: a callback that monitors a value fit will not log (or names one in its path) fails now,
    not after the first epoch. `logged`: the epoch logs fit will have. Callbacks that run after one of another type
    with its own on_epoch_end (in end_order) are not checked: that one may add its own values to the logs."""
    names = list(logged)
    for callback in end_order(callbacks):
        added = _KNOWN_LOGS.get(type(callback))
        if added is None:
            if type(callback).on_epoch_end is Callback.on_epoch_end:
                continue  # it never sees the epoch logs, so it adds nothing to them
            return
        check = getattr(callback, "check_logged", None)
        if check is not None:
            check(names)
        names.extend(name for name in added if name not in names)


class CallbackList:
    def __init__(self, callbacks: Sequence[Callback], trainer: Trainer) -> None:
        check_callbacks(callbacks)
        for callback in callbacks:
            callback.set_trainer(trainer)
        self.callbacks = list(callbacks)
        self._end_order = end_order(self.callbacks)
        # Only callbacks that override the per-step hook cost anything per step.
        self._batch_end = [c for c in self.callbacks
                           if type(c).on_train_batch_end is not Callback.on_train_batch_end]
        self.epoch = 0

    @property
    def wants_batch_end(self) -> bool:
        return bool(self._batch_end)

    def _call(self, callback: Callback, hook: str, *args: Any) -> None:
        try:
            getattr(callback, hook)(*args)
        except Exception as exc:
            name = type(callback).__name__
            raise TrainingError(
                f"callback {name} raised {type(exc).__name__} in {hook} (epoch {self.epoch + 1}): "
                f"{str(exc).rstrip('. ')}. "
                f"Training stopped; the model keeps its weights and the history so far "
                f"(error.history). Fix {name}, or remove it from callbacks=[...]."
            ) from exc

    def on_train_begin(self, logs: dict[str, float]) -> None:
        for callback in self.callbacks:
            self._call(callback, "on_train_begin", logs)

    def on_train_end(self, logs: dict[str, float]) -> None:
        for callback in self._end_order:
            self._call(callback, "on_train_end", logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch = epoch
        for callback in self.callbacks:
            self._call(callback, "on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for callback in self._end_order:
            self._call(callback, "on_epoch_end", epoch, logs)

    def on_train_batch_end(self, step: int, logs: Mapping[str, Any]) -> None:
        for callback in self._batch_end:
            self._call(callback, "on_train_batch_end", step, logs)

    def close(self) -> list[str]:
        """Close every callback; return the failures as text instead of raising over the real error."""
        failures = []
        for callback in self.callbacks:
            try:
                callback.close()
            except Exception as exc:  # noqa: BLE001 - reported, never masks the training error
                failures.append(f"{type(callback).__name__}.close: {type(exc).__name__}: {exc}")
        return failures
