"""The local backend (the embedded default): replica processes on this machine behind a router.

    router (127.0.0.1:PORT, least outstanding requests, retries)  <-  autoscaler (every step_s)
       |-> replica 0: python -m kaon.cli serve TARGET --port P0         |
       |-> replica 1: ...                                          supervisor (start, health, restart)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaon.cluster.autoscaler import Autoscaler, Decision
from kaon.cluster.deployment import Deployment
from kaon.cluster.router import Router
from kaon.cluster.supervisor import Supervisor
from kaon.config import ServeConfig
from kaon.errors import ConfigError

log = logging.getLogger("kaon.cluster.local")

# Changing one of these needs new replica processes; anything else is applied in place.
_PROCESS_FIELDS = ("target", "serve", "env", "trust_pickle", "resources")
# The router waits for a replica's answer at least this long, and longer than the replica's own timeout_s
# (by the margin): a slow endpoint then gets the replica's 504, which names the endpoint and the fix.
_MIN_REQUEST_TIMEOUT_S = 60.0
_REQUEST_TIMEOUT_MARGIN_S = 5.0


class LocalDeployment:
    """One deployment run as local processes."""

    def __init__(self, spec: Deployment, *, log_dir: Path, node: str = "local", resolved_target: str | None = None,
                 on_change: Callable[[], None] | None = None,
                 on_decision: Callable[[Decision], None] | None = None,
                 fits: Callable[[int], tuple[int, str]] | None = None) -> None:
        self.spec = spec
        # `digits@production` is resolved once, at deploy: a replica restarted later serves the same version
        # even if the alias moved meanwhile (deploying again rolls the replicas over to the new one).
        self.resolved_target = resolved_target
        self.node = node
        self.log_dir = log_dir
        self.router = Router(spec.name, spec.host, spec.port or 0, on_demand=self._on_demand,
                             request_timeout_s=_request_timeout_s(spec), read_timeout_s=_read_timeout_s(spec),
                             max_body_bytes=int(spec.serve.get("max_body_bytes", 16 * 1024 * 1024)) + 65536)
        self.supervisor = Supervisor(self._replica_spec(spec), self.router, log_dir=log_dir, on_change=on_change)
        self.autoscaler = Autoscaler(spec, self.router, self.supervisor, fits=fits, on_decision=on_decision)

    @property
    def url(self) -> str:
        return f"http://{self.spec.host}:{self.router.port}"

    async def start(self) -> None:
        try:
            await self.router.start()
        except OSError as exc:
            raise ConfigError(
                f"deployment '{self.spec.name}' cannot listen on {self.spec.host}:{self.spec.port}: {exc.strerror}. "
                "Pick another port (kaon deploy --port P) or stop what uses it."
            ) from exc
        if self.spec.port is None:
            self.spec = self.spec.with_overrides(port=self.router.port)
        await self.supervisor.start()
        self.supervisor.scale(self.spec.initial_replicas())
        await self.autoscaler.start()

    def _replica_spec(self, spec: Deployment) -> Deployment:
        return spec.with_overrides(target=self.resolved_target) if self.resolved_target else spec

    async def update(self, spec: Deployment, resolved_target: str | None = None) -> None:
        if spec.port not in (None, self.router.port) or spec.host != self.spec.host:
            raise ConfigError(f"deployment '{spec.name}' listens on {self.spec.host}:{self.router.port}; "
                              f"changing its address needs kaon stop {spec.name} first. Received: "
                              f"{spec.host}:{spec.port}")
        spec = spec.with_overrides(port=self.router.port)
        needs_processes = resolved_target != self.resolved_target or any(
            getattr(spec, name) != getattr(self.spec, name) for name in _PROCESS_FIELDS)
        self.spec, self.resolved_target = spec, resolved_target
        self.router.request_timeout_s = _request_timeout_s(spec)
        self.router.read_timeout_s = _read_timeout_s(spec)  # for connections from now on
        if needs_processes:
            self.supervisor.roll(self._replica_spec(spec))
        else:
            self.supervisor.update_spec(self._replica_spec(spec))
        self.autoscaler.configure(spec, initial=spec.replicas)

    def scale(self, replicas: int | None) -> None:
        self.spec = self.spec.with_overrides(replicas=replicas) if replicas is not None else \
            Deployment.parse({**self.spec.model_dump(), "replicas": None})
        self.autoscaler.configure(self.spec)
        self.autoscaler.decide_now()

    async def stop(self) -> None:
        await self.autoscaler.close()
        await self.router.close()
        await self.supervisor.close()

    def placed(self) -> list[str]:
        return [self.node for r in self.supervisor.replicas if r.state not in ("stopped", "failed")]

    def status(self) -> dict[str, Any]:
        stats = self.router.replica_stats()
        replicas = self.supervisor.describe()
        for replica in replicas:
            replica["served"] = stats.get(replica["replica"], {}).get("served", 0)
        last = self.autoscaler.last
        return {
            "name": self.spec.name, "backend": "local", "status": "running", "url": self.url,
            "target": self.spec.target, "serving": self.resolved_target or self.spec.target,
            "generation": self.supervisor.generation,
            "policy": self.spec.scaling_config().policy, "min_replicas": self.spec.min_replicas,
            "max_replicas": self.spec.max_replicas, "desired": self.supervisor.target,
            "ready": sum(r["state"] == "ready" for r in replicas), "waiting": self.router.waiting,
            "cold_start_s": None if self.supervisor.cold_start_s is None else round(self.supervisor.cold_start_s, 3),
            "replicas": replicas, "failing": self.router.failing, "decision": last.to_dict() if last else None,
            "history": self.autoscaler.history[-600:], "spec": self.spec.model_dump(mode="json"),
        }

    def _on_demand(self) -> None:
        # Called from the router's task: decide in the loop, soon, not inside the request's stack.
        asyncio.get_running_loop().call_soon(self.autoscaler.wake)


def _request_timeout_s(spec: Deployment) -> float:
    timeout_s = float(spec.serve.get("timeout_s", ServeConfig.timeout_s))
    return max(_MIN_REQUEST_TIMEOUT_S, timeout_s + _REQUEST_TIMEOUT_MARGIN_S)


def _read_timeout_s(spec: Deployment) -> float:
    """The replicas' bound on a request's arrival holds at the router, which reads each request whole first."""
    return float(spec.serve.get("read_timeout_s", ServeConfig.read_timeout_s))
