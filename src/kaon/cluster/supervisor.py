"""The local backend's supervisor: replica processes started, health-checked, restarted and drained.

A replica is `python -m kaon.cli serve TARGET --port P` (its serve options travel as KAON_* variables),
logging to KAON_HOME/deployments/NAME/replica-I.log. Its life:

    starting --/readyz 200--> ready (in the router)  --scale down--> draining --no requests left--> stopped
        \\                      \\--dies / 3 failed health checks--> failed --backoff--> starting (restarts+1)
         \\--> warm (ready, kept out of the router: the warm pool takes a load step with no cold start)

`scale(n)` sets how many replicas should serve; a reconcile loop starts, promotes or drains replicas to
get there. A rollout (`roll(spec)`) starts replicas of the new spec and drains the old ones only as
the new ones become ready, so a deployment never has fewer ready replicas than it asked for.
On Linux each replica gets SIGTERM if the control plane dies (PR_SET_PDEATHSIG): no orphans.
Replicas that keep failing at start-up make the router answer 503 at once until one is ready (`set_failing`);
a new replica number prunes the logs of gone replicas beyond the most recent MAX_DEAD_REPLICA_LOGS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kaon.cluster._http import HttpMessage, MessageReader, render_request
from kaon.cluster._paths import prune_replica_logs
from kaon.cluster.deployment import Deployment
from kaon.cluster.router import Router

log = logging.getLogger("kaon.cluster.supervisor")

_PR_SET_PDEATHSIG = 1
_COLD_START_SMOOTHING = 0.3
# A replica that fails at start-up this many times in a row (never ready in between) is crash-looping: until
# one is ready again the router answers 503 at once instead of holding requests for a cold start.
_FAILED_STARTS_BEFORE_FAILING_FAST = 2


@dataclass
class ReplicaProcess:
    """One replica process and what the supervisor knows of it."""

    index: int
    port: int
    generation: int
    log_path: Path
    node: str = "local"
    incarnation: int = 0
    state: str = "starting"  # starting | ready | warm | draining | stopped | failed
    warm: bool = False
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0  # monotonic
    started_wall: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    ready_at: float | None = None
    ready_wall: datetime | None = None
    restarts: int = 0
    crash_streak: int = 0  # deaths in a row without serving a minute in between
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The router's name for this process: a restarted replica is a new endpoint."""
        return f"{self.index}.{self.incarnation}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def cold_start_s(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.started_at


class Supervisor:
    """Keeps `target` replicas of a deployment serving behind `router`."""

    def __init__(self, deployment: Deployment, router: Router, *, log_dir: Path,
                 on_change: Callable[[], None] | None = None, start_timeout_s: float = 180.0,
                 health_interval_s: float = 1.0, drain_timeout_s: float = 30.0, python: str = sys.executable,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deployment = deployment
        self.router = router
        self.log_dir = log_dir
        self.on_change = on_change
        self.start_timeout_s = start_timeout_s
        self.health_interval_s = health_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.python = python
        self._clock = clock
        self.target = 0
        self.generation = 0
        self.cold_start_s: float | None = None  # measured: process start to /readyz 200, smoothed
        self.replicas: list[ReplicaProcess] = []
        self._specs: dict[int, Deployment] = {0: deployment}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        self._next_index = 0

    # ---- control -----------------------------------------------------------------------------

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._loop_task = asyncio.create_task(self._reconcile_loop(), name=f"supervisor-{self.deployment.name}")

    def scale(self, target: int) -> None:
        """Serve with `target` replicas (the reconcile loop gets there)."""
        if target != self.target:
            log.info("%s: scale %d -> %d", self.deployment.name, self.target, target)
        self.target = max(0, target)
        if self.target == 0:  # nothing left to fail: the next request may try a cold start again
            self.router.set_failing(None)
        self._wake.set()

    def roll(self, deployment: Deployment) -> None:
        """Replace every replica with one of `deployment` (a new target or new serve options)."""
        self.generation += 1
        self._specs[self.generation] = deployment
        self.deployment = deployment
        self.router.set_failing(None)  # the new spec may start: requests wait for it again
        self._wake.set()

    def update_spec(self, deployment: Deployment) -> None:
        """Take scaling fields (warm pool size) that need no new processes."""
        self.deployment = deployment
        self._specs[self.generation] = deployment
        self._wake.set()

    async def close(self, timeout_s: float = 15.0) -> None:
        """Stop every replica: SIGTERM (in-flight requests finish), then SIGKILL after `timeout_s`."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for replica in self.replicas:
            replica.state = "stopped"
        await asyncio.gather(*(self._terminate(r, timeout_s) for r in list(self.replicas)), return_exceptions=True)
        for replica in self.replicas:
            for task in replica.tasks:
                task.cancel()
        self.replicas.clear()
        self._changed()

    def counts(self) -> dict[str, int]:
        states: dict[str, int] = {}
        for replica in self.replicas:
            states[replica.state] = states.get(replica.state, 0) + 1
        return states

    def describe(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [
            {"replica": r.key, "index": r.index, "pid": r.pid, "port": r.port, "node": r.node, "state": r.state,
             "generation": r.generation, "restarts": r.restarts, "in_flight": self.router.outstanding(r.key),
             "age_s": round(now - r.started_at, 3), "cold_start_s": None if r.cold_start_s is None else
             round(r.cold_start_s, 3), "started_at": r.started_wall.isoformat(),
             "ready_at": r.ready_wall.isoformat() if r.ready_wall else None, "log": str(r.log_path)}
            for r in sorted(self.replicas, key=lambda r: r.index)
        ]

    # ---- reconcile ---------------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        while not self._closing:
            try:
                self._reconcile()
            except Exception:  # a bug here must not stop supervision of the running replicas
                log.exception("%s: reconcile failed", self.deployment.name)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.5)

    def _reconcile(self) -> None:
        live = [r for r in self.replicas if r.state not in ("draining", "stopped")]
        current = [r for r in live if r.generation == self.generation]
        serving = [r for r in current if not r.warm]
        warm = [r for r in current if r.warm]
        # 1. up: promote a ready warm replica (no cold start), else start a new process
        while len(serving) < self.target:
            spare = next((r for r in warm if r.state == "warm"), None) or (warm[0] if warm else None)
            if spare is not None:
                warm.remove(spare)
                spare.warm = False
                if spare.state == "warm":
                    spare.state = "ready"
                    self.router.set_routable(spare.key, True)
                serving.append(spare)
            else:
                serving.append(self._launch(warm=False))
        # 2. down: stop those still starting first (newest first), then the least busy
        if len(serving) > self.target:
            order = sorted(serving, key=lambda r: (r.state == "ready", self.router.outstanding(r.key), -r.index))
            for replica in order[: len(serving) - self.target]:
                self._drain(replica)
        # 3. the warm pool, kept only while the deployment serves
        wanted_warm = self.deployment.num_warm_replicas if self.target > 0 else 0
        while len(warm) < wanted_warm:
            warm.append(self._launch(warm=True))
        for replica in warm[wanted_warm:]:
            self._drain(replica)
        # 4. a rollout: drain older replicas as new ones become ready
        old = [r for r in live if r.generation != self.generation]
        if old:
            ready_new = sum(r.state == "ready" for r in current if not r.warm)
            keep = max(0, self.target - ready_new)
            old.sort(key=lambda r: (r.state == "ready", -r.index))
            for replica in old[: max(0, len(old) - keep)]:
                self._drain(replica)

    def _launch(self, *, warm: bool, index: int | None = None, restarts: int = 0,
                incarnation: int = 0) -> ReplicaProcess:
        if index is None:
            index, self._next_index = self._next_index, self._next_index + 1
            try:
                prune_replica_logs(self.log_dir, {r.index for r in self.replicas} | {index})
            except OSError as exc:
                log.warning("%s: could not prune old replica logs in %s: %s", self.deployment.name, self.log_dir, exc)
        replica = ReplicaProcess(index=index, port=free_port(), generation=self.generation,
                                 log_path=self.log_dir / f"replica-{index}.log", warm=warm, restarts=restarts,
                                 incarnation=incarnation, started_at=self._clock())
        self.replicas.append(replica)
        replica.tasks.append(asyncio.create_task(self._run(replica), name=f"replica-{self.deployment.name}-{index}"))
        self._changed()
        return replica

    def _drain(self, replica: ReplicaProcess) -> None:
        if replica.state in ("draining", "stopped"):
            return
        replica.state = "draining"
        self.router.set_routable(replica.key, False)
        self._changed()
        asyncio.create_task(self._drain_and_stop(replica))

    async def _drain_and_stop(self, replica: ReplicaProcess) -> None:
        deadline = self._clock() + self.drain_timeout_s
        while self.router.outstanding(replica.key) > 0 and self._clock() < deadline:
            await asyncio.sleep(0.05)
        await self._terminate(replica, 10.0)
        replica.state = "stopped"
        with contextlib.suppress(ValueError):
            self.replicas.remove(replica)
        self._changed()

    # ---- one replica -------------------------------------------------------------------------

    async def _run(self, replica: ReplicaProcess) -> None:
        spec = self._specs[replica.generation]
        # its banner (kaon logs) shows the router's URL, not its own, unless the deployment names its own
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "KAON_PUBLIC_URL": self._public_url(), **spec.replica_env()}
        with open(replica.log_path, "ab") as log_file:
            log_file.write(f"--- kaon: replica {replica.index} (restart {replica.restarts}) starting on port "
                           f"{replica.port} at {replica.started_wall.isoformat()}\n".encode())
            log_file.flush()
            try:
                replica.process = await asyncio.create_subprocess_exec(
                    self.python, "-m", "kaon.cli", *spec.replica_args(replica.port), env=env,
                    stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                log.error("%s: cannot start replica %d: %s", spec.name, replica.index, exc)
                replica.state = "failed"
                self._changed()
                return
        self._changed()
        exited = asyncio.create_task(replica.process.wait())
        replica.tasks.append(exited)
        if not await self._wait_ready(replica, exited):
            if replica.state in ("draining", "stopped") or self._closing:
                return
            await self._failed(replica, "did not become ready" if not exited.done()
                               else f"exited with {replica.process.returncode} while starting")
            return
        measured = replica.cold_start_s or 0.0
        previous = self.cold_start_s
        self.cold_start_s = measured if previous is None else previous + _COLD_START_SMOOTHING * (measured - previous)
        if replica.state == "starting":
            replica.state = "warm" if replica.warm else "ready"
        self.router.add_replica(replica.key, replica.port, routable=replica.state == "ready")
        self.router.set_failing(None)
        log.info("%s: replica %s ready on port %d in %.2f s", spec.name, replica.key, replica.port, measured)
        self._changed()
        failures = 0
        while not exited.done():
            await asyncio.wait({exited}, timeout=self.health_interval_s)
            if exited.done() or replica.state in ("draining", "stopped"):
                break
            ok = await http_status(replica.port, "/readyz", timeout_s=max(self.health_interval_s, 2.0)) == 200
            failures = 0 if ok else failures + 1
            if failures >= 3:
                log.warning("%s: replica %s failed 3 health checks; restarting it", spec.name, replica.key)
                await self._terminate(replica, 5.0)
                break
        if replica.state not in ("draining", "stopped") and not self._closing:
            await self._failed(replica, f"exited with {replica.process.returncode}")

    async def _wait_ready(self, replica: ReplicaProcess, exited: asyncio.Task[Any]) -> bool:
        deadline = self._clock() + self.start_timeout_s
        while self._clock() < deadline and not exited.done():
            if replica.state in ("draining", "stopped"):
                return False
            if await http_status(replica.port, "/readyz", timeout_s=1.0) == 200:
                replica.ready_at = self._clock()
                replica.ready_wall = datetime.now(timezone.utc)
                return True
            await asyncio.sleep(0.05)
        if not exited.done():
            await self._terminate(replica, 5.0)
        return False

    async def _failed(self, replica: ReplicaProcess, why: str) -> None:
        """A replica died: take it out of the router now, start its successor (after a backoff when
        it keeps crashing)."""
        self.router.remove_replica(replica.key)
        replica.state = "failed"
        self._changed()
        served_a_while = replica.ready_at is not None and self._clock() - replica.ready_at > 60.0
        streak = 1 if served_a_while else replica.crash_streak + 1
        backoff_s = 0.0 if streak == 1 else min(0.25 * 2 ** (streak - 2), 10.0)
        log.warning("%s: replica %s %s; restarting in %.2f s", self.deployment.name, replica.key, why, backoff_s)
        if replica.ready_at is None and streak >= _FAILED_STARTS_BEFORE_FAILING_FAST:
            self.router.set_failing(f"replica {replica.index} {why}, {streak} times in a row",
                                    retry_after_s=max(1.0, min(0.25 * 2 ** (streak - 1), 10.0)))
        await asyncio.sleep(backoff_s)
        with contextlib.suppress(ValueError):
            self.replicas.remove(replica)
        if self._closing or replica.generation != self.generation:
            self._changed()
            return
        successor = self._launch(warm=replica.warm, index=replica.index, restarts=replica.restarts + 1,
                                 incarnation=replica.incarnation + 1)
        successor.crash_streak = streak
        self._wake.set()

    async def _terminate(self, replica: ReplicaProcess, timeout_s: float) -> None:
        """SIGTERM (uvicorn finishes in-flight requests), SIGKILL after `timeout_s`."""
        self.router.remove_replica(replica.key)
        process = replica.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    def _public_url(self) -> str:
        """The URL clients reach this deployment at: its router's."""
        host = self.router.host
        if host in ("", "0.0.0.0", "::"):  # every interface: this machine's loopback answers too
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.router.port}"

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change callback failed")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_status(port: int, path: str, *, host: str = "127.0.0.1", timeout_s: float = 1.0) -> int | None:
    """The status of GET http://host:port/path, or None when nothing answered in time."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        writer.write(render_request(HttpMessage(method="GET", url=path, headers=[(b"connection", b"close")]),
                                    f"{host}:{port}"))
        response = await asyncio.wait_for(MessageReader(reader, response=True).next(), timeout_s)
        return response.status if response is not None else None
    except Exception:  # refused, reset, timed out, garbage: not healthy
        return None
    finally:
        if writer is not None:
            writer.close()


try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover - a libc that cannot be loaded
    _LIBC = None


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM it when its parent (the control plane) dies."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
