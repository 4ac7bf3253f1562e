"""`kaon export k8s NAME`: Kubernetes manifests for a deployment built with `kaon build`.

    deployment.yaml   apps/v1 Deployment: the image, resources, probes (/readyz, /healthz), non-root, read-only root
    service.yaml      v1 Service: port 80 -> the container's 8000
    hpa.yaml          autoscaling/v2 HorizontalPodAutoscaler: min/max replicas, CPU and in-flight targets,
                      the up/down delays as stabilization windows
    kserve.yaml       serving.kserve.io/v1beta1 InferenceService: the same container on KServe (Knative),
                      which can scale to zero (min_replicas 0) on concurrency = target_in_flight

What kaon's policies do and the HPA cannot (the predictive forecast, cron floors) is written as a comment
on the HPA; the control plane or a KEDA cron trigger has to supply it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from kaon.cluster.deployment import Deployment
from kaon.cluster.packaging import CONTAINER_PORT, CONTAINER_UID
from kaon.errors import require

KAON_HOME_IN_POD = "/home/kaon/.kaon"


def manifests(spec: Deployment, image: str, *, namespace: str | None = None) -> dict[str, dict[str, Any]]:
    """The four manifests as plain data, keyed by file name."""
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/managed-by": "kaon"}
    meta: dict[str, Any] = {"name": spec.name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    container = _container(spec, image)
    pod_spec = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": CONTAINER_UID, "runAsGroup": CONTAINER_UID,
                            "fsGroup": CONTAINER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 30,
        "containers": [container],
        "volumes": [{"name": "kaon-home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
        "spec": {
            "replicas": max(1, spec.initial_replicas()),
            "selector": {"matchLabels": {"app.kubernetes.io/name": spec.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {"metadata": {"labels": labels, "annotations": {
                "prometheus.io/scrape": "true", "prometheus.io/port": str(CONTAINER_PORT),
                "prometheus.io/path": "/metrics"}}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": "ClusterIP", "selector": {"app.kubernetes.io/name": spec.name},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }
    auto = spec.autoscaling
    hpa = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": max(1, spec.min_replicas),  # the HPA cannot go to zero; KServe below can
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": "kaon_in_flight_requests"},
                                          "target": {"type": "AverageValue",
                                                     "averageValue": _quantity(auto.target_in_flight)}}},
                {"type": "Resource", "resource": {"name": "cpu",
                                                  "target": {"type": "Utilization", "averageUtilization": 70}}},
            ],
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": int(math.ceil(auto.upscale_delay_s)),
                            "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]},
                "scaleDown": {"stabilizationWindowSeconds": int(math.ceil(auto.downscale_delay_s)),
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}]},
            },
        },
    }
    predictor: dict[str, Any] = {
        "minReplicas": spec.min_replicas, "maxReplicas": spec.max_replicas,
        "scaleMetric": "concurrency", "scaleTarget": max(1, int(round(auto.target_in_flight))),
        "containerConcurrency": 0, "timeout": int(math.ceil(float(spec.serve.get("timeout_s", 30)))) + 5,
        "securityContext": pod_spec["securityContext"], "volumes": pod_spec["volumes"],
        "containers": [{**container, "name": "kserve-container"}],
    }
    kserve = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {**meta, "annotations": {"serving.kserve.io/deploymentMode": "Serverless",
                                             "autoscaling.knative.dev/target-burst-capacity": "0"}},
        "spec": {"predictor": predictor},
    }
    return {"deployment.yaml": deployment, "service.yaml": service, "hpa.yaml": hpa, "kserve.yaml": kserve}


def export_k8s(spec: Deployment, output: Path, image: str, *, namespace: str | None = None) -> list[Path]:
    """Write the manifests into `output`; returns the files written."""
    yaml = require("yaml", "cluster", "Writing Kubernetes manifests")
    output.mkdir(parents=True, exist_ok=True)
    notes = {"hpa.yaml": _hpa_notes(spec),
             "kserve.yaml": "# KServe (Knative) scales this to zero when minReplicas is 0.\n"
                            "# Validate against your cluster's CRD: kubectl apply --dry-run=server -f kserve.yaml\n"}
    written = []
    for name, manifest in manifests(spec, image, namespace=namespace).items():
        path = output / name
        header = f"# Written by `kaon export k8s {spec.name}` for image {image}.\n" + notes.get(name, "")
        path.write_text(header + yaml.safe_dump(manifest, sort_keys=False))
        written.append(path)
    return written


def _container(spec: Deployment, image: str) -> dict[str, Any]:
    resources = spec.resources
    requests: dict[str, Any] = {"cpu": _cpu(resources.cpus), "memory": f"{resources.memory_mb}Mi"}
    limits: dict[str, Any] = {"memory": f"{resources.memory_mb}Mi"}
    if resources.gpus:
        requests["nvidia.com/gpu"] = resources.gpus
        limits["nvidia.com/gpu"] = resources.gpus
    env = [{"name": "KAON_HOME", "value": KAON_HOME_IN_POD}]
    env += [{"name": key, "value": value} for key, value in spec.replica_env().items()]

    def probe(path: str, **extra: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 2, **extra}

    return {
        "name": "kaon", "image": image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": CONTAINER_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "startupProbe": probe("/readyz", failureThreshold=36),  # up to 3 minutes to load a model
        "readinessProbe": probe("/readyz", failureThreshold=2),
        "livenessProbe": probe("/healthz", failureThreshold=3),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "kaon-home", "mountPath": KAON_HOME_IN_POD}, {"name": "tmp", "mountPath": "/tmp"}],
    }


def _hpa_notes(spec: Deployment) -> str:
    auto = spec.autoscaling
    lines = ["# kaon_in_flight_requests comes from each pod's /metrics through a metrics adapter "
             "(e.g. prometheus-adapter);", "# without one, the CPU target alone scales the pods."]
    if auto.policy == "predictive":
        lines.append("# Policy 'predictive' (scaling ahead of a forecast) has no HPA equivalent: run kaon's control "
                     "plane, or accept reactive scaling here.")
    for rule in auto.schedule:
        lines.append(f"# Schedule floor '{rule.cron}' -> {rule.min_replicas} replicas: use a KEDA cron trigger.")
    if spec.min_replicas == 0:
        lines.append("# min_replicas 0: the HPA keeps at least 1 pod; kserve.yaml scales to zero.")
    return "\n".join(lines) + "\n"


def _cpu(cpus: float) -> str:
    millis = int(round(cpus * 1000))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{int(round(value * 1000))}m"
