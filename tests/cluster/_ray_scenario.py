"""Run inside `unshare --net --pid --fork --mount-proc` by test_ray_backend.py: a real two-node Ray
cluster on loopback (its own network and PID namespaces: 127.0.0.1 stays 127.0.0.1, and every Ray
process dies with this script), kaon's Ray backend deploying onto it, a node killed under load.

Prints one line `RESULT {json}` for the test to check. Usage: python _ray_scenario.py MODEL.onnx
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx

HEAD = "127.0.0.1:6379"
BODY = {"inputs": [[[[0.0] * 8] * 8]]}


def ray_start(*args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start ... --block` as a child we stop by PID (never `ray stop`)."""
    command = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())",
               "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1", *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_nodes(ray, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for n in ray.nodes() if n["Alive"]) >= count:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{count} Ray nodes not alive after {timeout_s} s")


def main() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    model = sys.argv[1]
    token = secrets.token_hex(32)
    from kaon.cluster.backends import ray as backend

    env = backend.environment_for_nodes(token)
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")})
    temp = tempfile.mkdtemp(prefix="kr-", dir="/tmp")
    result: dict = {}
    started = time.monotonic()
    head = ray_start("--head", "--port", "6379", "--include-dashboard=false", "--num-cpus", "2",
                     "--temp-dir", temp, env=env)
    second = ray_start("--address", HEAD, "--num-cpus", "2", "--resources", '{"second": 1}', env=env)
    import ray

    from kaon.cluster.deployment import Deployment

    time.sleep(2)
    backend.connect(HEAD)
    wait_nodes(ray, 2, 120)
    result["cluster_up_s"] = round(time.monotonic() - started, 2)

    # 1. deploy: two replicas that need 1.5 cpus each, so one lands on each 2-cpu node
    spec = Deployment(name="digits", target=model, backend="ray", address=HEAD, replicas=2,
                      autoscaling={"policy": "fixed"}, resources={"cpus": 1.5, "memory_mb": 256})
    t = time.monotonic()
    status = backend.deploy_to_ray(spec, timeout_s=240)
    result["deploy_s"] = round(time.monotonic() - t, 2)
    result["deployed"] = status
    url = status["url"] + "/predict"
    first = httpx.post(url, json=BODY, timeout=30)
    result["first_status"] = first.status_code
    result["first_labels"] = len(first.json()[0]["probabilities"]) if first.status_code == 200 else first.text[:300]
    # GCS's actor table (the state API needs the dashboard, which is off)
    actors = ray._private.state.actors().values()
    replica_nodes = {a["Address"]["NodeID"] for a in actors
                     if a["State"] == "ALIVE" and "ServeReplica" in a.get("ActorClassName", "")}
    result["replica_nodes"] = len(replica_nodes)

    # 2. scale to 1 and back to 2
    t = time.monotonic()
    backend.scale_on_ray(spec, 1)
    result["scaled_down"] = backend.ray_status("digits")["replicas"]
    backend.scale_on_ray(spec, 2)
    result["scaled_up"] = backend.ray_status("digits")["replicas"]
    result["scale_s"] = round(time.monotonic() - t, 2)

    # 3. kill the second node (its raylet and everything under it) under load
    outcomes: list[tuple[float, int]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    outcomes.append((time.monotonic(), client.post(url, json=BODY).status_code))
                except httpx.HTTPError:
                    outcomes.append((time.monotonic(), -1))

    workers = [threading.Thread(target=load) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    killed_at = time.monotonic()
    os.killpg(second.pid, signal.SIGKILL)
    time.sleep(8)
    stop.set()
    for worker in workers:
        worker.join()
    after = [code for at, code in outcomes if at > killed_at + 5]
    result["load_requests"] = len(outcomes)
    result["load_failed"] = sum(code != 200 for _, code in outcomes)
    result["failed_5s_after_kill"] = sum(code != 200 for code in after)
    result["ok_after_kill"] = sum(code == 200 for code in after)

    # 4. recovery: once Ray has declared the node dead, a new node joins and Serve puts the lost replica on it
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum(1 for n in ray.nodes() if n["Alive"]) > 1:
        time.sleep(0.5)
    result["node_declared_dead_s"] = round(time.monotonic() - killed_at, 2)
    # ...and once Serve has noticed that the replica there is gone
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and backend.ray_status("digits")["replicas"] == {"RUNNING": 2}:
        time.sleep(0.5)
    result["serve_noticed_s"] = round(time.monotonic() - killed_at, 2)
    result["replicas_after_node_death"] = backend.ray_status("digits")["replicas"]
    response = httpx.post(url, json=BODY, timeout=30)
    result["served_after_node_death"] = response.status_code
    if response.status_code != 200:
        result["error_after_node_death"] = response.text[:500]
    third = ray_start("--address", HEAD, "--num-cpus", "2", env=env)
    t = time.monotonic()
    deadline = t + 240
    while time.monotonic() < deadline:
        if backend.ray_status("digits")["replicas"].get("RUNNING", 0) >= 2:
            break
        time.sleep(0.5)
    last = backend.ray_status("digits")
    result["recovered_replicas"] = last["replicas"]
    result["recovery_message"] = last["message"][:500]
    result["nodes_alive"] = sum(1 for n in ray.nodes() if n["Alive"])
    result["recovery_s"] = round(time.monotonic() - t, 2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        result["after_recovery"] = httpx.post(url, json=BODY, timeout=30).status_code
        if result["after_recovery"] == 200:
            break
        time.sleep(0.5)

    backend.delete_from_ray("digits", HEAD)

    # 5. the CLI: kaon deploy --address (the Ray backend), status, stop
    kaon = [sys.executable, "-c", "import sys, kaon.cli.cluster_cmd; from kaon.cli.app import main; "
            "sys.argv[0] = 'kaon'; main()"]
    deployed = subprocess.run([*kaon, "deploy", model, "--name", "cli", "--address", HEAD, "--min-replicas", "1",
                               "--max-replicas", "2", "--json"], capture_output=True, text=True, timeout=240)
    result["cli_deploy"] = json.loads(deployed.stdout) if deployed.returncode == 0 else deployed.stderr[-1000:]
    status = subprocess.run([*kaon, "status", "cli", "--json"], capture_output=True, text=True, timeout=120)
    result["cli_status"] = json.loads(status.stdout) if status.returncode == 0 else status.stderr[-1000:]
    result["cli_predict"] = httpx.post("http://127.0.0.1:8000/cli/predict", json=BODY, timeout=30).status_code
    stopped = subprocess.run([*kaon, "stop", "cli"], capture_output=True, text=True, timeout=120)
    result["cli_stop"] = stopped.stdout.strip() or stopped.stderr[-500:]
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    for process in (third, head):
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
