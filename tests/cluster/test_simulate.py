"""`kaon scale simulate`'s engine: exact small cases, then reactive vs predictive on a bursty trace."""

from __future__ import annotations

import json

import pytest

from kaon.cluster.policy import ScalingConfig
from kaon.cluster.simulate import DeploymentModel, Trace, bursty_trace, simulate
from kaon.errors import ConfigError, InvalidInputError


def test_steady_load_within_capacity_has_no_violations_and_exact_replica_seconds():
    trace = Trace(step_s=1.0, rates=(5.0,) * 60)
    result = simulate(trace, ScalingConfig(min_replicas=1, max_replicas=4), DeploymentModel(capacity_rps=20))
    assert result.slo_violations == 0
    assert result.replica_seconds == 60.0
    assert result.max_replicas == 1
    assert 250 < result.requests < 350  # Poisson around 300
    assert result.p50_ms == pytest.approx(50.0, abs=20)  # 1/20 s of service, little queueing


def test_fixed_overload_violates_and_more_replicas_fix_it():
    trace = Trace(step_s=1.0, rates=(60.0,) * 30)
    model = DeploymentModel(capacity_rps=25, slo_ms=200)
    one = simulate(trace, ScalingConfig(policy="fixed", replicas=1, min_replicas=1), model)
    four = simulate(trace, ScalingConfig(policy="fixed", replicas=4, min_replicas=1), model)
    assert one.violation_rate > 0.5
    assert four.slo_violations == 0
    assert four.replica_seconds == 120.0


def test_a_cold_start_costs_the_requests_that_wait_for_it():
    trace = Trace(step_s=1.0, rates=(0.0,) * 10 + (10.0,) * 20)
    config = ScalingConfig(min_replicas=0, max_replicas=2, idle_timeout_s=60)
    fast = simulate(trace, config, DeploymentModel(capacity_rps=50, cold_start_s=0.1, slo_ms=500))
    slow = simulate(trace, config, DeploymentModel(capacity_rps=50, cold_start_s=3.0, slo_ms=500))
    assert all(sample.total == 0 for sample in fast.timeline[:11])  # nothing runs before the first request
    assert slow.slo_violations > fast.slo_violations
    assert slow.timeline[12].ready == 0 and slow.timeline[15].ready >= 1


def test_warm_pool_takes_a_load_step_without_a_cold_start():
    trace = Trace(step_s=1.0, rates=(10.0,) * 20 + (80.0,) * 20)
    config = ScalingConfig(min_replicas=1, max_replicas=4, target_in_flight=1)
    model = DeploymentModel(capacity_rps=30, cold_start_s=4.0, slo_ms=200)
    cold = simulate(trace, config, model)
    warm = simulate(trace, config, DeploymentModel(capacity_rps=30, cold_start_s=4.0, slo_ms=200,
                                                   num_warm_replicas=1))
    assert warm.slo_violations < cold.slo_violations
    assert warm.replica_seconds > cold.replica_seconds - 1  # the pool is not free


def test_predictive_halves_slo_violations_on_a_bursty_trace_at_under_10pct_more_replica_seconds():
    trace = bursty_trace(960.0, seed=3)
    model = DeploymentModel(cold_start_s=2.0, capacity_rps=30, slo_ms=250)
    common = dict(min_replicas=1, max_replicas=8, target_in_flight=2, downscale_delay_s=15, capacity_rps=30)
    reactive = simulate(trace, ScalingConfig(policy="reactive", **common), model)
    predictive = simulate(trace, ScalingConfig(policy="predictive", **common), model)
    assert reactive.requests == predictive.requests
    assert predictive.slo_violations <= 0.5 * reactive.slo_violations, (reactive.summary(), predictive.summary())
    assert predictive.replica_seconds <= 1.10 * reactive.replica_seconds
    assert "forecast" in " ".join(sample.reason for sample in predictive.timeline)


def test_simulation_is_deterministic_for_a_seed():
    trace = bursty_trace(300.0, seed=1)
    config = ScalingConfig(min_replicas=1, max_replicas=6, policy="predictive")
    assert simulate(trace, config, DeploymentModel(), seed=7).summary() == \
        simulate(trace, config, DeploymentModel(), seed=7).summary()


def test_trace_files_csv_and_json_round_trip(tmp_path):
    trace = Trace(step_s=0.5, rates=(1.0, 2.5, 0.0))
    assert Trace.load(trace.save(tmp_path / "t.csv")) == trace
    (tmp_path / "t.json").write_text(json.dumps({"step_s": 0.5, "rates": [1, 2.5, 0]}))
    assert Trace.load(tmp_path / "t.json") == trace
    (tmp_path / "plain.csv").write_text("rate\n1\n2\n")
    assert Trace.load(tmp_path / "plain.csv", step_s=2.0).rates == (1.0, 2.0)


def test_bad_traces_and_models_say_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="trace file not found"):
        Trace.load(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("time,qps\n0,1\n")
    with pytest.raises(InvalidInputError, match="'rate' column"):
        Trace.load(tmp_path / "bad.csv")
    with pytest.raises(InvalidInputError, match="rates must be finite numbers >= 0"):
        Trace(step_s=1.0, rates=(-1.0,))
    with pytest.raises(ConfigError, match="capacity_rps must be a number > 0"):
        DeploymentModel(capacity_rps=0)
