"""`kaon serve --workers N`: N server processes answering on one port.

One Python process serves on one core: its event loop and its batches share one GIL. On a GPU that caps
ResNet-50 with JPEG bodies at ~2,000 img/s while the card does ~14,000 (BENCHMARKS.md). Workers are
separate processes, each with its own model copy, batcher and event loop. The supervisor checks the port first
(a taken port fails here, before any model loads). On Linux each worker then listens on a socket of its own
(SO_REUSEPORT), once its model is loaded, and the kernel spreads new connections over the workers by a hash of
their addresses; the supervisor keeps a bound socket that does not listen, which holds the port meanwhile. One
listening socket shared by every worker (elsewhere) goes to whichever worker accepts first: a worker in the middle
of a batch accepts nothing, so a client's 64 keep-alive connections could all land on the other one (measured:
in 2 of 6 wrk runs of the heavy CNN, --workers 2 served at half its rate).

    supervisor (checks and holds host:port, prints the banner, forwards Ctrl-C/SIGTERM, restarts a dead worker)
       |-> worker 0: python -m kaon.cli serve TARGET   (KAON_* settings, KAON_REUSE_PORT=1, KAON_WORKER_INDEX=0)
       |-> worker 1: ...

Metrics are summed across workers (kaon.serving.metrics, prometheus_client's multiprocess mode). Each worker
watches drift on the requests it answers (a client's keep-alive connection stays on one worker, so no one worker
sees a sample of all traffic), and its alerts name it. The request log is one file all of them append to.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kaon._internal.processes import PROCESS_CORES_ENV, available_cores
from kaon.config import ServeConfig
from kaon.errors import ConfigError

log = logging.getLogger("kaon.serving.workers")

LISTEN_FD_ENV = "KAON_LISTEN_FD"  # the shared listening socket's fd, where SO_REUSEPORT is not used
REUSE_PORT_ENV = "KAON_REUSE_PORT"  # "1": the worker listens on a socket of its own (`reuse_port_socket`)
READY_FILE_ENV = "KAON_READY_FILE"
WORKER_INDEX_ENV = "KAON_WORKER_INDEX"
SUPERVISOR_PID_ENV = "KAON_SUPERVISOR_PID"
STARTUP_TIMEOUT_S = 600.0  # loading a big model onto a GPU can take minutes
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def bind_listener(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (or one process serves on). A taken port is a clear error."""
    sock = _bound(host, port, reuse_port=False)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def reuse_port_supported() -> bool:
    """Whether the kernel spreads a port's connections over the sockets listening on it (Linux's SO_REUSEPORT;
    BSD and macOS have the option but hand every connection to one socket)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to host:port beside others (SO_REUSEPORT) and not listening yet: the supervisor's holds the
    port and never listens, so the kernel hands it no connection; a worker's listens once its model is loaded
    (uvicorn's server starts serving on it then)."""
    return _bound(host, port, reuse_port=True)


def _claim_port(host: str, port: int) -> Any:
    """This machine's lock for kaon workers on `port`, held until the supervisor exits (or dies): the holding socket
    does not listen, so until a worker listens a second supervisor's port check would pass, and its workers'
    SO_REUSEPORT sockets would join this one's, two servers silently sharing one port. None where the lock file is
    another user's: SO_REUSEPORT joins only sockets of one user."""
    import fcntl

    path = Path(tempfile.gettempdir()) / f"kaon-workers-port-{port}.lock"
    try:
        handle = open(path, "a")  # noqa: SIM115 - kept open: the lock lasts as long as the file is
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(f"cannot listen on {host}:{port}: another `kaon serve --workers` is starting or serving on "
                          f"port {port} (it holds {path}). Pick another --port, or stop that server.") from None
    return handle


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            advice = "Pick another --port, or stop what uses it."
        elif exc.errno == errno.EACCES:
            advice = "Ports below 1024 need root: pick a --port of 1024 or more."
        else:  # an address this machine does not have, or cannot parse
            advice = "Check --host: an address of this machine, such as 127.0.0.1 or 0.0.0.0 (every interface)."
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. {advice}") from exc
    return sock


def worker_env(config: ServeConfig, fd: int | None, index: int, metrics_dir: str, ready_file: Path) -> dict[str, str]:
    """A worker's environment: every setting as its KAON_* variable (ServeConfig.from_env reads them back), and
    the shared listening socket's `fd`, or None for a socket of the worker's own (`reuse_port_socket`)."""
    env = dict(os.environ)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name == "extra" or value is None:
            continue
        env[f"KAON_{field.name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    # Share the cores out: N workers whose models each spread over every core (onnxruntime's and torch's
    # default) make each model's threads wait on the others' event loops. Measured on 2 cores, the heavy CNN of
    # bench/serving.py at c64: 2 workers x 1 thread 819-907 req/s, 1 worker x 2 threads 766-807 (BENCHMARKS.md).
    share = str(max(1, available_cores() // max(1, config.workers)))
    for name in ("KAON_NUM_THREADS", "OMP_NUM_THREADS"):  # onnxruntime (kaon.models.onnx), torch
        env.setdefault(name, share)  # the user's own setting wins
    env[PROCESS_CORES_ENV] = share  # the batcher runs batches inline in a one-core worker (batcher.py)
    env.update({"KAON_WORKERS": "1", WORKER_INDEX_ENV: str(index),
                SUPERVISOR_PID_ENV: str(os.getpid()),
                READY_FILE_ENV: str(ready_file), "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                "PYTHONUNBUFFERED": "1"})
    env.pop(LISTEN_FD_ENV, None)
    env.pop(REUSE_PORT_ENV, None)
    env.update({REUSE_PORT_ENV: "1"} if fd is None else {LISTEN_FD_ENV: str(fd)})
    return env


def watch_supervisor(interval_s: float = 1.0) -> None:
    """In a worker: stop (as on SIGTERM) once the supervisor is gone, even killed with SIGKILL, so that no
    orphan keeps serving on its socket."""
    import threading

    expected = os.environ.get(SUPERVISOR_PID_ENV)
    if not expected:
        return

    def watch() -> None:
        while os.getppid() == int(expected):
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="kaon-supervisor-watch", daemon=True).start()


def mark_ready(banner_text: str) -> None:
    """Called by a worker once it serves: tells the supervisor (and gives it the banner to print)."""
    path = os.environ.get(READY_FILE_ENV)
    if path:
        tmp = Path(path + ".tmp")
        tmp.write_text(banner_text)
        tmp.replace(path)


class Supervisor:
    """Starts the workers, waits until all serve, restarts one that dies, stops them all on a signal."""

    def __init__(self, target: str, config: ServeConfig) -> None:
        self.target = target
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix="kaon-workers-"))
        self.metrics_dir = self.workdir / "metrics"
        self.metrics_dir.mkdir()
        # a taken port fails here; then, on Linux, a socket that holds the port while each worker listens on its own
        self.shared = not reuse_port_supported()
        self.sock = bind_listener(config.host, config.port)
        if config.port == 0:  # the port the system picked, for every worker and the banner
            self.config = config = dataclasses.replace(config, port=self.sock.getsockname()[1])
        self._lock = None
        if not self.shared:
            try:
                self._lock = _claim_port(config.host, config.port)
            finally:
                self.sock.close()
            self.sock = reuse_port_socket(config.host, config.port)
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * config.workers
        self.restarts = [0] * config.workers
        self.stopping = False

    def _ready_file(self, index: int) -> Path:
        return self.workdir / f"ready-{index}"

    def _start(self, index: int) -> None:
        self._ready_file(index).unlink(missing_ok=True)
        fd = self.sock.fileno() if self.shared else None
        env = worker_env(self.config, fd, index, str(self.metrics_dir), self._ready_file(index))
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "kaon.cli", "serve", self.target], env=env, pass_fds=() if fd is None else (fd,),
            stdin=subprocess.DEVNULL)

    def run(self, print_banner: bool = True) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.config.workers):
                self._start(index)
            if not self._wait_all_ready():
                # Ctrl-C/SIGTERM while the workers were starting is a stop like any other, not a failure
                return self._stop_all() if self.stopping else 1
            if print_banner:
                banner = self._ready_file(0).read_text()
                print(banner.replace("kaon is serving", f"kaon is serving ({self.config.workers} workers)", 1),
                      flush=True)
            while not self.stopping:
                self._watch()
                time.sleep(0.2)
            return self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()
            if self._lock is not None:
                self._lock.close()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _wait_all_ready(self) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and not self.stopping:
            for index, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    print(f"kaon: worker {index} exited with code {proc.returncode} while starting; stopping the "
                          f"others (its error is above).", file=sys.stderr, flush=True)
                    self._stop_all()
                    return False
            if all(self._ready_file(i).exists() for i in range(self.config.workers)):
                return True
            time.sleep(0.1)
        if self.stopping:
            return False  # run() stops them
        print(f"kaon: the workers were not all ready within {STARTUP_TIMEOUT_S:.0f} s; stopping them.",
              file=sys.stderr, flush=True)
        self._stop_all()
        return False

    def _watch(self) -> None:
        for index, proc in enumerate(self.procs):
            if proc is None or proc.poll() is None:
                continue
            delay = RESTART_BACKOFF_S[min(self.restarts[index], len(RESTART_BACKOFF_S) - 1)]
            self.restarts[index] += 1
            print(f"kaon: worker {index} (pid {proc.pid}) exited with code {proc.returncode}; restarting it in "
                  f"{delay:g} s.", file=sys.stderr, flush=True)
            self._mark_dead(proc.pid)
            self.procs[index] = None
            end = time.monotonic() + delay
            while time.monotonic() < end and not self.stopping:
                time.sleep(0.1)
            if not self.stopping:
                self._start(index)

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(self.metrics_dir))

    def _stop_all(self) -> int:
        """SIGTERM every worker (each finishes its in-flight requests), wait, then 0 if all exited cleanly.

        A worker still loading its model has no handler for SIGTERM yet and dies of it (-15): it had no request
        in flight, so that counts as clean too."""
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + max(5.0, self.config.timeout_s) + 5.0
        codes = []
        for proc in live:
            try:
                codes.append(proc.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return 0 if all(code in (0, -signal.SIGTERM) for code in codes) else 1


def serve_workers(target: Any, config: ServeConfig, print_banner: bool = True) -> None:
    """Serve `target` (a model file, registry reference or service.py:Class) with config.workers processes."""
    if not isinstance(target, (str, os.PathLike)):
        raise ConfigError(
            f"--workers {config.workers} starts worker processes that load the target themselves, so it must be "
            f"a model file, a registry reference or path/to/service.py:Class. Received: a "
            f"{type(target).__name__}. Save the model (kaon.register or torch.export) and serve that.")
    code = Supervisor(str(target), config).run(print_banner)
    if code != 0:
        raise SystemExit(code)
