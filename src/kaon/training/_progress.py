"""What fit prints: a live Rich bar on a terminal, one line per epoch otherwise, or nothing."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

from kaon.training.callbacks import Callback

_REFRESH_S = 0.2  # how often the bar reads the running metrics (each read waits for the device)


def format_logs(logs: Mapping[str, Any]) -> str:
    return "  ".join(f"{key}={float(value):.4f}" for key, value in logs.items())


class EpochLines(Callback):
    """One line per epoch: for logs, CI and notebooks that are not terminals."""

    records_epoch = True  # prints the logs as the other callbacks left them ('lr')

    def __init__(self, *, epochs: int, steps: int | None) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        print(f"epoch {epoch + 1}/{self.epochs}  {elapsed:.2f}s  {format_logs(logs)}", flush=True)


class ProgressBar(EpochLines):
    """A Rich bar per epoch with the running loss and metrics, refreshed a few times a second."""

    def __init__(self, *, epochs: int, steps: int | None) -> None:
        super().__init__(epochs=epochs, steps=steps)
        self._bar: Any = None
        self._task: Any = None
        self._next_refresh = 0.0
        self._done = 0

    def on_train_begin(self, logs: dict[str, float]) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self._bar = Progress(
            TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, min_width=11)),
            BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"), refresh_per_second=5,
        )
        self._bar.start()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float]) -> None:
        super().on_epoch_begin(epoch, logs)
        self._task = self._bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps, metrics="")
        self._next_refresh, self._done = 0.0, 0

    def on_train_batch_end(self, step: int, logs: Mapping[str, Any]) -> None:
        self._done = step + 1
        now = time.perf_counter()
        if now >= self._next_refresh:
            self._next_refresh = now + _REFRESH_S
            self._bar.update(self._task, completed=step + 1, metrics=format_logs(logs))

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        elapsed = time.perf_counter() - self._epoch_start
        self._bar.update(self._task, completed=self._done, total=self.steps or self._done,
                         metrics=f"{elapsed:.2f}s  {format_logs(logs)}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def make_progress(verbose: bool | None, *, epochs: int, steps: int | None) -> Callback | None:
    """verbose=None or True: a bar on a terminal, else a line per epoch; False: nothing."""
    if verbose is False:
        return None
    if sys.stdout.isatty():
        return ProgressBar(epochs=epochs, steps=steps)
    return EpochLines(epochs=epochs, steps=steps)
