"""kaon.cluster: deployments with replicas, placement, autoscaling, backends (local, ray) and packaging.

    from kaon.cluster import Deployment, ControlPlaneClient

    spec = Deployment(name="digits", target="digits@latest", min_replicas=0, max_replicas=4,
                      autoscaling={"policy": "predictive"})
    with ControlPlaneClient.connect(start=True) as plane:    # kaon up, in the background, if needed
        print(plane.deploy(spec)["url"])                     # http://127.0.0.1:8100

Names load on first use (the CLI imports parts of this package and must stay fast).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Deployment": "kaon.cluster.deployment",
    "Resources": "kaon.cluster.deployment",
    "Autoscaling": "kaon.cluster.deployment",
    "ScalingConfig": "kaon.cluster.policy",
    "Load": "kaon.cluster.policy",
    "Forecast": "kaon.cluster.policy",
    "ScalingState": "kaon.cluster.policy",
    "decide_replicas": "kaon.cluster.policy",
    "fixed": "kaon.cluster.policy",
    "reactive": "kaon.cluster.policy",
    "predictive": "kaon.cluster.policy",
    "ScheduleRule": "kaon.cluster.schedule",
    "ForecasterState": "kaon.cluster.forecast",
    "Trace": "kaon.cluster.simulate",
    "DeploymentModel": "kaon.cluster.simulate",
    "simulate": "kaon.cluster.simulate",
    "Node": "kaon.cluster.placement",
    "Demand": "kaon.cluster.placement",
    "place": "kaon.cluster.placement",
    "InsufficientResourcesError": "kaon.cluster.placement",
    "ControlPlane": "kaon.cluster.controlplane",
    "ControlPlaneClient": "kaon.cluster.client",
    "deploy": "kaon.cluster.client",
    "build_context": "kaon.cluster.packaging",
    "export_k8s": "kaon.cluster.k8s",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kaon.cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
