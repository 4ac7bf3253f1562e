"""The Ray backend against a real two-node Ray cluster on loopback: deploy, scale, lose a node under load,
recover on a new one.

The cluster runs in its own network namespace (only `lo`: Ray keeps 127.0.0.1) and PID namespace (every
Ray process dies with the scenario; `ray stop` is never run), so it needs root and `unshare`. It takes
1.5-2 minutes on 2 cores, so it runs when KAON_TEST_RAY=1 (CI sets it in the job that has Ray), like
the PostgreSQL tests with KAON_TEST_POSTGRES_URL. The mapping itself is tested without a cluster below.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kaon.cluster.deployment import Deployment
from tests.cluster.helpers import run_ray_scenario

ray_cluster = pytest.mark.skipif(
    os.environ.get("KAON_TEST_RAY") != "1", reason="set KAON_TEST_RAY=1 to start a real Ray cluster (root, unshare)")


def test_deployment_maps_to_serve_options_with_explicit_delays_and_resources():
    from kaon.cluster.backends.ray import deployment_options

    spec = Deployment(name="digits", target="digits@1", backend="ray", address="10.0.0.1:6379", min_replicas=0,
                      max_replicas=6, idle_timeout_s=120, max_replicas_per_node=2,
                      resources={"cpus": 1.5, "memory_mb": 1024, "gpus": 1}, serve={"max_batch_size": 8},
                      autoscaling={"target_in_flight": 3, "upscale_delay_s": 2, "downscale_delay_s": 40})
    options = deployment_options(spec)
    assert options["autoscaling_config"] == {
        "min_replicas": 0, "max_replicas": 6, "initial_replicas": 1, "target_ongoing_requests": 3.0,
        "upscale_delay_s": 2.0, "downscale_delay_s": 40.0, "metrics_interval_s": 2.0, "look_back_period_s": 5.0,
        "downscale_to_zero_delay_s": 120.0}
    assert options["ray_actor_options"]["num_cpus"] == 1.5 and options["ray_actor_options"]["num_gpus"] == 1
    assert options["ray_actor_options"]["memory"] == 1024 * 2**20
    assert options["ray_actor_options"]["runtime_env"]["env_vars"] == {"KAON_MAX_BATCH_SIZE": "8"}
    assert options["max_replicas_per_node"] == 2
    fixed = deployment_options(spec.with_overrides(replicas=3))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed


def test_ray_is_imported_only_by_the_ray_backend():
    root = Path(__file__).resolve().parents[2] / "src" / "kaon"
    users = [str(p.relative_to(root)) for p in root.rglob("*.py")
             if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())]
    assert users in ([], ["cluster/backends/ray.py"]), users
    assert 'require("ray"' in (root / "cluster" / "backends" / "ray.py").read_text()  # lazily, naming the extra


@ray_cluster
def test_two_node_cluster_deploy_scale_lose_a_node_under_load_and_recover(digits_onnx):
    pytest.importorskip("ray")
    result = run_ray_scenario("_ray_scenario.py", str(digits_onnx), timeout_s=480)
    assert result["deployed"]["replicas"] == {"RUNNING": 2}
    assert result["first_status"] == 200 and result["first_labels"] == 10
    assert result["replica_nodes"] == 2  # 1.5 cpus each on 2-cpu nodes: one per node
    assert result["scaled_down"] == {"RUNNING": 1} and result["scaled_up"] == {"RUNNING": 2}
    assert result["load_requests"] > 50
    assert result["load_failed"] <= 2, result  # Serve routes around a replica whose node died
    assert result["ok_after_kill"] > 0
    assert result["node_declared_dead_s"] < 120 and result["serve_noticed_s"] < 200
    assert result["recovered_replicas"] == {"RUNNING": 2} and result["after_recovery"] == 200
    assert result["cli_deploy"]["status"] == "RUNNING", result["cli_deploy"]
    assert result["cli_status"]["replicas"] == {"RUNNING": 1} and result["cli_predict"] == 200
    assert result["cli_stop"] == "stopped 'cli' on Ray"
