"""The live autoscaler: every step, the router's load goes through the same policy `kaon scale simulate` uses.

This module is the effectful edge around kaon.cluster.policy: it reads the clock and the router,
keeps the forecaster and the policy state, and tells the supervisor the count. A request waiting
at a deployment scaled to zero wakes it at once (`wake()`), without waiting for the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kaon.cluster.deployment import Deployment
from kaon.cluster.forecast import ForecasterState, forecast, observe
from kaon.cluster.policy import Forecast, Load, ScalingConfig, ScalingState, decide_replicas, forecast_steps
from kaon.cluster.router import Router

log = logging.getLogger("kaon.cluster.autoscaler")


class Scalable(Protocol):
    """What the autoscaler drives: the supervisor (local) or a Ray Serve deployment."""

    target: int
    cold_start_s: float | None

    def scale(self, target: int) -> None: ...

    def counts(self) -> dict[str, int]: ...


@dataclass
class Decision:
    """One decision, as `kaon status` shows it."""

    replicas: int
    reason: str
    time: float  # wall clock
    load: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "reason": self.reason, "time": self.time, "load": self.load,
                "numbers": self.numbers}


class Autoscaler:
    """Drives `target` from `router`'s load with the deployment's policy."""

    def __init__(self, deployment: Deployment, router: Router, target: Scalable, *,
                 fits: Callable[[int], tuple[int, str]] | None = None,
                 on_decision: Callable[[Decision], None] | None = None,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.router = router
        self.target = target
        self.fits = fits
        self.on_decision = on_decision
        self._wall = wall_clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.history: list[tuple[float, int, int]] = []  # (time, decided, ready) for the live figures
        self.last: Decision | None = None
        self.configure(deployment, initial=deployment.initial_replicas())

    def configure(self, deployment: Deployment, *, initial: int | None = None) -> None:
        """Take a new spec; the policy state is kept unless the count is reset."""
        self.deployment = deployment
        self.config: ScalingConfig = deployment.scaling_config()
        if initial is not None or not hasattr(self, "state"):
            count = initial if initial is not None else self.target.target
            self.state = ScalingState(replicas=count)
            self.forecaster = ForecasterState.start(step_s=self.config.step_s, season_s=deployment.autoscaling.season_s)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"autoscaler-{self.deployment.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        """A request is waiting for a replica: decide now (scale from zero), not at the next step."""
        if self.state.replicas == 0:
            self._decide(Load(in_flight=max(self.router.waiting, 1), ready_replicas=0), observe_rate=None)

    def decide_now(self) -> Decision:
        """Decide at once on the current in-flight count (after `kaon scale`), without ending the step."""
        counts = self.target.counts()
        load = Load(in_flight=float(sum(s["in_flight"] for s in self.router.replica_stats().values())
                                    + self.router.waiting),
                    ready_replicas=counts.get("ready", 0), starting_replicas=counts.get("starting", 0),
                    cold_start_s=self.target.cold_start_s)
        return self._decide(load, observe_rate=None)

    async def _loop(self) -> None:
        step = self.config.step_s
        next_t = time.monotonic() + step
        while True:
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
            next_t += step
            if next_t < time.monotonic():  # the loop fell behind (a busy machine): do not burst
                next_t = time.monotonic() + step
            try:
                self.tick()
            except Exception:
                log.exception("%s: autoscaling step failed", self.deployment.name)

    def tick(self) -> Decision:
        """One step: read the router's load, update the forecast, decide, apply."""
        seen = self.router.take_load()
        counts = self.target.counts()
        rate = seen.arrivals / seen.window_s
        load = Load(in_flight=seen.in_flight + seen.waiting, request_rate=rate, latency_s=seen.latency_s,
                    ready_replicas=counts.get("ready", 0), starting_replicas=counts.get("starting", 0),
                    cold_start_s=self.target.cold_start_s)
        return self._decide(load, observe_rate=rate)

    def _decide(self, load: Load, *, observe_rate: float | None) -> Decision:
        now = self._wall()
        ahead = Forecast(self.config.step_s)
        if observe_rate is not None:
            self.forecaster = observe(self.forecaster, observe_rate)
        if self.config.policy == "predictive":
            ahead = Forecast(self.config.step_s, tuple(forecast(self.forecaster, forecast_steps(self.config, load))))
        count, self.state = decide_replicas(self.config, load, ahead, self.state, now)
        reason = self.state.reason
        if self.fits is not None and count > self.target.target:
            room, why = self.fits(count)
            if room < count:
                reason = f"{reason}; capped at {room}: {why}"
                count = room
                self.state = replace(self.state, replicas=count, reason=reason)
        self.target.scale(count)
        decision = Decision(
            replicas=count, reason=reason, time=now,
            load={"in_flight": round(load.in_flight, 3), "request_rate": round(load.request_rate, 3),
                  "latency_ms": None if load.latency_s is None else round(load.latency_s * 1000, 2),
                  "ready": load.ready_replicas, "starting": load.starting_replicas,
                  "cold_start_s": None if load.cold_start_s is None else round(load.cold_start_s, 3)},
            numbers={k: v for k, v in self.state.extra.items() if isinstance(v, (int, float)) and math.isfinite(v)},
        )
        changed = self.last is None or self.last.replicas != decision.replicas or self.last.reason != decision.reason
        self.last = decision
        self.history.append((now, count, load.ready_replicas))
        del self.history[:-3600]
        if changed and self.on_decision is not None:
            self.on_decision(decision)
        return decision
