"""Replay a request-rate trace against a model of a deployment, driven by the live policies.

`kaon scale simulate --trace FILE --policy reactive|predictive|fixed` runs this: the trace's requests
(Poisson arrivals at the trace's rate, seeded) go through a router that sends each to the ready
replica with the least work queued (as the live router does); every `step_s` the policy sees the
same `Load` the live autoscaler sees and decides; a new replica serves `cold_start_s` after it is
started; a replica told to stop finishes what it holds. A replica serves one request per
1/`capacity_rps` seconds. Out come SLO-violating requests, replica-seconds and cost.

    >>> trace = Trace(step_s=1.0, rates=(5.0,) * 60)
    >>> result = simulate(trace, ScalingConfig(min_replicas=1, max_replicas=4), DeploymentModel(capacity_rps=20))
    >>> result.slo_violations, result.replica_seconds
    (0, 60.0)
"""

from __future__ import annotations

import csv
import heapq
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kaon.cluster.forecast import ForecasterState, forecast, observe
from kaon.cluster.policy import Forecast, Load, ScalingConfig, ScalingState, decide_replicas, forecast_steps
from kaon.errors import ConfigError, InvalidInputError

# Cloud list prices per replica-hour, Fargate-like (USD): per vCPU and per GiB of memory.
PRICE_PER_CPU_HOUR = 0.04048
PRICE_PER_GIB_HOUR = 0.004445


@dataclass(frozen=True)
class Trace:
    """Requests per second in each consecutive step of `step_s` seconds."""

    step_s: float
    rates: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise InvalidInputError(f"a trace's step_s must be > 0. Received: step_s={self.step_s!r}")
        bad = [r for r in self.rates if not (math.isfinite(r) and r >= 0)]
        if bad:
            raise InvalidInputError(f"a trace's rates must be finite numbers >= 0. Received: {bad[:3]!r}")

    @property
    def duration_s(self) -> float:
        return self.step_s * len(self.rates)

    @classmethod
    def load(cls, path: str | Path, step_s: float | None = None) -> Trace:
        """Read a trace: CSV with columns `t_s,rate` (or one `rate` column and `step_s`), or JSON
        `{"step_s": 1, "rates": [...]}`."""
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"trace file not found. Received: {str(path)!r}. "
                              "Expected a CSV with columns t_s,rate or a JSON {\"step_s\", \"rates\"}.")
        text = file.read_text()
        if file.suffix == ".json":
            try:
                data = json.loads(text)
                return cls(step_s=float(step_s or data["step_s"]), rates=tuple(float(r) for r in data["rates"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInputError(
                    f"{file} is not a JSON trace {{\"step_s\": 1, \"rates\": [...]}}: {exc}") from exc
        rows = [row for row in csv.reader(text.splitlines()) if row and not row[0].startswith("#")]
        header = [h.strip() for h in rows[0]] if rows else []
        if not rows or "rate" not in header:
            raise InvalidInputError(f"{file} needs a header with a 'rate' column (and 't_s'). Received: {header!r}")
        rate_col = header.index("rate")
        try:
            rates = tuple(float(row[rate_col]) for row in rows[1:])
            times = [float(row[header.index("t_s")]) for row in rows[1:]] if "t_s" in header else []
        except (ValueError, IndexError) as exc:
            raise InvalidInputError(f"{file} has a row that is not numbers: {exc}") from exc
        if step_s is None:
            if len(times) < 2:
                raise InvalidInputError(f"{file} has no t_s column to read the step from; pass --step-s.")
            step_s = times[1] - times[0]
        return cls(step_s=float(step_s), rates=rates)

    def save(self, path: str | Path) -> Path:
        file = Path(path)
        lines = ["t_s,rate"] + [f"{i * self.step_s:g},{rate:.4f}" for i, rate in enumerate(self.rates)]
        file.write_text("\n".join(lines) + "\n")
        return file


def bursty_trace(duration_s: float = 1800.0, *, base_rps: float = 20.0, burst_rps: float = 120.0,
                 period_s: float = 120.0, burst_s: float = 20.0, jitter_s: float = 2.0, step_s: float = 1.0,
                 seed: int = 0) -> Trace:
    """A trace with a slowly drifting base rate and a burst every `period_s` (a cron job, a batch
    client), each starting up to `jitter_s` early or late: the shape that hurts a reactive autoscaler."""
    rng = np.random.default_rng(seed)
    steps = int(duration_s / step_s)
    t = np.arange(steps) * step_s
    rates = base_rps * (1.0 + 0.25 * np.sin(2 * np.pi * t / max(duration_s, 1.0)))
    for start in np.arange(period_s / 2, duration_s, period_s):
        begin = start + rng.uniform(-jitter_s, jitter_s)
        rates[(t >= begin) & (t < begin + burst_s)] += burst_rps - base_rps
    rates *= rng.uniform(0.9, 1.1, size=steps)
    return Trace(step_s=step_s, rates=tuple(float(r) for r in rates))


@dataclass(frozen=True)
class DeploymentModel:
    """What the simulator knows of a deployment: measured cold start and per-replica capacity."""

    cold_start_s: float = 2.0
    capacity_rps: float = 50.0  # requests/s one replica serves (one at a time, 1/capacity_rps each)
    slo_ms: float = 250.0  # a request slower than this violates the SLO
    cost_per_replica_hour: float = 0.5 * PRICE_PER_CPU_HOUR + 0.5 * PRICE_PER_GIB_HOUR
    num_warm_replicas: int = 0  # started, idle replicas kept ready to take load at once

    def __post_init__(self) -> None:
        for name in ("cold_start_s", "capacity_rps", "slo_ms", "cost_per_replica_hour"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "capacity_rps" and value == 0):
                raise ConfigError(f"{name} must be a number {'> 0' if name == 'capacity_rps' else '>= 0'}. "
                                  f"Received: {name}={value!r}")


@dataclass(frozen=True)
class Sample:
    """One step of a simulation: the arrival rate, the replicas serving, started, and decided."""

    t_s: float
    rate: float
    ready: int
    total: int
    target: int
    reason: str
    violations: int = 0  # requests that arrived in this step and missed the SLO


@dataclass
class SimulationResult:
    policy: str
    requests: int
    slo_violations: int
    replica_seconds: float
    cost: float
    p50_ms: float
    p99_ms: float
    max_replicas: int
    timeline: list[Sample] = field(default_factory=list)

    @property
    def violation_rate(self) -> float:
        return self.slo_violations / self.requests if self.requests else 0.0

    def summary(self) -> dict[str, float | int | str]:
        return {"policy": self.policy, "requests": self.requests, "slo_violations": self.slo_violations,
                "violation_rate": round(self.violation_rate, 5), "replica_seconds": round(self.replica_seconds, 1),
                "cost": round(self.cost, 4), "p50_ms": round(self.p50_ms, 1), "p99_ms": round(self.p99_ms, 1),
                "max_replicas": self.max_replicas}


@dataclass
class _Replica:
    started_at: float
    ready_at: float
    free_at: float
    warm: bool = False  # in the warm pool: ready, but not sent requests
    stopped_at: float | None = None


def simulate(trace: Trace, config: ScalingConfig, model: DeploymentModel, *, seed: int = 0,
             season_s: float | None = None, initial_replicas: int | None = None) -> SimulationResult:
    """Replay `trace` with the policy `config` names; see the module docstring for the model."""
    step = config.step_s
    service_s = 1.0 / model.capacity_rps
    slo_s = model.slo_ms / 1000.0
    arrivals = _arrivals(trace, seed)
    end = trace.duration_s
    if initial_replicas is None:  # a deployment already running at its floor (or fixed count), warm
        initial_replicas = config.replicas if config.policy == "fixed" and config.replicas else config.min_replicas
    count = initial_replicas
    replicas = [_Replica(0.0, 0.0, 0.0) for _ in range(count)]
    warm = [_Replica(0.0, 0.0, 0.0, warm=True) for _ in range(model.num_warm_replicas if count else 0)]
    state = ScalingState(replicas=count)
    forecaster = ForecasterState.start(step_s=step, season_s=season_s)
    pending: list[float] = []  # arrival times of requests waiting for a ready replica
    finishing: list[tuple[float, float]] = []  # heap of (completion, latency)
    latencies = np.empty(len(arrivals))
    missed = np.zeros(max(int(math.ceil(end / step)), 1), dtype=np.int64)
    done = 0
    timeline: list[Sample] = []
    window_latency, window_done, arrived_in_step, index = 0.0, 0, 0, 0
    ticks = int(math.ceil(end / step))

    def dispatch(at: float, arrived: float) -> None:
        nonlocal done
        ready = [r for r in replicas if r.stopped_at is None and r.ready_at <= at]
        chosen = min(ready, key=lambda r: r.free_at)
        begin = max(at, chosen.free_at)
        chosen.free_at = begin + service_s
        latencies[done] = chosen.free_at - arrived
        if chosen.free_at - arrived > slo_s:
            missed[min(int(arrived / step), len(missed) - 1)] += 1
        heapq.heappush(finishing, (chosen.free_at, chosen.free_at - arrived))
        done += 1

    def flush_pending(until: float) -> None:
        while pending:
            soonest = min((r.ready_at for r in replicas if r.stopped_at is None), default=math.inf)
            if soonest > until:
                return
            for arrived in pending:
                dispatch(max(soonest, arrived), arrived)
            pending.clear()

    for tick in range(ticks + 1):
        now = tick * step
        while index < len(arrivals) and arrivals[index] < now:
            at = arrivals[index]
            flush_pending(at)
            if any(r.stopped_at is None and r.ready_at <= at for r in replicas):
                dispatch(at, at)
            else:
                pending.append(at)
            arrived_in_step += 1
            index += 1
        flush_pending(now)
        while finishing and finishing[0][0] <= now:
            _, latency = heapq.heappop(finishing)
            window_latency += latency
            window_done += 1
        if tick == ticks:
            break
        rate = arrived_in_step / step
        in_flight = len(finishing) + len(pending)
        active = [r for r in replicas if r.stopped_at is None]
        load = Load(in_flight=in_flight, request_rate=rate,
                    latency_s=window_latency / window_done if window_done else None,
                    ready_replicas=sum(r.ready_at <= now for r in active),
                    starting_replicas=sum(r.ready_at > now for r in active), cold_start_s=model.cold_start_s)
        forecaster = observe(forecaster, rate)
        ahead = Forecast(step)
        if config.policy == "predictive":
            ahead = Forecast(step, tuple(forecast(forecaster, forecast_steps(config, load))))
        target, state = decide_replicas(config, load, ahead, state, now)
        _reconcile(replicas, warm, target, now, model)
        active = [r for r in replicas if r.stopped_at is None]
        timeline.append(Sample(now, rate, sum(r.ready_at <= now for r in active), len(active), target, state.reason))
        window_latency, window_done, arrived_in_step = 0.0, 0, 0
    flush_pending(math.inf)
    timeline = [replace(sample, violations=int(missed[i])) for i, sample in enumerate(timeline)]
    replica_seconds = sum(min(r.stopped_at if r.stopped_at is not None else end, end) - r.started_at
                          for r in [*replicas, *warm])
    served = latencies[:done]
    return SimulationResult(
        policy=config.policy, requests=len(arrivals), slo_violations=int((served > slo_s).sum()),
        replica_seconds=float(replica_seconds), cost=float(replica_seconds * model.cost_per_replica_hour / 3600.0),
        p50_ms=float(np.percentile(served, 50) * 1000) if done else 0.0,
        p99_ms=float(np.percentile(served, 99) * 1000) if done else 0.0,
        max_replicas=max((s.total for s in timeline), default=0), timeline=timeline,
    )


def _arrivals(trace: Trace, seed: int) -> np.ndarray:
    """Poisson arrival times at the trace's rate in each step (seeded: every policy sees the same)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.asarray(trace.rates) * trace.step_s)
    starts = np.repeat(np.arange(len(trace.rates)) * trace.step_s, counts)
    return np.sort(starts + rng.uniform(0.0, trace.step_s, size=int(counts.sum())))


def _reconcile(replicas: list[_Replica], warm: list[_Replica], target: int, now: float,
               model: DeploymentModel) -> None:
    """Start or stop replicas to reach `target` active ones; keep the warm pool topped up."""
    active = [r for r in replicas if r.stopped_at is None]
    while len(active) < target:
        spare = next((w for w in warm if w.ready_at <= now), None)
        if spare is not None:
            warm.remove(spare)
            fresh = replace(spare, warm=False)
            fresh.free_at = max(fresh.free_at, now)
        else:
            fresh = _Replica(started_at=now, ready_at=now + model.cold_start_s, free_at=now + model.cold_start_s)
        replicas.append(fresh)
        active.append(fresh)
    if len(active) > target:
        # Stop the ones still starting first (newest first), then the least busy.
        order = sorted(active, key=lambda r: (r.ready_at <= now, r.free_at, -r.started_at))
        for replica in order[: len(active) - target]:
            replica.stopped_at = max(now, replica.free_at) if replica.ready_at <= now else now
    wanted_warm = model.num_warm_replicas if target > 0 else 0
    live_warm = [w for w in warm if w.stopped_at is None]
    for _ in range(wanted_warm - len(live_warm)):
        warm.append(_Replica(started_at=now, ready_at=now + model.cold_start_s, free_at=0.0, warm=True))
    for extra in live_warm[wanted_warm:]:
        extra.stopped_at = now
