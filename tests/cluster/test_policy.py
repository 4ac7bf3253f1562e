"""Autoscaling policies: numbers in, a replica count and a reason out; the clock is an argument."""

from __future__ import annotations

import pytest

from kaon.cluster.policy import (
    Forecast,
    Load,
    ScalingConfig,
    ScalingState,
    decide_replicas,
    fixed,
    predictive,
    reactive,
)
from kaon.cluster.schedule import ScheduleRule
from kaon.errors import ConfigError

MONDAY_9AM_UTC = 1_700_470_800.0  # 2023-11-20 09:00 UTC, a Monday


def run(policy, config, loads, start_replicas, *, forecast=Forecast(), step_s=1.0, t0=0.0):
    """Feed one Load per step; return the replica count after each decision and the last state."""
    state = ScalingState(replicas=start_replicas)
    counts = []
    for i, load in enumerate(loads):
        count, state = policy(config, load, forecast, state, t0 + i * step_s)
        counts.append(count)
    return counts, state


def test_reactive_scales_up_to_in_flight_over_target_at_once_without_delay():
    config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=4, upscale_delay_s=0)
    count, state = reactive(config, Load(in_flight=18, ready_replicas=2), Forecast(), ScalingState(2), now=0.0)
    assert count == 5  # ceil(18 / 4)
    assert state.replicas == 5
    assert "18 requests in flight" in state.reason and "2 -> 5" in state.reason


def test_the_reason_rounds_a_smoothed_load():
    """The router's in-flight count is smoothed: `kaon status` said '0.628729 requests in flight'."""
    config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=2, upscale_delay_s=0)
    _, state = reactive(config, Load(in_flight=0.628729, ready_replicas=1), Forecast(), ScalingState(1), now=0.0)
    assert "0.629 requests in flight" in state.reason


def test_reactive_waits_upscale_delay_before_scaling_up():
    config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=4, upscale_delay_s=3)
    counts, state = run(reactive, config, [Load(in_flight=12)] * 5, start_replicas=1)
    # wanted 3 from t=0; the delay of 3 s runs out at t=3
    assert counts == [1, 1, 1, 3, 3]


def test_reactive_upscale_streak_restarts_when_load_dips():
    config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=4, upscale_delay_s=2)
    loads = [Load(in_flight=12), Load(in_flight=12), Load(in_flight=4), Load(in_flight=12), Load(in_flight=12),
             Load(in_flight=12)]
    counts, _ = run(reactive, config, loads, start_replicas=1)
    assert counts == [1, 1, 1, 1, 1, 3]


def test_reactive_scales_down_after_delay_to_the_highest_count_wanted_meanwhile():
    config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=4, downscale_delay_s=3)
    # at 6 replicas: wants 1, then 3, then 2, then 1 -> after 3 s it goes to 3 (the peak), not 1
    loads = [Load(in_flight=2), Load(in_flight=10), Load(in_flight=6), Load(in_flight=1), Load(in_flight=1)]
    counts, state = run(reactive, config, loads, start_replicas=6)
    assert counts == [6, 6, 6, 3, 3]
    assert "wants 1, scaling down in 3.0 s" in state.reason  # a new delay starts from 3


def test_reactive_holds_inside_the_tolerance_band():
    config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=4, tolerance=0.2, downscale_delay_s=0)
    # 4 replicas x 4 = 16; 18 and 13.5 are within 20%: no change; 20.5 is not
    counts, _ = run(reactive, config, [Load(in_flight=18), Load(in_flight=13.5), Load(in_flight=20.5)], 4)
    assert counts == [4, 4, 6]


def test_reactive_respects_min_and_max_replicas():
    config = ScalingConfig(min_replicas=2, max_replicas=3, target_in_flight=1, downscale_delay_s=0)
    assert reactive(config, Load(in_flight=100), Forecast(), ScalingState(2), 0.0)[0] == 3
    assert reactive(config, Load(in_flight=0), Forecast(), ScalingState(3), 0.0)[0] == 2


def test_scale_to_zero_after_idle_timeout_and_back_to_one_when_a_request_waits():
    config = ScalingConfig(min_replicas=0, max_replicas=4, target_in_flight=4, idle_timeout_s=10,
                           downscale_delay_s=0)
    state = ScalingState(replicas=1)
    count, state = reactive(config, Load(in_flight=1, request_rate=1), Forecast(), state, now=100.0)
    assert count == 1
    count, state = reactive(config, Load(), Forecast(), state, now=105.0)
    assert count == 1 and "idle for 5 s of 10 s" in state.reason
    count, state = reactive(config, Load(), Forecast(), state, now=110.0)
    assert count == 0 and "scaled to zero" in state.reason
    count, state = reactive(config, Load(), Forecast(), state, now=500.0)
    assert count == 0
    # a request waits at the router: one replica at once, whatever the upscale delay
    slow_up = ScalingConfig(min_replicas=0, max_replicas=4, upscale_delay_s=30, idle_timeout_s=10)
    count, state = reactive(slow_up, Load(in_flight=1), Forecast(), state, now=501.0)
    assert count == 1 and "cold start" in state.reason


def test_never_zero_when_min_replicas_is_positive():
    config = ScalingConfig(min_replicas=1, max_replicas=4, idle_timeout_s=0, downscale_delay_s=0)
    assert reactive(config, Load(), Forecast(), ScalingState(3), 1e6)[0] == 1


def test_schedule_floor_holds_replicas_during_matching_minutes_only():
    rule = ScheduleRule(cron="* 9-16 * * 1-5", min_replicas=3)
    config = ScalingConfig(min_replicas=1, max_replicas=8, schedule=(rule,), downscale_delay_s=0)
    count, state = reactive(config, Load(), Forecast(), ScalingState(1), MONDAY_9AM_UTC)
    assert count == 3 and "schedule floor 3" in state.reason
    eight_hours_later = MONDAY_9AM_UTC + 8 * 3600  # 17:00: outside 9-16
    assert reactive(config, Load(), Forecast(), ScalingState(3), eight_hours_later)[0] == 1
    saturday = MONDAY_9AM_UTC + 5 * 86400
    assert reactive(config, Load(), Forecast(), ScalingState(3), saturday)[0] == 1


def test_schedule_floor_prevents_scale_to_zero():
    rule = ScheduleRule(cron="0-29 * * * *", min_replicas=1)
    config = ScalingConfig(min_replicas=0, max_replicas=4, schedule=(rule,), idle_timeout_s=0)
    assert reactive(config, Load(), Forecast(), ScalingState(1), MONDAY_9AM_UTC)[0] == 1
    assert reactive(config, Load(), Forecast(), ScalingState(1), MONDAY_9AM_UTC + 30 * 60)[0] == 0


def test_predictive_adds_replicas_ahead_of_the_forecast_by_the_cold_start():
    config = ScalingConfig(min_replicas=1, max_replicas=10, policy="predictive", capacity_rps=20,
                           cold_start_s=3, upscale_delay_s=10)
    # 100 req/s expected 3 s from now (steps of 1 s): within cold start + two steps -> 5 replicas now
    ahead = Forecast(step_s=1.0, rates=(10.0, 10.0, 100.0, 100.0, 10.0))
    count, state = predictive(config, Load(in_flight=1, request_rate=10), ahead, ScalingState(1), now=0.0)
    assert count == 5, state.reason
    assert "forecast 100.0 req/s within 5.0 s" in state.reason
    # the same burst 6 s away is beyond the look-ahead: not yet
    later = Forecast(step_s=1.0, rates=(10.0,) * 5 + (100.0,))
    assert predictive(config, Load(in_flight=1, request_rate=10), later, ScalingState(1), 0.0)[0] == 1


def test_predictive_lead_time_is_the_measured_cold_start_when_not_configured():
    config = ScalingConfig(min_replicas=1, max_replicas=10, policy="predictive", capacity_rps=20)
    ahead = Forecast(step_s=1.0, rates=(0.0,) * 5 + (100.0,))  # 6 s ahead
    slow = Load(cold_start_s=5.5)
    fast = Load(cold_start_s=1.0)
    assert predictive(config, slow, ahead, ScalingState(1), 0.0)[0] == 5
    assert predictive(config, fast, ahead, ScalingState(1), 0.0)[0] == 1


def test_predictive_never_below_reactive():
    config = ScalingConfig(min_replicas=1, max_replicas=10, policy="predictive", capacity_rps=100)
    ahead = Forecast(step_s=1.0, rates=(1.0,) * 5)
    assert predictive(config, Load(in_flight=30), ahead, ScalingState(2), 0.0)[0] == 8  # ceil(30 / 4)


def test_predictive_learns_capacity_from_latency_with_littles_law():
    config = ScalingConfig(min_replicas=1, max_replicas=10, policy="predictive", target_in_flight=4,
                           cold_start_s=1)
    # 4 in flight per replica held for 0.1 s each: 40 req/s per replica
    _, state = predictive(config, Load(latency_s=0.1, ready_replicas=1), Forecast(), ScalingState(1), 0.0)
    assert state.capacity_rps == pytest.approx(40.0)
    count, _ = predictive(config, Load(), Forecast(1.0, (200.0,)), state, 1.0)
    assert count == 5  # 200 / 40


def test_predictive_pre_warms_from_zero_before_a_forecast_burst_and_reactive_does_not():
    base = dict(min_replicas=0, max_replicas=4, idle_timeout_s=60, cold_start_s=2, capacity_rps=50)
    ahead = Forecast(step_s=1.0, rates=(0.0, 5.0))
    count, state = predictive(ScalingConfig(policy="predictive", **base), Load(), ahead, ScalingState(0), 0.0)
    assert count == 1 and "pre-warm" in state.reason
    assert reactive(ScalingConfig(**base), Load(), ahead, ScalingState(0), 0.0)[0] == 0
    # nothing forecast: it stays at zero
    assert predictive(ScalingConfig(policy="predictive", **base), Load(), Forecast(), ScalingState(0), 0.0)[0] == 0


def test_fixed_policy_ignores_load():
    config = ScalingConfig(min_replicas=1, max_replicas=4, policy="fixed", replicas=3)
    count, state = fixed(config, Load(in_flight=1000), Forecast(), ScalingState(1), 0.0)
    assert count == 3 and "fixed at 3" in state.reason
    assert decide_replicas(config, Load(), Forecast(), ScalingState(3), 5.0)[0] == 3


def test_policies_are_pure_same_inputs_same_outputs():
    config = ScalingConfig(min_replicas=1, max_replicas=8, policy="predictive", capacity_rps=10)
    args = (config, Load(in_flight=9, request_rate=30), Forecast(1.0, (50.0, 60.0)), ScalingState(2), 42.0)
    assert decide_replicas(*args) == decide_replicas(*args)


@pytest.mark.parametrize(("field", "value"), [("min_replicas", -1), ("target_in_flight", 0), ("tolerance", 1.5),
                                              ("downscale_delay_s", -1), ("policy", "magic")])
def test_bad_config_names_the_field_and_the_value(field, value):
    with pytest.raises(ConfigError, match=rf"{field} must be .*Received: {field}="):
        ScalingConfig(**{field: value})


def test_max_below_min_is_refused():
    with pytest.raises(ConfigError, match="max_replicas must be an integer >= max"):
        ScalingConfig(min_replicas=5, max_replicas=2)
