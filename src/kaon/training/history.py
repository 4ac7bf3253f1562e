"""History: what fit returns, one value per epoch for the loss and each metric."""

from __future__ import annotations

from typing import Any

from kaon.training.callbacks import Callback


class History(Callback):
    """Per-epoch logs of one fit: `history["val_loss"][-1]` is the last validation loss.

    `epsilon` is the privacy budget spent (with `privacy=`), `run_id` the registry run (with
    `track=True`), `params` what fit was called with.

        >>> h = History()
        >>> h.on_epoch_end(0, {"loss": 0.5})
        >>> h.history
        {'loss': [0.5]}
    """

    records_epoch = True

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.epsilon: float | None = None
        self.run_id: int | str | None = None
        self.params: dict[str, Any] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))

    def __repr__(self) -> str:
        last = {k: round(v[-1], 4) for k, v in self.history.items() if v}
        return f"History(epochs={len(self.epoch)}, last={last}, run_id={self.run_id})"
