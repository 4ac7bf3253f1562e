"""What every backend offers the control plane: one running deployment, started, updated, scaled, stopped."""

from __future__ import annotations

from typing import Any, Protocol

from kaon.cluster.deployment import Deployment


class RunningDeployment(Protocol):
    """A deployment as a backend runs it."""

    spec: Deployment

    async def start(self) -> None:
        """Listen on the deployment's address and start its first replicas."""

    async def update(self, spec: Deployment) -> None:
        """Take a new spec: scaling fields in place, a new target or serve options by a rollout."""

    def scale(self, replicas: int | None) -> None:
        """Pin the replica count (`kaon scale NAME N`), or None to hand it back to the autoscaler."""

    async def stop(self) -> None:
        """Stop every replica and stop listening."""

    def status(self) -> dict[str, Any]:
        """Replicas, load and the autoscaler's last decision, as JSON-ready data."""

    def placed(self) -> list[str]:
        """The node of each running replica (for placement of other deployments)."""
