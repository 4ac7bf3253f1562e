"""`kaon up|deploy|status|scale|logs|stop|down` and `kaon scale simulate`, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx

from kaon.cluster._paths import discovery_file
from kaon.cluster.simulate import bursty_trace
from tests.cluster.helpers import kaon
from tests.servers import free_port


def test_simulate_compares_reactive_and_predictive_on_the_demo_trace():
    result = kaon("scale", "simulate", "--policy", "compare", "--json")
    reactive, predictive = json.loads(result.stdout)
    assert (reactive["policy"], predictive["policy"]) == ("reactive", "predictive")
    assert reactive["requests"] == predictive["requests"] > 10_000
    assert predictive["slo_violations"] <= 0.5 * reactive["slo_violations"]
    assert predictive["replica_seconds"] <= 1.1 * reactive["replica_seconds"]
    table = kaon("scale", "simulate", "--policy", "compare").stdout
    assert "fewer SLO-violating requests" in table and "replica-seconds" in table


def test_simulate_reads_a_trace_file_and_refuses_a_bad_policy(tmp_path):
    trace = bursty_trace(240.0, seed=2).save(tmp_path / "trace.csv")
    result = json.loads(kaon("scale", "simulate", "--trace", str(trace), "--policy", "reactive",
                             "--capacity-rps", "40", "--cold-start-s", "1.5", "--json").stdout)
    assert result["policy"] == "reactive" and result["max_replicas"] >= 2
    bad = kaon("scale", "simulate", "--policy", "magic", check=False)
    assert bad.returncode == 1 and "--policy must be fixed, reactive, predictive or compare" in bad.stderr
    fixed = kaon("scale", "simulate", "--policy", "fixed", check=False)
    assert fixed.returncode == 1 and "needs a replica count" in fixed.stderr


def test_deploy_status_scale_logs_stop_down(digits_onnx, kaon_home):
    port = free_port()
    try:
        deployed = kaon("deploy", str(digits_onnx), "--name", "cli", "--port", str(port), "--min-replicas", "1")
        assert f"'cli' is serving at http://127.0.0.1:{port} with 1 replica(s)" in deployed.stdout
        assert discovery_file().exists()  # deploy started a control plane in the background
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": [[[[0.0] * 8] * 8]]}).status_code == 200
        status = json.loads(kaon("status", "cli", "--json").stdout)
        assert status["ready"] == 1 and status["replicas"][0]["state"] == "ready"
        assert "replica" in kaon("status").stdout
        scaled = kaon("scale", "cli", "2")
        assert "'cli' pinned at 2 replicas; 2 ready now" in scaled.stdout
        assert json.loads(kaon("status", "cli", "--json").stdout)["policy"] == "fixed"
        assert "autoscaling with policy reactive" in kaon("scale", "cli", "--auto").stdout
        logs = kaon("logs", "cli", "--tail", "50").stdout
        assert "[0] --- kaon: replica 0" in logs and "[1] " in logs
        assert "stopped 'cli'" in kaon("stop", "cli").stdout
        assert "no deployments running" in kaon("status").stdout
    finally:
        down = kaon("down", check=False)
        _stop_leftover_plane()
    assert "stopped the control plane" in down.stdout
    stored = kaon("status").stdout
    assert "no control plane is running" in stored and "cli: stopped" in stored


def test_deploy_of_a_broken_target_fails_with_the_replica_log(tmp_path, kaon_home):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    try:
        result = kaon("deploy", str(broken), "--port", str(free_port()), "--timeout-s", "60", check=False)
    finally:
        kaon("down", check=False)
        _stop_leftover_plane()
    assert result.returncode == 1
    assert "keep failing to start" in result.stderr and "Their last log lines" in result.stderr


def test_commands_without_a_control_plane_say_so(kaon_home):
    assert "no control plane is running" in kaon("down").stdout + kaon("status").stdout
    result = kaon("stop", "nothing", check=False)
    assert result.returncode == 1 and "kaon up" in result.stderr


def _stop_leftover_plane() -> None:
    """If `kaon down` did not stop the background control plane, stop it by its PID."""
    try:
        pid = json.loads(discovery_file().read_text())["pid"]
    except (FileNotFoundError, ValueError, KeyError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_up_detached_then_again_then_down(kaon_home):
    try:
        started = kaon("up", "--detach", "--cpus", "3", "--memory-mb", "4096")
        assert "control plane running at http://127.0.0.1:" in started.stdout and "3 cpus, 4096 MiB" in started.stdout
        assert "already running" in kaon("up", "--detach").stdout
        assert "no deployments running" in kaon("status").stdout
    finally:
        down = kaon("down", check=False)
        _stop_leftover_plane()
    assert "stopped the control plane" in down.stdout
    assert not discovery_file().exists()
