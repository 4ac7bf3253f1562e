"""Scaling benchmarks for kaon.cluster: cold start, reaction to a load step, replica loss, router vs
SO_REUSEPORT, and the predictive vs the reactive autoscaler (replayed trace, then live on loopback).

    python bench/scaling.py                          # everything, ~15 min on 2 shared cores
    python bench/scaling.py --only cold,step,kill    # some of it
    python bench/scaling.py --quick                  # fewer repetitions, a shorter live run

Everything runs on 127.0.0.1, bounded in requests and time; every process started here is stopped by
its PID. The machine's load average is recorded beside the figures (the cores are shared: figures are
noisy). Results: bench/results/scaling/scaling.json; the summary goes to BENCHMARKS.md (scaling) by hand.

The model is kaon's DigitsCNN trained 3 epochs on scikit-learn's digits with kaon.training, exported to
ONNX and registered as `digits`; replicas serve `digits@latest`. The live autoscaler run serves a
Service that sleeps 100 ms per call, one call at a time (~10 req/s per replica, no CPU): on 2 shared
cores a CPU-bound model cannot show what more replicas buy, a replica with a fixed capacity can.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "scaling"
BODY = json.dumps({"inputs": [[[[0.0] * 8] * 8]]}).encode()
SLOW_SERVICE = '''
import asyncio

import kaon


class Slow(kaon.Service):
    """Stands in for an accelerator-bound model: 100 ms per call, one call at a time, no CPU used."""

    @kaon.endpoint(max_batch_size=1, max_wait_ms=0)
    async def predict(self, inputs: list[float]) -> list[float]:
        await asyncio.sleep(0.1)
        return [x * 2 for x in inputs]
'''
REUSEPORT_REPLICA = '''
import socket, sys
import uvicorn
from kaon.config import ServeConfig
from kaon.serving import KaonApp
from kaon.serving.targets import resolve_target

port, target = int(sys.argv[1]), sys.argv[2]
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", port))
sock.listen(1024)
app = KaonApp(resolve_target(target, name="digits"), ServeConfig(port=port, name="digits"))
uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", http="httptools",
                              loop="uvloop")).run(sockets=[sock])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} (load {load_average()[0]})", flush=True)


# ---- the model -----------------------------------------------------------------------------------


def prepare_digits() -> tuple[Path, str]:
    """Train DigitsCNN 3 epochs with kaon.training, export ONNX, register it: (onnx file, 'digits@latest')."""
    import warnings

    import torch

    import kaon
    from kaon.training import Trainer
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN

    x_train, y_train, x_test, y_test = load_digits(seed=0)
    model = DigitsCNN()
    trainer = Trainer(model, optimizer="adam", loss="cross_entropy", metrics=["accuracy"], lr=3e-3, seed=0,
                      run_name="bench-scaling-digits")
    trainer.fit(x_train, y_train, epochs=3, batch_size=32, verbose=False)
    accuracy = float(trainer.evaluate(x_test, y_test)["accuracy"])
    path = RESULTS / "digits.onnx"
    served = torch.nn.Sequential(model.eval(), torch.nn.Softmax(dim=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(served, (torch.from_numpy(x_test[:2]),), str(path), input_names=["image"],
                          output_names=["probabilities"], dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}},
                          dynamo=False)
    version = kaon.register(path, "digits", metrics={"test_accuracy": accuracy})
    log(f"digits trained 3 epochs (test accuracy {accuracy:.3f}), registered as {version.ref}")
    return path, "digits@latest"


# ---- processes -----------------------------------------------------------------------------------


class Plane:
    """A control plane in a subprocess for this KAON_HOME, with its client."""

    def __init__(self) -> None:
        from kaon.cluster.client import ControlPlaneClient

        with open(RESULTS / "controlplane.log", "ab") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kaon.cluster.controlplane", "--port", str(free_port()), "--cpus", "8",
                 "--memory-mb", "16384", "--log-level", "warning"],
                stdout=output, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        self.client = None
        while self.client is None and time.monotonic() < deadline:
            self.client = ControlPlaneClient._find()
            time.sleep(0.05)
        if self.client is None:
            self.stop()
            raise RuntimeError("control plane did not start")

    def wait_ready(self, name: str, count: int, timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.client.status(name)
            if status["ready"] >= count:
                return status
            time.sleep(0.05)
        raise RuntimeError(f"{name}: {count} replicas not ready in {timeout_s} s")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn(args: list[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready in {timeout_s} s")


def spec(name: str, target: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "target": target, "port": free_port(), "resources": {"cpus": 0.25, "memory_mb": 256},
            **fields}


# ---- load ------------------------------------------------------------------------------------------


async def closed_loop(url: str, body: bytes, clients: int, duration_s: float,
                      on_start: Any = None) -> list[tuple[float, int, str]]:
    """`clients` connections posting back to back for `duration_s`; (time, status or -1, replica) each."""
    outcomes: list[tuple[float, int, str]] = []
    end = time.monotonic() + duration_s

    async def client() -> None:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            while time.monotonic() < end:
                try:
                    response = await http.post(url, content=body, headers={"content-type": "application/json"})
                    replica = response.headers.get("x-kaon-replica", "")
                    outcomes.append((time.monotonic(), response.status_code, replica))
                except httpx.HTTPError as exc:
                    outcomes.append((time.monotonic(), -1, type(exc).__name__))

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    if on_start is not None:
        await on_start()
    await asyncio.gather(*tasks)
    return outcomes


async def open_loop(url: str, body: bytes, arrivals: np.ndarray, timeout_s: float = 30) -> list[tuple[float, float]]:
    """Fire one request at each arrival time (seconds from now), whatever the answers: (arrival, latency or inf)."""
    results: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, trust_env=False) as http:
        start = time.monotonic()

        async def one(at: float) -> None:
            sent = time.monotonic()
            try:
                response = await http.post(url, content=body, headers={"content-type": "application/json"})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            results.append((at, time.monotonic() - sent if ok else float("inf")))

        tasks = []
        for at in arrivals:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(float(at))))
        await asyncio.gather(*tasks)
    return results


# ---- 1. cold start -------------------------------------------------------------------------------


def bench_cold_start(target: str, onnx: Path, repeats: int) -> dict[str, Any]:
    """Process start to first answered /predict, for `kaon serve digits@latest` and the ONNX file."""
    out: dict[str, Any] = {}
    for label, what in (("registry ref", target), ("onnx file", str(onnx))):
        times = []
        for _ in range(repeats):
            port = free_port()
            started = time.monotonic()
            proc = spawn([sys.executable, "-m", "kaon.cli", "serve", what, "--port", str(port)])
            try:
                while True:
                    try:
                        if httpx.post(f"http://127.0.0.1:{port}/predict", content=BODY, timeout=2,
                                      headers={"content-type": "application/json"}).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() - started > 60:
                        raise RuntimeError("replica did not answer in 60 s")
                    time.sleep(0.01)
                times.append(time.monotonic() - started)
            finally:
                stop(proc)
        out[label] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
                      "max_s": round(max(times), 3), "runs": [round(t, 3) for t in times]}
        log(f"cold start ({label}): median {out[label]['median_s']} s over {repeats}")
    return out


# ---- 2. reaction to a load step ------------------------------------------------------------------


def bench_load_step(target: str, repeats: int) -> dict[str, Any]:
    """A load step (wrk, 0 -> 16 connections): time until a second replica has served a request.

    wrk, not a Python client: a Python client holds only ~2 requests in flight against a 5 ms replica,
    which is not a step one replica cannot take."""
    import threading

    sys.path.insert(0, str(ROOT))
    from _load import run_wrk

    out: dict[str, Any] = {}
    plane = Plane()
    try:
        for warm in (0, 1):
            reactions = []
            for i in range(repeats):
                name = f"step-{warm}-{i}"
                created = plane.client.deploy(spec(name, target, min_replicas=1, max_replicas=2,
                                                   num_warm_replicas=warm,
                                                   autoscaling={"target_in_flight": 2, "downscale_delay_s": 60}))
                plane.wait_ready(name, 1)
                deadline = time.monotonic() + 30
                while warm and sum(r["state"] == "warm" for r in plane.client.status(name)["replicas"]) < 1:
                    if time.monotonic() > deadline:
                        raise RuntimeError("warm replica not ready")
                    time.sleep(0.05)
                load = threading.Thread(target=run_wrk, args=(created["url"] + "/predict", BODY, 16, 12.0))
                started = time.monotonic()
                load.start()
                reaction = None
                while load.is_alive() and reaction is None:
                    status = plane.client.status(name)
                    if any(r["index"] != 0 and r.get("served", 0) > 0 for r in status["replicas"]):
                        reaction = round(time.monotonic() - started, 3)
                    time.sleep(0.05)
                load.join()
                reactions.append(reaction)
                plane.client.stop(name)
            label = "warm pool of 1" if warm else "no warm pool"
            measured = [r for r in reactions if r is not None]
            out[label] = {"median_s": round(statistics.median(measured), 3) if measured else None,
                          "runs": reactions}
            log(f"load step ({label}): second replica serving after {out[label]['median_s']} s {reactions}")
    finally:
        plane.stop()
    return out


# ---- 3. a replica killed under load --------------------------------------------------------------


def bench_kill(target: str, repeats: int) -> dict[str, Any]:
    """4 clients for 6 s against 2 replicas; one replica SIGKILLed at 2 s. Router vs SO_REUSEPORT."""
    out: dict[str, Any] = {"router": [], "so_reuseport": []}
    plane = Plane()
    try:
        for i in range(repeats):
            name = f"kill-{i}"
            created = plane.client.deploy(spec(name, target, replicas=2, autoscaling={"policy": "fixed"}))
            status = plane.wait_ready(name, 2)
            victim = status["replicas"][0]["pid"]

            async def kill_later(pid: int = victim) -> None:
                await asyncio.sleep(2.0)
                os.kill(pid, signal.SIGKILL)

            outcomes = asyncio.run(closed_loop(created["url"] + "/predict", BODY, 4, 6.0, on_start=kill_later))
            out["router"].append({"requests": len(outcomes), "failed": sum(s != 200 for _, s, _ in outcomes)})
            plane.client.stop(name)
    finally:
        plane.stop()
    for _ in range(repeats):
        port = free_port()
        procs = [spawn([sys.executable, "-c", REUSEPORT_REPLICA, str(port), target]) for _ in range(2)]
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            time.sleep(1.0)  # let the second replica bind too

            async def kill_later(pid: int = procs[0].pid) -> None:
                await asyncio.sleep(2.0)
                os.kill(pid, signal.SIGKILL)

            outcomes = asyncio.run(closed_loop(f"http://127.0.0.1:{port}/predict", BODY, 4, 6.0, on_start=kill_later))
            out["so_reuseport"].append({"requests": len(outcomes), "failed": sum(s != 200 for _, s, _ in outcomes)})
        finally:
            for proc in procs:
                stop(proc)
    log(f"replica killed under load: router failed {[r['failed'] for r in out['router']]}, "
        f"SO_REUSEPORT failed {[r['failed'] for r in out['so_reuseport']]}")
    return out


# ---- 4. router vs SO_REUSEPORT throughput ---------------------------------------------------------


def bench_router(target: str, duration_s: float) -> dict[str, Any]:
    """wrk against 2 replicas behind kaon's router, 2 SO_REUSEPORT replicas, and 1 replica direct."""
    sys.path.insert(0, str(ROOT))
    from _load import run_wrk  # the serving benchmarks' wrk wrapper

    out: dict[str, Any] = {}
    plane = Plane()
    try:
        created = plane.client.deploy(spec("router", target, replicas=2, autoscaling={"policy": "fixed"}))
        status = plane.wait_ready("router", 2)
        for connections in (16, 64):
            out[f"router c{connections}"] = vars(run_wrk(created["url"] + "/predict", BODY, connections, duration_s))
            direct = f"http://127.0.0.1:{status['replicas'][0]['port']}/predict"
            out[f"one replica direct c{connections}"] = vars(run_wrk(direct, BODY, connections, duration_s))
        plane.client.stop("router")
    finally:
        plane.stop()
    port = free_port()
    procs = [spawn([sys.executable, "-c", REUSEPORT_REPLICA, str(port), target]) for _ in range(2)]
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        time.sleep(1.5)
        for connections in (16, 64):
            out[f"so_reuseport c{connections}"] = vars(run_wrk(f"http://127.0.0.1:{port}/predict", BODY, connections,
                                                               duration_s))
    finally:
        for proc in procs:
            stop(proc)
    for key, value in out.items():
        log(f"{key}: {value['rps']:.0f} req/s, p99 {value['p99_ms']:.1f} ms, errors {value['errors']}")
    return out


# ---- 5. predictive vs reactive ------------------------------------------------------------------


def bench_simulated(cold_start_s: float) -> dict[str, Any]:
    """The replayed bursty trace (30 min, a burst every 2 min), five seeds."""
    from kaon.cluster.policy import ScalingConfig
    from kaon.cluster.simulate import DeploymentModel, bursty_trace, simulate

    rows = []
    for seed in range(5):
        trace = bursty_trace(1800.0, seed=seed)
        model = DeploymentModel(cold_start_s=cold_start_s, capacity_rps=30, slo_ms=250)
        common = dict(min_replicas=1, max_replicas=8, target_in_flight=2, downscale_delay_s=15, capacity_rps=30)
        reactive = simulate(trace, ScalingConfig(policy="reactive", **common), model, seed=seed)
        predictive = simulate(trace, ScalingConfig(policy="predictive", **common), model, seed=seed)
        rows.append({"seed": seed, "reactive": reactive.summary(), "predictive": predictive.summary(),
                     "violations_cut": round(1 - predictive.slo_violations / max(reactive.slo_violations, 1), 3),
                     "replica_seconds_more": round(predictive.replica_seconds / reactive.replica_seconds - 1, 3)})
        log(f"simulated seed {seed}: predictive cuts SLO violations {rows[-1]['violations_cut']:.0%} "
            f"at {rows[-1]['replica_seconds_more']:+.1%} replica-seconds")
    return {"cold_start_s": cold_start_s, "runs": rows}


async def _live_run(plane: Plane, name: str, url: str, body: bytes, arrivals: np.ndarray, duration_s: float,
                    timeline: list[tuple[float, int, int]]) -> list[tuple[float, float]]:
    """The open-loop load, with the deployment's replica count sampled every second into `timeline`."""
    began = time.monotonic()

    async def watch() -> None:
        while time.monotonic() - began < duration_s:
            status = await asyncio.to_thread(plane.client.status, name)
            timeline.append((round(time.monotonic() - began, 2), len(status["replicas"]), status["ready"]))
            await asyncio.sleep(1.0)

    watcher = asyncio.create_task(watch())
    results = await open_loop(url, body, arrivals)
    await watcher
    return results


def bench_live(quick: bool) -> dict[str, Any]:
    """Bursty open-loop load (a burst every 30 s) on the 100 ms service, reactive then predictive."""
    service = RESULTS / "slow_service.py"
    service.write_text(SLOW_SERVICE)
    period, burst, base_rps, burst_rps = 30.0, 8.0, 4.0, 30.0
    duration = 150.0 if quick else 240.0
    rng = np.random.default_rng(0)
    rates = [burst_rps if (t % period) >= period / 2 and (t % period) < period / 2 + burst else base_rps
             for t in np.arange(0, duration, 1.0)]
    counts = rng.poisson(rates)
    arrivals = np.sort(np.concatenate([t + rng.uniform(0, 1, c) for t, c in enumerate(counts)]))
    body = b'{"inputs": [1.0]}'
    slo_s = 0.3
    out: dict[str, Any] = {"period_s": period, "burst_s": burst, "base_rps": base_rps, "burst_rps": burst_rps,
                           "duration_s": duration, "requests": len(arrivals), "slo_ms": slo_s * 1000}
    plane = Plane()
    try:
        for policy in ("reactive", "predictive"):
            name = f"live-{policy}"
            created = plane.client.deploy(spec(
                name, f"{service}:Slow", min_replicas=1, max_replicas=4,
                autoscaling={"policy": policy, "target_in_flight": 1, "downscale_delay_s": 10, "capacity_rps": 9}))
            plane.wait_ready(name, 1)
            timeline: list[tuple[float, int, int]] = []
            results = asyncio.run(_live_run(plane, name, created["url"] + "/predict", body, arrivals, duration,
                                            timeline))
            latencies = np.array([latency for _, latency in results])
            late = np.array([at for at, latency in results if latency > slo_s])
            warmup = 2 * period + period / 2  # bursts after the forecaster has seen two periods
            replica_seconds = sum(processes for _, processes, _ in timeline)  # one sample per second
            out[policy] = {
                "slo_violations": int((latencies > slo_s).sum()), "failed": int(np.isinf(latencies).sum()),
                "slo_violations_after_warmup": int((late >= warmup).sum()),
                "replica_seconds": replica_seconds,
                "p50_ms": round(float(np.percentile(latencies[np.isfinite(latencies)], 50)) * 1000, 1),
                "p99_ms": round(float(np.percentile(latencies[np.isfinite(latencies)], 99)) * 1000, 1),
                "timeline": timeline,
            }
            plane.client.stop(name)
            log(f"live {policy}: {out[policy]['slo_violations']} SLO-violating of {len(arrivals)} "
                f"({out[policy]['slo_violations_after_warmup']} after warm-up), {replica_seconds} replica-seconds")
    finally:
        plane.stop()
    return out


# ---- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="cold,step,kill,router,sim,live")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    shutil.rmtree(RESULTS / "home", ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    os.environ["KAON_HOME"] = str(RESULTS / "home")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    repeats = 3 if args.quick else 5
    record: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_before": load_average(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    onnx, target = prepare_digits()
    path = RESULTS / "scaling.json"
    # A partial run (--only) updates its sections and keeps the others from earlier runs.
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    cold = results.get("cold_start", {}).get("registry ref", {}).get("median_s", 2.0)
    sections = [("cold", "cold_start", lambda: bench_cold_start(target, onnx, repeats)),
                ("step", "load_step", lambda: bench_load_step(target, max(2, repeats - 2))),
                ("kill", "replica_killed", lambda: bench_kill(target, max(2, repeats - 2))),
                ("router", "router_vs_reuseport", lambda: bench_router(target, 5.0 if args.quick else 8.0)),
                ("sim", "simulated", lambda: bench_simulated(cold)),
                ("live", "live", lambda: bench_live(args.quick))]
    for part, key, run in sections:
        if part not in parts:
            continue
        before = load_average()
        section = run()
        section["load_average"] = {"before": before, "after": load_average()}
        results[key] = section
        if key == "cold_start":
            cold = section["registry ref"]["median_s"]
    results["machine"] = record
    path.write_text(json.dumps(results, indent=2))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
