"""`kaon build NAME`: a Dockerfile and its build context for one deployment.

    build/digits/
      Dockerfile          python:3.X-slim, pinned requirements, a non-root user, a HEALTHCHECK on /readyz
      requirements.txt    every runtime dependency pinned (==) to the version installed here
      kaon/               the kaon package, as installed here
      artifacts/<sha256>  the model's files, content-addressed, and SHA256SUMS checked while building
      prepare.sh          links model/<filename> -> artifacts/<sha256> after the check (run by the Dockerfile)
      deployment.yaml     the deployment, for the record and for `kaon export k8s`

The image serves `kaon serve model/<file>` on 0.0.0.0:8000, with the deployment's serve options as
KAON_* variables, and watches drift against model/reference.npz when the version was registered with
one. There is no container engine on the machine this was written on, so the tests check the context
instead: pins, user, health check, hashes, and that the context serves when its steps run without
Docker (see tests/cluster/test_packaging.py).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from kaon.cluster.deployment import Deployment
from kaon.errors import ConfigError

CONTAINER_PORT = 8000
CONTAINER_UID = 10001
# kaon's extras a framework needs at serving time.
_FRAMEWORK_EXTRAS = {"onnx": ("onnx",), "torch": ("torch",), "keras": ("keras", "torch")}
_MAIN_FILE = {"onnx": "model.onnx", "torch": "model.pt2", "keras": "model.keras"}
_SUFFIX_FRAMEWORK = {".onnx": "onnx", ".pt2": "torch", ".keras": "keras"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class BuildContext:
    """What `build_context` wrote."""

    folder: Path
    dockerfile: Path
    image: str
    artifacts: dict[str, str]  # filename in model/ -> sha256
    requirements: list[str]


def build_context(spec: Deployment, output: Path, *, image: str | None = None) -> BuildContext:
    """Write the Dockerfile and build context for `spec` into `output` (replacing what is there)."""
    from kaon.monitoring.reference import FILENAME as REFERENCE_FILENAME  # numpy: imported only to build

    if output.exists():
        if not (output / "Dockerfile").exists() and any(output.iterdir()):
            raise ConfigError(f"{output} exists and is not a kaon build context; pick an empty folder (--output).")
        shutil.rmtree(output)
    (output / "artifacts").mkdir(parents=True)
    files, framework, command_target, model_name = _collect_model(spec, output)
    # an image that requires a token reads tokens from a shared registry: PostgreSQL's driver (KAON_DATABASE_URL)
    requirements = pinned_requirements(framework, ("postgres",) if spec.serve.get("require_auth") else ())
    (output / "requirements.txt").write_text(_requirements_text(requirements))
    _copy_kaon(output / "kaon")
    sums = "".join(f"{sha}  {sha}\n" for sha in sorted(set(files.values())))
    (output / "artifacts" / "SHA256SUMS").write_text(sums)
    links = [f"ln -sf ../artifacts/{sha} model/{name}" for name, sha in sorted(files.items())]
    (output / "prepare.sh").write_text(
        "#!/bin/sh\n# Check every artifact against its hash, then link the model's files under their names.\n"
        "set -eu\ncd \"$(dirname \"$0\")\"\n(cd artifacts && sha256sum -c --quiet SHA256SUMS)\nmkdir -p model\n"
        + "".join(f"{line}\n" for line in links))
    (output / "prepare.sh").chmod(0o755)
    (output / "deployment.yaml").write_text(spec.to_yaml())
    (output / ".dockerignore").write_text("**/__pycache__\n**/*.pyc\n")
    tag = image or f"kaon-{spec.name}:latest"
    dockerfile = output / "Dockerfile"
    # `kaon serve name@version` finds the version's reference.npz in the registry; the image serves a file,
    # so it is told where the packaged copy is: drift is monitored as when the version is served locally.
    drift_reference = f"model/{REFERENCE_FILENAME}" if REFERENCE_FILENAME in files else None
    dockerfile.write_text(render_dockerfile(spec, command_target, model_name, tag, drift_reference=drift_reference))
    return BuildContext(output, dockerfile, tag, files, requirements)


def render_dockerfile(spec: Deployment, target: str, model_name: str, image: str, *,
                      drift_reference: str | None = None) -> str:
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "PIP_NO_CACHE_DIR": "1",
           "PYTHONPATH": "/app", "KAON_HOME": "/home/kaon/.kaon", "KERAS_BACKEND": "torch",
           **spec.replica_env()}
    env_lines = " \\\n    ".join(f"{key}={_quote(value)}" for key, value in env.items())
    command = ["python", "-m", "kaon.cli", "serve", target, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT),
               "--name", model_name, *(["--trust-pickle"] if spec.trust_pickle else []),
               *(["--drift-reference", drift_reference] if drift_reference else [])]
    health = ("import sys, urllib.request; "
              f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{CONTAINER_PORT}/readyz', timeout=2).status "
              "== 200 else 1)")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"""# syntax=docker/dockerfile:1
# Written by `kaon build {spec.name}`. Build and run:
#   docker build -t {image} .
#   docker run --rm -p 8000:{CONTAINER_PORT} {image}
FROM python:{python}-slim

ENV {env_lines}

# A user without a login shell or root rights owns nothing but its home (KAON_HOME).
RUN groupadd --system --gid {CONTAINER_UID} kaon \\
 && useradd --system --uid {CONTAINER_UID} --gid kaon --home-dir /home/kaon --create-home --shell /usr/sbin/nologin kaon

WORKDIR /app
# Dependencies first: this layer is cached until requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY kaon/ ./kaon/
COPY artifacts/ ./artifacts/
COPY prepare.sh deployment.yaml ./
# Fails the build if an artifact does not match its sha256.
RUN sh prepare.sh

USER {CONTAINER_UID}:{CONTAINER_UID}
EXPOSE {CONTAINER_PORT}
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \\
  CMD {_json_list(["python", "-c", health])}
STOPSIGNAL SIGTERM
CMD {_json_list(command)}
"""


def pinned_requirements(framework: str | None, extras: tuple[str, ...] = ()) -> list[str]:
    """kaon's runtime dependencies, and the framework's and `extras`' ones, each pinned to the version installed
    here."""
    extras = (*_FRAMEWORK_EXTRAS.get(framework or "", ()), *extras)
    try:
        declared = importlib.metadata.requires("kaon") or []
    except importlib.metadata.PackageNotFoundError:
        declared = []
    names: list[str] = []
    for requirement in declared:
        found = re.match(r"[A-Za-z0-9_.\-]+", requirement)
        if found is None:
            continue
        marker = requirement.split(";", 1)[1] if ";" in requirement else ""
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if (extra and extra.group(1) not in extras) or "platform_system == 'Windows'" in marker:
            continue
        names.append(found.group(0).split("[")[0])
    pins = []
    for name in dict.fromkeys(names):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue  # declared but not installed here (an optional platform dependency)
    return pins


def _requirements_text(pins: list[str]) -> str:
    header = "# Pinned by `kaon build` to the versions this kaon was tested with.\n"
    if any(pin.startswith("torch==") for pin in pins):
        header += ("# torch: the CPU build (a CUDA base image and index are needed for GPUs).\n"
                   f"--extra-index-url {TORCH_CPU_INDEX}\n")
    return header + "".join(f"{pin}\n" for pin in sorted(pins, key=str.lower))


def _collect_model(spec: Deployment, output: Path) -> tuple[dict[str, str], str | None, str, str]:
    """Copy the target's files into artifacts/; return (name -> sha256, framework, serve target, V2 name)."""
    target = spec.target
    if ":" in target and target.split(":", 1)[0].endswith(".py"):
        source, _, cls = target.rpartition(":")
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"the deployment's service file {source!r} does not exist.")
        sha = _store(path, output)
        return {path.name: sha}, None, f"model/{path.name}:{cls}", spec.model_name
    path = Path(target)
    if path.is_file():
        files = {path.name: _store(path, output)}
        data = path.with_name(path.name + ".data")  # ONNX external weights
        if data.is_file():
            files[data.name] = _store(data, output)
        return files, _SUFFIX_FRAMEWORK.get(path.suffix), f"model/{path.name}", spec.model_name
    from kaon.registry import Registry

    with Registry() as registry:
        version = registry.get_version(target)
        files = {}
        for name, sha in version.files.items():
            stored = _store(registry.artifact_path(sha), output)
            if stored != sha:  # pragma: no cover - artifact_path checks the hash already
                raise ConfigError(f"artifact {name} of {version.ref} does not match its sha256")
            files[name] = sha
    main = _MAIN_FILE.get(version.framework)
    if main not in files:
        main = next((n for n in files if Path(n).suffix in _SUFFIX_FRAMEWORK), None)
    if main is None:
        raise ConfigError(f"{version.ref} has no model file kaon can serve among {sorted(files)}.")
    return files, version.framework, f"model/{main}", version.name


def _store(source: Path, output: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    destination = output / "artifacts" / sha
    if not destination.exists():
        shutil.copyfile(source, destination)
    return sha


def _copy_kaon(destination: Path) -> None:
    import kaon

    shutil.copytree(Path(kaon.__file__).parent, destination,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))


def _quote(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z0-9_./:@%+,-]*", value) else '"' + value.replace('"', '\\"') + '"'


def _json_list(items: list[str]) -> str:
    import json

    return json.dumps(items)
