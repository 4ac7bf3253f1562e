"""The running loss and metrics of one pass over the data, kept as tensors until someone reads them."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

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


ADVERSARIAL_PREFIX = "adv_"  # adversarial training's figures on the attacked copies: adv_loss, adv_accuracy


class LiveLogs(Mapping[str, torch.Tensor]):
    """A read-only view, {'loss': ..., metric name: ...}, computed when a value is read.

    With `adversarial` (adversarial training: the loss and metrics of the attacked copies, kept apart from the clean
    batch's) it adds 'adv_loss' and 'adv_<metric>', once a step has recorded them: a training step, or a validation
    step in fit (read as val_adv_*); evaluate(), which attacks nothing, logs only the clean names.
    """

    def __init__(self, loss: LossMean, metrics: Sequence[Metric],
                 adversarial: tuple[LossMean, Sequence[Metric]] | None = None) -> None:
        self._values: dict[str, Callable[[], torch.Tensor]] = {"loss": loss.result}
        self._values.update({metric.name: metric.result for metric in metrics})
        self._clean_names = list(self._values)
        self._adversarial_loss: LossMean | None = None
        if adversarial is not None:
            self._adversarial_loss, adversarial_metrics = adversarial
            self._values[f"{ADVERSARIAL_PREFIX}loss"] = self._adversarial_loss.result
            self._values.update({f"{ADVERSARIAL_PREFIX}{metric.name}": metric.result
                                 for metric in adversarial_metrics})

    def _names(self) -> list[str]:
        if self._adversarial_loss is not None and not self._adversarial_loss.losses:
            return self._clean_names
        return list(self._values)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._values[key]()

    def __iter__(self) -> Iterator[str]:
        yield from self._names()

    def __len__(self) -> int:
        return len(self._names())
