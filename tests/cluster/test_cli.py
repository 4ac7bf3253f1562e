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
        assert f"'cli' is serving at http://127.0.0.1:{port} with 1 replica, policy reactive" in deployed.stdout
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


def test_kept_deployments_are_listed_and_kaon_start_runs_them_as_stored(digits_onnx, kaon_home):
    from kaon.registry import Registry

    with Registry() as registry:
        registry.register_version("digits", {"model.onnx": digits_onnx}, framework="onnx")
        registry.set_alias("digits", "production", 1)
    port = free_port()
    try:
        kaon("deploy", "digits@production", "--name", "kept", "--port", str(port), "--min-replicas", "1",
             "--max-replicas", "3")
        kaon("down")
        with Registry() as registry:  # the alias moves while the deployment is stopped
            registry.register_version("digits", {"model.onnx": digits_onnx}, framework="onnx")
            registry.set_alias("digits", "production", 2)
        kaon("up", "--detach")
        listed = kaon("status").stdout
        assert "kept: stopped" in listed and "serving digits@1" in listed and "kaon start kept" in listed
        assert json.loads(kaon("status", "--json").stdout)[0]["status"] == "stopped"
        started = kaon("start", "kept")
        assert f"'kept' is serving at http://127.0.0.1:{port} with 1 replica" in started.stdout
        status = json.loads(kaon("status", "kept", "--json").stdout)
        assert (status["serving"], status["min_replicas"], status["max_replicas"]) == ("digits@1", 1, 3)
        assert "serving digits@1" in kaon("status", "kept").stdout
        missing = kaon("start", "nothing", check=False)
        assert missing.returncode == 1
        assert "no deployment named 'nothing'" in missing.stderr and "kept" in missing.stderr
        kaon("stop", "kept")
        # deploying a different spec under a stopped deployment's name replaces it, and says what it replaced
        replaced = kaon("deploy", "digits@production", "--name", "kept", "--no-wait").stdout
        assert "replaced the stored spec of 'kept' (stopped)" in replaced
        assert f"port {port} -> " in replaced and "max_replicas 3 -> 4" in replaced
        assert "serving digits@1 -> digits@2" in replaced and "kaon start kept" in replaced
    finally:
        kaon("down", check=False)
        _stop_leftover_plane()


def test_logs_show_the_running_replicas_keep_ten_dead_ones_and_refuse_an_unknown_replica(plane, digits_onnx,
                                                                                          kaon_home):
    folder = kaon_home / "deployments" / "lg"
    folder.mkdir(parents=True)
    for index in range(100, 115):  # logs of replicas that died long ago, oldest first
        log = folder / f"replica-{index}.log"
        log.write_text(f"dead replica {index}\n")
        os.utime(log, (1_000_000 + index, 1_000_000 + index))
    port = free_port()
    plane.client.deploy({"name": "lg", "target": str(digits_onnx), "port": port, "min_replicas": 1,
                         "resources": {"cpus": 0.5, "memory_mb": 256}})
    deadline = time.monotonic() + 60
    while plane.client.status("lg")["ready"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    kept = sorted(int(p.stem.split("-")[1]) for p in folder.glob("replica-*.log"))
    assert kept == [0, *range(105, 115)]  # the running one and the ten most recent dead ones
    running = kaon("logs", "lg").stdout
    assert "[0] --- kaon: replica 0" in running and "dead replica" not in running
    # the replica's banner gives the deployment's URL to send requests to, not the replica's private port
    assert f"clients reach it at http://127.0.0.1:{port}" in running, running
    assert f"curl -s -X POST http://127.0.0.1:{port}/predict" in running
    every = kaon("logs", "lg", "--all").stdout
    assert "[114] dead replica 114" in every and "[0] --- kaon: replica 0" in every
    unknown = kaon("logs", "lg", "--replica", "42", check=False)
    assert unknown.returncode == 1
    assert "no log of replica 42 of 'lg'" in unknown.stderr and "running: 0" in unknown.stderr
    assert "105" in unknown.stderr


def test_two_detached_ups_at_once_start_one_and_the_other_says_where_it_runs(kaon_home):
    import subprocess

    from tests.cluster.helpers import KAON

    ports = [free_port(), free_port()]
    env = {**os.environ, "COLUMNS": "200"}
    try:
        runs = [subprocess.Popen([*KAON, "up", "--detach", "--port", str(port)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for port in ports]
        outputs = [run.communicate(timeout=60) for run in runs]
        url = json.loads(discovery_file().read_text())["url"]
    finally:
        kaon("down", check=False)
        _stop_leftover_plane()
    claims = [(port, out) for port, (out, _) in zip(ports, outputs, strict=True) if "control plane running at" in out]
    assert len(claims) == 1, outputs
    port, out = claims[0]
    assert url == f"http://127.0.0.1:{port}" and url in out
    other = next(out + err for p, (out, err) in zip(ports, outputs, strict=True) if p != port)
    assert "already running at " + url in other, outputs


def _status(**fields) -> dict:
    status = {"name": "d", "url": "http://127.0.0.1:8100", "target": "digits@production", "serving": "digits@1",
              "policy": "reactive", "min_replicas": 1, "max_replicas": 4, "desired": 1, "ready": 1,
              "cold_start_s": 1.5, "replicas": [], "decision": None, "spec": {"idle_timeout_s": 300.0}}
    return {**status, **fields}


def test_deploy_and_scale_messages_count_replicas_in_words():
    from kaon.cli.cluster_cmd import _deployed_message, _scaled_message

    no_wait = _deployed_message(_status(desired=2, ready=0), waited=False)
    assert "0 replica" not in no_wait and "2 replicas starting" in no_wait and "kaon status d" in no_wait
    assert "with 1 replica, policy reactive" in _deployed_message(_status(), waited=True)
    to_zero = _deployed_message(_status(min_replicas=0), waited=True)
    assert "scales to zero after 300 s without requests" in to_zero
    assert "scaled to zero" in _deployed_message(_status(min_replicas=0, desired=0, ready=0), waited=True)
    assert _scaled_message("d", 1, _status()) == "'d' pinned at 1 replica; 1 ready now"
    assert _scaled_message("d", 3, _status(ready=2)) == "'d' pinned at 3 replicas; 2 ready now"


def test_status_shows_the_version_served_and_counts_in_words(monkeypatch):
    import io

    from rich.console import Console

    import kaon.cli.cluster_cmd as cluster_cmd

    out = io.StringIO()
    monkeypatch.setattr(cluster_cmd, "console", Console(file=out, width=200))
    decision = {"replicas": 1, "reason": "1 requests in flight, target 4 per replica", "load": {}}
    cluster_cmd._print_status(_status(decision=decision))
    text = out.getvalue()
    assert "target digits@production, serving digits@1" in text
    assert "autoscaler: 1 replica - " in text
