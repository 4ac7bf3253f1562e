"""The control plane: runs deployments on a backend, keeps their state in the registry, answers an API.

`kaon up` runs it (foreground, or `--detach`); `kaon deploy` starts one in the background when none
is running. It writes KAON_HOME/cluster/controlplane.json (mode 0600: its URL, pid and a random
bearer token) so that the CLI, the SDK and the dashboard find it and only this user can drive it.

The API (JSON over HTTP on 127.0.0.1, `Authorization: Bearer <token>`):

    GET  /v1/health                          {"ok": true, "pid": ...}
    GET  /v1/deployments                     [status, ...]
    POST /v1/deployments                     a Deployment spec -> its status (created, updated or rolled out;
                                             "replaced": what changed when it replaced a stored, stopped spec)
    GET  /v1/deployments/{name}              status: replicas (pid, state, node, in flight), decision, load
    POST /v1/deployments/{name}/scale        {"replicas": N} pins the count; {"replicas": null} resumes autoscaling
    POST /v1/deployments/{name}/stop         stops its replicas and its router (the spec stays, status 'stopped')
    POST /v1/deployments/{name}/start        starts a stopped deployment as stored (the version resolved at deploy)
    GET  /v1/deployments/{name}/logs?tail=N  the running replicas' log lines (&all=true: dead ones too; &replica=I)
    GET  /v1/nodes                           declared capacity and what is placed on each node
    POST /v1/shutdown                        stop every deployment and exit (`kaon down`)

Deployments whose status is 'running' are started again when a control plane starts, so a crash
(or a reboot) loses nothing that was declared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hmac
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from kaon.cluster._http import (
    HttpError,
    HttpMessage,
    MessageReader,
    bad_request_response,
    error_body,
    json_response,
    render_response,
)
from kaon.cluster._paths import (
    DEFAULT_PORT,
    FIRST_DEPLOYMENT_PORT,
    cluster_dir,
    deployment_dir,
    discovery_file,
    read_logs,
    replica_logs,
    unknown_replica_error,
)
from kaon.cluster.autoscaler import Decision
from kaon.cluster.backends.local import LocalDeployment
from kaon.cluster.deployment import Deployment, from_stored, spec_changes, stored_spec
from kaon.cluster.placement import Demand, Node, max_fitting, place
from kaon.errors import (
    ConfigError,
    InsufficientResourcesError,
    InvalidInputError,
    KaonError,
    NotFoundError,
    UnauthorizedError,
)

log = logging.getLogger("kaon.cluster.controlplane")

_DECISION_EVERY_S = 10.0  # how often an unchanged decision is written to the registry anyway
# The API's bounds on a client (the CLI sends small JSON requests at once): a request must arrive in full within
# API_READ_TIMEOUT_S of its first byte, else 408 and the connection closes; a connection idle API_KEEP_ALIVE_S,
# before its first request too, is closed. A client that stalls or never sends does not hold a connection forever.
API_READ_TIMEOUT_S = 30.0
API_KEEP_ALIVE_S = 5.0


def local_node(cpus: float | None = None, memory_mb: int | None = None, gpus: int = 0) -> Node:
    """This machine's capacity: declared, else $KAON_NODE_CPUS / $KAON_NODE_MEMORY_MB, else what it has."""
    env_cpus = os.environ.get("KAON_NODE_CPUS")
    env_memory = os.environ.get("KAON_NODE_MEMORY_MB")
    try:
        cpus = cpus if cpus is not None else float(env_cpus) if env_cpus else float(os.cpu_count() or 1)
        if memory_mb is None:
            memory_mb = int(env_memory) if env_memory else \
                os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except ValueError as exc:
        raise ConfigError(f"KAON_NODE_CPUS must be a number and KAON_NODE_MEMORY_MB an integer. "
                          f"Received: {env_cpus!r}, {env_memory!r}") from exc
    if cpus <= 0 or memory_mb <= 0:
        raise ConfigError(f"a node needs cpus > 0 and memory_mb > 0. Received: cpus={cpus}, memory_mb={memory_mb}")
    return Node("local", cpus=cpus, memory_mb=int(memory_mb), gpus=gpus)


class ControlPlane:
    """Deployments on the local backend, their state in the registry, and the HTTP API."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = DEFAULT_PORT, *, node: Node | None = None,
                 token: str | None = None) -> None:
        self.host = host
        # None: DEFAULT_PORT when free, else any free port (the discovery file tells clients which)
        self._port_flexible = port is None
        self.port = DEFAULT_PORT if port is None else port
        self.node = node or local_node()
        self.token = token or secrets.token_urlsafe(24)
        self.deployments: dict[str, LocalDeployment] = {}
        self._server: asyncio.Server | None = None
        self._stopped = asyncio.Event()
        self._io = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kaon-registry")
        self._store: Any = None
        self._persist_pending: set[str] = set()
        self._decision_written: dict[str, tuple[int, float]] = {}
        self._lock = asyncio.Lock()
        self._mark_stopped_on_exit = False  # SIGTERM/Ctrl-C: deployments stay 'running' and come back
        self._lock_file: Any = None
        self.read_timeout_s, self.keep_alive_s = API_READ_TIMEOUT_S, API_KEEP_ALIVE_S  # for connections from then on

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        from kaon.registry import Registry
        from kaon.registry.deployments import DeploymentStore

        self._hold_lock()
        self._store = DeploymentStore(Registry())
        await self._db(self._store.save_node, self.node.name,
                       {"cpus": self.node.cpus, "memory_mb": self.node.memory_mb, "gpus": self.node.gpus})
        try:
            try:
                self._server = await asyncio.start_server(self._serve_client, self.host, self.port)
            except OSError:
                if not self._port_flexible:
                    raise
                self._server = await asyncio.start_server(self._serve_client, self.host, 0)
        except OSError as exc:
            raise ConfigError(f"the control plane cannot listen on {self.host}:{self.port}: {exc.strerror}. "
                              "Is another `kaon up` running? (kaon status) Or pick --port.") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        file = discovery_file()
        tmp = file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"url": self.url, "pid": os.getpid(), "token": self.token, "started_at": time.time()}, handle)
        os.replace(tmp, file)
        for record in await self._db(self._store.list_deployments, "running"):
            try:
                spec, resolved = from_stored(record.spec, source=f"deployment '{record.name}'")
                await self.deploy(spec, restore=True, resolved_target=resolved)
            except KaonError as exc:
                log.error("could not restore deployment '%s': %s", record.name, exc.message)
        log.info("control plane at %s", self.url)

    def _hold_lock(self) -> None:
        """One control plane per KAON_HOME: two would both start the declared deployments."""
        import fcntl

        self._lock_file = open(cluster_dir() / "controlplane.lock", "w")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise ConfigError(f"another control plane is already running for KAON_HOME={cluster_dir().parent}. "
                              "Use it (kaon status), or stop it first (kaon down).") from None

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopped.set)
        await self._stopped.wait()
        await self.close(mark_stopped=self._mark_stopped_on_exit)

    def request_shutdown(self, *, mark_stopped: bool) -> None:
        """Stop soon; `mark_stopped` records every deployment as stopped (kaon down), so that the next
        control plane does not start them again."""
        self._mark_stopped_on_exit = mark_stopped
        self._stopped.set()

    async def close(self, *, mark_stopped: bool = False) -> None:
        """Stop every deployment (marking them stopped in the registry when asked) and the API."""
        if self._server is not None:
            self._server.close()
        names = list(self.deployments)
        await asyncio.gather(*(self.deployments[name].stop() for name in names), return_exceptions=True)
        for name in names:
            if mark_stopped:
                await self._db(self._store.set_status, name, "stopped")
            await self._db(self._store.put_replicas, name, [])
        self.deployments.clear()
        with contextlib.suppress(FileNotFoundError):
            file = discovery_file()
            if json.loads(file.read_text()).get("pid") == os.getpid():
                file.unlink()
        if self._store is not None:
            self._store._registry.close()
        self._io.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()

    # ---- operations (the API calls these; so can Python code in the same process) ------------

    async def deploy(self, spec: Deployment, *, restore: bool = False,
                     resolved_target: str | None = None) -> dict[str, Any]:
        """Start `spec`, or update the running deployment of that name (its registry reference resolved now).
        `restore` starts one the registry holds; it serves `resolved_target`, the version resolved when it
        was deployed, when the registry kept one."""
        if spec.backend != "local":
            raise ConfigError(f"this control plane runs the local backend; deployment '{spec.name}' asks for "
                              f"backend '{spec.backend}'. Use kaon deploy --backend ray --address HOST:PORT, "
                              "which drives Ray Serve directly.")
        async with self._lock:
            running = self.deployments.get(spec.name)
            self._check_fits(spec)
            resolved = resolved_target or await self._db(self._resolve, spec.target)
            if running is not None:
                await running.update(spec, resolved)
                await self._save(running)
                return running.status()
            if spec.port is None:
                spec = spec.with_overrides(port=self._free_deployment_port())
            replaced = None if restore else await self._replaced(spec, resolved)
            name = spec.name
            deployment = LocalDeployment(
                spec, log_dir=deployment_dir(name), node=self.node.name, resolved_target=resolved,
                on_change=functools.partial(self._persist_soon, name),
                on_decision=functools.partial(self._decided, name),
                fits=functools.partial(self._room, name),
            )
            await deployment.start()
            self.deployments[spec.name] = deployment
            if not restore:
                await self._save(deployment)
            status = deployment.status()
            if replaced:
                status["replaced"] = replaced
            return status

    async def start_deployment(self, name: str) -> dict[str, Any]:
        """Start the stored deployment `name` as it was stored: its spec, serving the version resolved when it
        was deployed (as a restarted control plane does). One already running is left as it is."""
        running = self.deployments.get(name)
        if running is not None:
            return {**running.status(), "already_running": True}
        try:
            record = await self._db(self._store.get_deployment, name)
        except NotFoundError as exc:  # its message lists the deployments there are
            raise NotFoundError(f"{exc.message} kaon deploy FILE|TARGET --name {name} creates it.") from None
        spec, resolved = from_stored(record.spec, source=f"deployment '{name}'")
        return await self.deploy(spec, resolved_target=resolved)

    async def _replaced(self, spec: Deployment, resolved: str | None) -> dict[str, Any] | None:
        """What deploying `spec` replaces of a stored deployment of that name that is not running here (stopped,
        say), so that the caller can tell the user; None when nothing is stored or nothing changes."""
        record = await self._db(self._stored, spec.name)
        if record is None:
            return None
        try:
            old, old_resolved = from_stored(record.spec, source=f"deployment '{spec.name}'")
        except KaonError:  # stored by an older kaon, say: it is replaced, what changed is unknown
            return {"status": record.status, "changes": []}
        changes = [{"field": key, "stored": before, "now": after} for key, before, after in spec_changes(old, spec)]
        if old_resolved is not None and resolved is not None and old_resolved != resolved:
            changes.append({"field": "serving", "stored": old_resolved, "now": resolved})
        return {"status": record.status, "changes": changes} if changes else None

    def _stored(self, name: str) -> Any:
        """The registry's record of deployment `name`, or None."""
        try:
            return self._store.get_deployment(name)
        except NotFoundError:
            return None

    async def scale(self, name: str, replicas: int | None) -> dict[str, Any]:
        deployment = self._require(name)
        if replicas is not None:
            if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
                raise InvalidInputError(
                    f"replicas must be an integer >= 0, or null to autoscale. Received: {replicas!r}")
            room, why = self._room(name, replicas)
            if room < replicas:
                raise InsufficientResourcesError(f"cannot scale '{name}' to {replicas}: {why}")
        deployment.scale(replicas)
        await self._save(deployment)
        return deployment.status()

    async def stop(self, name: str) -> dict[str, Any]:
        deployment = self._require(name)
        await deployment.stop()
        del self.deployments[name]
        await self._db(self._store.set_status, name, "stopped")
        await self._db(self._store.put_replicas, name, [])
        return {"name": name, "status": "stopped"}

    def status(self, name: str | None = None) -> Any:
        if name is not None:
            return self._require(name).status()
        return [deployment.status() for deployment in self.deployments.values()]

    def logs(self, name: str, tail: int = 200, replica: int | None = None, *,
             all_replicas: bool = False) -> dict[str, Any]:
        """The last `tail` lines of the running replicas' logs (of a stopped deployment: of every replica's kept
        log), of every kept log with `all_replicas`, or of `replica`'s."""
        folder = deployment_dir(name)
        deployment = self.deployments.get(name)
        if deployment is None and not folder.is_dir():
            self._require(name)
        logged = replica_logs(folder)
        running = sorted({r.index for r in deployment.supervisor.replicas}) if deployment else []
        if replica is not None:
            if replica not in logged:
                raise unknown_replica_error(name, replica, logged, running)
            chosen: list[int] | None = [replica]
        else:
            chosen = None if all_replicas or deployment is None else running
        return {"name": name, "lines": read_logs(folder, tail=tail, replicas=chosen)}

    def nodes(self) -> list[dict[str, Any]]:
        placed = {name: len(d.placed()) for name, d in self.deployments.items()}
        used_cpus = sum(d.spec.resources.cpus * placed[name] for name, d in self.deployments.items())
        used_memory = sum(d.spec.resources.memory_mb * placed[name] for name, d in self.deployments.items())
        return [{"name": self.node.name, "backend": "local", "capacity": {"cpus": self.node.cpus,
                 "memory_mb": self.node.memory_mb, "gpus": self.node.gpus},
                 "used": {"cpus": round(used_cpus, 3), "memory_mb": used_memory}, "replicas": placed}]

    def _resolve(self, target: str) -> str | None:
        """'name@alias' -> 'name@N' (the version it points to now); None for a file or a Service."""
        if ":" in target and target.split(":", 1)[0].endswith(".py"):
            return None
        path = Path(target)
        if path.exists():
            return None
        if "/" in target or path.suffix in (".onnx", ".pt2", ".keras", ".pt", ".h5"):
            raise ConfigError(f"model file not found. Received: target={target!r}. Give an existing file, "
                              "a registered model (name@alias) or path/to/service.py:ClassName.")
        return str(self._store._registry.get_version(target).ref)

    # ---- placement ---------------------------------------------------------------------------

    def _demand(self, spec: Deployment, count: int) -> Demand:
        return Demand(spec.name, count, spec.resources.cpus, spec.resources.memory_mb, spec.resources.gpus,
                      spec.max_replicas_per_node)

    def _others(self, name: str) -> list[Demand]:
        return [self._demand(d.spec, max(d.supervisor.target, len(d.placed())))
                for other, d in self.deployments.items() if other != name]

    def _check_fits(self, spec: Deployment) -> None:
        """Refuse a deployment whose starting replicas cannot be placed beside the others."""
        self._place_beside_others(self._demand(spec, spec.initial_replicas()))

    def _room(self, name: str, count: int) -> tuple[int, str]:
        """How many replicas of `name` fit (at most `count`), and why not more."""
        spec = self._require(name).spec
        room = max_fitting(self._demand(spec, count), [self.node], self._others(name))
        if room >= count:
            return count, ""
        try:
            self._place_beside_others(self._demand(spec, count))
        except InsufficientResourcesError as exc:
            return room, exc.message
        return room, "placement"

    def _place_beside_others(self, demand: Demand) -> None:
        """Place `demand` in the room the other deployments' replicas leave (they run already: placed
        together, the largest would go first and the error could name a running deployment instead)."""
        others = self._others(demand.deployment)
        placed = {other.deployment: [self.node.name] * other.count for other in others}
        try:
            place([demand], [self.node], placed=placed, requests={other.deployment: other for other in others})
        except InsufficientResourcesError as exc:
            beside = "; ".join(f"'{o.deployment}': {o.count} x {o.cpus:g} cpus, {o.memory_mb} MiB"
                               + (f", {o.gpus} gpus" if o.gpus else "") for o in others if o.count)
            if not beside:
                raise
            raise InsufficientResourcesError(f"{exc.message} Running beside it: {beside}.",
                                             fields=exc.fields) from None

    # ---- persistence -------------------------------------------------------------------------

    async def _db(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, func, *args)

    async def _save(self, deployment: LocalDeployment) -> None:
        await self._db(self._store.save_deployment, deployment.spec.name,
                       stored_spec(deployment.spec, deployment.resolved_target))

    def _persist_soon(self, name: str) -> None:
        if name in self._persist_pending:
            return
        self._persist_pending.add(name)
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().call_later(0.3, lambda: asyncio.ensure_future(self._persist(name)))

    async def _persist(self, name: str) -> None:
        self._persist_pending.discard(name)
        deployment = self.deployments.get(name)
        if deployment is None:
            return
        rows = [{"replica": r.index, "node": r.node, "state": r.state, "pid": r.pid, "port": r.port,
                 "restarts": r.restarts, "started_at": r.started_wall, "ready_at": r.ready_wall}
                for r in deployment.supervisor.replicas]
        # Two processes of one index can live at once during a restart or rollout: keep the newest.
        unique = {row["replica"]: row for row in rows}
        try:
            await self._db(self._store.put_replicas, name, list(unique.values()))
        except KaonError as exc:
            log.warning("could not record replicas of '%s': %s", name, exc.message)

    def _decided(self, name: str, decision: Decision) -> None:
        last = self._decision_written.get(name)
        if last is not None and last[0] == decision.replicas and decision.time - last[1] < _DECISION_EVERY_S:
            return
        self._decision_written[name] = (decision.replicas, decision.time)
        future = asyncio.ensure_future(self._db(self._store.record_decision, name, decision.to_dict()))
        future.add_done_callback(_log_failure)

    # ---- helpers -----------------------------------------------------------------------------

    def _require(self, name: str) -> LocalDeployment:
        deployment = self.deployments.get(name)
        if deployment is None:
            known = ", ".join(sorted(self.deployments)) or "none"
            raise NotFoundError(f"no running deployment named '{name}'. Running: {known}. A stopped one starts "
                                f"with kaon start {name}; a new one with kaon deploy FILE|TARGET --name {name}.")
        return deployment

    def _free_deployment_port(self) -> int:
        import socket

        taken = {d.router.port for d in self.deployments.values()}
        for port in range(FIRST_DEPLOYMENT_PORT, FIRST_DEPLOYMENT_PORT + 1000):
            if port in taken:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((self.host, port))
                except OSError:
                    continue
                return port
        raise ConfigError(f"no free port in {FIRST_DEPLOYMENT_PORT}-{FIRST_DEPLOYMENT_PORT + 999}; pass --port.")

    # ---- the HTTP API ------------------------------------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        messages = MessageReader(reader, max_body_bytes=4 * 1024 * 1024, read_timeout_s=self.read_timeout_s,
                                 keep_alive_s=self.keep_alive_s)
        try:
            while True:
                try:
                    request = await messages.next()
                except HttpError as exc:
                    writer.write(bad_request_response(exc, too_large_advice="A deployment spec is far smaller.",
                                                      timeout_advice="Send each request whole, without pauses."))
                    break
                if request is None:
                    break
                writer.write(await self._answer(request))
                await writer.drain()
                if not request.keep_alive:
                    break
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # The loop is closing (kaon down). Nothing awaits this task, and Python 3.11's asyncio logs a
            # cancelled connection handler as an error with its traceback: the connection just ends here.
            pass
        finally:
            messages.close()
            writer.close()

    async def _answer(self, request: HttpMessage) -> bytes:
        try:
            self._authorize(request)
            handler, args = self._route(request)
            result = await handler(request, *args)
            return json_response(200, result, keep_alive=request.keep_alive)
        except KaonError as exc:
            return render_response(exc.status_code, [(b"content-type", b"application/json")], error_body(exc),
                                   keep_alive=request.keep_alive)
        except Exception as exc:  # a bug: the API stays up and says so, the log has the trace
            log.exception("control plane API: %s %s", request.method, request.path)
            error = KaonError(f"the control plane failed on {request.method} {request.path}: {type(exc).__name__}. "
                              "See its log (KAON_HOME/cluster/controlplane.log).")
            return render_response(500, [(b"content-type", b"application/json")], error_body(error),
                                   keep_alive=request.keep_alive)

    def _authorize(self, request: HttpMessage) -> None:
        given = (request.header(b"authorization") or b"").decode("latin-1")
        expected = f"Bearer {self.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise UnauthorizedError("the control plane needs `Authorization: Bearer <token>`; the token is in "
                                    "KAON_HOME/cluster/controlplane.json (readable by the user who ran kaon up).")

    def _route(self, request: HttpMessage) -> tuple[Callable[..., Awaitable[Any]], tuple[str, ...]]:
        parts = [unquote(p) for p in request.path.strip("/").split("/")]
        method = request.method
        collection: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {
            ("GET", "health"): self._api_health, ("GET", "deployments"): self._api_list,
            ("POST", "deployments"): self._api_deploy, ("GET", "nodes"): self._api_nodes,
            ("POST", "shutdown"): self._api_shutdown,
        }
        actions: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {
            ("POST", "scale"): self._api_scale, ("POST", "stop"): self._api_stop, ("GET", "logs"): self._api_logs,
            ("POST", "start"): self._api_start,
        }
        if len(parts) == 2 and parts[0] == "v1" and (method, parts[1]) in collection:
            return collection[method, parts[1]], ()
        if len(parts) == 3 and parts[:2] == ["v1", "deployments"] and method == "GET":
            return self._api_get, (parts[2],)
        if len(parts) == 4 and parts[:2] == ["v1", "deployments"] and (method, parts[3]) in actions:
            return actions[method, parts[3]], (parts[2],)
        raise NotFoundError(f"no API route {method} {request.path}. See kaon.cluster.controlplane for the routes.")

    async def _api_health(self, request: HttpMessage) -> Any:
        return {"ok": True, "pid": os.getpid(), "url": self.url, "deployments": sorted(self.deployments)}

    async def _api_list(self, request: HttpMessage) -> Any:
        return self.status()

    async def _api_get(self, request: HttpMessage, name: str) -> Any:
        return self.status(name)

    async def _api_deploy(self, request: HttpMessage) -> Any:
        return await self.deploy(Deployment.parse(_json_body(request), source="the deployment sent"))

    async def _api_scale(self, request: HttpMessage, name: str) -> Any:
        body = _json_body(request)
        if "replicas" not in body:
            raise InvalidInputError(f"send {{\"replicas\": N}} or {{\"replicas\": null}}. Received: {body!r:.200}")
        return await self.scale(name, body["replicas"])

    async def _api_stop(self, request: HttpMessage, name: str) -> Any:
        return await self.stop(name)

    async def _api_start(self, request: HttpMessage, name: str) -> Any:
        return await self.start_deployment(name)

    async def _api_logs(self, request: HttpMessage, name: str) -> Any:
        query = parse_qs(request.query)
        try:
            tail = int(query.get("tail", ["200"])[0])
            replica = int(query["replica"][0]) if "replica" in query else None
        except ValueError as exc:
            raise InvalidInputError(f"tail and replica must be integers. Received: {request.query!r}") from exc
        everything = query.get("all", ["false"])[0].lower() in ("1", "true", "yes")
        return self.logs(name, tail=tail, replica=replica, all_replicas=everything)

    async def _api_nodes(self, request: HttpMessage) -> Any:
        return self.nodes()

    async def _api_shutdown(self, request: HttpMessage) -> Any:
        body = _json_body(request) if request.body else {}
        mark = bool(body.get("mark_stopped", True))
        asyncio.get_running_loop().call_later(0.05, functools.partial(self.request_shutdown, mark_stopped=mark))
        return {"ok": True, "stopping": sorted(self.deployments)}


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("the registry write failed: %s", future.exception())


def _json_body(request: HttpMessage) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise InvalidInputError(f"the body must be JSON. Received: {request.body[:200]!r}") from exc
    if not isinstance(body, dict):
        raise InvalidInputError(f"the body must be a JSON object. Received: {body!r:.200}")
    return body


def run_control_plane(host: str = "127.0.0.1", port: int | None = None, *, node: Node | None = None,
                      ready: Callable[[ControlPlane], None] | None = None) -> None:
    """Run a control plane in the foreground until SIGINT/SIGTERM or POST /v1/shutdown."""

    async def main() -> None:
        plane = ControlPlane(host, port, node=node)
        await plane.start()
        if ready is not None:
            ready(plane)
        await plane.serve_forever()

    try:
        import uvloop  # a dependency of kaon on Linux and macOS

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def main(argv: list[str] | None = None) -> None:
    """`python -m kaon.cluster.controlplane`: what `kaon up --detach` and `kaon deploy` start in the background."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m kaon.cluster.controlplane", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--cpus", type=float, default=None)
    parser.add_argument("--memory-mb", type=int, default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_control_plane(args.host, args.port, node=local_node(args.cpus, args.memory_mb))
    except KaonError as exc:
        log.error("%s", exc.message)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
