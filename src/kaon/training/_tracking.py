"""Record a fit as a registry Run. The registry is optional equipment: if it fails, training goes on."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kaon.training.callbacks import higher_is_better
from kaon.training.history import History

if TYPE_CHECKING:
    from kaon.training.privacy import PrivateTraining
    from kaon.training.trainer import Trainer

_FLUSH_EVERY_S = 1.0  # epoch metrics are written in batches at most this often, and at the end


def _registry_class() -> Any:
    """Imported when a fit starts, so a broken registry cannot break `import kaon.training`."""
    from kaon.registry import Registry

    return Registry


class RunTracker:
    def __init__(self, name: str, params: dict[str, Any]) -> None:
        self.registry: Any = None
        self.run_id: Any = None
        self._pending: list[tuple[int, dict[str, float]]] = []
        self._last_flush = time.monotonic()
        try:
            self.registry = _registry_class()()
            self.run_id = self.registry.create_run(name, params=params, kind="train").id
        except Exception as exc:  # noqa: BLE001 - the registry must not stop training
            self._give_up("start the run", exc)

    @property
    def active(self) -> bool:
        return self.registry is not None and self.run_id is not None

    def _give_up(self, action: str, exc: BaseException) -> None:
        warnings.warn(
            f"kaon could not {action} in the registry ({type(exc).__name__}: {exc}); training goes on "
            "without tracking. Check KAON_HOME / KAON_DATABASE_URL, or pass track=False.",
            RuntimeWarning, stacklevel=4,
        )
        self._close()

    def log(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.active:
            return
        self._pending.append((epoch, dict(logs)))
        if time.monotonic() - self._last_flush >= _FLUSH_EVERY_S:
            self.flush()

    def flush(self) -> None:
        try:
            for epoch, logs in self._pending:
                self.registry.log_metrics(self.run_id, logs, step=epoch)
            self._pending.clear()
            self._last_flush = time.monotonic()
        except Exception as exc:  # noqa: BLE001
            self._give_up("log metrics", exc)

    def finish(self, history: History, summary: dict[str, Any], *, error: BaseException | None) -> None:
        """Write the run's status and summary, then add its curves. The status comes first, with Ctrl-C held off
        for the few milliseconds it takes: the curves take a second or more (matplotlib's import), and a second
        Ctrl-C there must not leave the run 'running' (read later as crashed) without its summary."""
        if not self.active:
            return
        try:
            with _ctrl_c_held() as pressed:
                self.flush()
                if self.active:
                    try:
                        self.registry.finish_run(self.run_id, status=run_status(error), summary=summary)
                    except Exception as exc:  # noqa: BLE001
                        self._give_up("finish the run", exc)
            if pressed:
                if isinstance(error, KeyboardInterrupt):
                    return  # Ctrl-C pressed again while the run was being finished: skip the curves, stop now
                raise KeyboardInterrupt
            if self.active and history.history:
                try:
                    self._add_curves(history)
                except KeyboardInterrupt:
                    if not isinstance(error, KeyboardInterrupt):
                        raise
                    # a second Ctrl-C while plotting: the run is already marked interrupted; stop without curves
                except Exception as exc:  # noqa: BLE001 - the curves are extra; the run is recorded
                    warnings.warn(f"kaon could not add the training curves to run {self.run_id} "
                                  f"({type(exc).__name__}: {exc}); the run and its metrics are recorded.",
                                  RuntimeWarning, stacklevel=3)
        finally:
            self._close()

    def _add_curves(self, history: History) -> None:
        from kaon.training.plots import plot_history

        with tempfile.TemporaryDirectory(prefix="kaon-curves-") as folder:
            curves = plot_history(history, Path(folder) / "curves.png")
            self.registry.add_run_artifact(self.run_id, "curves.png", curves)

    def _close(self) -> None:
        if self.registry is not None:
            try:
                self.registry.close()
            except Exception:  # noqa: BLE001, S110
                pass
        self.registry = None


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[list[int]]:
    """Ctrl-C (SIGINT) recorded instead of raised inside the block; the list says whether it was pressed. Only in
    the main thread, and only over Python's own handler (a handler someone installed is left alone)."""
    pressed: list[int] = []
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield pressed
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(signum))
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def run_params(trainer: Trainer, *, epochs: int, batch_size: int, num_samples: int | None) -> dict[str, Any]:
    """What a fit was asked to do, as recorded with its Run."""
    from kaon.training import _catalog
    from kaon.training._weights import parameters

    return {
        "model_class": type(trainer.model).__name__,
        "num_params": sum(p.numel() for p in parameters(trainer.model)),
        "optimizer": _catalog.optimizer_name(trainer.optimizer),
        "lr": trainer.lr,
        "loss": _catalog.loss_name(trainer.loss),
        "metrics": [m.name for m in trainer.metrics_],
        "epochs": epochs,
        "batch_size": batch_size,
        "num_samples": num_samples,
        "seed": trainer.seed,
        "precision": trainer.precision,
        "device": str(trainer.device_),
        "privacy": asdict(trainer.privacy) if trainer.privacy is not None else None,
        "adversarial": _describe(trainer.adversarial),
    }


def _describe(adversary: Any) -> dict[str, Any] | None:
    if adversary is None:
        return None
    fields = asdict(adversary) if is_dataclass(adversary) and not isinstance(adversary, type) else {}
    return {"type": type(adversary).__name__, **fields}


def run_status(error: BaseException | None) -> Literal["completed", "failed", "interrupted"]:
    """How a fit ended, for the registry: Ctrl-C (KeyboardInterrupt) is 'interrupted', not 'failed'."""
    if error is None:
        return "completed"
    return "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"


def run_summary(history: History, *, stopped_early: bool, private: PrivateTraining | None,
                duration_s: float, error: BaseException | None, problems: list[str]) -> dict[str, Any]:
    """How a fit ended: the last value of each curve, the best validation values, epsilon, the error."""
    summary: dict[str, Any] = {
        "epochs_completed": len(history.epoch),
        "stopped_early": bool(stopped_early),
        "duration_s": round(duration_s, 3),
    }
    summary.update({key: values[-1] for key, values in history.history.items() if values})
    for key, values in history.history.items():
        if key.startswith("val_") and values:
            summary[f"best_{key}"] = max(values) if higher_is_better(key) else min(values)
    if private is not None:
        summary.update(epsilon=history.epsilon, delta=private.config.target_delta,
                       noise_multiplier=private.noise_multiplier)
    if error is not None:
        summary["error"] = f"{type(error).__name__}: {error}"
    if problems:
        summary["callback_close_errors"] = problems
    return summary
