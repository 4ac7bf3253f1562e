"""Forecast a request rate from its recent history: seasonal Holt-Winters with a damped trend.

The predictive policy needs the rate `cold_start_s` ahead, so that replicas are ready when the load
arrives rather than `cold_start_s` after it. Everything here is a pure function of its inputs: a
`ForecasterState` goes in with one observation and a new state comes out, so the same code drives
`kaon scale simulate` and a live deployment, and the tests replay exact numbers.

    >>> state = ForecasterState.start(step_s=1.0, season_s=4.0)
    >>> for rate in [1, 1, 9, 1] * 3:
    ...     state = observe(state, rate)
    >>> round(forecast(state, 3)[2])   # two periods seen: the next burst is three steps ahead
    9

Season detection (`season_s=None`): every `detect_every` steps the autocorrelation of the history is
searched for its highest peak; a period is adopted once the history holds two of it and the peak's
correlation exceeds `min_correlation`. Until then the forecaster is Holt's damped linear method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from kaon.errors import ConfigError

# The forecaster keeps its period while that period's autocorrelation is within this ratio of
# a newly found one's (every switch forgets the learnt seasonal shape).
_KEEP_RATIO = 0.9
# A peak this close to the highest, at a shorter lag, is the period (the highest may be a multiple).
_MULTIPLE_RATIO = 0.9
# A period a step or two away replaces the current one when it correlates better by this much.
_REFINE_MARGIN = 0.01
# How many lags on each side of a peak the parabola that locates its top is fitted over.
_FIT_HALF_WIDTH = 4


@dataclass(frozen=True)
class ForecasterState:
    """Smoothed level, damped trend and one seasonal offset per step of the period."""

    step_s: float
    alpha: float = 0.5  # level smoothing
    beta: float = 0.05  # trend smoothing
    gamma: float = 0.6  # seasonal smoothing: high, so that a burst's shape is learnt in one or two periods
    phi: float = 0.8  # trend damping: a burst's rising edge must not extrapolate to infinity
    season_steps: int | None = None  # period in steps; None: not known (yet)
    detect_season: bool = True
    level: float | None = None
    trend: float = 0.0
    seasonal: tuple[float, ...] = ()
    steps_seen: int = 0  # observations since the seasonal model started
    history: tuple[float, ...] = ()  # recent observations, oldest first, for initialisation and detection
    max_history: int = 3600
    detect_every: int = 30
    min_correlation: float = 0.5

    @classmethod
    def start(cls, step_s: float = 1.0, season_s: float | None = None, *, detect_season: bool = True,
              max_history_s: float = 3600.0, **smoothing: float) -> ForecasterState:
        """A fresh forecaster; `season_s` fixes the period, None lets it be detected from the history."""
        if not step_s > 0:
            raise ConfigError(f"step_s must be > 0 seconds. Received: step_s={step_s!r}")
        season_steps = None
        if season_s is not None:
            season_steps = int(round(season_s / step_s))
            if season_steps < 2:
                raise ConfigError(
                    f"season_s must span at least two steps of {step_s:g} s. Received: season_s={season_s!r}. "
                    "Use a longer season or a shorter step, or leave season_s unset to detect it."
                )
        for name, value in smoothing.items():
            if name not in ("alpha", "beta", "gamma", "phi") or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be alpha, beta, gamma or phi, in [0, 1]. Received: {name}={value!r}")
        max_history = max(int(max_history_s / step_s), 2 * (season_steps or 2))
        state = cls(step_s=step_s, season_steps=season_steps, detect_season=detect_season and season_steps is None,
                    max_history=max_history)
        return replace(state, **smoothing)  # type: ignore[arg-type]

    @property
    def season_s(self) -> float | None:
        return None if self.season_steps is None else self.season_steps * self.step_s


def observe(state: ForecasterState, rate: float) -> ForecasterState:
    """The state after one more observed rate (requests/s over the last step)."""
    y = max(float(rate), 0.0)
    history = (*state.history, y)[-state.max_history:]
    state = replace(state, history=history)
    if state.detect_season and len(history) % state.detect_every == 0:
        found = detect_season(history, min_correlation=state.min_correlation)
        if found is not None and found != state.season_steps and _clearly_better(history, found, state.season_steps):
            return _initialise(replace(state, season_steps=found))
    if state.level is None:
        if state.season_steps is None or len(history) >= state.season_steps:
            return _initialise(state)
        return state
    m = state.season_steps
    s = state.seasonal[state.steps_seen % m] if m else 0.0
    level = state.alpha * (y - s) + (1 - state.alpha) * (state.level + state.phi * state.trend)
    trend = state.beta * (level - state.level) + (1 - state.beta) * state.phi * state.trend
    seasonal = state.seasonal
    if m:
        index = state.steps_seen % m
        new_s = state.gamma * (y - level) + (1 - state.gamma) * s
        seasonal = (*seasonal[:index], new_s, *seasonal[index + 1:])
    return replace(state, level=level, trend=trend, seasonal=seasonal, steps_seen=state.steps_seen + 1)


def forecast(state: ForecasterState, num_steps: int) -> list[float]:
    """The predicted rate for each of the next `num_steps` steps (never below zero)."""
    if num_steps <= 0:
        return []
    if state.level is None:
        last = state.history[-1] if state.history else 0.0
        return [last] * num_steps
    m = state.season_steps
    out = []
    damped = 0.0
    for h in range(1, num_steps + 1):
        damped += state.phi ** h
        s = state.seasonal[(state.steps_seen + h - 1) % m] if m else 0.0
        out.append(max(state.level + damped * state.trend + s, 0.0))
    return out


def detect_season(history: tuple[float, ...] | list[float], *, min_period: int = 4,
                  min_correlation: float = 0.5) -> int | None:
    """The period (in steps) with the highest autocorrelation peak, when the history holds two of it.

    Returns None for a history without a clear period (white noise, a trend, a single burst).
    """
    y = np.asarray(history, dtype=np.float64)
    n = len(y)
    if n < 2 * min_period:
        return None
    y = y - y.mean()
    denom = float(np.dot(y, y))
    if denom <= 1e-12:
        return None
    # Autocorrelation for every lag via the FFT: O(n log n) (n is at most an hour of steps).
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(y, size)
    # Unbiased: lag k sums n - k products, so scale by n / (n - k); a period seen twice reads ~1, not ~0.5.
    lags = np.arange(n // 2 + 1)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[: n // 2 + 1] / denom * n / (n - lags)
    # Peaks: higher than both neighbours and than `min_correlation`. Multiples of the true period
    # peak as high (a burst every 120 s also repeats every 240 s), so the shortest period whose peak
    # is close to the highest wins.
    peaks = [lag for lag in range(min_period, n // 2) if acf[lag] >= min_correlation
             and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]]
    if not peaks:
        return None
    highest = max(acf[lag] for lag in peaks)
    lag = min(lag for lag in peaks if acf[lag] >= _MULTIPLE_RATIO * highest)
    # A jittered burst flattens the top of its peak over a few lags and noise picks one of them: the
    # vertex of a parabola fitted over the neighbouring lags measures the period better.
    width = min(_FIT_HALF_WIDTH, lag - min_period, len(acf) - 1 - lag)
    if width >= 2:
        lags = np.arange(lag - width, lag + width + 1)
        a, b, _ = np.polyfit(lags - lag, acf[lags], 2)
        if a < 0 and abs(-b / (2 * a)) <= width:
            return int(round(lag - b / (2 * a)))
    return lag


def _clearly_better(history: tuple[float, ...], found: int, current: int | None) -> bool:
    """Whether to switch from the current period to `found`. A step or two away is a refinement (a longer
    history measures the period better; a period one step off drifts the forecast a step per period):
    taken when it correlates better. Farther away (a multiple, another pattern) only when the current
    period clearly stopped fitting."""
    if current is None or 2 * current > len(history):
        return True
    if abs(found - current) <= max(2, round(0.02 * current)):
        return _autocorrelation(history, found) > _autocorrelation(history, current) + _REFINE_MARGIN
    return _autocorrelation(history, current) < _KEEP_RATIO * _autocorrelation(history, found)


def _autocorrelation(history: tuple[float, ...], lag: int) -> float:
    y = np.asarray(history, dtype=np.float64)
    y = y - y.mean()
    denom = float(np.dot(y, y))
    if denom <= 1e-12 or not 0 < lag < len(y):
        return 0.0
    return float(np.dot(y[:-lag], y[lag:]) / denom * len(y) / (len(y) - lag))


def _initialise(state: ForecasterState) -> ForecasterState:
    """Start the level, trend and seasonal offsets from the history (the classic first-period rule)."""
    history = state.history
    m = state.season_steps
    if not history:
        return state
    if not m or len(history) < m:
        return replace(state, level=history[-1], trend=0.0, seasonal=(), steps_seen=0, season_steps=None)
    periods = len(history) // m
    recent = np.asarray(history[-periods * m:], dtype=np.float64).reshape(periods, m)
    means = recent.mean(axis=1)
    seasonal = tuple(float(v) for v in (recent - means[:, None]).mean(axis=0))
    trend = float((means[-1] - means[0]) / (m * (periods - 1))) if periods > 1 else 0.0
    # The level at the end of the history; the next observation is the first of a new period.
    level = float(means[-1] + trend * (m - 1) / 2.0)
    if not math.isfinite(level):
        level = 0.0
    return replace(state, level=level, trend=trend, seasonal=seasonal, steps_seen=0)
