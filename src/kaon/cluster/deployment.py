"""A Deployment: a Service (or model) plus replicas, resources, autoscaling, tokens and monitors.

Declared once, in YAML or in Python, and run by a backend (`local` processes or a `ray` cluster):

    # deployment.yaml
    name: digits
    target: digits@latest           # a registered model, a model file, or service.py:ClassName
    port: 8100                      # the deployment answers on 127.0.0.1:8100
    min_replicas: 1
    max_replicas: 4
    resources: {cpus: 0.5, memory_mb: 512}
    autoscaling: {policy: predictive, target_in_flight: 4, downscale_delay_s: 30}

    >>> d = Deployment(name="digits", target="digits@latest", min_replicas=0, max_replicas=3)
    >>> d.scaling_config().idle_timeout_s, d.resources.cpus
    (300.0, 1.0)

Unknown keys are refused (a typo in YAML must not be ignored silently); every error names the field.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, Literal

import pydantic

from kaon.cluster.policy import POLICY_NAMES, ScalingConfig
from kaon.cluster.schedule import ScheduleRule
from kaon.config import ServeConfig
from kaon.errors import ConfigError, require

# A DNS label: the name becomes a Kubernetes object name and a Ray Serve application name.
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# `kaon serve` settings a deployment may set for its replicas (the rest are the backend's).
SERVE_OPTIONS = ("max_batch_size", "max_wait_ms", "timeout_s", "read_timeout_s", "max_queue", "max_body_bytes",
                 "log_level")


class _Strict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", validate_assignment=True)


class Resources(_Strict):
    """What one replica needs: placement refuses a replica no node has room for."""

    cpus: float = pydantic.Field(default=1.0, gt=0, description="CPU cores (fractions allowed)")
    memory_mb: int = pydantic.Field(default=512, gt=0, description="memory in MiB")
    gpus: int = pydantic.Field(default=0, ge=0, description="whole GPUs")


class Autoscaling(_Strict):
    """How replicas follow the load (see kaon.cluster.policy)."""

    policy: Literal["fixed", "reactive", "predictive"] = "reactive"
    target_in_flight: float = pydantic.Field(default=4.0, gt=0)
    tolerance: float = pydantic.Field(default=0.1, ge=0, lt=1)
    upscale_delay_s: float = pydantic.Field(default=0.0, ge=0)
    downscale_delay_s: float = pydantic.Field(default=30.0, ge=0)
    schedule: list[ScheduleRule] = pydantic.Field(default_factory=list)
    cold_start_s: float | None = pydantic.Field(default=None, ge=0, description="lead time; None: measured")
    capacity_rps: float | None = pydantic.Field(default=None, gt=0, description="req/s per replica; None: learnt")
    season_s: float | None = pydantic.Field(default=None, gt=0, description="load period; None: detected")
    step_s: float = pydantic.Field(default=1.0, gt=0, description="seconds between decisions")


class Deployment(_Strict):
    """One served target with its replicas; see the module docstring for the YAML form."""

    name: str = pydantic.Field(pattern=NAME_PATTERN)
    target: str
    host: str = "127.0.0.1"
    port: int | None = pydantic.Field(default=None, ge=1, le=65535, description="None: the first free port from 8100")
    min_replicas: int = pydantic.Field(default=1, ge=0)
    max_replicas: int = pydantic.Field(default=4, ge=1)
    replicas: int | None = pydantic.Field(default=None, ge=0, description="pinned count (kaon scale NAME N)")
    resources: Resources = pydantic.Field(default_factory=lambda: Resources.model_validate({}))
    autoscaling: Autoscaling = pydantic.Field(default_factory=lambda: Autoscaling.model_validate({}))
    idle_timeout_s: float = pydantic.Field(default=300.0, ge=0, description="scale to zero after (min_replicas 0)")
    num_warm_replicas: int = pydantic.Field(default=0, ge=0, description="started, idle replicas kept ready")
    serve: dict[str, Any] = pydantic.Field(default_factory=dict, description="kaon serve options")
    env: dict[str, str] = pydantic.Field(default_factory=dict)
    tokens: list[str] = pydantic.Field(default_factory=list, description="API token names allowed")
    monitors: list[str] = pydantic.Field(default_factory=list, description="detectors run on live traffic")
    trust_pickle: bool = False
    backend: Literal["local", "ray"] = "local"
    address: str | None = pydantic.Field(default=None, description="the Ray cluster, HOST:PORT (backend ray)")
    max_replicas_per_node: int | None = pydantic.Field(default=None, ge=1)

    @pydantic.field_validator("target", mode="before")
    @classmethod
    def _target_as_text(cls, value: Any) -> Any:
        """A Service class becomes `path/to/file.py:ClassName`, which a replica process can import."""
        if isinstance(value, type):
            try:
                source = inspect.getfile(value)
            except TypeError as exc:
                raise ValueError(f"{value.__name__} has no source file a replica could import") from exc
            if not source.endswith(".py") or value.__qualname__ != value.__name__:
                raise ValueError(f"{value.__qualname__} must be a top-level class in a .py file")
            return f"{Path(source).resolve()}:{value.__name__}"
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError("a model reference (name@alias), a model file or path/to/service.py:ClassName")
        return value

    @pydantic.field_validator("serve")
    @classmethod
    def _check_serve(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(SERVE_OPTIONS))
        if unknown:
            raise ValueError(f"unknown kaon serve options {unknown}; allowed: {', '.join(SERVE_OPTIONS)} "
                             "(host, port and name are set by the backend)")
        try:
            ServeConfig(**value)  # the same checks as `kaon serve`
        except (ConfigError, TypeError) as exc:
            raise ValueError(getattr(exc, "message", str(exc))) from None
        return value

    @pydantic.model_validator(mode="after")
    def _check_bounds(self) -> Deployment:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        if self.autoscaling.policy == "fixed" and self.replicas is None:
            raise ValueError("autoscaling policy 'fixed' needs replicas: N")
        if self.backend == "ray" and not self.address:
            raise ValueError("backend 'ray' needs address: HOST:PORT of the Ray cluster (no implicit address)")
        return self

    # ---- building ----------------------------------------------------------------------------

    @classmethod
    def parse(cls, data: dict[str, Any], source: str = "the deployment") -> Deployment:
        """Validate `data`, turning pydantic's report into one ConfigError that names each field."""
        try:
            return cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise _config_error(exc, source) from None

    @classmethod
    def from_file(cls, path: str | Path) -> Deployment:
        """Read a deployment from YAML (.yaml/.yml) or JSON."""
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"deployment file not found. Received: {str(path)!r}. "
                              "Expected a YAML file such as examples/deployment.yaml.")
        text = file.read_text()
        if file.suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"{file} is not valid JSON: {exc}") from exc
        else:
            yaml = require("yaml", "cluster", "Reading a deployment from YAML")
            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{file} must hold a mapping (name: ..., target: ...). Received: {type(data).__name__}")
        if isinstance(data.get("target"), str):
            data["target"] = absolute_target(data["target"], base=file.parent)
        return cls.parse(data, source=str(file))

    def with_overrides(self, **overrides: Any) -> Deployment:
        """A copy with the fields given (not None) replaced, validated again."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            if key == "policy":
                data["autoscaling"]["policy"] = value
            else:
                data[key] = value
        return Deployment.parse(data)

    def to_yaml(self) -> str:
        yaml = require("yaml", "cluster", "Writing a deployment as YAML")
        return str(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False))

    # ---- what the backends read --------------------------------------------------------------

    def scaling_config(self) -> ScalingConfig:
        """The numbers the autoscaling policy decides with."""
        auto = self.autoscaling
        policy = "fixed" if self.replicas is not None else auto.policy
        return ScalingConfig(
            min_replicas=self.min_replicas, max_replicas=max(self.max_replicas, self.replicas or 0),
            policy=policy,  # type: ignore[arg-type]
            replicas=self.replicas, target_in_flight=auto.target_in_flight, tolerance=auto.tolerance,
            upscale_delay_s=auto.upscale_delay_s, downscale_delay_s=auto.downscale_delay_s,
            idle_timeout_s=self.idle_timeout_s, schedule=tuple(auto.schedule), cold_start_s=auto.cold_start_s,
            capacity_rps=auto.capacity_rps, step_s=auto.step_s,
        )

    def initial_replicas(self) -> int:
        """How many replicas a new deployment starts with."""
        return self.replicas if self.replicas is not None else self.min_replicas

    def replica_env(self) -> dict[str, str]:
        """KAON_* variables that carry the serve options to each `kaon serve` replica."""
        env = {f"KAON_{key.upper()}": _env_value(value) for key, value in self.serve.items()}
        return {**env, **self.env}

    def replica_args(self, port: int) -> list[str]:
        """The `kaon serve` arguments of one replica (after `python -m kaon.cli`)."""
        args = ["serve", self.target, "--host", "127.0.0.1", "--port", str(port), "--name", self.model_name]
        return [*args, "--trust-pickle"] if self.trust_pickle else args

    @property
    def model_name(self) -> str:
        """The name on the V2 routes: the registered model's name, else the deployment's."""
        if "@" in self.target and ":" not in self.target and "/" not in self.target:
            return self.target.split("@", 1)[0]
        return self.name


# The registry keeps a deployment's spec as JSON. The version its registry reference pointed to when deployed
# ('digits@production' -> 'digits@1') is kept beside the spec's fields under this key, so that a control
# plane started again serves that version, not the one the alias points to by then.
RESOLVED_TARGET_KEY = "resolved_target"


def stored_spec(spec: Deployment, resolved_target: str | None) -> dict[str, Any]:
    """What the registry keeps for `spec`: its fields, and the version it serves when that was resolved."""
    data = spec.model_dump(mode="json")
    return {**data, RESOLVED_TARGET_KEY: resolved_target} if resolved_target else data


def from_stored(data: dict[str, Any], source: str) -> tuple[Deployment, str | None]:
    """The Deployment and the resolved version (None: not a registry reference, or stored before kaon kept it)
    from what `stored_spec` wrote."""
    fields = dict(data)
    resolved = fields.pop(RESOLVED_TARGET_KEY, None)
    return Deployment.parse(fields, source=source), resolved


def spec_changes(old: Deployment, new: Deployment) -> list[tuple[str, Any, Any]]:
    """(field, old value, new value) for each field that differs, nested ones dotted (`resources.cpus`).

    >>> spec_changes(Deployment(name="d", target="m.onnx"), Deployment(name="d", target="m.onnx", max_replicas=3))
    [('max_replicas', 4, 3)]
    """
    before, after = _flat(old.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    return [(key, before.get(key), after.get(key)) for key in dict.fromkeys([*before, *after])
            if before.get(key) != after.get(key)]


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # an empty one adds nothing: {} -> {a: 1} reads as 'serve.a None -> 1'
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def default_name(target: Any) -> str:
    """A deployment name from a target: digits@production -> digits, out/model.onnx -> model,
    service.py:Digits (or the class) -> digits."""
    if isinstance(target, type):
        base = target.__name__
    else:
        text = str(target)
        head, _, tail = text.rpartition(":")
        if head.endswith(".py"):
            base = tail
        elif "@" in text and "/" not in text:
            base = text.split("@", 1)[0]
        else:
            base = Path(text).stem
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:63]
    if not name:
        raise ConfigError(f"cannot derive a deployment name from {target!r}; pass name=... (--name).")
    return name


def absolute_target(target: str, base: Path | None = None) -> str:
    """A file target (model file or service.py:Class) as an absolute path, resolved against `base`
    (a deployment file's folder) or the working directory; a registry reference is returned as is."""
    file_part, colon, cls = target, "", ""
    head, _, tail = target.rpartition(":")
    if head.endswith(".py"):
        file_part, colon, cls = head, ":", tail
    for root in ([base] if base is not None else []) + [Path.cwd()]:
        candidate = (root / file_part).expanduser()
        if candidate.exists():
            return f"{candidate.resolve()}{colon}{cls}"
    return target


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _config_error(exc: pydantic.ValidationError, source: str) -> ConfigError:
    problems = []
    fields = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        received = error.get("input")
        text = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {text} (received: {received!r:.80})")
        fields.append({"name": where, "expected": text})
    return ConfigError(f"{source} is not a valid deployment: " + "; ".join(problems)
                       + f". Policies: {', '.join(POLICY_NAMES)}; see examples/deployment.yaml.", fields=fields)
