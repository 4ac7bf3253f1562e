"""Callbacks: code that runs at fixed points of fit, with the Trainer at hand as `self.trainer`.

    >>> class PrintLoss(Callback):
    ...     def on_epoch_end(self, epoch, logs):
    ...         print(epoch, round(logs["loss"], 2))

Epoch logs are floats. Batch logs (`on_train_batch_end`) hold tensors: reading one with float()
makes the host wait for the device, so a callback that does it every step slows training down.
A callback that raises stops fit with a TrainingError naming it; `close()` still runs for all.

At the end of each epoch (and of training) callbacks run in the order listed, except that those which only
record the epoch (`records_epoch = True`: CSVLogger, TensorBoard, ModelCheckpoint, History) run after all the
others: a CSVLogger listed before ReduceLROnPlateau still writes the 'lr' that callback sets. Set it on a
callback of yours that writes the logs somewhere and changes nothing.
"""

from __future__ import annotations

import difflib
import json
import math
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from kaon.errors import ConfigError, require

if TYPE_CHECKING:
    from kaon.training.trainer import Trainer

Mode = Literal["auto", "min", "max"]


class Callback:
    """Base class: override the hooks you need; each default does nothing."""

    # True for a callback that records each epoch (its logs, the weights) and changes neither: it runs after the
    # others at the end of an epoch and of training, to see the values and learning rate they set.
    records_epoch: bool = False

    def __init__(self) -> None:
        self.trainer: Trainer | None = None

    def set_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, float]) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_batch_end(self, step: int, logs: Mapping[str, Any]) -> None: ...

    def close(self) -> None:
        """Release files and writers; runs once when fit ends, whether it succeeded or failed."""


_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "r2", "iou", "dice")


def higher_is_better(metric: str) -> bool:
    """Accuracy, AUC, precision, recall, F1, R2, IoU, Dice (as val_* too) improve upward; losses and errors down."""
    name = metric.removeprefix("val_").lower()
    return any(token in name for token in _HIGHER_IS_BETTER)


class _Monitor(Callback):
    """Shared by the callbacks that watch one logged value and act when it stops improving."""

    def __init__(self, monitor: str, mode: Mode, min_delta: float) -> None:
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"mode must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
        self.monitor = monitor
        self.min_delta = abs(min_delta)
        if mode == "auto":
            mode = "max" if higher_is_better(monitor) else "min"
        self.mode: Literal["min", "max"] = mode
        self.best = math.inf if mode == "min" else -math.inf

    def current(self, logs: Mapping[str, float]) -> float:
        if self.monitor not in logs:
            raise self.not_logged(list(logs))
        return float(logs[self.monitor])

    def not_logged(self, logged: Sequence[str]) -> ConfigError:
        """The error for a monitored value that is not among the `logged` names."""
        if _without_validation(self.monitor, logged):
            why = (": this fit has no validation data (val_* values need validation_data=... or "
                   "validation_split=... in fit)")
        elif _without_attack(self.monitor, logged):
            why = (": this fit trains without an attack (adv_* and val_adv_* values need "
                   "Trainer(..., adversarial=kaon.PGD(epsilon=0.1)) or another attack)")
        else:
            why = _did_you_mean(self.monitor, logged)
        return ConfigError(f"{type(self).__name__} monitors {self.monitor!r}, which fit does not log{why}. "
                           f"Expected one of: {', '.join(logged)}. Received: monitor={self.monitor!r}")

    def check_logged(self, logged: Sequence[str]) -> None:
        """Before training: raise if the monitored value will not be among the `logged` names."""
        if self.monitor not in logged:
            raise self.not_logged(logged)

    def improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


def _without_validation(name: str, logged: Sequence[str]) -> bool:
    """True when `name` is a val_* value and the fit logs none: it has no validation data."""
    return name.startswith("val_") and not any(value.startswith("val_") for value in logged)


def _without_attack(name: str, logged: Sequence[str]) -> bool:
    """True when `name` is an adv_* or val_adv_* value and the fit logs none: it is not adversarial training."""
    def adversarial(value: str) -> bool:
        return value.removeprefix("val_").startswith("adv_")

    return adversarial(name) and not any(adversarial(value) for value in logged)


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class EarlyStopping(_Monitor):
    """Stop when `monitor` has not improved for `patience` epochs; optionally keep the best weights."""

    def __init__(self, monitor: str = "val_loss", patience: int = 0, *, min_delta: float = 0.0,
                 mode: Mode = "auto", restore_best_weights: bool = False) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best_weights: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict[str, float]) -> None:
        self.wait, self.stopped_epoch, self.best_epoch, self.best_weights = 0, None, None, None
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        value = self.current(logs)
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                from kaon.training._weights import snapshot

                assert self.trainer is not None
                self.best_weights = snapshot(self.trainer.model)
            return
        self.wait += 1
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            assert self.trainer is not None
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, float]) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            from kaon.training._weights import restore

            assert self.trainer is not None
            restore(self.trainer.model, self.best_weights)


class ModelCheckpoint(_Monitor):
    """Write the weights as safetensors after each epoch, or only when `monitor` improves.

    `path` must end in ".safetensors", the only format written: a Keras-style "best.h5" or "model.keras", or a
    torch "best.pt" (a pickle, which kaon does not write), is refused with a ConfigError when the callback is made,
    rather than holding safetensors under another format's name. Load the file with `Trainer.load_weights`.
    `path` may hold fields filled from the epoch and the logs: "ckpt/{epoch:02d}-{val_loss:.3f}.safetensors".
    The file is written to a temp file and renamed, so it is never half-written. With `save_optimizer` (the
    default) the optimizer's state goes beside it ("02.safetensors.optimizer"), for `Trainer.load_weights` to
    resume a fit where it stopped; the weights file alone loads anywhere, as before.
    """

    records_epoch = True

    def __init__(self, path: str | Path, monitor: str = "val_loss", *, save_best_only: bool = False,
                 mode: Mode = "auto", save_optimizer: bool = True) -> None:
        super().__init__(monitor, mode, 0.0)
        self.path = str(path)
        _check_checkpoint_path(self.path)
        self.save_best_only = save_best_only
        self.save_optimizer = save_optimizer
        self.last_path: Path | None = None
        self.best_path: Path | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        from kaon._internal.files import atomic_write_bytes
        from kaon.training._weights import (
            CHECKPOINT_ID_KEY,
            keras_order,
            optimizer_file,
            optimizer_to_safetensors,
            snapshot,
            to_safetensors,
        )
        from kaon.training.privacy import SPENT_ATTRIBUTE, SPENT_METADATA_KEY

        assert self.trainer is not None
        value = self.current(logs) if (self.save_best_only or self.monitor in logs) else math.nan
        is_best = self.improved(value)
        if self.save_best_only and not is_best:
            return
        if is_best:
            self.best = value
        target = Path(self._fill_path(epoch, logs))
        metadata = {"epoch": str(epoch + 1), **{k: repr(float(v)) for k, v in logs.items()},
                    **keras_order(self.trainer.model)}
        private = getattr(self.trainer, "private_", None)
        spent = private.spent() if private is not None else getattr(self.trainer.model, SPENT_ATTRIBUTE, None)
        if spent:  # the privacy this model has spent: a fit resumed from this file adds to it
            metadata[SPENT_METADATA_KEY] = json.dumps([list(run) for run in spent])
        metadata[CHECKPOINT_ID_KEY] = secrets.token_hex(8)
        if self.save_optimizer:  # first: a weights file is never newer than the state beside it
            optimizer = self.trainer.optimizer_
            optimizer = getattr(optimizer, "original_optimizer", optimizer)  # a private fit's Opacus wrapper
            atomic_write_bytes(optimizer_file(target),
                               optimizer_to_safetensors(optimizer, metadata[CHECKPOINT_ID_KEY]))
        else:
            optimizer_file(target).unlink(missing_ok=True)  # one left by an earlier save is not these weights'
        atomic_write_bytes(target, to_safetensors(snapshot(self.trainer.model), metadata))
        self.last_path = target
        if is_best:
            self.best_path = target

    def check_logged(self, logged: Sequence[str]) -> None:
        """Before training: the monitored value (with save_best_only) and the path's fields must be logged, in a
        format their values take ({loss:02d} does not)."""
        if self.save_best_only:
            super().check_logged(logged)
        self._fill_path(0, dict.fromkeys(logged, 0.0))

    def _fill_path(self, epoch: int, logs: Mapping[str, float]) -> str:
        try:
            return self.path.format(epoch=epoch + 1, **logs)
        except KeyError as exc:
            raise self._path_error(str(exc.args[0]) if exc.args else "?", list(logs)) from exc
        except (IndexError, ValueError, AttributeError, TypeError) as exc:
            raise ConfigError(
                f"ModelCheckpoint could not fill in its path {self.path!r} ({type(exc).__name__}: {exc}). Its fields "
                f"are the epoch (an integer) and the logged values (floats): {', '.join(['epoch', *logs])}, as in "
                "'ckpt/{epoch:02d}-{val_loss:.3f}.safetensors'") from exc

    def _path_error(self, field: str, logged: Sequence[str]) -> ConfigError:
        fields = ["epoch", *logged]
        hint = (" (this fit has no validation data: pass validation_data= or validation_split=)"
                if _without_validation(field, logged) else _did_you_mean(field, fields))
        return ConfigError(
            f"ModelCheckpoint's path {self.path!r} names the field {field!r}, which fit does not log"
            f"{hint}. Available fields: {', '.join(fields)}. Received: path={self.path!r}")


# What a user who names a checkpoint after another format expects to get, for the error that refuses it.
_OTHER_FORMATS = {".h5": "Keras' HDF5 format", ".hdf5": "Keras' HDF5 format", ".keras": "the Keras archive format",
                  ".pt": "a torch pickle", ".pth": "a torch pickle", ".ckpt": "a torch pickle",
                  ".bin": "a torch pickle", ".pkl": "a pickle", ".onnx": "an ONNX model", ".npz": "a numpy archive"}


def _check_checkpoint_path(path: str) -> None:
    """Refuse a checkpoint path that does not end in .safetensors: the file would not be in the format it names."""
    if path.lower().endswith(".safetensors"):
        return
    suffix = Path(path).suffix.lower()
    if "{" in suffix or "}" in suffix:  # "ckpt/{epoch}-{val_loss:.3f}": a format field, not a suffix
        suffix = ""
    if suffix in _OTHER_FORMATS:
        named = f" ('{suffix}' names {_OTHER_FORMATS[suffix]}, which ModelCheckpoint does not write)"
        suggested = path[: -len(suffix)] + ".safetensors"
    else:
        named = f" ('{suffix}' is no format it writes)" if suffix else " (no suffix)"
        suggested = path + ".safetensors"
    raise ConfigError(
        f"ModelCheckpoint writes safetensors files: its path must end in '.safetensors'. Received: path={path!r}"
        f"{named}. Use path={suggested!r}, and load the file with Trainer.load_weights(...).")


class ReduceLROnPlateau(_Monitor):
    """Multiply the learning rate by `factor` when `monitor` has not improved for `patience` epochs.

    Adds the current rate to the logs as 'lr'.
    """

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, *,
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0,
                 mode: Mode = "auto") -> None:
        super().__init__(monitor, mode, min_delta)
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"factor must be in (0, 1). Received: factor={factor!r}")
        self.factor = factor
        self.patience = patience
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.wait = 0
        self.cooldown_left = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self.trainer is not None
        groups = self.trainer.optimizer_.param_groups
        value = self.current(logs)
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if self.improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_left == 0:
            self.wait += 1
            if self.wait >= self.patience:
                for group in groups:
                    group["lr"] = max(float(group["lr"]) * self.factor, self.min_lr)
                self.wait, self.cooldown_left = 0, self.cooldown
        logs["lr"] = float(groups[0]["lr"])


class TensorBoard(Callback):
    """Write epoch scalars as TensorBoard event files: log_dir/train and log_dir/validation.

    Tags are `epoch_<name>` (e.g. epoch_loss), as Keras writes them, so training and validation
    curves overlay in TensorBoard. View with: tensorboard --logdir <log_dir>
    """

    records_epoch = True

    def __init__(self, log_dir: str | Path = "logs") -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._writers: dict[str, Any] = {}

    def on_train_begin(self, logs: dict[str, float]) -> None:
        require("tensorboard", "tensorboard", "The TensorBoard callback")
        from torch.utils.tensorboard import SummaryWriter

        self._writers = {split: SummaryWriter(log_dir=str(self.log_dir / split))
                         for split in ("train", "validation")}

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            self._writers[split].add_scalar(f"epoch_{name}", float(value), global_step=epoch)
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class CSVLogger(Callback):
    """Append one row per epoch to a CSV file: epoch, then each logged value (NA where missing)."""

    records_epoch = True

    def __init__(self, path: str | Path, *, separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.separator = separator
        self.append = append
        self._file: TextIO | None = None
        self._keys: list[str] | None = None

    def on_train_begin(self, logs: dict[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_rows = self.append and self.path.exists() and self.path.stat().st_size > 0
        if has_rows:
            with open(self.path, encoding="utf-8") as fh:
                self._keys = fh.readline().strip().split(self.separator)[1:]
        else:
            self._keys = None
        self._file = open(self.path, "a" if self.append else "w", encoding="utf-8", newline="")  # noqa: SIM115

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        assert self._file is not None
        if self._keys is None:
            self._keys = list(logs)
            self._file.write(self.separator.join(["epoch", *self._keys]) + "\n")
        cells = [str(epoch)] + [repr(float(logs[k])) if k in logs else "NA" for k in self._keys]
        self._file.write(self.separator.join(cells) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
