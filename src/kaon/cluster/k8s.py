"""`kaon export k8s NAME`: Kubernetes manifests for a deployment built with `kaon build`.

    deployment.yaml   apps/v1 Deployment: the image, resources, probes (/readyz, /healthz), non-root, read-only root
    service.yaml      v1 Service: port 80 -> the container's 8000
    hpa.yaml          autoscaling/v2 HorizontalPodAutoscaler: min/max replicas, the CPU target (and the
                      in-flight target with in_flight_metric), the up/down delays as stabilization windows
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


def manifests(spec: Deployment, image: str, *, namespace: str | None = None,
              in_flight_metric: bool = False) -> dict[str, dict[str, Any]]:
    """The four manifests as plain data, keyed by file name.

    The HPA scales on CPU. `in_flight_metric` adds kaon's in-flight target per pod, which needs a metrics
    adapter serving kaon_in_flight_requests: an HPA that cannot fetch one of its metrics does not scale
    down at all (kubernetes/kubernetes#99514), so it is not there unless asked for.
    """
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
        "spec": {  # no replicas: the HPA owns the count, and every re-apply would set it back
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
                *([{"type": "Pods", "pods": {"metric": {"name": "kaon_in_flight_requests"},
                                             "target": {"type": "AverageValue",
                                                        "averageValue": _quantity(auto.target_in_flight)}}}]
                  if in_flight_metric else []),
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
        "containers": [_knative_container(container)],
    }
    kserve = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {**meta, "annotations": {"serving.kserve.io/deploymentMode": "Serverless",
                                             "autoscaling.knative.dev/target-burst-capacity": "0"}},
        "spec": {"predictor": predictor},
    }
    return {"deployment.yaml": deployment, "service.yaml": service, "hpa.yaml": hpa, "kserve.yaml": kserve}


def export_k8s(spec: Deployment, output: Path, image: str, *, namespace: str | None = None,
               in_flight_metric: bool = False) -> list[Path]:
    """Write the manifests into `output`; returns the files written."""
    yaml = require("yaml", "cluster", "Writing Kubernetes manifests")

    class PlainDumper(yaml.SafeDumper):  # type: ignore[name-defined,misc]  # yaml is imported lazily
        """Repeated mappings written out again, not as &id001 anchors and *id001 aliases."""

        def ignore_aliases(self, data: Any) -> bool:
            return True

    output.mkdir(parents=True, exist_ok=True)
    notes = {"hpa.yaml": _hpa_notes(spec, in_flight_metric),
             "kserve.yaml": "# KServe (Knative) scales this to zero when minReplicas is 0.\n"
                            "# Validate against your cluster's CRD: kubectl apply --dry-run=server -f kserve.yaml\n"}
    written = []
    for name, manifest in manifests(spec, image, namespace=namespace, in_flight_metric=in_flight_metric).items():
        path = output / name
        header = f"# Written by `kaon export k8s {spec.name}` for image {image}.\n" + notes.get(name, "")
        path.write_text(header + yaml.dump(manifest, Dumper=PlainDumper, sort_keys=False))
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


def _knative_container(container: dict[str, Any]) -> dict[str, Any]:
    """The container as KServe's serverless mode (Knative) takes it: the port named 'http1' (Knative
    accepts only 'http1' or 'h2c'), and probes on that port's number (a probe may name only it)."""
    ports = [{**port, "name": "http1"} for port in container["ports"]]
    probes = {key: {**probe, "httpGet": {**probe["httpGet"], "port": CONTAINER_PORT}}
              for key, probe in container.items() if key.endswith("Probe")}
    return {**container, "name": "kserve-container", "ports": ports, **probes}


def _hpa_notes(spec: Deployment, in_flight_metric: bool) -> str:
    auto = spec.autoscaling
    if in_flight_metric:
        lines = ["# kaon_in_flight_requests comes from each pod's /metrics through a metrics adapter "
                 "(e.g. prometheus-adapter).",
                 "# Without one this HPA never scales down: it does not while any metric cannot be fetched",
                 "# (kubernetes/kubernetes#99514). Export without --in-flight-metric to scale on CPU alone."]
    else:
        lines = [f"# Scales on CPU. kaon scales on requests in flight per pod (target {auto.target_in_flight:g}); "
                 "to do that here,",
                 "# serve kaon_in_flight_requests from each pod's /metrics through a metrics adapter "
                 "(e.g. prometheus-adapter)",
                 "# and export with --in-flight-metric. Not by default: without the adapter an HPA with that "
                 "metric",
                 "# never scales down (it does not while any metric cannot be fetched, kubernetes/kubernetes#99514)."]
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
