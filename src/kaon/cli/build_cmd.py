"""`kaon build NAME` (a Dockerfile and build context) and `kaon export k8s NAME` (Kubernetes manifests).

NAME is a deployment kaon knows (kaon deploy stored it in the registry) or a deployment YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from kaon.cli.app import app, handles_errors, make_console

if TYPE_CHECKING:
    from kaon.cluster.deployment import Deployment

console = make_console()
export_app = typer.Typer(help="Export a deployment for another platform.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@app.command()
@handles_errors
def build(
    name: str = typer.Argument(..., help="A deployment name (kaon status lists them) or a deployment.yaml."),
    output: Path = typer.Option(None, help="The build context folder. \\[default: build/NAME]"),
    image: str = typer.Option(None, help="Image tag for the instructions. \\[default: kaon-NAME:latest]"),
) -> None:
    """Write a Dockerfile and its build context: pinned requirements, artifacts by hash, non-root, HEALTHCHECK."""
    from kaon.cluster.packaging import build_context

    spec, auth = _with_auth(_load(name))
    context = build_context(spec, output or Path("build") / spec.name, image=image)
    console.print(f"wrote {context.dockerfile} ({len(context.requirements)} pinned requirements, "
                  f"{len(context.artifacts)} artifact(s) by sha256)")
    console.print(f"build it where a container engine runs:  docker build -t {context.image} {context.folder}")
    console.print(auth, highlight=False)


@export_app.command("k8s")
@handles_errors
def export_k8s(
    name: str = typer.Argument(..., help="A deployment name or a deployment.yaml."),
    image: str = typer.Option(None, help="The image kaon build made. \\[default: kaon-NAME:latest]"),
    output: Path = typer.Option(None, help="Where to write the manifests. \\[default: build/NAME/k8s]"),
    namespace: str = typer.Option(None, help="metadata.namespace for every object."),
    in_flight_metric: bool = typer.Option(
        False, "--in-flight-metric",
        help="The HPA also scales on requests in flight per pod (kaon_in_flight_requests); needs a metrics "
             "adapter such as prometheus-adapter, without which the HPA would never scale down."),
) -> None:
    """Write Deployment, Service and HorizontalPodAutoscaler manifests, and a KServe InferenceService."""
    from kaon.cluster.k8s import export_k8s as write

    spec, auth = _with_auth(_load(name))
    folder = output or Path("build") / spec.name / "k8s"
    written = write(spec, folder, image or f"kaon-{spec.name}:latest", namespace=namespace,
                    in_flight_metric=in_flight_metric)
    console.print(f"wrote {', '.join(p.name for p in written)} to {folder}; "
                  f"apply with: kubectl apply -f {folder / 'deployment.yaml'} -f {folder / 'service.yaml'} "
                  f"-f {folder / 'hpa.yaml'}  (or kserve.yaml on KServe)")
    console.print(auth, highlight=False)


def _with_auth(spec: Deployment) -> tuple[Deployment, str]:
    """The spec to package, and what to tell about auth. Tokens live in the registry, which the image does not
    carry: where auth is on here (any token created, or require_auth in the spec), the image requires a token
    too (KAON_REQUIRE_AUTH) and reads them from the registry KAON_DATABASE_URL names, so that it never serves
    openly what needs a token here; without tokens here it serves without auth, and says so."""
    from kaon.registry import Registry

    tokens = Registry().tokens.list(include_revoked=True)
    if tokens or spec.serve.get("require_auth"):
        packaged = spec.model_copy(update={"serve": {**spec.serve, "require_auth": True}})
        return packaged, (
            "auth: on, as here (KAON_REQUIRE_AUTH=true): every request needs a token, and the container reads "
            "tokens from its registry. Give it the registry that holds them: KAON_DATABASE_URL=postgresql+psycopg2://"
            "... (from a Secret); with none, every request is a 401.")
    return spec, ("auth: off (no token was created here): the container serves anyone who reaches it. "
                  "Keep it behind your gateway, or create a token (kaon token create) and build again.")


def _load(name: str) -> Deployment:
    from kaon.cluster.deployment import Deployment, from_stored

    path = Path(name)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        return Deployment.from_file(path)
    from kaon.registry import Registry
    from kaon.registry.deployments import DeploymentStore

    with Registry() as registry:
        record = DeploymentStore(registry).get_deployment(name)
    return from_stored(record.spec, source=f"deployment '{name}'")[0]
