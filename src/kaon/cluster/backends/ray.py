"""The Ray backend: a Deployment as a Ray Serve application, for when one machine is not enough.

`kaon deploy FILE --backend ray --address HOST:PORT` calls `deploy_to_ray`. The mapping:

| kaon Deployment | Ray Serve |
| --- | --- |
| target (model or Service) | kaon's ASGI app, built on each replica by `serve.ingress(builder)` (1) |
| replicas (policy fixed) | `num_replicas` |
| min/max_replicas, target_in_flight, up/downscale_delay_s | `autoscaling_config`, delays explicit (2) |
| idle_timeout_s (min_replicas 0) | `downscale_to_zero_delay_s` |
| resources: cpus, gpus, memory_mb | `ray_actor_options` num_cpus, num_gpus, memory |
| max_replicas_per_node | `max_replicas_per_node` |
| serve options | KAON_* variables in the replicas' `runtime_env` |
| name | the Serve application, at route prefix `/NAME` (its URL is http://HOST:PORT/NAME) |

(1) The model's files travel through Ray's object store: nodes need no shared disk or registry.
(2) `initial_replicas` is min_replicas (at least 1). The predictive policy and schedule floors are
kaon's control plane's; on Ray, Serve's own reactive autoscaler runs with these numbers.

`Trainer(..., backend="ray", num_workers=N)` calls `run_on_ray` (through kaon.training.distributed's
BACKENDS table): the fit runs on Ray Train's TorchTrainer, N workers with a torch process group (gloo on
CPU); rank 0 relays each epoch's logs and then its weights through a small actor owned by the driver, so
no shared storage is needed. With `address` it joins that cluster; without, it starts a Ray on this
machine for the fit (no dashboard) and shuts it down after.

`ray` is imported here and nowhere else in kaon (`pip install 'kaon[ray]'`, i.e. `ray[serve,train]`).

Operating notes, measured with Ray 2.60 (see tests/cluster/test_ray_backend.py):
- Always pass an explicit address (`HOST:PORT` of the head's GCS); kaon never joins one found implicitly
  (RAY_ADDRESS), and starts one only for a Trainer fit without `address`: here, for that fit alone.
- Nodes that join need the same token: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in every node's and
  the driver's environment (not ~/.ray/auth_token, which other users of the machine share).
- Ray advertises the machine's own address instead of 127.0.0.1; a test that must stay on loopback
  runs the cluster in its own network namespace holding only `lo` (`unshare --net`, as root).
- `ray stop` stops every Ray process on the machine, other people's too: stop nodes by PID (or in
  their own PID namespace). Start nodes with `--include-dashboard=false` in CI.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaon.cluster.deployment import Deployment
from kaon.errors import ConfigError, KaonError, require

# How long kaon waits for Serve to report an application RUNNING.
DEFAULT_TIMEOUT_S = 180.0
SERVE_HTTP_PORT = 8000


def _ray() -> Any:
    return require("ray", "ray", "The Ray backend")


def _serve() -> Any:
    _ray()
    return require("ray.serve", "ray", "The Ray backend")


def connect(address: str, *, namespace: str = "kaon") -> None:
    """Join the Ray cluster at `address` (HOST:PORT) as a driver, once per process."""
    if not address or ":" not in address:
        raise ConfigError(f"the Ray backend needs the cluster's address as HOST:PORT. Received: {address!r}. "
                          "Start a head with `ray start --head --port 6379` and pass --address HOST:6379.")
    ray = _ray()
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="warning")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}. Check the address, and that "
                          "RAY_AUTH_MODE/RAY_AUTH_TOKEN match the cluster's.") from exc


def deployment_options(spec: Deployment, env: dict[str, str] | None = None) -> dict[str, Any]:
    """`serve.deployment(...)` options for `spec` (see the table in the module docstring)."""
    resources = spec.resources
    actor: dict[str, Any] = {"num_cpus": resources.cpus, "memory": resources.memory_mb * 2**20,
                             "runtime_env": {"env_vars": {**spec.replica_env(), **(env or {})}}}
    if resources.gpus:
        actor["num_gpus"] = resources.gpus
    auto = spec.autoscaling
    options: dict[str, Any] = {
        "name": spec.name, "ray_actor_options": actor,
        "max_ongoing_requests": max(8, int(auto.target_in_flight * 4)),
        "health_check_period_s": 2.0, "health_check_timeout_s": 10.0, "graceful_shutdown_timeout_s": 10.0,
    }
    if spec.max_replicas_per_node:
        options["max_replicas_per_node"] = spec.max_replicas_per_node
    config = spec.scaling_config()
    if config.policy == "fixed":
        options["num_replicas"] = config.replicas
        return options
    autoscaling: dict[str, Any] = {
        "min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
        "initial_replicas": max(1, spec.min_replicas),
        "target_ongoing_requests": auto.target_in_flight,
        "upscale_delay_s": auto.upscale_delay_s, "downscale_delay_s": auto.downscale_delay_s,
        "metrics_interval_s": min(2.0, auto.step_s * 2), "look_back_period_s": max(2.0, auto.step_s * 5),
    }
    if spec.min_replicas == 0:
        autoscaling["downscale_to_zero_delay_s"] = spec.idle_timeout_s
    options["autoscaling_config"] = autoscaling
    return options


def model_payload(spec: Deployment) -> tuple[dict[str, bytes], str]:
    """The target's files (name -> bytes) and what `kaon serve` is given, relative to where they land."""
    target = spec.target
    if ":" in target and target.split(":", 1)[0].endswith(".py"):
        source, _, cls = target.rpartition(":")
        return {Path(source).name: Path(source).read_bytes()}, f"{Path(source).name}:{cls}"
    path = Path(target)
    if path.is_file():
        files = {path.name: path.read_bytes()}
        data = path.with_name(path.name + ".data")
        if data.is_file():
            files[data.name] = data.read_bytes()
        return files, path.name
    from kaon.registry import Registry

    with Registry() as registry:
        version = registry.get_version(target)
        folder = registry.materialize(version)
    files = {name: (folder / name).read_bytes() for name in version.files}
    main = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}.get(version.framework)
    if main not in files:
        main = next(iter(files))
    return files, main


def build_app(spec: Deployment, files_ref: Any, entry: str) -> Any:
    """The Serve application: kaon's ASGI app for `spec`, built on each replica from the shipped files."""
    serve = _serve()
    model_name = spec.model_name
    trust_pickle = spec.trust_pickle
    serve_options = dict(spec.serve)

    def build_asgi_app() -> Any:
        import tempfile

        import ray as ray_on_replica

        from kaon.config import ServeConfig
        from kaon.serving import KaonApp
        from kaon.serving.targets import resolve_target

        folder = Path(tempfile.mkdtemp(prefix="kaon-ray-model-"))
        for name, content in ray_on_replica.get(files_ref).items():
            (folder / name).write_bytes(content)
        config = ServeConfig.from_env(**serve_options, name=model_name)
        service = resolve_target(str(folder / entry), name=model_name, trust_pickle=trust_pickle)
        return _StripRootPath(KaonApp(service, config))

    ingress = serve.ingress(build_asgi_app)()
    return serve.deployment(**deployment_options(spec))(ingress).bind()


class _StripRootPath:
    """Serve mounts an application at /NAME and passes the full path; kaon's routes are from /."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"].startswith(root):
            scope = {**scope, "path": scope["path"][len(root):] or "/", "root_path": ""}
        await self.app(scope, receive, send)


def deploy_to_ray(spec: Deployment, *, timeout_s: float = DEFAULT_TIMEOUT_S, http_host: str = "127.0.0.1",
                  http_port: int | None = None) -> dict[str, Any]:
    """Run `spec` as a Serve application on the cluster at `spec.address`; return its status when RUNNING."""
    if spec.address is None:
        raise ConfigError("the Ray backend needs address: HOST:PORT (kaon deploy --address).")
    connect(spec.address)
    ray, serve = _ray(), _serve()
    port = http_port or spec.port or SERVE_HTTP_PORT
    serve.start(http_options={"host": http_host, "port": port})
    files, entry = model_payload(spec)
    app = build_app(spec, ray.put(files), entry)
    serve.run(app, name=spec.name, route_prefix=f"/{spec.name}", blocking=False)
    return wait_running(spec.name, timeout_s=timeout_s, url=f"http://{http_host}:{port}/{spec.name}")


def wait_running(name: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, url: str | None = None) -> dict[str, Any]:
    serve = _serve()
    deadline = time.monotonic() + timeout_s
    status = ray_status(name, url=url)
    while time.monotonic() < deadline:
        status = ray_status(name, url=url)
        if status["status"] == "RUNNING":
            return status
        if status["status"] in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise KaonError(f"Ray Serve could not run '{name}': {status['message']}")
        time.sleep(0.25)
    serve.delete(name, _blocking=False)
    raise KaonError(f"'{name}' was not RUNNING on Ray after {timeout_s:g} s (last: {status['status']}, "
                    f"{status['message']}); deleted it. Check the cluster's resources (ray status).")


def ray_status(name: str, *, url: str | None = None) -> dict[str, Any]:
    """The application's status as Serve reports it, in kaon's status shape (replicas by state)."""
    serve = _serve()
    application = serve.status().applications.get(name)
    if application is None:
        return {"name": name, "backend": "ray", "status": "NOT_FOUND", "message": "", "replicas": {}, "url": url}
    deployments = application.deployments
    replicas: dict[str, int] = {}
    message = application.message
    for deployment in deployments.values():
        for state, count in deployment.replica_states.items():
            replicas[_name(state)] = replicas.get(_name(state), 0) + count
        message = message or deployment.message
    return {"name": name, "backend": "ray", "status": _name(application.status), "message": message,
            "replicas": replicas, "ready": replicas.get("RUNNING", 0), "url": url}


def _name(state: Any) -> str:
    """Serve's status enums as their plain names ('RUNNING')."""
    return str(getattr(state, "value", state))


def scale_on_ray(spec: Deployment, replicas: int | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Pin the application to `replicas` (or hand it back to autoscaling with None) by redeploying it."""
    pinned = spec.with_overrides(replicas=replicas) if replicas is not None else \
        Deployment.parse({**spec.model_dump(), "replicas": None})
    return deploy_to_ray(pinned, timeout_s=timeout_s)


def delete_from_ray(name: str, address: str) -> None:
    connect(address)
    _serve().delete(name)


def cluster_nodes(address: str) -> list[dict[str, Any]]:
    """The cluster's alive nodes and their capacity, for placement and `kaon status`."""
    connect(address)
    nodes = []
    for node in _ray().nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources", {})
        nodes.append({"name": node.get("NodeID", "")[:12], "address": node.get("NodeManagerAddress"),
                      "cpus": resources.get("CPU", 0.0), "memory_mb": int(resources.get("memory", 0) / 2**20),
                      "gpus": int(resources.get("GPU", 0))})
    return nodes


def environment_for_nodes(token: str) -> dict[str, str]:
    """The variables every node and driver of a token-authenticated cluster needs."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}


# ---- Trainer(backend="ray"): fit on Ray Train ----------------------------------------------------------

_RELAY_EVERY_S = 0.2  # how often the driver collects the epoch logs rank 0 sent


def run_on_ray(job: Callable[[int, int, Callable[[Any], None]], Any], *, num_workers: int,
               address: str | None = None, use_gpu: bool = False,
               on_message: Callable[[Any], None] | None = None) -> Any:
    """Run `job(rank, world_size, send)` on `num_workers` Ray Train workers; return rank 0's result.

    What rank 0 passes to `send` reaches `on_message` on the driver while the job runs. The backend
    contract of kaon.training.distributed.
    """
    ray = _ray()
    train = require("ray.train", "ray", "Trainer(backend='ray')")
    torch_train = require("ray.train.torch", "ray", "Trainer(backend='ray')")
    started = _start_or_join(ray, address, num_cpus=max(2, num_workers))
    storage = tempfile.mkdtemp(prefix="kaon-ray-train-")
    try:
        inbox = ray.remote(num_cpus=0)(_Inbox).remote()
        trainer = torch_train.TorchTrainer(
            _train_loop, train_loop_config={"job": ray.put(job), "inbox": inbox},
            scaling_config=train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
            run_config=train.RunConfig(name=f"kaon-fit-{uuid.uuid4().hex[:8]}", storage_path=storage,
                                       failure_config=train.FailureConfig(max_failures=0)))
        done = threading.Event()
        relay = threading.Thread(target=_relay, args=(ray, inbox, on_message, done), daemon=True)
        relay.start()
        try:
            trainer.fit()  # in the main thread: Ray Train installs a SIGINT handler
        except train.TrainingFailedError as exc:
            raise _worker_error(exc) from exc
        finally:
            done.set()
            relay.join()
        return ray.get(inbox.result.remote())
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()


def _start_or_join(ray: Any, address: str | None, *, num_cpus: int) -> bool:
    """Join the cluster at `address`, or start a Ray here (never one found by RAY_ADDRESS); True if started."""
    if ray.is_initialized():
        return False
    if address is not None:
        connect(address)
        return False
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, namespace="kaon",
             log_to_driver=False, logging_level="warning")
    return True


def _train_loop(config: dict[str, Any]) -> None:
    """Each Ray Train worker: run the job; rank 0 sends its messages and result to the driver's inbox."""
    import ray as ray_on_worker
    import ray.train as train_on_worker

    context = train_on_worker.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    inbox = config["inbox"]

    def send(message: Any) -> None:
        ray_on_worker.get(inbox.put.remote(message))  # waits: messages arrive in order, before the result

    result = ray_on_worker.get(config["job"])(rank, world_size, send)
    if rank == 0:
        ray_on_worker.get(inbox.finish.remote(result))


class _Inbox:
    """An actor owned by the driver: rank 0's messages and result, with no shared storage."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.outcome: Any = None

    def put(self, message: Any) -> None:
        self.messages.append(message)

    def take(self) -> list[Any]:
        messages, self.messages = self.messages, []
        return messages

    def finish(self, outcome: Any) -> None:
        self.outcome = outcome

    def result(self) -> Any:
        return self.outcome


def _relay(ray: Any, inbox: Any, on_message: Callable[[Any], None] | None, done: threading.Event) -> None:
    while True:
        finished = done.wait(_RELAY_EVERY_S)
        for message in ray.get(inbox.take.remote()):
            if on_message is not None:
                on_message(message)
        if finished:
            return


def _worker_error(exc: BaseException) -> BaseException:
    """The first worker's KaonError (a wrong shape, a NaN loss) as itself; else a KaonError saying what failed."""
    failures = getattr(exc, "worker_failures", None) or {}
    for failure in failures.values():
        cause = getattr(failure, "cause", failure)
        if isinstance(cause, KaonError):
            return cause
    return KaonError(f"training on Ray failed: {exc}")
