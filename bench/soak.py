"""Soak: a few minutes of steady load on one server with every protection on; no errors, bounded memory.

    python bench/soak.py                      # 180 s at 16 connections, after a 30 s warm-up
    python bench/soak.py --duration-s 600 --connections 32

The server is `kaon serve digits@1` (DigitsCNN trained with kaon, reference registered) with a token
required on every request (rate limit high enough never to refuse), the request log on (rotating at
64 MiB, the default) and the drift and outlier detectors on. wrk (one thread, keep-alive, 127.0.0.1 only) POSTs
clean held-out digits, several bodies in turn, in back-to-back --slice-s slices; the server's
resident memory (VmRSS of its process) is read after each slice. Pass: no errors and growth from
the end of the warm-up to the end under 5%. Results: a table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from monitoring import RESULTS, make_token, prepare, start, wrk  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=180.0)
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--slice-s", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="kaon-soak-") as tmp:
        home = Path(tmp)
        data = prepare(home)
        bodies = [json.dumps({"inputs": [np.round(x, 4).tolist()]}).encode() for x in data["x_test"][:8]]
        token = make_token(home, "1000000/s")
        server = start(home, "soak", ["--request-log", str(home / "requests.jsonl")], bodies[0], token)
        assert server.proc is not None
        pid = server.proc.pid
        samples: list[dict[str, float]] = []
        try:
            started = time.monotonic()
            index = 0
            while time.monotonic() - started < args.warmup_s + args.duration_s:
                result = wrk(server.predict_url, bodies[index % len(bodies)], token, args.connections, args.slice_s)
                index += 1
                sample = {"t_s": time.monotonic() - started, "rss_mib": rss_mib(pid), **result}
                samples.append(sample)
                print(f"  t={sample['t_s']:6.0f} s  {result['rps']:7.0f} req/s  p99 {result['p99_ms']:6.1f} ms  "
                      f"errors {result['errors']:.0f}  rss {sample['rss_mib']:.1f} MiB", flush=True)
        finally:
            server.stop()
    after_warmup = [s for s in samples if s["t_s"] > args.warmup_s]
    base = after_warmup[0]["rss_mib"]
    end = after_warmup[-1]["rss_mib"]
    peak = max(s["rss_mib"] for s in after_warmup)
    errors = sum(s["errors"] for s in samples)
    growth = (end - base) / base
    requests = sum(s["rps"] * args.slice_s for s in samples)
    verdict = "PASS" if errors == 0 and growth < 0.05 else "FAIL"
    print(f"\n{verdict}: {requests:,.0f} requests in {samples[-1]['t_s']:.0f} s, {errors:.0f} errors; RSS after "
          f"warm-up {base:.1f} MiB, at the end {end:.1f} MiB ({growth:+.1%}), peak {peak:.1f} MiB")
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 shared cores: figures are noisy)")
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "samples": samples, "growth": growth, "errors": errors,
                               "verdict": verdict, "load_before": load_before, "load_after": load_after}, indent=2))
    print(f"results: {out}")
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
