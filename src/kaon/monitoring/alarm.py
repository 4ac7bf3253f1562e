"""An alarm with hysteresis: a pure function of (state, statistic, thresholds).

It fires after `on_after` consecutive evaluations over `threshold` and resolves after `off_after`
consecutive evaluations under `clear_threshold` (below `threshold`), so one noisy window neither
raises nor clears it::

    >>> s, event = AlarmState(), None
    >>> for value in (5, 5):
    ...     s, event = update_alarm(s, value, threshold=4, clear_threshold=2, on_after=2, off_after=2)
    >>> s.firing, event
    (True, 'fired')
    >>> s, event = update_alarm(s, 3, threshold=4, clear_threshold=2, on_after=2, off_after=2)
    >>> s.firing, event   # between the thresholds: still firing
    (True, None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Event = Literal["fired", "resolved"]


@dataclass(frozen=True)
class AlarmState:
    firing: bool = False
    over: int = 0  # consecutive evaluations over the threshold
    under: int = 0  # consecutive evaluations under the clear threshold


def update_alarm(state: AlarmState, statistic: float, *, threshold: float, clear_threshold: float,
                 on_after: int = 2, off_after: int = 3) -> tuple[AlarmState, Event | None]:
    over = state.over + 1 if statistic > threshold else 0
    under = state.under + 1 if statistic < clear_threshold else 0
    if not state.firing and over >= on_after:
        return AlarmState(True, over, under), "fired"
    if state.firing and under >= off_after:
        return AlarmState(False, over, under), "resolved"
    return AlarmState(state.firing, over, under), None
