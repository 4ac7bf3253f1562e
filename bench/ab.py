"""Pinned, interleaved A/B of kaon's request path: is commit B cheaper per request than commit A?

On this 2-core machine unpinned rounds swing 2x, so a 5% change cannot be resolved by bench/serving.py. Here
each server runs on CPU 0 and wrk on CPU 1, the variants take turns (in alternating order) for ROUNDS rounds of
4 s at concurrency 64, and the medians of req/s and of the server's CPU time per request are compared:

    git worktree add /tmp/kaon-base 78957a0
    python bench/ab.py --rounds 8 base=/tmp/kaon-base/src head=src floor

A variant is NAME=SRC (a `src/` folder that kaon is imported from, one onnxruntime thread), NAME=SRC+VAR=VALUE
(an environment variable for that server, e.g. `t0=src+KAON_NUM_THREADS=0` for onnxruntime's default threads)
or `floor` (the bare uvicorn + httptools ASGI app of bench/peers, in the FastAPI venv `python bench/serving.py
--setup` made). `--unpinned` lets the scheduler place the servers and wrk, as bench/serving.py does.
The model is bench/results/models/digits-small.onnx, which bench/serving.py writes on its first run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

BENCH = Path(__file__).resolve().parent
MODEL = BENCH / "results" / "models" / "digits-small.onnx"
FLOOR_UVICORN = BENCH / ".venvs" / "fastapi" / "bin" / "uvicorn"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(source: str, port: int, log_dir: Path, pin: list[str]) -> subprocess.Popen[bytes]:
    if source == "floor":
        command = [*pin, str(FLOOR_UVICORN), "--http", "httptools", "--loop", "uvloop",
                   "--no-access-log", "--log-level", "warning", "--port", str(port), "floor_asgi:app"]
        process = subprocess.Popen(command, cwd=BENCH / "peers", stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
    else:
        source, *settings = source.split("+")
        env = {**os.environ, "PYTHONPATH": str(Path(source).resolve()), "KAON_NUM_THREADS": "1",
               "KAON_HOME": str(log_dir / "home"), **dict(setting.split("=", 1) for setting in settings)}
        command = [*pin, sys.executable, "-m", "kaon.cli", "serve", str(MODEL), "--port", str(port),
                   "--max-batch-size", "64", "--max-wait-ms", "5"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(log_dir / f"server-{port}.log", "wb"))  # noqa: SIM115
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)  # noqa: S310 - loopback
            return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{source} did not start on port {port}; see {log_dir}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="NAME=SRC or floor")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--unpinned", action="store_true", help="no taskset: servers and wrk share both cores")
    args = parser.parse_args()
    if not MODEL.exists():
        raise SystemExit(f"{MODEL} is missing: run python bench/serving.py --models small once to write it")
    variants = dict(v.split("=", 1) if "=" in v else (v, v) for v in args.variants)
    # the body bench/serving.py sends: the first of scikit-learn's digits as an 8x8 array
    body = json.dumps({"inputs": [np.round(load_digits().images[0] / 16.0, 4).astype(np.float32).tolist()]},
                      separators=(",", ":"))
    log_dir = Path(tempfile.mkdtemp(prefix="kaon-ab-"))
    script = log_dir / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = '{body}'\n")
    ports = {name: 8301 + i for i, name in enumerate(variants)}
    server_pin, wrk_pin = ([], []) if args.unpinned else (["taskset", "-c", "0"], ["taskset", "-c", "1"])
    servers = {name: start(source, ports[name], log_dir, server_pin) for name, source in variants.items()}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    try:
        for round_ in range(args.rounds):
            for name in list(servers) if round_ % 2 == 0 else list(servers)[::-1]:
                before = cpu_seconds(servers[name].pid)
                out = subprocess.run([*wrk_pin, "wrk", "-t1", "-c64", "-d4s", "-s", str(script),
                                      f"http://127.0.0.1:{ports[name]}/predict"],
                                     capture_output=True, text=True, check=True).stdout
                used = cpu_seconds(servers[name].pid) - before
                found = re.search(r"Requests/sec:\s+([\d.]+)", out)
                if found is None or "Non-2xx" in out:
                    raise SystemExit(f"{name}: wrk saw errors:\n{out}")
                rps = float(found.group(1))
                results[name].append((rps, used / (rps * 4) * 1e6))
                print(f"round {round_} {name:>8} {rps:>9,.0f} req/s {results[name][-1][1]:6.1f} us CPU/request",
                      flush=True)
    finally:
        for process in servers.values():
            process.send_signal(signal.SIGTERM)
        for process in servers.values():
            process.wait(timeout=30)
    for name, rows in results.items():
        print(f"{name:>8} median {statistics.median(r[0] for r in rows):,.0f} req/s, "
              f"{statistics.median(r[1] for r in rows):.1f} us CPU/request")


if __name__ == "__main__":
    main()
