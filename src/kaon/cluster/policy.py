"""Autoscaling policies: pure functions from observed load (and a forecast) to a replica count.

Every policy has one shape, `policy(config, load, forecast, state, now) -> (replicas, state)`: no
clock, no I/O, no randomness, so the same decision is reached in `kaon scale simulate`, in a live
deployment and in a unit test that passes numbers. `state.reason` says why, in words, for
`kaon status`.

    >>> config = ScalingConfig(min_replicas=1, max_replicas=8, target_in_flight=4, upscale_delay_s=0)
    >>> replicas, state = reactive(config, Load(in_flight=18, ready_replicas=2), Forecast(), ScalingState(2), now=0)
    >>> replicas, state.reason
    (5, '18 requests in flight, target 4 per replica: 2 -> 5')

The policies:

- `fixed`: the count set with `kaon scale NAME N`.
- `reactive`: ceil(in-flight / target per replica), inside a tolerance band (hysteresis) so that
  noise does not flap replicas, scaling up after `upscale_delay_s` and down after
  `downscale_delay_s` to the highest count wanted during that delay.
- `predictive`: the reactive count, or more when the forecast rate `cold_start_s` ahead needs more:
  replicas start early enough to be ready when the load arrives. It also starts a replica from
  zero before the first request of a forecast burst (pre-warming).

All three then apply the same rules: the cron-like schedule floors, `min_replicas`/`max_replicas`,
and scale-to-zero (when `min_replicas == 0`: zero replicas after `idle_timeout_s` without requests;
back to one at once when a request waits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from kaon.cluster.schedule import ScheduleRule, scheduled_floor
from kaon.errors import ConfigError

PolicyName = Literal["fixed", "reactive", "predictive"]
POLICY_NAMES: tuple[str, ...] = ("fixed", "reactive", "predictive")
# Used as the lead time until a replica's cold start has been measured.
DEFAULT_COLD_START_S = 2.0
# The predictive policy acts on a forecast only when it expects at least this many requests per step.
_MIN_EXPECTED_REQUESTS = 0.5
# Weight of the newest sample in the running estimate of per-replica capacity.
_CAPACITY_SMOOTHING = 0.2


@dataclass(frozen=True)
class ScalingConfig:
    """The numbers a policy decides with (a Deployment builds one with `.scaling_config()`)."""

    min_replicas: int = 1
    max_replicas: int = 4
    policy: PolicyName = "reactive"
    replicas: int | None = None  # the fixed count (policy 'fixed')
    target_in_flight: float = 4.0  # requests in flight per replica the reactive rule aims at
    tolerance: float = 0.1  # no change while in-flight is within +-10% of the target (hysteresis)
    upscale_delay_s: float = 0.0
    downscale_delay_s: float = 30.0
    idle_timeout_s: float = 300.0  # scale to zero after this long without a request (min_replicas == 0)
    schedule: tuple[ScheduleRule, ...] = ()
    cold_start_s: float | None = None  # the predictive lead time; None: the measured cold start
    capacity_rps: float | None = None  # requests/s one replica serves within its SLO; None: learnt
    step_s: float = 1.0  # how often a decision is taken

    def __post_init__(self) -> None:
        checks = [
            ("min_replicas", self.min_replicas >= 0, "an integer >= 0"),
            ("max_replicas", self.max_replicas >= max(self.min_replicas, 1),
             f"an integer >= max(min_replicas, 1) = {max(self.min_replicas, 1)}"),
            ("policy", self.policy in POLICY_NAMES, f"one of {', '.join(POLICY_NAMES)}"),
            ("replicas", self.replicas is None or self.replicas >= 0, "None or an integer >= 0"),
            ("target_in_flight", self.target_in_flight > 0, "a number > 0"),
            ("tolerance", 0 <= self.tolerance < 1, "a number in [0, 1)"),
            ("upscale_delay_s", self.upscale_delay_s >= 0, "a number >= 0"),
            ("downscale_delay_s", self.downscale_delay_s >= 0, "a number >= 0"),
            ("idle_timeout_s", self.idle_timeout_s >= 0, "a number >= 0"),
            ("cold_start_s", self.cold_start_s is None or self.cold_start_s >= 0, "None or a number >= 0"),
            ("capacity_rps", self.capacity_rps is None or self.capacity_rps > 0, "None or a number > 0"),
            ("step_s", self.step_s > 0, "a number > 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"autoscaling {name} must be {expected}. Received: {name}={getattr(self, name)!r}",
                                  fields=[{"name": name, "expected": expected}])
        if self.policy == "fixed" and self.replicas is None:
            raise ConfigError("the 'fixed' policy needs a replica count. Received: replicas=None. "
                              "Set replicas (kaon scale NAME N) or pick policy 'reactive' or 'predictive'.")


@dataclass(frozen=True)
class Load:
    """What the router saw over the last step."""

    in_flight: float = 0.0  # requests being served plus those waiting at the router for a replica
    request_rate: float = 0.0  # requests/s that arrived
    latency_s: float | None = None  # mean response time of the requests that finished (None: none did)
    ready_replicas: int = 0
    starting_replicas: int = 0
    cold_start_s: float | None = None  # the measured time from process start to ready (None: not yet)


@dataclass(frozen=True)
class Forecast:
    """The predicted request rate for each coming step; empty when there is no forecast."""

    step_s: float = 1.0
    rates: tuple[float, ...] = ()

    def peak(self, within_s: float) -> float:
        """The highest predicted rate over the next `within_s` seconds (0 without a forecast)."""
        count = max(1, math.ceil(within_s / self.step_s - 1e-9))
        return max(self.rates[:count], default=0.0)


@dataclass(frozen=True)
class ScalingState:
    """What a policy remembers between decisions."""

    replicas: int = 0  # the last decision
    up_since: float | None = None  # when the wanted count first rose above `replicas` (this streak)
    down_since: float | None = None  # when it first fell below
    down_peak: int = 0  # the highest count wanted since `down_since`
    last_request_at: float | None = None
    capacity_rps: float | None = None  # learnt requests/s per replica
    reason: str = "not decided yet"
    extra: dict[str, float] = field(default_factory=dict)  # numbers behind the reason, for status


Policy = Callable[[ScalingConfig, Load, Forecast, ScalingState, float], tuple[int, ScalingState]]


def fixed(config: ScalingConfig, load: Load, forecast: Forecast, state: ScalingState,
          now: float) -> tuple[int, ScalingState]:
    """The count set with `kaon scale NAME N`, whatever the load."""
    count = config.replicas if config.replicas is not None else config.min_replicas
    state = replace(_note_traffic(state, load, now), up_since=None, down_since=None, down_peak=0)
    return _decided(state, count, f"fixed at {count} (kaon scale)", {})


def reactive(config: ScalingConfig, load: Load, forecast: Forecast, state: ScalingState,
             now: float) -> tuple[int, ScalingState]:
    """Scale on requests in flight per replica, with a tolerance band and up/down delays."""
    state = _note_traffic(state, load, now)
    want, why, numbers = _reactive_target(config, load, state)
    return _settle(config, load, state, now, want, why, numbers, immediate=False)


def predictive(config: ScalingConfig, load: Load, forecast: Forecast, state: ScalingState,
               now: float) -> tuple[int, ScalingState]:
    """The reactive count, raised ahead of time to what the forecast needs one cold start from now."""
    state = _learn_capacity(config, _note_traffic(state, load, now), load)
    want, why, numbers = _reactive_target(config, load, state)
    lead_s = lookahead_s(config, load)
    expected = forecast.peak(lead_s)
    capacity = state.capacity_rps or config.capacity_rps
    numbers = {**numbers, "forecast_rps": round(expected, 3), "lead_s": round(lead_s, 3)}
    immediate = False
    if capacity and expected * config.step_s >= _MIN_EXPECTED_REQUESTS:
        ahead = math.ceil(expected / capacity - 1e-9)
        if ahead > want:
            want, immediate = ahead, True
            why = (f"forecast {expected:.1f} req/s within {lead_s:.1f} s (cold start + 2 steps), "
                   f"{capacity:.1f} req/s per replica")
    return _settle(config, load, state, now, want, why, numbers, immediate=immediate, ahead=forecast)


POLICIES: dict[str, Policy] = {"fixed": fixed, "reactive": reactive, "predictive": predictive}


def decide_replicas(config: ScalingConfig, load: Load, forecast: Forecast, state: ScalingState,
                    now: float) -> tuple[int, ScalingState]:
    """Run the policy the config names."""
    return POLICIES[config.policy](config, load, forecast, state, now)


def lead_time_s(config: ScalingConfig, load: Load) -> float:
    """How far ahead the predictive policy looks: the configured, else the measured, cold start."""
    if config.cold_start_s is not None:
        return config.cold_start_s
    return load.cold_start_s if load.cold_start_s is not None else DEFAULT_COLD_START_S


def lookahead_s(config: ScalingConfig, load: Load) -> float:
    """The forecast window the predictive policy provisions for: the cold start, one step until the
    next decision, and one step of margin (a burst starts anywhere inside a step, a step early or late)."""
    return lead_time_s(config, load) + 2 * config.step_s


def forecast_steps(config: ScalingConfig, load: Load) -> int:
    """How many steps of forecast a predictive decision reads."""
    return math.ceil(lookahead_s(config, load) / config.step_s - 1e-9)


# ---- the shared rules ----------------------------------------------------------------------------


def _note_traffic(state: ScalingState, load: Load, now: float) -> ScalingState:
    if load.in_flight > 0 or load.request_rate > 0:
        return replace(state, last_request_at=now)
    return state


def _learn_capacity(config: ScalingConfig, state: ScalingState, load: Load) -> ScalingState:
    """Little's law: a replica holding `target_in_flight` requests for `latency_s` serves target/latency req/s."""
    if config.capacity_rps is not None or not load.latency_s or load.ready_replicas == 0:
        return state
    sample = config.target_in_flight / load.latency_s
    old = state.capacity_rps
    return replace(state, capacity_rps=sample if old is None else old + _CAPACITY_SMOOTHING * (sample - old))


def _reactive_target(config: ScalingConfig, load: Load,
                     state: ScalingState) -> tuple[int, str, dict[str, float]]:
    current = state.replicas
    in_flight = max(load.in_flight, 0.0)
    numbers = {"in_flight": round(in_flight, 3), "target_in_flight": config.target_in_flight}
    if current > 0:
        ratio = in_flight / (current * config.target_in_flight)
        if abs(ratio - 1.0) <= config.tolerance:
            return current, (f"{in_flight:.3g} requests in flight, within {config.tolerance:.0%} of "
                             f"{config.target_in_flight:g} per replica"), numbers
    want = math.ceil(in_flight / config.target_in_flight - 1e-9)
    return want, (f"{in_flight:.3g} requests in flight, target {config.target_in_flight:g} per replica"), numbers


def _settle(config: ScalingConfig, load: Load, state: ScalingState, now: float, want: int, why: str,
            numbers: dict[str, float], *, immediate: bool,
            ahead: Forecast | None = None) -> tuple[int, ScalingState]:
    """Apply floors, bounds, scale-to-zero and the up/down delays to the count a rule wants.

    `ahead` is the forecast, for the predictive policy only: it keeps a deployment from scaling to
    zero just before a forecast burst, and starts one replica from zero ahead of it (pre-warming).
    """
    current = state.replicas
    floor = max(config.min_replicas, scheduled_floor(config.schedule, now))
    if floor > config.min_replicas and want < floor:
        why = f"schedule floor {floor}"
    demand = load.in_flight > 0 or load.request_rate > 0
    if config.min_replicas == 0:
        idle_s = math.inf if state.last_request_at is None else now - state.last_request_at
        lead_s = lookahead_s(config, load)
        expected = ahead.peak(lead_s) * config.step_s if ahead is not None else 0.0
        if not demand and want <= 0 and floor == 0 and expected < _MIN_EXPECTED_REQUESTS:
            if current == 0 or idle_s >= config.idle_timeout_s:
                reason = "no requests" if current == 0 else f"idle for {idle_s:.0f} s"
                return _decided(_reset(state), 0, f"{reason}: scaled to zero", numbers)
            want = max(want, 1)
            why = f"idle for {idle_s:.0f} s of {config.idle_timeout_s:g} s before scaling to zero"
        elif current == 0:
            # A request waits for a replica (or the forecast sees one coming): no delay applies.
            count = min(max(want, floor, 1), config.max_replicas)
            cause = ("cold start: a request is waiting" if demand
                     else f"pre-warm: forecast {expected:.1f} requests per step within {lead_s:.1f} s")
            return _decided(_reset(state), count, f"{cause}: 0 -> {count}", numbers)
        want = max(want, 1)
    want = min(max(want, floor, 1 if config.min_replicas > 0 else 0), config.max_replicas)
    if want > current:
        up_since = state.up_since if state.up_since is not None else now
        if immediate or now - up_since >= config.upscale_delay_s:
            return _decided(_reset(state), want, f"{why}: {current} -> {want}", numbers)
        waited = now - up_since
        state = replace(state, up_since=up_since, down_since=None, down_peak=0)
        return _decided(state, current, f"{why}: wants {want}, scaling up in "
                        f"{config.upscale_delay_s - waited:.1f} s (upscale_delay_s)", numbers)
    if want < current:
        down_since = state.down_since if state.down_since is not None else now
        peak = max(state.down_peak, want) if state.down_since is not None else want
        if now - down_since >= config.downscale_delay_s:
            return _decided(_reset(state), peak, f"{why}: {current} -> {peak} after "
                            f"{config.downscale_delay_s:g} s (downscale_delay_s)", numbers)
        state = replace(state, up_since=None, down_since=down_since, down_peak=peak)
        return _decided(state, current, f"{why}: wants {peak}, scaling down in "
                        f"{config.downscale_delay_s - (now - down_since):.1f} s (downscale_delay_s)", numbers)
    return _decided(_reset(state), current, f"{why}: keep {current}", numbers)


def _reset(state: ScalingState) -> ScalingState:
    return replace(state, up_since=None, down_since=None, down_peak=0)


def _decided(state: ScalingState, replicas: int, reason: str, numbers: dict[str, float]) -> tuple[int, ScalingState]:
    return replicas, replace(state, replicas=replicas, reason=reason, extra=numbers)
