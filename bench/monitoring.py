"""Security and monitoring: what they cost in throughput, and how fast drift is caught on real shifts.

    python bench/monitoring.py overhead      # c=64 throughput: everything off vs auth + rate limit + log + detectors
    python bench/monitoring.py overhead --together   # the same, the three servers loaded at once on one CPU
    python bench/monitoring.py drift         # false alarms on clean digits; inputs until the alert per shift
    python bench/monitoring.py               # both

The model is the one `kaon quickstart` serves: DigitsCNN trained with kaon's Trainer on scikit-learn's
digits, registered as `digits@1` with its reference statistics (reference.npz, from the training data).

overhead: three `kaon serve digits@1` side by side (two identical 'off' ones: their difference is the
machine's noise floor); wrk (one thread, keep-alive) POSTs one digit per request at --connections
connections for --duration-s to each in turn, --rounds times; throughput and the server's CPU time
per request (/proc) are recorded:
  off: no token in the registry, no request log, the same model registered without reference.npz
  on:  a token with the predict scope and a rate limit (high enough never to refuse), sent on every
       request; --request-log and drift + outlier detectors at their default caps (100 requests/s each).
--together loads the three at once instead (each pinned to the same CPU, three wrk on the other) and
compares their CPU time per request over the same seconds: the machine's speed, which moved by 1.5x
between adjacent 4-second rounds on this shared host, is then the same for all three.

drift: the same server over HTTP, one digit per request. Clean traffic: held-out digits (the test
split, drawn with replacement) for --clean inputs, counting alerts. Each shift: --reps runs from a
quiet state (clean traffic until every alert resolved), counting shifted inputs until the first alert.
Shifts: rotated 30 degrees, Gaussian noise (sigma 0.3), inverted (1 - x), and MNIST test digits scaled
to 8x8 (from /work/shared/data/mnist when present: the benchmark's only use of it).
Results: tables on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import ServerProcess, free_port, pin_to_cpus, run_wrk  # noqa: E402

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
MNIST = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")

# the model ---------------------------------------------------------------------------------------

def prepare(home: Path) -> dict[str, np.ndarray]:
    """Train DigitsCNN with kaon, register `digits@1` with reference_data= in `home`; return the data."""
    os.environ["KAON_HOME"] = str(home)
    import torch

    import kaon
    from kaon.registry import Registry
    from kaon.training import Trainer
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN
    from kaon.types import Signature, TensorSpec

    x_train, y_train, x_test, y_test = load_digits(seed=0)
    model = DigitsCNN()
    trainer = Trainer(model, optimizer="adam", loss="cross_entropy", metrics=["accuracy"], lr=3e-3, seed=0,
                      track=False)
    trainer.fit(x_train, y_train, epochs=12, batch_size=32, verbose=False)
    accuracy = trainer.evaluate(x_test, y_test)["accuracy"]
    served = torch.nn.Sequential(model.eval(), torch.nn.Softmax(dim=1))
    signature = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                          [TensorSpec("probabilities", "float32", (-1, 10))])
    with Registry() as registry:  # as `kaon quickstart` registers it
        kaon.register(served, "digits", input_example=x_test[:2], signature=signature,
                      metrics={"test_accuracy": float(accuracy)}, reference_data=x_train, registry=registry)
    print(f"digits@1: DigitsCNN, test accuracy {accuracy:.3f}, reference from {len(x_train)} training digits")
    return {"x_train": x_train, "x_test": x_test}


def shifted(x: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    from scipy.ndimage import rotate

    rng = np.random.default_rng(seed)
    shifts = {
        "rotated 30 deg": np.stack([rotate(im[0], 30.0, reshape=False, order=1)[None] for im in x]).astype(np.float32),
        "noisy (sigma 0.3)": np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1).astype(np.float32),
        "inverted": (1.0 - x).astype(np.float32),
    }
    if MNIST.exists():
        shifts["MNIST scaled to 8x8"] = mnist_8x8(2000)
    return shifts


def mnist_8x8(count: int) -> np.ndarray:
    """MNIST test digits, area-averaged from 28x28 to 8x8 and scaled to [0, 1] like the bundled digits."""
    from PIL import Image

    with gzip.open(MNIST) as fh:
        raw = np.frombuffer(fh.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:count]
    small = np.stack([np.asarray(Image.fromarray(im).resize((8, 8), Image.BOX), dtype=np.float32) for im in raw])
    small /= np.maximum(small.max(axis=(1, 2), keepdims=True), 1.0)
    return small[:, None]


# servers -----------------------------------------------------------------------------------------

def unmonitored_home(home: Path, dest: Path) -> Path:
    """A KAON_HOME at `dest` holding the same `digits@1` as `home`, registered without reference.npz: `kaon serve`
    of it runs no detectors (a version without a reference is not monitored)."""
    from kaon.monitoring import REFERENCE_FILENAME
    from kaon.registry import Registry

    previous = os.environ.get("KAON_HOME")
    try:
        with Registry() as registry:
            record = registry.get_version("digits@1")
            folder = registry.materialize(record)
        files = {name: folder / name for name in record.files if name != REFERENCE_FILENAME}
        os.environ["KAON_HOME"] = str(dest)
        with Registry() as registry:
            registry.register_version("digits", files, framework=record.framework, signature=record.signature,
                                      metrics=record.metrics)
    finally:
        os.environ["KAON_HOME"] = previous if previous is not None else str(home)
    return dest


def start(home: Path, name: str, args: list[str], body: bytes, token: str | None, *,
          monitored: bool = True) -> ServerProcess:
    port = free_port()
    server = ServerProcess(name, [sys.executable, "-m", "kaon.cli", "serve", "digits@1",
                                  "--port", str(port), "--max-queue", "4096", *args],
                           port=port, log_path=RESULTS / "logs" / f"monitoring-{name}.log",
                           env={"KAON_HOME": str(home), "OMP_NUM_THREADS": "1"})
    server.start()
    deadline = time.monotonic() + 120
    import httpx

    headers = {"authorization": f"Bearer {token}"} if token else {}

    def wait_for(ok: Callable[[], bool]) -> None:
        while True:
            try:
                if ok():
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or (server.proc is not None and server.proc.poll() is not None):
                server.stop()
                raise RuntimeError(f"{name} did not start; see {server.log_path}")
            time.sleep(0.3)

    wait_for(lambda: httpx.post(server.predict_url, content=body, timeout=5,
                                headers={**headers, "content-type": "application/json"}).status_code == 200)
    if monitored:  # the monitor calibrates its thresholds in the background: measure once that is done
        wait_for(lambda: "kaon_drift_threshold{" in httpx.get(server.url + "/metrics", headers=headers,
                                                               timeout=5).text)
    return server


def wrk(url: str, body: bytes, token: str | None, connections: int, duration_s: float) -> dict[str, float]:
    """`_load.run_wrk` with the token's Authorization header, as the numbers the JSON results keep."""
    result = run_wrk(url, body, connections, duration_s,
                     headers={"Authorization": f"Bearer {token}"} if token else None)
    return {"rps": result.rps, "errors": float(result.errors), "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}


def make_token(home: Path, rate: str) -> str:
    env = {**os.environ, "KAON_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "kaon.cli", "token", "create", "--name", f"bench-{time.time_ns()}",
                           "--scopes", "predict,metrics", "--rate", rate],
                          capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


# overhead ----------------------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(server: ServerProcess, body: bytes, token: str | None, connections: int,
            duration_s: float) -> dict[str, float]:
    """wrk against `server`, with the server's CPU time per answered request over the same seconds."""
    assert server.proc is not None
    before_s = cpu_s(server.proc.pid)
    result = wrk(server.predict_url, body, token, connections, duration_s)
    served = result["rps"] * duration_s
    result["cpu_us_per_request"] = (cpu_s(server.proc.pid) - before_s) / max(served, 1) * 1e6
    return result


def overhead(home: Path, data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    """Three servers side by side, each idle while another is loaded: two identical 'off' ones (their
    difference is the noise floor of this machine) and the 'on' one. wrk visits them in a rotating order,
    round after round, so that all three see the same drifts in machine load. The three are started afresh
    --restarts times (--rounds split between them): unpinned, one process can run up to 25% faster or
    slower than an identical twin for its whole life here, so a single trio measures its processes as much
    as the feature. Two figures: throughput, and the server's CPU time per request (from /proc), which a busy neighbour
    disturbs less. With --together the three are loaded at once instead, on one shared CPU."""
    import shutil

    body = json.dumps({"inputs": [np.round(data["x_test"][0], 4).tolist()]}).encode()
    parts = {"auth", "log", "monitor"} if args.on == "all" else {args.on}
    off_home = unmonitored_home(home, home.parent / (home.name + "-off"))  # never a token: auth stays off
    on_home = home.parent / (home.name + "-on")
    shutil.copytree(home if "monitor" in parts else off_home, on_home)
    token = make_token(on_home, "1000000/s") if "auth" in parts else None
    on_args = (["--request-log", str(on_home / "requests.jsonl")] if "log" in parts else []) + os.environ.get(
        "BENCH_ON_EXTRA", "").split()
    if args.together and not args.default_caps:
        # Sharing one CPU three ways, each server answers about a third of the requests it would alone, while the
        # request log and the monitor take a fixed number of requests a second (their caps, 100/s each by default).
        # A third of each cap keeps the share of requests they observe what it is for a server alone.
        on_args += ["--request-log-max-per-s", str(round(100 / 3)), "--monitor-max-per-s", str(round(100 / 3))]
    tokens = {"off": None, "off-b": None, "on": token}
    order = list(tokens)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in tokens}
    restarts = max(1, min(args.restarts, args.rounds))
    round_index = 0
    try:
        for trio in range(restarts):
            servers: dict[str, ServerProcess] = {}
            try:
                servers["off"] = start(off_home, "overhead-off", [], body, None, monitored=False)
                servers["off-b"] = start(off_home, "overhead-off-b", [], body, None, monitored=False)
                servers["on"] = start(on_home, "overhead-on", on_args, body, token, monitored="monitor" in parts)
                for mode, server in servers.items():
                    measure(server, body, tokens[mode], args.connections, 3.0)  # warm-up
                for _ in range(args.rounds // restarts + (trio < args.rounds % restarts)):
                    modes = order[round_index % 3:] + order[:round_index % 3]
                    loads = [(servers[mode], body, tokens[mode], args.connections, args.duration_s) for mode in modes]
                    if args.together:  # the three loaded at once, sharing one CPU: the same machine for each
                        with concurrent.futures.ThreadPoolExecutor(len(loads)) as pool:
                            results = list(pool.map(lambda load: measure(*load), loads))
                    else:
                        results = [measure(*load) for load in loads]
                    for mode, result in zip(modes, results, strict=True):
                        result["trio"] = trio
                        runs[mode].append(result)
                        print(f"  round {round_index + 1:2d} {mode:5s}: {result['rps']:8.0f} req/s"
                              f"  p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms"
                              f"  cpu {result['cpu_us_per_request']:.0f} us/request"
                              f"  errors {result['errors']:.0f}  (servers #{trio + 1})", flush=True)
                    round_index += 1
            finally:
                for server in servers.values():
                    server.stop()
    finally:
        for folder in (off_home, on_home):
            shutil.rmtree(folder, ignore_errors=True)
    median = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in runs.items()}

    def paired(mode: str, key: str) -> float:  # per round, against the mean of the two 'off' servers
        return statistics.median(r[key] / ((a[key] + b[key]) / 2)
                                 for r, a, b in zip(runs[mode], runs["off"], runs["off-b"], strict=True))

    throughput_cost = 1.0 - paired("on", "rps")
    cpu_cost = paired("on", "cpu_us_per_request") - 1.0
    noise = abs(1.0 - statistics.median(a["rps"] / b["rps"] for a, b in zip(runs["off"], runs["off-b"], strict=True)))
    print(f"\nc={args.connections}, {round_index} rounds of {args.duration_s:g} s on {restarts} fresh sets of "
          f"servers: off {median['off']['rps']:.0f} / {median['off-b']['rps']:.0f} req/s, "
          f"on {median['on']['rps']:.0f} req/s")
    print(f"cost of {'auth + rate limit + request log + detectors' if args.on == 'all' else args.on}: "
          f"throughput {throughput_cost:+.1%}, "
          f"CPU per request {cpu_cost:+.1%} (budget 10%); noise floor (off vs its twin) {noise:.1%}")
    return {"connections": args.connections, "duration_s": args.duration_s, "on": args.on, "restarts": restarts,
            "runs": runs, "median": median, "throughput_cost": throughput_cost, "cpu_cost": cpu_cost,
            "noise_floor": noise}


# drift -------------------------------------------------------------------------------------------

class Probe:
    """Sends digits one per request and reads the monitor's state from /metrics."""

    def __init__(self, url: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=url, timeout=30, limits=httpx.Limits(max_connections=16))
        self.seen = 0

    def send(self, x: np.ndarray) -> None:
        from concurrent.futures import ThreadPoolExecutor

        bodies = [json.dumps({"inputs": [np.round(item, 4).tolist()]}) for item in x]
        with ThreadPoolExecutor(8) as pool:
            for answer in pool.map(lambda b: self.client.post("/predict", content=b,
                                                              headers={"content-type": "application/json"}), bodies):
                assert answer.status_code == 200, answer.text
        self.seen += len(x)
        deadline = time.monotonic() + 60
        while self.metrics().get(("kaon_monitor_inputs_total", ""), 0) < self.seen:
            if time.monotonic() > deadline:
                raise RuntimeError("the monitor fell behind by more than 60 s")
            time.sleep(0.05)

    def metrics(self) -> dict[tuple[str, str], float]:
        from prometheus_client.parser import text_string_to_metric_families

        out = {}
        for family in text_string_to_metric_families(self.client.get("/metrics").text):
            for s in family.samples:
                out[(s.name, s.labels.get("detector", ""))] = float(s.value)
        return out

    def firing(self) -> list[str]:
        return [d for (name, d), v in self.metrics().items() if name == "kaon_drift_alert" and v == 1.0]

    def alerts(self) -> float:
        return sum(v for (name, _), v in self.metrics().items() if name == "kaon_alerts_total")


def drift(home: Path, data: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    x_test = data["x_test"]
    body = json.dumps({"inputs": [np.round(x_test[0], 4).tolist()]}).encode()
    server = start(home, "drift", ["--monitor-max-per-s", "100000"], body, None)  # every input watched
    rng = np.random.default_rng(0)
    try:
        probe = Probe(server.url)
        probe.send(x_test[:1])
        evaluations_before = probe.metrics()
        alerts_before = probe.alerts()
        for _ in range(0, args.clean, 200):
            probe.send(x_test[rng.integers(0, len(x_test), 200)])
        clean_alerts = probe.alerts() - alerts_before
        after = probe.metrics()
        stride = 20
        evaluations = (args.clean // stride) * sum(1 for (n, _) in after if n == "kaon_drift_threshold")
        print(f"clean held-out digits: {clean_alerts:.0f} alerts in {args.clean} requests "
              f"(~{evaluations} detector evaluations)", flush=True)
        del evaluations_before
        until: dict[str, list[int]] = {}
        which: dict[str, list[list[str]]] = {}
        for name, shifted_x in shifted(x_test).items():
            until[name], which[name] = [], []
            for _ in range(args.reps):
                quiet_deadline = probe.seen + 2000
                while probe.firing():
                    if probe.seen > quiet_deadline:
                        raise RuntimeError(f"alerts did not resolve on clean traffic before {name}")
                    probe.send(x_test[rng.integers(0, len(x_test), 40)])
                sent = 0
                while not probe.firing():
                    if sent >= 2000:
                        break
                    probe.send(shifted_x[rng.integers(0, len(shifted_x), 10)])
                    sent += 10
                until[name].append(sent)
                which[name].append(probe.firing())
            print(f"{name:22s} requests until alert: {until[name]} (median {statistics.median(until[name]):.0f}); "
                  f"first detectors: {which[name][0]}", flush=True)
    finally:
        server.stop()
    return {"clean_requests": args.clean, "clean_alerts": clean_alerts, "clean_evaluations": evaluations,
            "until_alert": until, "detectors": which, "window": 200, "stride": stride}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", choices=["overhead", "drift", "all"], default="all")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--restarts", type=int, default=4,
                        help="overhead: start the three servers afresh this many times (rounds split between them)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--on", choices=["all", "auth", "log", "monitor"], default="all",
                        help="what the 'on' server of `overhead` turns on (default: all of it)")
    parser.add_argument("--clean", type=int, default=6000, help="clean requests for the false-alarm count")
    parser.add_argument("--reps", type=int, default=3, help="runs per shift")
    parser.add_argument("--together", action="store_true",
                        help="overhead: load the three servers at once, all pinned to one CPU, each round (the "
                             "same machine conditions for each; compare their CPU per request). The 'on' server's "
                             "request log and monitor caps become a third of their defaults, so that they observe "
                             "the share of requests they would alone (--default-caps: keep the defaults)")
    parser.add_argument("--default-caps", action="store_true",
                        help="overhead --together: keep the default caps (the observers then take three times "
                             "their standalone share of requests: an upper bound)")
    parser.add_argument("--no-pin", action="store_true",
                        help="overhead: let the scheduler place servers and wrk (default: each server on one "
                             "CPU, wrk on another)")
    args = parser.parse_args()
    if args.what in ("overhead", "all") and not args.no_pin and not pin_to_cpus():
        print("not pinned: needs two CPUs and taskset (util-linux)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kaon-bench-monitoring-") as tmp:
        home = Path(tmp)
        data = prepare(home)
        results: dict[str, Any] = {"machine": platform.platform(), "cpus": os.cpu_count(),
                                   "load_average_before": load_before}
        if args.what in ("overhead", "all"):
            results["overhead"] = overhead(home, data, args)
        if args.what in ("drift", "all"):
            results["drift"] = drift(home, data, args)
    results["load_average_after"] = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {results['load_average_after'][0]:.2f} "
          f"(2 shared cores: figures are noisy)")
    out = RESULTS / f"monitoring-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2, default=float))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
