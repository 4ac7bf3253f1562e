"""`kaon build` and `kaon export k8s`. No container engine runs here: the context is checked for what the
image promises (pins, user, health check, hashes) and served locally by running its own steps."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml

from kaon.cluster.deployment import Deployment
from kaon.cluster.k8s import export_k8s, manifests
from kaon.cluster.packaging import CONTAINER_PORT, build_context
from kaon.registry import Registry
from kaon.registry.deployments import DeploymentStore
from tests.cluster.helpers import kaon
from tests.servers import Server, free_port

K8S_VERSION = "1.30"
# The KServe v1beta1 predictor fields kaon writes, from the InferenceService CRD (ComponentExtensionSpec
# plus the PodSpec it embeds); checked here because no CRD schema ships with kubernetes-validate.
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleTarget", "containerConcurrency",
                           "timeout", "securityContext", "volumes", "containers"}
KSERVE_SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_dockerfile_is_pinned_non_root_health_checked_and_artifacts_are_by_hash(tmp_path, digits_onnx):
    spec = Deployment(name="digits", target=str(digits_onnx), serve={"max_batch_size": 16})
    context = build_context(spec, tmp_path / "ctx")
    dockerfile = context.dockerfile.read_text()
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim" in dockerfile
    assert "USER 10001:10001" in dockerfile and "useradd --system --uid 10001" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "KAON_MAX_BATCH_SIZE=16" in dockerfile
    assert dockerfile.index("RUN pip install") < dockerfile.index("COPY kaon/")  # deps cached apart from code
    requirements = [line for line in (context.folder / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith(("#", "--"))]
    assert requirements and all("==" in line for line in requirements)
    assert any(line.startswith("onnxruntime==") for line in requirements)
    sha = sha256(digits_onnx)
    assert context.artifacts == {"digits.onnx": sha}
    assert sha256(context.folder / "artifacts" / sha) == sha
    assert '"serve", "model/digits.onnx"' in dockerfile


def test_the_context_serves_when_its_own_steps_run_without_docker(tmp_path, digits_onnx):
    context = build_context(Deployment(name="digits", target=str(digits_onnx)), tmp_path / "ctx").folder
    subprocess.run(["sh", "prepare.sh"], cwd=context, check=True)  # the Dockerfile's RUN step
    assert (context / "model" / "digits.onnx").resolve() == (context / "artifacts" / sha256(digits_onnx)).resolve()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(context), "KAON_HOME": str(tmp_path / "home")}
    imported = subprocess.run([sys.executable, "-c", "import kaon; print(kaon.__file__)"], env=env, cwd=context,
                              capture_output=True, text=True, check=True).stdout
    assert imported.startswith(str(context))  # the image's kaon is the context's copy
    server = subprocess.Popen([sys.executable, "-m", "kaon.cli", "serve", "model/digits.onnx", "--port", str(port),
                               "--name", "digits"], cwd=context, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, "the context's server exited"
            __import__("time").sleep(0.1)
        response = httpx.post(f"http://127.0.0.1:{port}/v2/models/digits/infer", json={"inputs": [
            {"name": "image", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]})
        assert response.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_a_tampered_artifact_fails_the_build_step(tmp_path, digits_onnx):
    context = build_context(Deployment(name="digits", target=str(digits_onnx)), tmp_path / "ctx").folder
    artifact = context / "artifacts" / sha256(digits_onnx)
    artifact.write_bytes(artifact.read_bytes() + b"x")
    result = subprocess.run(["sh", "prepare.sh"], cwd=context, capture_output=True, text=True)
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr


def test_a_registered_model_is_built_from_the_registry_store(tmp_path, digits_onnx, kaon_home):
    with Registry() as registry:
        version = registry.register_version("digits", {"model.onnx": digits_onnx}, framework="onnx")
    context = build_context(Deployment(name="digits", target="digits@latest"), tmp_path / "ctx")
    assert context.artifacts == version.files
    assert '"serve", "model/model.onnx"' in context.dockerfile.read_text()


def test_a_version_registered_with_reference_data_is_built_to_monitor_drift(tmp_path, digits_onnx, kaon_home):
    from kaon.models import load_file
    from kaon.monitoring import fit_reference

    reference = tmp_path / "reference.npz"
    fit_reference(load_file(digits_onnx), np.random.default_rng(0).random((64, 1, 8, 8), dtype=np.float32)).save(
        reference)
    with Registry() as registry:
        registry.register_version("digits", {"model.onnx": digits_onnx, "reference.npz": reference},
                                  framework="onnx")
    context = build_context(Deployment(name="digits", target="digits@1"), tmp_path / "ctx")
    command = json.loads(context.dockerfile.read_text().rsplit("\nCMD ", 1)[1])
    assert "--drift-reference" in command
    # run the image's CMD from the context, as test_the_context_serves_... does, and read its banner
    subprocess.run(["sh", "prepare.sh"], cwd=context.folder, check=True)
    args = [arg if arg != "0.0.0.0" else "127.0.0.1" for arg in command[3:]]  # after python -m kaon.cli
    server = Server(args, env={"PYTHONPATH": str(context.folder), "KAON_HOME": str(tmp_path / "image-home")},
                    cwd=context.folder).wait_ready()
    assert server.stop() == 0
    assert "drift: inputs checked against model/reference.npz" in server.output()


def test_k8s_manifests_pass_strict_offline_validation(tmp_path):
    spec = Deployment(name="digits", target="digits@production", min_replicas=0, max_replicas=5,
                      resources={"cpus": 0.5, "memory_mb": 768, "gpus": 1}, serve={"max_batch_size": 32},
                      autoscaling={"policy": "predictive", "target_in_flight": 4, "downscale_delay_s": 45,
                                   "schedule": [{"cron": "* 9-16 * * 1-5", "min_replicas": 2}]})
    files = export_k8s(spec, tmp_path / "k8s", "registry.example.com/kaon-digits:1", namespace="ml")
    core = [f for f in files if f.name != "kserve.yaml"]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION,
                             *map(str, core)], capture_output=True, text=True)
    if "No module named kubernetes_validate.__main__" in result.stderr:
        result = subprocess.run(["kubernetes-validate", "--strict", "-k", K8S_VERSION, *map(str, core)],
                                capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == 3
    docs = {f.name: yaml.safe_load(f.read_text()) for f in files}
    container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"] == {"cpu": "500m", "memory": "768Mi", "nvidia.com/gpu": 1}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert docs["deployment.yaml"]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert {"name": "KAON_MAX_BATCH_SIZE", "value": "32"} in container["env"]
    hpa = docs["hpa.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 5)
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 45
    hpa_text = (tmp_path / "k8s" / "hpa.yaml").read_text()
    assert "KEDA cron trigger" in hpa_text and "'predictive'" in hpa_text
    assert docs["service.yaml"]["metadata"]["namespace"] == "ml"


def test_kserve_variant_scales_to_zero_and_its_pod_part_is_valid():
    spec = Deployment(name="digits", target="digits@1", min_replicas=0, max_replicas=3,
                      autoscaling={"target_in_flight": 8})
    kserve = manifests(spec, "kaon-digits:1")["kserve.yaml"]
    assert kserve["apiVersion"] == "serving.kserve.io/v1beta1" and kserve["kind"] == "InferenceService"
    predictor = kserve["spec"]["predictor"]
    assert set(predictor) <= KSERVE_PREDICTOR_FIELDS
    assert predictor["scaleMetric"] in KSERVE_SCALE_METRICS
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["scaleTarget"]) == (0, 3, 8)
    # The predictor embeds a PodSpec: validate that part strictly as a Pod.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "digits-predictor"},
           "spec": {key: copy.deepcopy(predictor[key]) for key in ("containers", "securityContext", "volumes")}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    broken = copy.deepcopy(pod)
    broken["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kaon_build_and_export_from_a_stored_deployment(tmp_path, digits_onnx, kaon_home):
    with Registry() as registry:
        DeploymentStore(registry).save_deployment("digits", {"name": "digits", "target": str(digits_onnx)},
                                                  status="stopped")
    built = kaon("build", "digits", "--output", str(tmp_path / "ctx"))
    assert "wrote" in built.stdout and (tmp_path / "ctx" / "Dockerfile").exists()
    exported = kaon("export", "k8s", "digits", "--output", str(tmp_path / "k8s"), "--image", "x/y:1")
    assert "kserve.yaml" in exported.stdout and (tmp_path / "k8s" / "hpa.yaml").exists()
    missing = kaon("build", "nope", check=False)
    assert missing.returncode == 1 and "no deployment named 'nope'" in missing.stderr
    assert "auth: off" in built.stdout and "auth: off" in exported.stdout  # no token here: it says it serves openly
    assert "KAON_REQUIRE_AUTH" not in (tmp_path / "ctx" / "Dockerfile").read_text()


def test_where_tokens_are_on_the_image_and_pods_require_one_too(tmp_path, digits_onnx, kaon_home):
    """Tokens stay in this machine's registry: an image that served without them would serve openly what needs a
    token here. It requires one (KAON_REQUIRE_AUTH), with PostgreSQL's driver to read a shared registry."""
    with Registry() as registry:
        DeploymentStore(registry).save_deployment("digits", {"name": "digits", "target": str(digits_onnx)},
                                                  status="stopped")
    kaon("token", "create", "--name", "ci", "--scopes", "predict")
    built = kaon("build", "digits", "--output", str(tmp_path / "ctx"))
    assert "auth: on" in built.stdout and "KAON_DATABASE_URL" in built.stdout
    assert "KAON_REQUIRE_AUTH=true" in (tmp_path / "ctx" / "Dockerfile").read_text()
    assert "psycopg2-binary==" in (tmp_path / "ctx" / "requirements.txt").read_text()
    exported = kaon("export", "k8s", "digits", "--output", str(tmp_path / "k8s"), "--image", "x/y:1")
    assert "auth: on" in exported.stdout
    pod = yaml.safe_load((tmp_path / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    assert {"name": "KAON_REQUIRE_AUTH", "value": "true"} in pod["containers"][0]["env"]


def test_k8s_hpa_scales_on_cpu_unless_asked_for_the_in_flight_metric(tmp_path):
    spec = Deployment(name="digits", target="digits@1", max_replicas=5)
    export_k8s(spec, tmp_path / "k8s", "kaon-digits:1")
    hpa_text = (tmp_path / "k8s" / "hpa.yaml").read_text()
    # without a metrics adapter an HPA with a Pods metric would never scale down (kubernetes#99514)
    assert [m["type"] for m in yaml.safe_load(hpa_text)["spec"]["metrics"]] == ["Resource"]
    assert "--in-flight-metric" in hpa_text and "99514" in hpa_text
    custom = manifests(spec, "kaon-digits:1", in_flight_metric=True)["hpa.yaml"]["spec"]["metrics"]
    assert [m["type"] for m in custom] == ["Pods", "Resource"]
    assert custom[0]["pods"]["metric"]["name"] == "kaon_in_flight_requests"


def test_k8s_deployment_leaves_the_replica_count_to_its_hpa_and_yaml_has_no_anchors(tmp_path):
    spec = Deployment(name="digits", target="digits@1", min_replicas=2, max_replicas=5)
    files = export_k8s(spec, tmp_path / "k8s", "kaon-digits:1")
    for file in files:
        text = file.read_text()
        assert "&id" not in text and "*id" not in text, file.name
    deployment = yaml.safe_load((tmp_path / "k8s" / "deployment.yaml").read_text())
    assert "replicas" not in deployment["spec"]  # the HPA owns it: a re-apply must not snap it back
    assert yaml.safe_load((tmp_path / "k8s" / "hpa.yaml").read_text())["spec"]["minReplicas"] == 2


def test_kserve_container_port_is_named_for_knative_and_probes_use_it():
    kserve = manifests(Deployment(name="digits", target="digits@1"), "kaon-digits:1")["kserve.yaml"]
    container = kserve["spec"]["predictor"]["containers"][0]
    assert container["ports"] == [{"name": "http1", "containerPort": CONTAINER_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == CONTAINER_PORT, probe
