"""Load-generator helpers shared by the serving benchmarks: servers as process groups, wrk runs.

Only 127.0.0.1 is ever loaded. Every load run is bounded in time (wrk's `-d`, plus a hard
subprocess timeout) and every server is a process group this module started and stops by its id.

    server = ServerProcess("kaon", [sys.executable, "-m", "kaon.cli", "serve", "m.onnx", "--port", "8123"],
                           port=8123, log_path=Path("kaon.log"))
    server.start(); server.wait_ready(body)          # POSTs `body` until it answers 200
    result = run_wrk(server.url + "/predict", body, connections=64, duration_s=5.0)
    server.stop()
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# wrk calls done() once at the end; it prints one machine-readable line. Latencies are in microseconds.
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests": %%d, "duration_us": %%d, "bytes": %%d, "errors_connect": %%d, ' ..
    '"errors_read": %%d, "errors_write": %%d, "errors_status": %%d, "errors_timeout": %%d, ' ..
    '"p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "mean_us": %%.1f, "max_us": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""

# One body, sent on every request.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "%(content_type)s"
%(headers)s
wrk.body = [==[%(body)s]==]
""" + _WRK_DONE

# Binary bodies (JPEGs): each wrk thread reads the files given after `--` and cycles through them.
_WRK_FILES_SCRIPT = """
local bodies, count, sent = {}, 0, 0
init = function(args)
  for i = 1, #args do
    local f = assert(io.open(args[i], "rb"))
    bodies[i] = f:read("*a")
    f:close()
  end
  count = #args
end
request = function()
  sent = sent + 1
  return wrk.format("POST", nil, {["Content-Type"] = "%(content_type)s"}, bodies[(sent %% count) + 1])
end
""" + _WRK_DONE


@dataclass
class LoadResult:
    """One bounded load run against one server at one concurrency."""

    connections: int
    duration_s: float
    requests: int
    errors: int  # connect/read/write/timeout errors plus non-2xx/3xx answers
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    client_cpu_s: float  # CPU time wrk itself used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_wrk() -> str:
    path = os.environ.get("KAON_BENCH_WRK") or shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk is not installed. Install it with: apt-get update && apt-get install -y wrk")
    return path


def run_wrk(url: str, body: bytes, connections: int, duration_s: float, threads: int = 1,
            timeout_s: float = 10.0, content_type: str = "application/json",
            body_files: list[Path] | None = None, headers: dict[str, str] | None = None) -> LoadResult:
    """POST `body` to `url` over `connections` keep-alive connections for `duration_s` seconds.
    With `body_files`, each request's body is the next of those files instead (binary bodies).
    `headers` are sent on every request too (one body only), e.g. an Authorization header.

    One wrk thread: wrk's C event loop answers far more requests per second than any server here,
    and on a 2-core machine a second wrk thread would only take CPU from the server under test.
    """
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"only 127.0.0.1 is loaded. Received: url={url!r}")
    wrk = require_wrk()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        if body_files:
            script.write(_WRK_FILES_SCRIPT % {"content_type": content_type})
        else:
            extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items())
            script.write(_WRK_SCRIPT % {"body": body.decode(), "content_type": content_type, "headers": extra})
    try:
        args = [*PINNED["wrk"], wrk, "-t", str(min(threads, connections)), "-c", str(connections),
                "-d", f"{duration_s:g}s", "--timeout", f"{timeout_s:g}s", "-s", script.name, url]
        if body_files:
            args += ["--", *[str(f) for f in body_files]]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(args, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(script.name)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    raw = json.loads(line[len("BENCH_RESULT "):])
    seconds = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status",
                                  "errors_timeout"))
    return LoadResult(
        connections=connections, duration_s=seconds, requests=raw["requests"], errors=errors,
        rps=(raw["requests"] - errors) / seconds if seconds > 0 else 0.0,
        p50_ms=raw["p50_us"] / 1e3, p90_ms=raw["p90_us"] / 1e3, p99_ms=raw["p99_us"] / 1e3,
        mean_ms=raw["mean_us"] / 1e3, max_ms=raw["max_us"] / 1e3,
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


def post_json(url: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:500]


#: Command prefixes that keep every ServerProcess on one CPU and wrk on another; empty unless `pin_to_cpus()`.
PINNED: dict[str, list[str]] = {"server": [], "wrk": []}


def pin_to_cpus() -> bool:
    """From now on, start servers on the first CPU this process may use and wrk on the second (taskset).

    Unpinned on a 2-core machine the scheduler moves a server's busy threads (a kaon server has two: event
    loop and batch thread) between the cores: identical kaon servers then differ by up to 25% in CPU per
    request for their whole lives; pinned, ~5%, and each is ~25% cheaper. False (and nothing pinned) with
    fewer than two CPUs or no taskset (util-linux)."""
    import shutil

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    taskset = shutil.which("taskset")
    if len(cpus) < 2 or taskset is None:
        return False
    PINNED.update(server=[taskset, "-c", str(cpus[0])], wrk=[taskset, "-c", str(cpus[1])])
    return True


class ServerProcess:
    """A server started as its own process group, so that its workers stop with it."""

    def __init__(self, name: str, args: list[str], port: int, log_path: Path, cwd: Path | None = None,
                 env: dict[str, str] | None = None, path: str = "/predict") -> None:
        self.name = name
        self.args = args
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.predict_url = self.url + path
        self.log_path = log_path
        self.cwd = cwd
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_s = 0.0
        self.startup_s = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
        log.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(self.args)}\n".encode())
        log.flush()
        self.started_s = time.monotonic()
        self.proc = subprocess.Popen([*PINNED["server"], *self.args], cwd=self.cwd, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def wait_ready(self, body: bytes, timeout_s: float = 120.0) -> Any:
        """POST `body` until the server answers 200; return the answer. Raises if it exits or times out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                status, answer = post_json(self.predict_url, body, timeout_s=5.0)
                if status == 200:
                    self.startup_s = time.monotonic() - self.started_s
                    return answer
                last = (status, answer)
            except (OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:g} s (last: {last!r}); see {self.log_path}")

    def processes(self) -> dict[int, int]:
        """pid -> start time (clock ticks) of the server and all its descendants, in its group or not.

        Ray and BentoML start some workers in sessions of their own; they are still descendants.
        """
        if self.proc is None:
            return {}
        table = _process_table()
        found = {self.proc.pid} if self.proc.pid in table else set()
        found |= {pid for pid, (_, pgrp, _, _) in table.items() if pgrp == self.proc.pid}
        frontier = list(found)
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, _, _, _) in table.items():
                if ppid == parent and pid not in found:
                    found.add(pid)
                    frontier.append(pid)
        return {pid: table[pid][2] for pid in found}

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the live processes of this server."""
        table = _process_table()
        return sum(table[pid][3] for pid in self.processes() if pid in table) / _TICKS

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ctrl-C (SIGINT) first, as a user stops a server; then SIGTERM, then SIGKILL to the group.

        Descendants outside the group that outlive the leader are killed by pid (checked against
        their start time, so that a reused pid is never hit).
        """
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        started = self.processes()
        for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is None:
                _signal_group(pgid, sig)
                try:
                    self.proc.wait(timeout=wait_s)
                except subprocess.TimeoutExpired:
                    started |= self.processes()
                    continue
            _wait_gone(pgid, started, min(wait_s, 10.0))
            if not _left(pgid, started):
                break
        for pid in _left(pgid, started):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _signal_group(pgid, signal.SIGKILL)
        _wait_gone(pgid, started, 5.0)
        self.proc = None


_TICKS = os.sysconf("SC_CLK_TCK")


def _process_table() -> dict[int, tuple[int, int, int, int]]:
    """pid -> (ppid, pgrp, start time, utime + stime in ticks) for every process now alive."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # fields[0] is the state (3rd field)
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]), int(fields[11]) + int(fields[12]))
    return table


def _left(pgid: int, started: dict[int, int]) -> list[int]:
    """The recorded processes still alive (same pid and start time), outside the group."""
    table = _process_table()
    return [pid for pid, start in started.items() if pid in table and table[pid][2] == start
            and table[pid][1] != pgid]


def _wait_gone(pgid: int, started: dict[int, int], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (_group_alive(pgid) or _left(pgid, started)) and time.monotonic() < deadline:
        time.sleep(0.1)


def cpu_busy_s() -> float:
    """CPU seconds all cores of this machine have spent busy so far (from /proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICKS


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_quiet(max_busy_cores: float = 0.3, max_wait_s: float = 10.0) -> tuple[float, float]:
    """Wait, at most `max_wait_s`, until the machine is nearly idle; return (seconds waited, busy cores last seen).

    Other work on a shared machine takes CPU from the server under test; this keeps a burst of it
    from landing in one measurement, without ever stalling the benchmark for long.
    """
    started = time.monotonic()
    while True:
        before = cpu_busy_s()
        time.sleep(0.5)
        busy = (cpu_busy_s() - before) / 0.5
        waited = time.monotonic() - started
        if busy <= max_busy_cores or waited >= max_wait_s:
            return waited, busy
