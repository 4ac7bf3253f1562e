"""Deployments in the registry: the state kaon's control plane keeps so that it survives a restart.

    >>> from kaon.registry import Registry
    >>> store = DeploymentStore(Registry("sqlite:///:memory:"))
    >>> store.save_deployment("digits", {"name": "digits", "target": "digits@latest"}).status
    'running'

A deployment's spec is stored as the JSON the control plane accepted (kaon.cluster validates it;
the registry only keeps it). Replicas are written by the backend as they change state; nodes carry
the capacity placement packs replicas into. Deployment changes append to the event log in the
same transaction; replica churn does not (it would drown the log).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, select

from kaon.errors import InvalidInputError, NotFoundError
from kaon.registry._queries import log_event, now, utc
from kaon.registry._schema import DeploymentRow, NodeRow, ReplicaRow
from kaon.registry._validation import to_json
from kaon.registry.refs import check_name

if TYPE_CHECKING:
    from kaon.registry.registry import Registry

DeploymentStatus = Literal["running", "stopped"]
_STATUSES = ("running", "stopped")


@dataclass(frozen=True)
class DeploymentRecord:
    name: str
    spec: dict[str, Any]
    status: str  # 'running' | 'stopped'
    decision: dict[str, Any]  # the autoscaler's last decision: {replicas, reason, time, ...}
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ReplicaRecord:
    deployment: str
    replica: int
    node: str
    state: str  # 'starting' | 'ready' | 'warm' | 'draining' | 'stopped' | 'failed'
    pid: int | None
    port: int | None
    restarts: int
    started_at: datetime
    ready_at: datetime | None


@dataclass(frozen=True)
class NodeRecord:
    name: str
    backend: str
    address: str | None
    capacity: dict[str, Any]  # {cpus, memory_mb, gpus}
    updated_at: datetime


class DeploymentStore:
    """Deployments, their replicas and the cluster's nodes, in the registry's database."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    # ---- deployments -------------------------------------------------------------------------

    def save_deployment(self, name: str, spec: dict[str, Any],
                        status: DeploymentStatus = "running") -> DeploymentRecord:
        """Create the deployment `name`, or replace its spec and status."""
        check_name(name, "deployment name")
        _check_status(status)
        spec_json = to_json(spec, "spec")
        with self._registry._writing() as session:
            row = session.scalars(select(DeploymentRow).where(DeploymentRow.name == name)).one_or_none()
            stamp = now()
            if row is None:
                row = DeploymentRow(name=name, spec=spec_json, status=status, decision={}, created_at=stamp,
                                    updated_at=stamp)
                session.add(row)
                kind = "deployment.created"
            else:
                row.spec, row.status, row.updated_at = spec_json, status, stamp
                kind = "deployment.updated"
            session.flush()
            log_event(session, kind, f"deployment/{name}", {"status": status})
            return _deployment_record(row)

    def get_deployment(self, name: str) -> DeploymentRecord:
        with self._registry._reading() as session:
            return _deployment_record(self._require(session, name))

    def list_deployments(self, status: DeploymentStatus | None = None) -> list[DeploymentRecord]:
        """Every deployment (or those with `status`), by name."""
        if status is not None:
            _check_status(status)
        with self._registry._reading() as session:
            query = select(DeploymentRow).order_by(DeploymentRow.name)
            if status is not None:
                query = query.where(DeploymentRow.status == status)
            return [_deployment_record(row) for row in session.scalars(query)]

    def set_status(self, name: str, status: DeploymentStatus) -> DeploymentRecord:
        _check_status(status)
        with self._registry._writing() as session:
            row = self._require(session, name)
            row.status, row.updated_at = status, now()
            log_event(session, f"deployment.{status}", f"deployment/{name}", {})
            return _deployment_record(row)

    def record_decision(self, name: str, decision: dict[str, Any]) -> None:
        """Keep the autoscaler's latest decision (what `kaon status` shows when the control plane is down)."""
        decision_json = to_json(decision, "decision")
        with self._registry._writing() as session:
            row = self._require(session, name)
            previous = row.decision.get("replicas") if row.decision else None
            row.decision = decision_json
            if previous != decision_json.get("replicas"):
                payload = {"from": previous, "to": decision_json.get("replicas"), "reason": decision_json.get("reason")}
                log_event(session, "deployment.scaled", f"deployment/{name}", payload)

    def delete_deployment(self, name: str) -> None:
        """Forget the deployment and its replicas."""
        with self._registry._writing() as session:
            row = self._require(session, name)
            session.execute(delete(ReplicaRow).where(ReplicaRow.deployment_name == name))
            session.delete(row)
            log_event(session, "deployment.deleted", f"deployment/{name}", {})

    # ---- replicas ----------------------------------------------------------------------------

    def put_replicas(self, name: str, replicas: Sequence[dict[str, Any]]) -> None:
        """Replace the deployment's replica rows with `replicas` (dicts with ReplicaRecord's fields)."""
        with self._registry._writing() as session:
            self._require(session, name)
            session.execute(delete(ReplicaRow).where(ReplicaRow.deployment_name == name))
            stamp = now()
            for item in replicas:
                try:
                    session.add(ReplicaRow(
                        deployment_name=name, replica=int(item["replica"]), node=str(item["node"]),
                        state=str(item["state"]), pid=item.get("pid"), port=item.get("port"),
                        restarts=int(item.get("restarts", 0)), started_at=item.get("started_at") or stamp,
                        ready_at=item.get("ready_at"), updated_at=stamp,
                    ))
                except (KeyError, TypeError, ValueError) as exc:
                    raise InvalidInputError(
                        f"a replica needs replica (int), node and state. Received: {item!r:.200}") from exc

    def list_replicas(self, name: str | None = None) -> list[ReplicaRecord]:
        """The replicas of `name` (or of every deployment), by deployment and number."""
        with self._registry._reading() as session:
            query = select(ReplicaRow).order_by(ReplicaRow.deployment_name, ReplicaRow.replica)
            if name is not None:
                self._require(session, name)
                query = query.where(ReplicaRow.deployment_name == name)
            return [
                ReplicaRecord(deployment=row.deployment_name, replica=row.replica, node=row.node, state=row.state,
                              pid=row.pid, port=row.port, restarts=row.restarts, started_at=utc(row.started_at),
                              ready_at=utc(row.ready_at) if row.ready_at else None)
                for row in session.scalars(query)
            ]

    # ---- nodes -------------------------------------------------------------------------------

    def save_node(self, name: str, capacity: dict[str, Any], *, backend: str = "local",
                  address: str | None = None) -> NodeRecord:
        check_name(name, "node name")
        capacity_json = to_json(capacity, "capacity")
        with self._registry._writing() as session:
            row = session.scalars(select(NodeRow).where(NodeRow.name == name)).one_or_none()
            if row is None:
                row = NodeRow(name=name, backend=backend, address=address, capacity=capacity_json, updated_at=now())
                session.add(row)
            else:
                row.backend, row.address, row.capacity, row.updated_at = backend, address, capacity_json, now()
            session.flush()
            return _node_record(row)

    def list_nodes(self) -> list[NodeRecord]:
        with self._registry._reading() as session:
            return [_node_record(row) for row in session.scalars(select(NodeRow).order_by(NodeRow.name))]

    def delete_node(self, name: str) -> None:
        with self._registry._writing() as session:
            session.execute(delete(NodeRow).where(NodeRow.name == name))

    # ---- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _require(session: Any, name: str) -> DeploymentRow:
        row = session.scalars(select(DeploymentRow).where(DeploymentRow.name == name)).one_or_none()
        if row is None:
            names = list(session.scalars(select(DeploymentRow.name).order_by(DeploymentRow.name).limit(20)))
            known = ", ".join(names) if names else "none yet (kaon deploy TARGET)"
            raise NotFoundError(f"no deployment named '{name}'. Deployments: {known}.")
        return row


def _check_status(status: str) -> None:
    if status not in _STATUSES:
        raise InvalidInputError(f"a deployment's status is 'running' or 'stopped'. Received: status={status!r}")


def _deployment_record(row: DeploymentRow) -> DeploymentRecord:
    return DeploymentRecord(name=row.name, spec=dict(row.spec), status=row.status, decision=dict(row.decision or {}),
                            created_at=utc(row.created_at), updated_at=utc(row.updated_at))


def _node_record(row: NodeRow) -> NodeRecord:
    return NodeRecord(name=row.name, backend=row.backend, address=row.address, capacity=dict(row.capacity),
                      updated_at=utc(row.updated_at))
