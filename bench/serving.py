"""Serving speed: `kaon serve model.onnx` against the servers a user would pick instead.

    python bench/serving.py --setup                 # once: build the peers' virtualenvs (bench/.venvs/)
    python bench/serving.py                         # every server, both models, 3 interleaved rounds
    python bench/serving.py --quick --servers kaon,fastapi,floor-asgi

Every server answers `POST /predict {"inputs": [[...H x W pixels...]]}` with
`[{"probabilities": [10 floats], "label": k}]`, from the same ONNX file run by onnxruntime with the
same session options (kaon/models/onnx.py's), so that only the serving machinery differs:

| server        | what it is                                                         | batching              |
| ------------- | ------------------------------------------------------------------ | --------------------- |
| kaon          | `kaon serve model.onnx`                                            | max 64, wait W ms     |
| fastapi       | plain FastAPI + uvicorn[standard], a sync route (thread pool)      | none                  |
| photon        | leptonai 0.27.3 Photon, `@Photon.handler(max_batch_size, max_wait_time)` | max 64, wait W  |
| litserve      | LitServe, LitAPI(max_batch_size, batch_timeout), fast_queue, 1 worker | max 64, wait W     |
| bentoml       | BentoML, `@bentoml.api(batchable=True)` adaptive batching, 1 worker | max 64, adaptive     |
| ray           | Ray Serve, `@serve.batch`, 1 replica                               | max 64, wait W ms     |
| floor-asgi    | bare ASGI app on uvicorn + httptools + uvloop answering a constant | (HTTP floor)          |
| floor-fastapi | FastAPI async route answering a constant                           | (HTTP floor)          |

Each peer runs in its own virtualenv under bench/.venvs/<name> (requirements in
bench/peers/requirements-<name>.txt, versions recorded in the results). Load: wrk, one thread,
keep-alive connections at each concurrency, on 127.0.0.1 only. A round starts every server once,
in a rotated order, warms it up, measures each concurrency for --duration-s, and stops it; the
table shows the median over rounds. Two limits frame the figures: the HTTP floor (the faster
floor server) and the model alone, in this process, at its best batch size.
Results: a table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import (  # noqa: E402
    LoadResult,
    ServerProcess,
    cpu_busy_s,
    free_port,
    pin_to_cpus,
    post_json,
    require_wrk,
    run_wrk,
    wait_for_quiet,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
MODEL_SERVERS = ["kaon", "fastapi", "photon", "litserve", "bentoml", "ray"]
FLOORS = ["floor-asgi", "floor-fastapi"]
ALL_SERVERS = MODEL_SERVERS + FLOORS
VENV_OF = {"fastapi": "fastapi", "floor-asgi": "fastapi", "floor-fastapi": "fastapi", "photon": "photon",
           "litserve": "litserve", "bentoml": "bentoml", "ray": "ray"}
VERSION_PACKAGES = ["fastapi", "starlette", "uvicorn", "httptools", "uvloop", "pydantic", "leptonai", "litserve",
                    "bentoml", "ray", "onnxruntime", "numpy"]


# the models ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    description: str
    size: int  # input is (N, 1, size, size)


CASES = {
    "small": Case("small", "CNN on 8x8 digits: Conv2d(1,32,3)+ReLU, MaxPool2d(2), Linear(288,64)+ReLU, "
                           "Linear(64,10), Softmax; trained 5 epochs on scikit-learn's digits", 8),
    "heavy": Case("heavy", "wider CNN on 28x28: Conv2d(1,96,3)+ReLU, Conv2d(96,192,3)+ReLU, MaxPool2d(2), "
                           "Linear(27648,128)+ReLU, Linear(128,10), Softmax; random weights", 28),
}


def export_models(folder: Path) -> tuple[dict[str, Path], dict[str, np.ndarray]]:
    """Build both models with torch, export them to ONNX (batch axis dynamic); return paths and sample inputs."""
    import warnings

    import torch
    from torch import nn

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    targets = torch.tensor(digits.target)
    small = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(288, 64),
                          nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.Adam(small.parameters(), lr=3e-3)
    for _ in range(5):
        for start in range(0, len(images), 64):
            loss = nn.functional.cross_entropy(small(images[start:start + 64]), targets[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    heavy = nn.Sequential(nn.Conv2d(1, 96, 3), nn.ReLU(), nn.Conv2d(96, 192, 3), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(192 * 12 * 12, 128), nn.ReLU(), nn.Linear(128, 10))
    samples = {"small": digits.images[0] / 16.0,
               "heavy": np.random.default_rng(0).random((28, 28))}
    paths = {}
    for name, body in (("small", small), ("heavy", heavy)):
        model = nn.Sequential(body, nn.Softmax(dim=1)).eval()
        path = folder / f"digits-{name}.onnx"
        size = CASES[name].size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 1, size, size),), str(path), input_names=["image"],
                              output_names=["probabilities"], dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
        paths[name] = path
    return paths, {k: np.round(v, 4).astype(np.float32) for k, v in samples.items()}


def ort_session(path: Path, num_threads: int) -> Any:
    """The session exactly as kaon (and every peer, bench/peers/_common.py) builds it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def model_alone(path: Path, size: int, num_threads: int, budget_s: float) -> dict[int, float]:
    """Images per second of the bare session at each batch size, in this process (one timed burst each)."""
    session = ort_session(path, num_threads)
    rng = np.random.default_rng(0)
    by_batch: dict[int, float] = {}
    batch_sizes = [1, 2, 4, 8, 16, 32, 64, 128, 256] if size <= 8 else [1, 2, 4, 8, 16, 32, 64, 128]
    for batch_size in batch_sizes:
        feed = {"image": rng.random((batch_size, 1, size, size), dtype=np.float32)}
        session.run(None, feed)
        count, start = 0, time.perf_counter()
        while True:
            session.run(None, feed)
            count += 1
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s / len(batch_sizes) and count >= 2:
                break
        by_batch[batch_size] = count * batch_size / elapsed
    return by_batch


def summarize_alone(rounds: list[dict[int, float]]) -> dict[str, Any]:
    """The model-alone limit: the best batch size's median img/s over rounds."""
    by_batch = {b: statistics.median(r[b] for r in rounds) for b in rounds[0]}
    best = max(by_batch, key=lambda b: by_batch[b])
    return {"img_per_s": by_batch[best], "best_batch_size": best, "batch1_ms": 1e3 / by_batch[1],
            "by_batch_size": by_batch, "rounds": rounds}


# the servers ------------------------------------------------------------------------------------

@dataclass
class Settings:
    max_batch_size: int
    max_wait_ms: float
    num_threads: int
    kaon_workers: int = 1


def server_process(name: str, model: Path, settings: Settings, log_path: Path) -> ServerProcess:
    port = free_port()
    env = {"BENCH_MODEL": str(model), "BENCH_PORT": str(port), "BENCH_MAX_BATCH_SIZE": str(settings.max_batch_size),
           "BENCH_MAX_WAIT_MS": f"{settings.max_wait_ms:g}", "BENCH_NUM_THREADS": str(settings.num_threads),
           "PYTHONPATH": str(PEERS)}
    bin_dir = VENVS / VENV_OF.get(name, "") / "bin"
    uvicorn = [str(bin_dir / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
               "--log-level", "warning"]
    if name == "kaon":
        args = [sys.executable, "-m", "kaon.cli", "serve", str(model), "--port", str(port),
                "--max-batch-size", str(settings.max_batch_size), "--max-wait-ms", f"{settings.max_wait_ms:g}"]
        if settings.kaon_workers > 1:  # kaon shares the cores out between them (cores / N threads each)
            args += ["--workers", str(settings.kaon_workers)]
        env = {"KAON_NUM_THREADS": str(settings.num_threads)} if settings.num_threads else {}
        return ServerProcess(name, args, port, log_path, cwd=ROOT, env=env)
    if name == "fastapi":
        args = [*uvicorn, "fastapi_peer:app"]
    elif name == "floor-asgi":
        args = [*uvicorn, "--http", "httptools", "--loop", "uvloop", "floor_asgi:app"]
    elif name == "floor-fastapi":
        args = [*uvicorn, "floor_fastapi:app"]
    elif name == "bentoml":
        args = [str(bin_dir / "bentoml"), "serve", "bentoml_peer:DigitsService", "--host", "127.0.0.1",
                "--port", str(port)]
    else:  # photon, litserve, ray: a script that starts its own server
        args = [str(bin_dir / "python"), str(PEERS / f"{name}_peer.py")]
    return ServerProcess(name, args, port, log_path, cwd=PEERS, env=env)


def check_answer(name: str, answer: Any, reference: np.ndarray) -> str | None:
    """None when `answer` is [{"probabilities": the reference's, "label": its argmax}], else what is wrong."""
    if name.startswith("floor"):
        return None
    try:
        (row,) = answer
        probabilities = np.asarray(row["probabilities"], dtype=np.float64)
        label = int(row["label"])
    except (TypeError, ValueError, KeyError) as exc:
        return f"answer shape differs ({exc}): {str(answer)[:200]}"
    if probabilities.shape != reference.shape or np.abs(probabilities - reference).max() > 1e-4:
        return f"probabilities differ from the model's: {probabilities.round(4).tolist()}"
    if label != int(reference.argmax()):
        return f"label {label} differs from the model's {int(reference.argmax())}"
    return None


# one benchmark run -------------------------------------------------------------------------------

@dataclass
class Measurement:
    case: str
    server: str
    round: int
    load: LoadResult
    server_cpu_s: float  # CPU time of the server's processes during the run
    machine_cpu_s: float  # CPU time of the whole machine during the run: server + wrk + anything else

    def to_dict(self) -> dict[str, Any]:
        seconds = self.load.duration_s or 1.0
        return {"case": self.case, "server": self.server, "round": self.round, **self.load.to_dict(),
                "server_cores": self.server_cpu_s / seconds, "client_cores": self.load.client_cpu_s / seconds,
                "other_cores": max(0.0, self.machine_cpu_s - self.server_cpu_s - self.load.client_cpu_s) / seconds}


@dataclass
class Run:
    measurements: list[Measurement] = field(default_factory=list)
    startups: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)


def bench_server(run: Run, case: str, name: str, round_index: int, model: Path, body: bytes,
                 reference: np.ndarray, settings: Settings, concurrencies: list[int], duration_s: float,
                 warmup_s: float, log_dir: Path, say: Callable[[str], None], quiet_wait_s: float) -> None:
    waited_s, busy = wait_for_quiet(max_wait_s=quiet_wait_s) if quiet_wait_s > 0 else (0.0, 0.0)
    server = server_process(name, model, settings, log_dir / f"{name}.log")
    try:
        server.start()
        answer = server.wait_ready(body)
        wrong = check_answer(name, answer, reference)
        if wrong is not None:
            raise RuntimeError(f"{name} answers differently from the others: {wrong}")
        run.startups.append({"case": case, "server": name, "round": round_index, "startup_s": server.startup_s,
                             "quiet_wait_s": waited_s, "busy_cores_before": busy})
        run_wrk(server.predict_url, body, connections=max(concurrencies), duration_s=warmup_s)
        for connections in concurrencies:
            server_before, machine_before = server.cpu_s(), cpu_busy_s()
            result = run_wrk(server.predict_url, body, connections=connections, duration_s=duration_s)
            measurement = Measurement(case, name, round_index, result, server.cpu_s() - server_before,
                                      cpu_busy_s() - machine_before)
            run.measurements.append(measurement)
            cores = measurement.to_dict()
            errors = f"  ERRORS {result.errors}" if result.errors else ""
            say(f"  {case:<6} r{round_index} {name:<13} c{connections:<3} {result.rps:>8.0f} req/s  "
                f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms  cores: server "
                f"{cores['server_cores']:.2f}, wrk {cores['client_cores']:.2f}, other "
                f"{cores['other_cores']:.2f}{errors}")
        status, after = post_json(server.predict_url, body)
        wrong = check_answer(name, after, reference) if status == 200 else f"HTTP {status}"
        if wrong is not None:
            raise RuntimeError(f"{name} answers wrongly after the load: {wrong}")
    except Exception as exc:  # noqa: BLE001 - one failing server must not end the run for the others
        run.failures.append({"case": case, "server": name, "round": round_index, "error": str(exc)[:1000]})
        say(f"  {case:<6} r{round_index} {name:<13} FAILED: {str(exc)[:300]}")
    finally:
        server.stop()


def median_table(run: Run) -> dict[tuple[str, str, int], dict[str, float]]:
    groups: dict[tuple[str, str, int], list[Measurement]] = {}
    for m in run.measurements:
        groups.setdefault((m.case, m.server, m.load.connections), []).append(m)
    table = {}
    for key, ms in groups.items():
        table[key] = {
            "rps": statistics.median(m.load.rps for m in ms),
            "p50_ms": statistics.median(m.load.p50_ms for m in ms),
            "p99_ms": statistics.median(m.load.p99_ms for m in ms),
            "server_cores": statistics.median(m.server_cpu_s / m.load.duration_s for m in ms),
            "other_cores": statistics.median(max(0.0, m.machine_cpu_s - m.server_cpu_s - m.load.client_cpu_s)
                                             / m.load.duration_s for m in ms),
            # CPU the server spent per answered request: steadier than req/s when other work shares the machine
            "server_cpu_us_per_request": statistics.median(
                1e6 * m.server_cpu_s / max(1, m.load.requests - m.load.errors) for m in ms),
            "errors": sum(m.load.errors for m in ms),
            "rounds": len(ms),
        }
    return table


# report -------------------------------------------------------------------------------------------

def report(table: dict[tuple[str, str, int], dict[str, float]], alone: dict[str, dict[str, Any]],
           cases: list[str], servers: list[str], concurrencies: list[int]) -> tuple[str, dict[str, Any]]:
    lines: list[str] = []
    ratios: dict[str, Any] = {}
    for case in cases:
        lines.append(f"\n{case} model: {CASES[case].description}")
        if case in alone:
            a = alone[case]
            lines.append(f"model alone (onnxruntime in-process): {a['img_per_s']:,.0f} img/s at batch "
                         f"{a['best_batch_size']}; {a['batch1_ms']:.3f} ms per image at batch 1")
        top = max(concurrencies)
        header = f"{'server':<14}" + "".join(f"{'c' + str(c) + ' req/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
                                             for c in concurrencies) + f"{'c' + str(top) + ' cpu us/req':>16}"
        lines += [header, "-" * len(header)]
        for name in servers:
            cells = []
            for c in concurrencies:
                row = table.get((case, name, c))
                cells.append(f"{row['rps']:>12,.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}" if row
                             else f"{'-':>12}{'-':>9}{'-':>9}")
            row = table.get((case, name, top))
            cells.append(f"{row['server_cpu_us_per_request']:>16,.0f}" if row else f"{'-':>16}")
            lines.append(f"{name:<14}" + "".join(cells))
        others = [v["other_cores"] for k, v in table.items() if k[0] == case]
        if others:
            lines.append(f"(other work on this machine during these runs: median {statistics.median(others):.2f} "
                         f"cores, highest row median {max(others):.2f}; the last column, the server's CPU time per "
                         f"request, is the figure least moved by it)")
        case_ratios: dict[str, Any] = {}
        for c in concurrencies:
            kaon = table.get((case, "kaon", c))
            if kaon is None:
                continue
            peers = {n: table[(case, n, c)] for n in MODEL_SERVERS if n != "kaon" and (case, n, c) in table}
            floors = {n: table[(case, n, c)] for n in FLOORS if (case, n, c) in table}
            entry: dict[str, Any] = {}
            if peers:
                best = max(peers, key=lambda n: peers[n]["rps"])
                entry["best_peer"] = best
                entry["kaon/best_peer"] = kaon["rps"] / peers[best]["rps"]
                entry["kaon_p99_vs_best_peer_p99"] = kaon["p99_ms"] / peers[best]["p99_ms"]
            if floors:
                best_floor = max(floors, key=lambda n: floors[n]["rps"])
                entry["floor"] = best_floor
                entry["floor_rps"] = floors[best_floor]["rps"]
                entry["kaon/floor"] = kaon["rps"] / floors[best_floor]["rps"]
            if case in alone:
                entry["kaon/model_alone"] = kaon["rps"] / alone[case]["img_per_s"]
            case_ratios[f"c{c}"] = entry
        ratios[case] = case_ratios
        lines.append("")
        for c_name, entry in case_ratios.items():
            parts = []
            if "best_peer" in entry:
                parts.append(f"kaon/best-peer ({entry['best_peer']}) {entry['kaon/best_peer']:.2f}x "
                             f"(p99 {entry['kaon_p99_vs_best_peer_p99']:.2f}x)")
            if "floor" in entry:
                parts.append(f"kaon/floor ({entry['floor']}) {entry['kaon/floor']:.2f}")
            if "kaon/model_alone" in entry:
                parts.append(f"kaon/model-alone {entry['kaon/model_alone']:.3f}")
            lines.append(f"{c_name:<4} " + "; ".join(parts))
    return "\n".join(lines), ratios


def verdicts(table: dict[tuple[str, str, int], dict[str, float]], ratios: dict[str, Any],
             alone: dict[str, dict[str, Any]], concurrencies: list[int]) -> list[str]:
    out = []
    top, low = max(concurrencies), min(concurrencies)
    small = ratios.get("small", {}).get(f"c{top}", {})
    if "kaon/best_peer" in small:
        ok = small["kaon/best_peer"] >= 2.0 and small["kaon_p99_vs_best_peer_p99"] <= 1.0
        out.append(f"[{'MET' if ok else 'NOT MET'}] small c{top}: kaon >= 2x the best peer's req/s with p99 no "
                   f"higher: {small['kaon/best_peer']:.2f}x {small['best_peer']}, p99 "
                   f"{small['kaon_p99_vs_best_peer_p99']:.2f}x")
    kaon1, fastapi1 = table.get(("small", "kaon", low)), table.get(("small", "fastapi", low))
    if kaon1 and fastapi1:
        ratio = kaon1["p50_ms"] / fastapi1["p50_ms"]
        out.append(f"[{'MET' if ratio <= 1.10 else 'NOT MET'}] small c{low}: kaon p50 within 10% of plain "
                   f"FastAPI's: {kaon1['p50_ms']:.3f} ms vs {fastapi1['p50_ms']:.3f} ms ({ratio:.2f}x)")
    for case, goal in (("small", 0.6), ("heavy", 0.9)):
        kaon = table.get((case, "kaon", top))
        entry = ratios.get(case, {}).get(f"c{top}", {})
        if kaon is None or case not in alone:
            continue
        limits = {"model alone": alone[case]["img_per_s"]}
        if "floor_rps" in entry:
            limits["HTTP floor"] = entry["floor_rps"]
        if case == "heavy":
            limits = {"model alone": limits["model alone"]}
        which = min(limits, key=lambda k: limits[k])
        share = kaon["rps"] / limits[which]
        out.append(f"[{'MET' if share >= goal else 'NOT MET'}] {case} c{top}: kaon >= {goal:.0%} of the "
                   f"{'lower limit' if case == 'small' else 'model-alone limit'} ({which}, "
                   f"{limits[which]:,.0f}/s): {kaon['rps']:,.0f} req/s = {share:.0%}")
    return out


# profile --------------------------------------------------------------------------------------------

def profile_kaon(settings: Settings, connections: int, duration_s: int, stamp: str) -> None:
    """py-spy (native frames, only samples that hold the GIL) on `kaon serve` under load; print the hot spots."""
    import shutil
    import threading

    py_spy = shutil.which("py-spy") or str(VENVS / "tools" / "bin" / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit(f"py-spy not found. Install it with: python -m venv {VENVS / 'tools'} && "
                         f"{VENVS / 'tools' / 'bin' / 'pip'} install py-spy")
    paths, samples = export_models(RESULTS / "models")
    body = json.dumps({"inputs": [samples["small"].tolist()]}, separators=(",", ":")).encode()
    server = server_process("kaon", paths["small"], settings, RESULTS / f"profile-{stamp}-kaon.log")
    raw = RESULTS / f"profile-{stamp}-kaon-c{connections}.txt"
    try:
        server.start()
        server.wait_ready(body)
        run_wrk(server.predict_url, body, connections=connections, duration_s=2)
        loads: list[LoadResult] = []
        load = threading.Thread(target=lambda: loads.append(
            run_wrk(server.predict_url, body, connections=connections, duration_s=duration_s + 4)))
        load.start()
        time.sleep(1.5)
        assert server.proc is not None
        subprocess.run([py_spy, "record", "--pid", str(server.proc.pid), "--duration", str(duration_s), "--rate", "100",
                        "--gil", "--native", "--threads", "--format", "raw", "--output", str(raw)],
                       check=True, capture_output=True, timeout=duration_s + 60)
        load.join()
    finally:
        server.stop()
    print(f"kaon under c{connections} while profiled (py-spy slows it): {loads[0].rps:,.0f} req/s")
    print(hot_spots(raw))
    print(f"raw stacks (flamegraph.pl / speedscope input): {raw}")


def hot_spots(raw: Path, top: int = 25) -> str:
    """Self and inclusive shares of the sampled stacks, per frame, from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")[1:]  # the first frame names the thread
        total += count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    lines = [f"{total} samples holding the GIL", "self:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    lines.append("inclusive (kaon and uvicorn frames):")
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in sorted(inclusive.items(), key=lambda x: -x[1])
              if ("kaon/" in f or "uvicorn/" in f or "pydantic" in f or "prometheus" in f) and n / total >= 0.01
              and "kaon/cli" not in f and "server.py:8" not in f][:top]
    return "\n".join(lines)


# environment ---------------------------------------------------------------------------------------

def versions(servers: list[str]) -> dict[str, Any]:
    import kaon

    found: dict[str, Any] = {"kaon": {"kaon": kaon.__version__, "python": platform.python_version(),
                                      **_packages(sys.executable)}}
    for venv in sorted({VENV_OF[s] for s in servers if s in VENV_OF}):
        python = VENVS / venv / "bin" / "python"
        if python.exists():
            found[venv] = _packages(str(python))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
        found["kaon"]["commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return found


def _packages(python: str) -> dict[str, str]:
    code = ("import importlib.metadata as m, json, platform\n"
            f"names = {VERSION_PACKAGES!r}\n"
            "out = {'python': platform.python_version()}\n"
            "for n in names:\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-300:]}


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]}


def setup_venvs(names: list[str]) -> None:
    """Create the missing peer virtualenvs in parallel (plain venvs; torch is never installed)."""
    procs = []
    for venv in sorted({VENV_OF[s] for s in names if s in VENV_OF}):
        target = VENVS / venv
        if (target / "bin" / "python").exists():
            print(f"{target} exists; delete it to rebuild")
            continue
        requirements = PEERS / f"requirements-{venv}.txt"
        command = (f"{sys.executable} -m venv {target} && {target}/bin/pip install -q "
                   f"-c {PEERS / 'constraints.txt'} -r {requirements}")
        log = open(RESULTS / f"setup-{venv}.log", "w")  # noqa: SIM115 - closed below
        print(f"building {target} ...")
        procs.append((venv, subprocess.Popen(command, shell=True, stdout=log, stderr=subprocess.STDOUT), log))
    for venv, proc, log in procs:
        code = proc.wait(timeout=1800)
        log.close()
        print(f"{venv}: {'ok' if code == 0 else f'failed ({code}), see ' + log.name}")


# main -----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(ALL_SERVERS), help=f"comma-separated, of {ALL_SERVERS}")
    parser.add_argument("--models", default="small,heavy", help="comma-separated, of small,heavy")
    parser.add_argument("--concurrency", default="1,8,64", help="comma-separated connection counts")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=3, help="seconds per measurement (wrk takes whole seconds)")
    parser.add_argument("--warmup-s", type=int, default=1, help="seconds of load before measuring")
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s runs")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="the batch window, the same for all")
    parser.add_argument("--num-threads", type=int, default=0,
                        help="onnxruntime intra-op threads for every server (0: onnxruntime's default)")
    parser.add_argument("--kaon-workers", type=int, default=1,
                        help="kaon serve --workers N (each worker's model gets cores/N threads unless "
                             "--num-threads says otherwise)")
    parser.add_argument("--floors-on-all-models", action="store_true",
                        help="also run the floor servers with the heavy model's request body")
    parser.add_argument("--quiet-wait-s", type=float, default=2.0,
                        help="before each server, wait up to this long for other work on the machine to stop")
    parser.add_argument("--profile", action="store_true",
                        help="instead: profile kaon with py-spy under the top concurrency on the small model")
    parser.add_argument("--pin", action="store_true",
                        help="each server on one CPU and wrk on another (taskset): the one-core comparison of a "
                             "server with the floor; the heavy model's two onnxruntime threads then share a core")
    parser.add_argument("--setup", action="store_true", help="create the missing peer virtualenvs, then exit")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration_s, args.warmup_s = 1, 2, 1
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    cases = [c.strip() for c in args.models.split(",") if c.strip()]
    concurrencies = sorted(int(c) for c in args.concurrency.split(","))
    unknown = [s for s in servers if s not in ALL_SERVERS] + [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown servers or models: {unknown}. Servers: {ALL_SERVERS}; models: {list(CASES)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.setup:
        setup_venvs(servers)
        return
    require_wrk()
    if args.pin and not pin_to_cpus():
        raise SystemExit("--pin needs two CPUs and taskset (util-linux)")
    missing = [s for s in servers if s in VENV_OF and not (VENVS / VENV_OF[s] / "bin" / "python").exists()]
    if missing:
        print(f"skipping {missing}: no virtualenv under {VENVS}. Build them with: python bench/serving.py --setup")
        servers = [s for s in servers if s not in missing]

    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / f"serving-{stamp}-logs"
    settings = Settings(args.max_batch_size, args.max_wait_ms, args.num_threads, args.kaon_workers)
    if args.profile:
        profile_kaon(settings, max(concurrencies), args.duration_s, stamp)
        return
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    paths, samples = export_models(RESULTS / "models")
    env_versions = versions(servers)
    run = Run()
    alone: dict[str, dict[str, Any]] = {}
    for case in cases:
        alone_rounds: list[dict[int, float]] = []
        sample = samples[case]
        body = json.dumps({"inputs": [sample.tolist()]}, separators=(",", ":")).encode()
        reference = ort_session(paths[case], args.num_threads).run(None, {"image": sample[None, None]})[0][0]
        # the floors answer a constant: the model does not change them, so they run on the small model only
        order = [s for s in servers if case == "small" or args.floors_on_all_models or s not in FLOORS]
        for round_index in range(args.rounds):
            shift = round_index % len(order)
            if args.quiet_wait_s > 0:
                wait_for_quiet(max_wait_s=args.quiet_wait_s)
            alone_rounds.append(model_alone(paths[case], CASES[case].size, args.num_threads, budget_s=4.0))
            best = max(alone_rounds[-1], key=lambda b: alone_rounds[-1][b])
            say(f"  {case:<6} r{round_index} model alone   {alone_rounds[-1][best]:,.0f} img/s at batch {best}, "
                f"{1e3 / alone_rounds[-1][1]:.3f} ms at batch 1")
            for name in order[shift:] + order[:shift]:  # rotate the order: no server always goes first
                bench_server(run, case, name, round_index, paths[case], body, reference, settings, concurrencies,
                             args.duration_s, args.warmup_s, log_dir, say, args.quiet_wait_s)
        alone[case] = summarize_alone(alone_rounds)

    table = median_table(run)
    text, ratios = report(table, alone, cases, servers, concurrencies)
    verdict_lines = verdicts(table, ratios, alone, concurrencies)
    print(text)
    print("\ngoals:")
    print("\n".join(verdict_lines))
    if run.failures:
        print("\nfailures:")
        for f in run.failures:
            print(f"  {f['case']} r{f['round']} {f['server']}: {f['error'][:300]}")
    result = {
        "benchmark": "serving", "started": stamp, "wall_s": time.monotonic() - started,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {"rounds": args.rounds, "duration_s": args.duration_s, "warmup_s": args.warmup_s,
                     "concurrency": concurrencies, "max_batch_size": args.max_batch_size,
                     "max_wait_ms": args.max_wait_ms, "num_threads": args.num_threads,
                     "kaon_workers": args.kaon_workers, "servers": servers,
                     "models": cases},
        "machine": machine(), "versions": env_versions, "models": {c: CASES[c].description for c in cases},
        "model_alone": alone,
        "medians": [{"case": k[0], "server": k[1], "connections": k[2], **v} for k, v in sorted(table.items())],
        "ratios": ratios, "goals": verdict_lines, "measurements": [m.to_dict() for m in run.measurements],
        "startups": run.startups, "failures": run.failures,
    }
    out = RESULTS / f"serving-{stamp}.json"
    out.write_text(json.dumps(result, indent=1))
    say(f"results: {out} (server logs: {log_dir})")


if __name__ == "__main__":
    main()
