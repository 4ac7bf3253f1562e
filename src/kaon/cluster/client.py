"""Talk to the control plane from the CLI, Python or the dashboard; start one in the background if needed.

    >>> plane = ControlPlaneClient.connect(start=True)        # doctest: +SKIP
    >>> plane.deploy(Deployment(name="digits", target="digits@latest"))["url"]   # doctest: +SKIP
    'http://127.0.0.1:8100'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from kaon._internal.processes import process_alive
from kaon.cluster._paths import cluster_dir, discovery_file
from kaon.cluster._text import plural
from kaon.errors import KaonError, NotFoundError, RegistryError

if TYPE_CHECKING:
    from kaon.cluster.deployment import Deployment

# The error classes a control plane's envelope code maps back to, so callers catch the same types.
_ERRORS: dict[str, type[KaonError]] = {}


def _error_types() -> dict[str, type[KaonError]]:
    if not _ERRORS:
        import kaon.errors as errors
        from kaon.errors import InsufficientResourcesError

        for value in [*vars(errors).values(), InsufficientResourcesError]:
            if isinstance(value, type) and issubclass(value, KaonError):
                _ERRORS.setdefault(value.code, value)
    return _ERRORS


class ControlPlaneNotRunning(NotFoundError):
    """No control plane answers for this KAON_HOME."""


class ControlPlaneClient:
    """The control plane's API as Python calls; errors come back as the KaonError that was raised there."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=timeout_s,
                                  trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlPlaneClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @classmethod
    def connect(cls, *, start: bool = False, port: int | None = None, timeout_s: float = 30.0) -> ControlPlaneClient:
        """The running control plane of this KAON_HOME; with `start`, launch one (detached) when none runs."""
        client = cls._find()
        if client is not None:
            return client
        if not start:
            raise ControlPlaneNotRunning(
                f"no control plane is running for KAON_HOME={cluster_dir().parent}. Start one with `kaon up` "
                "(or `kaon up --detach`); `kaon deploy` starts one by itself.")
        start_detached(port=port)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            client = cls._find()
            if client is not None:
                return client
            time.sleep(0.1)
        log = cluster_dir() / "controlplane.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise RegistryError(f"the control plane did not start within {timeout_s:g} s. Its log ({log}):\n{tail}")

    @classmethod
    def _find(cls) -> ControlPlaneClient | None:
        file = discovery_file()
        try:
            info = json.loads(file.read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not process_alive(int(info.get("pid", 0))):
            return None
        client = cls(info["url"], info["token"])
        try:
            client._http.get("/v1/health", timeout=2.0).raise_for_status()
        except httpx.HTTPError:
            client.close()
            return None
        return client

    # ---- the API -----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def deploy(self, spec: Deployment | dict[str, Any]) -> dict[str, Any]:
        data = spec if isinstance(spec, dict) else spec.model_dump(mode="json")
        return self._call("POST", "/v1/deployments", json=data)

    def status(self, name: str | None = None) -> Any:
        return self._call("GET", f"/v1/deployments/{name}" if name else "/v1/deployments")

    def scale(self, name: str, replicas: int | None) -> dict[str, Any]:
        return self._call("POST", f"/v1/deployments/{name}/scale", json={"replicas": replicas})

    def stop(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/deployments/{name}/stop", json={})

    def start(self, name: str) -> dict[str, Any]:
        """Start the stopped deployment `name` as it was stored (`already_running` in the status: it ran)."""
        return self._call("POST", f"/v1/deployments/{name}/start", json={})

    def logs(self, name: str, tail: int = 200, replica: int | None = None, *, all_replicas: bool = False) -> list[str]:
        """The running replicas' last `tail` log lines; `all_replicas`: the kept logs of dead ones too."""
        params: dict[str, Any] = {"tail": tail}
        if replica is not None:
            params["replica"] = replica
        if all_replicas:
            params["all"] = "true"
        return list(self._call("GET", f"/v1/deployments/{name}/logs", params=params)["lines"])

    def nodes(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/nodes"))

    def shutdown(self, *, wait_s: float = 30.0) -> list[str]:
        """Stop every deployment and the control plane; returns the deployments it stopped."""
        info = json.loads(discovery_file().read_text()) if discovery_file().exists() else {}
        stopping = list(self._call("POST", "/v1/shutdown", json={"mark_stopped": True})["stopping"])
        pid = int(info.get("pid", 0))
        deadline = time.monotonic() + wait_s
        while pid and process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return stopping

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RegistryError(f"the control plane at {self.url} did not answer {method} {path}: {exc}. "
                                "Is it still running? (kaon up)") from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                raise KaonError(f"the control plane answered {response.status_code}: {response.text[:300]}") from None
            kind = _error_types().get(error.get("code"), KaonError)
            failure = kind.__new__(kind)
            KaonError.__init__(failure, error.get("message", ""), fields=error.get("fields"))
            raise failure
        return response.json()


def start_detached(*, port: int | None = None, extra_args: list[str] | None = None) -> int:
    """Start `kaon up` in its own session, logging to KAON_HOME/cluster/controlplane.log; returns its pid.
    Without `port` it takes 8470 when free, else any free port (the discovery file says which)."""
    log_path = cluster_dir() / "controlplane.log"
    args = (["--port", str(port)] if port is not None else []) + list(extra_args or [])
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kaon.cluster.controlplane", *args], stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return process.pid


def deploy(target: Any, *, name: str | None = None, wait: bool = True, timeout_s: float = 180.0,
           **fields: Any) -> dict[str, Any]:
    """Run a deployment from Python, as `kaon deploy` does; returns its status once ready (with `wait`).

    `target` is a Deployment, a deployment file (.yaml/.json), a model reference or file, or a Service
    class; `fields` are Deployment fields (min_replicas=0, autoscaling={"policy": "predictive"}, ...).
    """
    from kaon.cluster.deployment import Deployment, absolute_target, default_name

    if isinstance(target, Deployment):
        spec = target.with_overrides(**fields) if fields else target
    elif isinstance(target, (str, Path)) and str(target).endswith((".yaml", ".yml", ".json")):
        spec = Deployment.from_file(target).with_overrides(name=name, **fields)
    else:
        if isinstance(target, (str, Path)):
            target = absolute_target(str(target))
        spec = Deployment.parse({"target": target, "name": name or default_name(target), **fields})
    if spec.backend == "ray":
        from kaon.cluster.backends.ray import deploy_to_ray

        return deploy_to_ray(spec, timeout_s=timeout_s)
    with ControlPlaneClient.connect(start=True) as plane:
        status = plane.deploy(spec)
        want = spec.initial_replicas()
        deadline = time.monotonic() + timeout_s
        while wait and status["ready"] < want:
            if time.monotonic() > deadline:
                raise RegistryError(f"'{spec.name}' has {status['ready']} of {plural(want, 'replica')} ready after "
                                    f"{timeout_s:g} s; see kaon status {spec.name} and kaon logs {spec.name}.")
            time.sleep(0.1)
            status = plane.status(spec.name)
        return dict(status)

