"""Holt-Winters forecasting and season detection, on exact series."""

from __future__ import annotations

import numpy as np
import pytest

from kaon.cluster.forecast import ForecasterState, detect_season, forecast, observe
from kaon.errors import ConfigError


def feed(state, values):
    for value in values:
        state = observe(state, value)
    return state


def test_a_known_season_forecasts_the_next_burst_in_place():
    period = [10.0] * 8 + [100.0] * 2  # a burst of 2 steps every 10
    state = feed(ForecasterState.start(step_s=1.0, season_s=10.0), period * 4)
    ahead = forecast(state, 10)
    assert ahead[8] == pytest.approx(100.0, abs=1.0) and ahead[9] == pytest.approx(100.0, abs=1.0)
    assert max(ahead[:8]) == pytest.approx(10.0, abs=1.0)


def test_season_is_detected_from_history_without_being_told():
    rng = np.random.default_rng(0)
    series = [50.0 if (t % 30) >= 25 else 5.0 for t in range(150)]
    series = [v * rng.uniform(0.9, 1.1) for v in series]
    state = feed(ForecasterState.start(step_s=1.0), series)
    assert state.season_steps == 30
    assert state.season_s == 30.0
    ahead = forecast(state, 30)
    burst_steps = [h for h, v in enumerate(ahead) if v > 25]
    assert burst_steps == list(range(25, 30))  # t = 150..179: the burst is at t % 30 >= 25


def test_detect_season_on_noise_or_trend_is_none():
    rng = np.random.default_rng(1)
    assert detect_season(list(rng.normal(10, 1, 300))) is None
    assert detect_season([float(t) for t in range(300)]) is None
    assert detect_season([3.0] * 300) is None
    assert detect_season([1.0, 2.0]) is None


def test_detect_season_prefers_the_period_over_its_multiples():
    series = [float(np.sin(2 * np.pi * t / 12)) for t in range(240)]
    assert detect_season(series) == 12


def test_without_season_it_follows_level_and_damped_trend():
    state = feed(ForecasterState.start(step_s=1.0, detect_season=False), [float(t) for t in range(40)])
    ahead = forecast(state, 50)
    assert ahead[0] > 38  # it keeps rising...
    assert ahead[-1] - ahead[-2] < 0.01  # ...but the damped trend flattens out instead of running away


def test_forecast_is_never_negative_and_before_any_data_is_the_last_value():
    state = ForecasterState.start(step_s=1.0, season_s=4.0)
    assert forecast(state, 3) == [0.0, 0.0, 0.0]
    state = observe(state, 7.0)
    assert forecast(state, 2) == [7.0, 7.0]  # fewer than one season seen: persistence
    state = feed(state, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert min(forecast(state, 8)) >= 0.0
    assert forecast(state, 0) == []


def test_observe_is_pure():
    state = ForecasterState.start(step_s=1.0, season_s=3.0)
    a = feed(state, [1.0, 2.0, 3.0, 1.0])
    b = feed(state, [1.0, 2.0, 3.0, 1.0])
    assert a == b and state.history == ()


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="season_s must span at least two steps"):
        ForecasterState.start(step_s=1.0, season_s=1.0)
    with pytest.raises(ConfigError, match="step_s must be > 0"):
        ForecasterState.start(step_s=0.0)
    with pytest.raises(ConfigError, match="alpha, beta, gamma or phi"):
        ForecasterState.start(step_s=1.0, alpha=2.0)
