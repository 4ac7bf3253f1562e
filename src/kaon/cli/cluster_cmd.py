"""`kaon up|deploy|start|status|scale|logs|stop|down`: deployments on the local backend (or Ray), from the CLI.

`kaon scale simulate --trace FILE` replays a request-rate trace against the autoscaling policies.
The cluster package is imported inside the commands, so `kaon --help` does not pay for it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from kaon.cli.app import app, handles_errors, make_console
from kaon.cluster._text import plural
from kaon.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from kaon.cluster.client import ControlPlaneClient
    from kaon.cluster.deployment import Deployment

console = make_console()
err_console = make_console(stderr=True)


# ---- kaon up / down ----------------------------------------------------------------------------


@app.command()
@handles_errors
def up(
    port: int = typer.Option(None, help="API port. \\[default: 8470, or any free port when taken]"),
    host: str = typer.Option("127.0.0.1", help="API address (keep it on loopback)."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Run in the background; log to KAON_HOME/cluster."),
    cpus: float = typer.Option(None, help="CPU cores replicas may use here. \\[default: all]"),
    memory_mb: int = typer.Option(None, help="Memory replicas may use here, MiB. \\[default: all]"),
    log_level: str = typer.Option("info", help="debug | info | warning | error."),
) -> None:
    """Run the control plane: deployments, their replicas, autoscaling and the API (Ctrl-C stops it)."""
    import logging

    from kaon.cluster._paths import cluster_dir
    from kaon.cluster.client import ControlPlaneClient, start_detached
    from kaon.cluster.controlplane import local_node, run_control_plane

    running = ControlPlaneClient._find()
    if running is not None:
        console.print(f"the control plane is already running at {running.url} (kaon down stops it)")
        running.close()
        return
    node = local_node(cpus, memory_mb)
    if detach:
        extra = [*(["--cpus", str(cpus)] if cpus else []), *(["--memory-mb", str(memory_mb)] if memory_mb else [])]
        pid = start_detached(port=port, extra_args=extra)
        client, ours = _wait_for_plane(pid, 30.0)
        if client is None:
            raise ConfigError(f"the control plane did not start; see {cluster_dir() / 'controlplane.log'}")
        with client:
            if not ours:  # another `kaon up` (or `kaon deploy`) started one first: only one runs per KAON_HOME
                unused = f"; --port {port} was not used" if port is not None and not client.url.endswith(f":{port}") \
                    else ""
                console.print(f"the control plane is already running at {client.url} (another kaon up or kaon "
                              f"deploy started it first{unused}; kaon down stops it)", highlight=False)
                return
            console.print(f"control plane running at {client.url} (node: {node.cpus:g} cpus, {node.memory_mb} MiB); "
                          f"log: {cluster_dir() / 'controlplane.log'}")
        return
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(plane: Any) -> None:
        print(f"kaon control plane at {plane.url} (node {node.name}: {node.cpus:g} cpus, {node.memory_mb} MiB). "
              "Ctrl-C stops it and its replicas.", flush=True)

    run_control_plane(host, port, node=node, ready=ready)


def _wait_for_plane(pid: int, timeout_s: float) -> tuple[ControlPlaneClient | None, bool]:
    """Wait for the control plane this command started (process `pid`) to answer: (its client, True). When
    that process exits first, another control plane holds KAON_HOME's lock: (the one that runs, False).
    (None, ...): none answered within `timeout_s`."""
    import os

    from kaon.cluster.client import ControlPlaneClient

    deadline = time.monotonic() + timeout_s
    exited = False
    while time.monotonic() < deadline:
        client = ControlPlaneClient._find()
        if client is not None and (exited or client.health().get("pid") == pid):
            return client, not exited
        if client is not None:
            client.close()
        if not exited:
            try:
                exited = os.waitpid(pid, os.WNOHANG)[0] == pid
            except ChildProcessError:
                exited = True
        time.sleep(0.1)
    return None, not exited


@app.command()
@handles_errors
def down() -> None:
    """Stop the control plane and every replica it started (deployments are kept, as stopped)."""
    from kaon.cluster.client import ControlPlaneClient

    client = ControlPlaneClient._find()
    if client is None:
        console.print("no control plane is running")
        return
    with client:
        stopped = client.shutdown()
    console.print(f"stopped the control plane{' and ' + ', '.join(stopped) if stopped else ''}")


# ---- kaon deploy ------------------------------------------------------------------------------


@app.command()
@handles_errors
def deploy(
    source: str = typer.Argument(..., help="deployment.yaml | a model (name@alias, model.onnx) | service.py:Class"),
    name: str = typer.Option(None, help="Deployment name. \\[default: from the file or the target]"),
    port: int = typer.Option(None, help="The deployment answers on 127.0.0.1:PORT. \\[default: first free from 8100]"),
    min_replicas: int = typer.Option(None, min=0, help="Fewest replicas (0: scale to zero when idle)."),
    max_replicas: int = typer.Option(None, min=1, help="Most replicas."),
    policy: str = typer.Option(None, help="fixed | reactive | predictive."),
    backend: str = typer.Option(None, help="local (default) | ray."),
    address: str = typer.Option(None, help="Ray cluster HOST:PORT (backend ray)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Return once the replicas are ready."),
    timeout_s: float = typer.Option(180.0, help="How long --wait waits."),
    json_out: bool = typer.Option(False, "--json", help="Print the deployment's status as JSON."),
) -> None:
    """Run a deployment (starting the control plane in the background when none is running)."""
    from kaon.cluster.client import ControlPlaneClient

    spec = _spec_from(source, name=name, port=port, min_replicas=min_replicas, max_replicas=max_replicas,
                      policy=policy, backend=backend, address=address)
    if spec.backend == "ray":
        _run_on_ray(spec, timeout_s=timeout_s, json_out=json_out)
        return
    with ControlPlaneClient.connect(start=True) as client:
        status = client.deploy(spec)
        replaced = status.get("replaced")
        if wait:
            status = _wait_ready(client, spec.name, spec.initial_replicas(), timeout_s, quiet=json_out)
    if json_out:
        _print_json({**status, "replaced": replaced} if replaced else status)
        return
    if replaced:
        console.print(_replaced_message(spec.name, replaced), style="yellow", highlight=False)
    console.print(_deployed_message(status, waited=wait), highlight=False)


def _run_on_ray(spec: Deployment, *, timeout_s: float, json_out: bool) -> None:
    """`kaon deploy` / `kaon start` of a deployment whose backend is Ray: run it there and keep its spec."""
    from kaon.cluster.backends.ray import deploy_to_ray

    status = deploy_to_ray(spec, timeout_s=timeout_s)
    _store_spec(spec)
    if json_out:
        _print_json(status)
    else:
        console.print(f"'{spec.name}' is serving on Ray at {status['url']} with {plural(status['ready'], 'replica')}")


def _deployed_message(status: dict[str, Any], *, waited: bool) -> str:
    """What `kaon deploy` and `kaon start` say once the control plane took the deployment (and, when
    `waited`, its replicas are ready)."""
    name, url, ready, desired = status["name"], status["url"], status["ready"], status["desired"]
    if desired == 0 and ready == 0:
        cold = status.get("cold_start_s")
        return (f"'{name}' is deployed at {url}, scaled to zero: the first request starts a replica "
                f"(cold start{f' ~{cold:.1f} s' if cold else ''}).")
    if ready == 0:
        return (f"'{name}' is deployed at {url}; {plural(desired, 'replica')} starting (kaon status {name} shows "
                f"how far). Logs: kaon logs {name}; to stop it: kaon stop {name}")
    message = f"'{name}' is serving at {url} with {plural(ready, 'replica')}, policy {status['policy']}"
    if ready < desired and not waited:
        message += f" ({desired - ready} more starting)"
    message += "."
    if status["min_replicas"] == 0:
        idle_s = float(status.get("spec", {}).get("idle_timeout_s", 0))
        message += (f" It scales to zero after {idle_s:g} s without requests (at once if it has had none yet); "
                    "the next request then starts a replica.")
    # commands a user pastes one at a time: "a | b | c" would run as one pipeline, stop included
    return f"{message} Status: kaon status {name}; logs: kaon logs {name}; to stop it: kaon stop {name}"


def _replaced_message(name: str, replaced: dict[str, Any]) -> str:
    """`kaon deploy` replaced the spec of a deployment that was stored but not running: say what it replaced."""
    changes = ", ".join(f"{c['field']} {_shown(c['stored'])} -> {_shown(c['now'])}" for c in replaced["changes"])
    return (f"note: this replaced the stored spec of '{name}' ({replaced['status']})"
            + (f": {changes}" if changes else "")
            + f". To run a stopped deployment as it was stored, use kaon start {name} rather than kaon deploy.")


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    return value if isinstance(value, str) else json.dumps(value)


def _spec_from(source: str, **overrides: Any) -> Deployment:
    from kaon.cluster.deployment import Deployment, absolute_target, default_name

    path = Path(source)
    if path.suffix in (".yaml", ".yml", ".json") and path.is_file():
        spec = Deployment.from_file(path)
    else:
        name = overrides.get("name") or default_name(source)
        target = absolute_target(source)  # the control plane may run in another folder
        spec = Deployment.parse({"name": name, "target": target}, source=f"deployment of {source!r}")
    if overrides.get("address") and not overrides.get("backend"):
        overrides["backend"] = "ray"
    if overrides.get("max_replicas") is None and overrides.get("min_replicas") is not None:
        overrides["max_replicas"] = max(spec.max_replicas, overrides["min_replicas"], 1)
    return spec.with_overrides(**overrides)


def _store_spec(spec: Deployment) -> None:
    """Keep a Ray deployment's spec in the registry, so that status, scale and stop find its cluster."""
    from kaon.registry import Registry
    from kaon.registry.deployments import DeploymentStore

    with Registry() as registry:
        DeploymentStore(registry).save_deployment(spec.name, spec.model_dump(mode="json"))


def _ray_spec(name: str | None) -> Deployment | None:
    """The stored spec of `name` when it runs on Ray, else None."""
    if name is None:
        return None
    from kaon.cluster.deployment import from_stored
    from kaon.errors import NotFoundError
    from kaon.registry import Registry
    from kaon.registry.deployments import DeploymentStore

    with Registry() as registry:
        try:
            record = DeploymentStore(registry).get_deployment(name)
        except NotFoundError:
            return None
    if record.spec.get("backend") != "ray" or record.status != "running":
        return None
    return from_stored(record.spec, source=f"deployment '{name}'")[0]


def _wait_ready(client: ControlPlaneClient, name: str, want: int, timeout_s: float, *, quiet: bool = False) -> Any:
    """Poll until `want` replicas are ready, showing each replica's progress against the expected cold start."""
    deadline = time.monotonic() + timeout_s
    status = client.status(name)
    if want == 0:
        return status
    with Live(console=err_console, transient=True, refresh_per_second=8, auto_refresh=not quiet) as live:
        while True:
            status = client.status(name)
            if status["ready"] >= want:
                return status
            failing = [r for r in status["replicas"] if r["restarts"] >= 2]
            if failing and status["ready"] == 0:
                lines = client.logs(name, tail=15)
                raise ConfigError(
                    f"the replicas of '{name}' keep failing to start ({failing[0]['restarts']} restarts). "
                    "Their last log lines:\n" + "\n".join(lines[-15:])
                    + f"\nFix it and deploy again; kaon stop {name}.")
            if time.monotonic() > deadline:
                raise ConfigError(f"'{name}' has {status['ready']} of {plural(want, 'replica')} ready after "
                                  f"{timeout_s:g} s; see kaon status {name} and kaon logs {name}.")
            if not quiet:
                live.update(_progress_table(status, want))
            time.sleep(0.2)


def _progress_table(status: dict[str, Any], want: int) -> Table:
    expected = status.get("cold_start_s")
    table = Table(title=f"starting '{status['name']}': {status['ready']}/{want} ready", title_justify="left",
                  box=None, show_header=False)
    for replica in status["replicas"]:
        age = replica["age_s"]
        if replica["state"] == "starting":
            note = f"{age:.1f} s" + (f" of ~{expected:.1f} s cold start" if expected else " (cold start)")
        elif replica["cold_start_s"] is not None:
            note = f"ready in {replica['cold_start_s']:.2f} s"
        else:
            note = ""
        table.add_row(f"replica {replica['index']}", replica["state"], f"pid {replica['pid']}", note)
    return table


# ---- kaon status / logs / stop ------------------------------------------------------------------


@app.command()
@handles_errors
def status(
    name: str = typer.Argument(None, help="A deployment. \\[default: all]"),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Deployments: replicas (pid, state, node, in-flight), the autoscaler's last decision and why; stopped ones too."""
    from kaon.cluster.client import ControlPlaneClient

    on_ray = _ray_spec(name)
    if on_ray is not None and on_ray.address:
        from kaon.cluster.backends.ray import connect, ray_status

        connect(on_ray.address)
        result = ray_status(on_ray.name)
        if json_out:
            _print_json(result)
        else:
            console.print(f"[bold]{on_ray.name}[/] on Ray at {on_ray.address}: {result['status']}, "
                          f"replicas {result['replicas']} {escape(result['message'] or '')}")
        return

    client = ControlPlaneClient._find()
    if client is None:
        stored = _stored_status(name)
        if json_out:
            _print_json(stored)
            return
        console.print("[yellow]no control plane is running[/] (kaon up starts it; running deployments come back)")
        for item in stored:
            _print_stored(item)
        return
    with client:
        try:
            found = client.status(name)
        except NotFoundError:
            if name is None or not (stored := _stored_status(name, missing_ok=True)):
                raise
            found = stored[0]  # stopped, or on Ray
    items: list[dict[str, Any]] = [found] if name else list(found)
    # The control plane runs what is running; what `kaon down` or `kaon stop` kept is in the registry only.
    names = {item["name"] for item in items}
    kept = [] if name else [item for item in _stored_status(None) if item["name"] not in names]
    if json_out:
        _print_json(found if name else [*items, *kept])
        return
    for item in items:
        if item.get("status", "running") == "running" and "replicas" in item and "policy" in item:
            _print_status(item)
        else:
            _print_stored(item)
    if not name and not items:
        console.print("no deployments running. kaon deploy FILE|TARGET starts one.")
    for item in kept:
        _print_stored(item)


def _stored_status(name: str | None, *, missing_ok: bool = False) -> list[dict[str, Any]]:
    """Deployments as the registry keeps them (what `kaon status` shows of those the control plane does not run)."""
    from kaon.registry import Registry
    from kaon.registry.deployments import DeploymentStore

    with Registry() as registry:
        store = DeploymentStore(registry)
        try:
            records = [store.get_deployment(name)] if name else store.list_deployments()
        except NotFoundError:
            if missing_ok:
                return []
            raise
    items = []
    for r in records:
        spec = r.spec
        port = spec.get("port")
        items.append({
            "name": r.name, "status": r.status, "backend": spec.get("backend", "local"), "target": spec.get("target"),
            "serving": spec.get("resolved_target") or spec.get("target"),
            "url": f"http://{spec.get('host', '127.0.0.1')}:{port}" if port else None,
            "min_replicas": spec.get("min_replicas"), "max_replicas": spec.get("max_replicas"),
            "replicas": [], "decision": r.decision, "spec": spec,
        })
    return items


def _print_stored(item: dict[str, Any]) -> None:
    """One deployment the control plane does not run: its status, what it would serve, how to start it."""
    serving = item.get("serving")
    line = (f"  {item['name']}: {item['status']}, target {escape(str(item['target']))}"
            + (f", serving {escape(str(serving))}" if serving and serving != item["target"] else "")
            + (f", at {item['url']}" if item.get("url") else "")
            + (f", min {item['min_replicas']}, max {item['max_replicas']}" if item.get("max_replicas") else ""))
    decision = item.get("decision") or {}
    if decision:
        line += f", last decision {decision.get('replicas')} ({escape(str(decision.get('reason')))})"
    if item["status"] == "stopped":
        line += f". kaon start {item['name']} runs it as stored"
    console.print(line, highlight=False)


def _print_status(item: dict[str, Any]) -> None:
    serving = item.get("serving")
    console.print(f"[bold]{item['name']}[/] {item['url']}  target {escape(item['target'])}"
                  + (f", serving {escape(serving)}" if serving and serving != item["target"] else "")
                  + f"  policy {item['policy']}  replicas {item['ready']} ready / {item['desired']} desired "
                  f"(min {item['min_replicas']}, max {item['max_replicas']})"
                  + (f"  cold start {item['cold_start_s']:.2f} s" if item.get("cold_start_s") else ""),
                  highlight=False)
    if item.get("failing"):
        console.print(f"  [red]its replicas fail to start:[/] {escape(item['failing'])}; see kaon logs {item['name']}",
                      highlight=False)
    if item["replicas"]:
        table = Table(box=None, pad_edge=False)
        for column in ("replica", "pid", "state", "node", "port", "in flight", "served", "restarts", "cold start"):
            table.add_column(column)
        for r in item["replicas"]:
            table.add_row(str(r["index"]), str(r["pid"]), r["state"], r["node"], str(r["port"]), str(r["in_flight"]),
                          str(r.get("served", 0)), str(r["restarts"]),
                          "" if r["cold_start_s"] is None else f"{r['cold_start_s']:.2f} s")
        console.print(table)
    decision = item.get("decision")
    if decision:
        load = decision.get("load", {})
        console.print(f"  autoscaler: {plural(decision['replicas'], 'replica')} - {escape(decision['reason'])}",
                      highlight=False)
        console.print(f"  load: {load.get('in_flight')} in flight, {load.get('request_rate')} req/s"
                      + (f", {load['latency_ms']} ms mean" if load.get("latency_ms") is not None else ""))


@app.command()
@handles_errors
def logs(
    name: str = typer.Argument(..., help="The deployment."),
    replica: int = typer.Option(None, help="Only this replica's log."),
    all_replicas: bool = typer.Option(False, "--all", help="The kept logs of replicas that are gone too."),
    tail: int = typer.Option(100, min=1, help="Lines per replica."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines (Ctrl-C stops)."),
) -> None:
    """Print the running replicas' logs (KAON_HOME/deployments/NAME/replica-*.log); --all: the gone ones' too."""
    from kaon.cluster._paths import deployment_dir, read_logs, replica_logs, unknown_replica_error

    folder = deployment_dir(name)
    if not folder.is_dir():
        raise ConfigError(f"no logs for a deployment named '{name}' in {folder.parent}. kaon status lists them.")
    logged = replica_logs(folder)
    running = _running_replicas(name)
    shown: set[int] | None
    if replica is not None:
        if replica not in logged:
            raise unknown_replica_error(name, replica, logged, running)
        shown = {replica}
    elif all_replicas:
        shown = None
    else:
        shown = set(running)
        if not shown:
            err_console.print(f"no replica of '{name}' is running. kaon logs {name} --all shows the kept logs of "
                              f"{plural(len(logged), 'replica')} that ran.", highlight=False)
    for line in read_logs(folder, tail=tail, replicas=shown):
        print(line)
    if not follow:
        return
    sizes = {file: file.stat().st_size for file in logged.values()}
    while True:
        time.sleep(0.5)
        for index, file in replica_logs(folder).items():
            if file not in sizes and replica is None and shown is not None:
                shown.add(index)  # a replica started since: it runs
            if shown is not None and index not in shown:
                continue
            try:
                size = file.stat().st_size
            except FileNotFoundError:  # pruned
                continue
            if size > sizes.get(file, 0):
                with open(file, "rb") as handle:
                    handle.seek(sizes.get(file, 0))
                    for line in handle.read().decode("utf-8", errors="replace").splitlines():
                        print(f"[{index}] {line}", flush=True)
            sizes[file] = size


def _running_replicas(name: str) -> list[int]:
    """The numbers of `name`'s replicas the control plane runs now (none when it is not running)."""
    from kaon.cluster.client import ControlPlaneClient

    client = ControlPlaneClient._find()
    if client is None:
        return []
    with client:
        try:
            return sorted({r["index"] for r in client.status(name)["replicas"]})
        except NotFoundError:
            return []


@app.command()
@handles_errors
def start(
    name: str = typer.Argument(..., help="A stopped deployment (kaon status lists them)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Return once the replicas are ready."),
    timeout_s: float = typer.Option(180.0, help="How long --wait waits."),
    json_out: bool = typer.Option(False, "--json", help="Print the deployment's status as JSON."),
) -> None:
    """Start a stopped deployment as it was stored: its spec and the version resolved when it was deployed."""
    from kaon.cluster.client import ControlPlaneClient
    from kaon.cluster.deployment import from_stored
    from kaon.registry import Registry
    from kaon.registry.deployments import DeploymentStore

    with Registry() as registry:
        try:
            record = DeploymentStore(registry).get_deployment(name)
        except NotFoundError as exc:  # its message lists the deployments there are
            raise NotFoundError(f"{exc.message} kaon deploy FILE|TARGET --name {name} creates it.") from None
    spec = from_stored(record.spec, source=f"deployment '{name}'")[0]
    if spec.backend == "ray":
        _run_on_ray(spec, timeout_s=timeout_s, json_out=json_out)
        return
    with ControlPlaneClient.connect(start=True) as client:
        status = client.start(name)
        if wait and not status.get("already_running"):
            status = _wait_ready(client, name, spec.initial_replicas(), timeout_s, quiet=json_out)
    if json_out:
        _print_json(status)
    elif status.get("already_running"):
        console.print(f"'{name}' is already running at {status['url']} (kaon status {name})", highlight=False)
    else:
        console.print(_deployed_message(status, waited=wait), highlight=False)


@app.command()
@handles_errors
def stop(name: str = typer.Argument(..., help="The deployment.")) -> None:
    """Stop a deployment's replicas and its router (its spec stays in the registry, as stopped)."""
    from kaon.cluster.client import ControlPlaneClient

    on_ray = _ray_spec(name)
    if on_ray is not None and on_ray.address:
        from kaon.cluster.backends.ray import delete_from_ray
        from kaon.registry import Registry
        from kaon.registry.deployments import DeploymentStore

        delete_from_ray(name, on_ray.address)
        with Registry() as registry:
            DeploymentStore(registry).set_status(name, "stopped")
        console.print(f"stopped '{name}' on Ray")
        return

    with ControlPlaneClient.connect(start=False) as client:
        client.stop(name)
    console.print(f"stopped '{name}'")


# ---- kaon scale NAME N | kaon scale simulate ----------------------------------------------------


class _ScaleGroup(TyperGroup):
    """`kaon scale NAME N` and `kaon scale simulate ...` under one word: a first argument that is not
    a subcommand is a deployment name."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["set", *args]
        return super().parse_args(ctx, args)


scale_app = typer.Typer(
    cls=_ScaleGroup, no_args_is_help=True,
    help="kaon scale NAME N pins a deployment's replicas; kaon scale NAME --auto hands them back to its "
         "autoscaler; kaon scale simulate --trace FILE replays a load trace against the policies.",
)
app.add_typer(scale_app, name="scale")


@scale_app.command("set", hidden=True)
@handles_errors
def scale_set(
    name: str = typer.Argument(..., help="The deployment."),
    replicas: int = typer.Argument(None, min=0, help="Replica count (0 stops them all)."),
    auto: bool = typer.Option(False, "--auto", help="Resume autoscaling with the deployment's policy."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the replicas (shows cold-start progress)."),
    timeout_s: float = typer.Option(180.0, help="How long --wait waits."),
) -> None:
    """Pin NAME to N replicas, or --auto to resume autoscaling."""
    from kaon.cluster.client import ControlPlaneClient

    if (replicas is None) == (not auto):
        raise ConfigError(f"give a replica count or --auto. Received: replicas={replicas}, auto={auto}. "
                          f"E.g. kaon scale {name} 3, or kaon scale {name} --auto.")
    on_ray = _ray_spec(name)
    if on_ray is not None:
        from kaon.cluster.backends.ray import scale_on_ray

        status = scale_on_ray(on_ray, None if auto else replicas, timeout_s=timeout_s)
        from kaon.cluster.deployment import Deployment

        _store_spec(Deployment.parse({**on_ray.model_dump(), "replicas": None if auto else replicas}))
        console.print(f"'{name}' on Ray: {status['replicas']}")
        return
    with ControlPlaneClient.connect(start=False) as client:
        result = client.scale(name, None if auto else replicas)
        if wait and replicas:
            result = _wait_ready(client, name, replicas, timeout_s)
    console.print(_scaled_message(name, None if auto else replicas, result), highlight=False)


def _scaled_message(name: str, replicas: int | None, result: dict[str, Any]) -> str:
    """What `kaon scale NAME N` (or `--auto`: `replicas` None) says once the control plane took it."""
    what = f"pinned at {plural(replicas, 'replica')}" if replicas is not None else \
        f"autoscaling with policy {result['policy']}"
    return f"'{name}' {what}; {result['ready']} ready now"


@scale_app.command("simulate")
@handles_errors
def simulate_cmd(
    trace: Path = typer.Option(None, help="CSV (t_s,rate) or JSON {step_s, rates}. \\[default: a bursty demo trace]"),
    policy: str = typer.Option("predictive", help="fixed | reactive | predictive | compare (both)."),
    deployment: Path = typer.Option(None, help="Take the autoscaling settings from this deployment file."),
    min_replicas: int = typer.Option(1, min=0),
    max_replicas: int = typer.Option(8, min=1),
    replicas: int = typer.Option(None, min=0, help="The count for policy fixed."),
    target_in_flight: float = typer.Option(2.0, help="Requests in flight per replica the reactive rule aims at."),
    upscale_delay_s: float = typer.Option(0.0),
    downscale_delay_s: float = typer.Option(15.0),
    idle_timeout_s: float = typer.Option(300.0, help="Scale to zero after (with --min-replicas 0)."),
    cold_start_s: float = typer.Option(2.0, help="Measured replica cold start (kaon status shows it)."),
    capacity_rps: float = typer.Option(30.0, help="Requests/s one replica serves."),
    slo_ms: float = typer.Option(250.0, help="A request slower than this violates the SLO."),
    num_warm_replicas: int = typer.Option(0, min=0),
    cost_per_replica_hour: float = typer.Option(
        None, help="USD. \\[default: 0.5 vCPU + 0.5 GiB at Fargate-like prices]"),
    step_s: float = typer.Option(None, help="Seconds per row, for a trace without a t_s column."),
    season_s: float = typer.Option(None, help="The load's period. \\[default: detected]"),
    seed: int = typer.Option(0),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Replay a request-rate trace against a model of the deployment; report SLO misses, replica-seconds, cost."""
    from kaon.cluster.deployment import Deployment
    from kaon.cluster.policy import ScalingConfig
    from kaon.cluster.simulate import DeploymentModel, Trace, bursty_trace, simulate

    if policy not in ("fixed", "reactive", "predictive", "compare"):
        raise ConfigError(f"--policy must be fixed, reactive, predictive or compare. Received: {policy!r}")

    source = Trace.load(trace, step_s=step_s) if trace is not None else bursty_trace(1800.0, step_s=step_s or 1.0)
    policies = ["reactive", "predictive"] if policy == "compare" else [policy]
    season: float | None = season_s
    if deployment is not None:
        spec = Deployment.from_file(deployment)
        base = spec.scaling_config()
        season = season_s or spec.autoscaling.season_s
    else:
        base = ScalingConfig(min_replicas=min_replicas, max_replicas=max_replicas, replicas=replicas,
                             target_in_flight=target_in_flight, upscale_delay_s=upscale_delay_s,
                             downscale_delay_s=downscale_delay_s, idle_timeout_s=idle_timeout_s,
                             capacity_rps=capacity_rps)
    model_args: dict[str, Any] = {"cold_start_s": cold_start_s, "capacity_rps": capacity_rps, "slo_ms": slo_ms,
                                  "num_warm_replicas": num_warm_replicas}
    if cost_per_replica_hour is not None:
        model_args["cost_per_replica_hour"] = cost_per_replica_hour
    model = DeploymentModel(**model_args)
    results = [simulate(source, replace(base, policy=name, step_s=source.step_s),  # type: ignore[arg-type]
                        model, seed=seed, season_s=season) for name in policies]
    summaries = [r.summary() for r in results]
    if json_out:
        _print_json(summaries if len(summaries) > 1 else summaries[0])
        return
    table = Table(title=f"{len(source.rates)} steps of {source.step_s:g} s, {results[0].requests} requests; "
                        f"cold start {cold_start_s:g} s, {capacity_rps:g} req/s per replica, SLO {slo_ms:g} ms",
                  title_justify="left")
    for column in ("policy", "SLO-violating", "rate", "replica-seconds", "cost (USD)", "p50 ms", "p99 ms", "max"):
        table.add_column(column, justify="right")
    for s in summaries:
        table.add_row(str(s["policy"]), str(s["slo_violations"]), f"{float(s['violation_rate']):.2%}",
                      f"{s['replica_seconds']}", f"{s['cost']}", f"{s['p50_ms']}", f"{s['p99_ms']}",
                      str(s["max_replicas"]))
    console.print(table)
    if len(results) == 2 and results[0].slo_violations:
        cut = 1 - results[1].slo_violations / results[0].slo_violations
        more = results[1].replica_seconds / max(results[0].replica_seconds, 1e-9) - 1
        console.print(f"predictive vs reactive: {cut:.0%} fewer SLO-violating requests, "
                      f"{more:+.1%} replica-seconds")


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")

