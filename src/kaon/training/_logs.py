"""The running loss and metrics of one pass over the data, kept as tensors until someone reads them."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch

from kaon.training.metrics import Metric


class LossMean:
    """The sample-weighted mean of per-batch losses; keeps each batch's loss to find a NaN's step."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self._checked = 0

    def update(self, loss: torch.Tensor, size: int) -> None:
        self.losses.append(loss)
        self.sizes.append(size)

    def result(self) -> torch.Tensor:
        if not self.losses:
            return torch.tensor(float("nan"))
        stacked = torch.stack(self.losses).float()
        weights = torch.tensor(self.sizes, dtype=stacked.dtype, device=stacked.device)
        return (stacked * weights).sum() / weights.sum()

    def first_non_finite(self) -> int | None:
        """The index of the first batch whose loss is NaN or inf among those not checked yet."""
        if self._checked >= len(self.losses):
            return None
        recent = torch.stack(self.losses[self._checked:])
        bad = (~torch.isfinite(recent)).nonzero()
        start, self._checked = self._checked, len(self.losses)
        return None if bad.numel() == 0 else start + int(bad[0, 0])

    def reset(self) -> None:
        self.losses, self.sizes, self._checked = [], [], 0


class LiveLogs(Mapping[str, torch.Tensor]):
    """A read-only view, {'loss': ..., metric name: ...}, computed when a value is read."""

    def __init__(self, loss: LossMean, metrics: Sequence[Metric]) -> None:
        self._loss = loss
        self._metrics = {metric.name: metric for metric in metrics}

    def __getitem__(self, key: str) -> torch.Tensor:
        if key == "loss":
            return self._loss.result()
        return self._metrics[key].result()

    def __iter__(self) -> Iterator[str]:
        yield "loss"
        yield from self._metrics

    def __len__(self) -> int:
        return 1 + len(self._metrics)
