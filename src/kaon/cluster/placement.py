"""Resource-aware placement: bin-pack the replicas of several deployments onto nodes, or say what is short.

A pure function of (what is asked, what the nodes have, what is already placed):

    >>> nodes = [Node("a", cpus=4, memory_mb=8192), Node("b", cpus=2, memory_mb=4096)]
    >>> plan = place([Demand("digits", count=3, cpus=1.5, memory_mb=1024)], nodes)
    >>> plan.assignments["digits"]
    ('b', 'a', 'a')

Replicas go largest first (by their dominant share of the cluster, as in DRF), each onto the node it
fits most tightly (best fit), so that big replicas still find room later. A demand that cannot fit
raises InsufficientResourcesError, which names the deployment, the replica's needs, the free room on
each node and the resource that is short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kaon.cluster._text import plural
from kaon.errors import InsufficientResourcesError

_EPS = 1e-9


@dataclass(frozen=True)
class Node:
    """A machine's declared capacity."""

    name: str
    cpus: float
    memory_mb: int
    gpus: int = 0


@dataclass(frozen=True)
class Demand:
    """`count` replicas of `deployment`, each needing cpus, memory_mb and gpus."""

    deployment: str
    count: int
    cpus: float = 1.0
    memory_mb: int = 512
    gpus: int = 0
    max_per_node: int | None = None


@dataclass
class _Free:
    cpus: float
    memory_mb: float
    gpus: float

    def fits(self, demand: Demand) -> bool:
        return (demand.cpus <= self.cpus + _EPS and demand.memory_mb <= self.memory_mb + _EPS
                and demand.gpus <= self.gpus + _EPS)

    def take(self, demand: Demand) -> None:
        self.cpus -= demand.cpus
        self.memory_mb -= demand.memory_mb
        self.gpus -= demand.gpus


@dataclass(frozen=True)
class Placement:
    """Where each replica goes, and the room left on each node."""

    assignments: dict[str, tuple[str, ...]]
    free: dict[str, dict[str, float]] = field(default_factory=dict)


def place(demands: Sequence[Demand], nodes: Sequence[Node],
          placed: Mapping[str, Sequence[str]] | None = None,
          requests: Mapping[str, Demand] | None = None) -> Placement:
    """Place every replica of `demands` on `nodes`, after the replicas already `placed`
    (deployment -> node of each running replica, sized by `requests` or by the matching demand)."""
    if not nodes:
        raise InsufficientResourcesError("there are no nodes to place replicas on. Start the control plane "
                                         "(kaon up) or join a Ray cluster (kaon deploy --backend ray --address ...).")
    free = {node.name: _Free(node.cpus, node.memory_mb, node.gpus) for node in nodes}
    totals = _Free(sum(n.cpus for n in nodes), sum(n.memory_mb for n in nodes), sum(n.gpus for n in nodes))
    sizes = {d.deployment: d for d in demands} | dict(requests or {})
    per_node: dict[tuple[str, str], int] = {}
    for deployment, on_nodes in (placed or {}).items():
        size = sizes.get(deployment)
        if size is None:
            continue
        for node in on_nodes:
            if node in free:
                free[node].take(size)
                per_node[deployment, node] = per_node.get((deployment, node), 0) + 1
    items = [demand for demand in demands for _ in range(demand.count)]
    items.sort(key=lambda d: (-_dominant_share(d, totals), d.deployment))
    chosen: dict[str, list[str]] = {d.deployment: [] for d in demands}
    for demand in items:
        fitting = [name for name, room in free.items()
                   if room.fits(demand) and not _at_limit(demand, name, per_node)]
        if not fitting:
            raise _short(demand, len(chosen[demand.deployment]), nodes, free, per_node)
        best = min(fitting, key=lambda name: (_left_share(free[name], demand, totals), name))
        free[best].take(demand)
        per_node[demand.deployment, best] = per_node.get((demand.deployment, best), 0) + 1
        chosen[demand.deployment].append(best)
    return Placement(
        assignments={name: tuple(on) for name, on in chosen.items()},
        free={name: {"cpus": round(room.cpus, 6), "memory_mb": round(room.memory_mb, 3), "gpus": room.gpus}
              for name, room in free.items()},
    )


def max_fitting(demand: Demand, nodes: Sequence[Node], others: Sequence[Demand] = ()) -> int:
    """The most replicas of `demand` that fit beside `others` (at most demand.count)."""
    low, high = 0, demand.count
    while low < high:  # fitting is monotone in the count: binary search
        mid = (low + high + 1) // 2
        try:
            place([*others, Demand(demand.deployment, mid, demand.cpus, demand.memory_mb, demand.gpus,
                                   demand.max_per_node)], nodes)
            low = mid
        except InsufficientResourcesError:
            high = mid - 1
    return low


def _at_limit(demand: Demand, node: str, per_node: Mapping[tuple[str, str], int]) -> bool:
    return demand.max_per_node is not None and per_node.get((demand.deployment, node), 0) >= demand.max_per_node


def _dominant_share(demand: Demand, totals: _Free) -> float:
    shares = [demand.cpus / totals.cpus if totals.cpus else 0.0,
              demand.memory_mb / totals.memory_mb if totals.memory_mb else 0.0,
              demand.gpus / totals.gpus if totals.gpus else 0.0]
    return max(shares)


def _left_share(room: _Free, demand: Demand, totals: _Free) -> float:
    """The dominant share of the room a node would have left: smaller is a tighter fit."""
    after = _Free(room.cpus - demand.cpus, room.memory_mb - demand.memory_mb, room.gpus - demand.gpus)
    return max(after.cpus / totals.cpus if totals.cpus else 0.0,
               after.memory_mb / totals.memory_mb if totals.memory_mb else 0.0,
               after.gpus / totals.gpus if totals.gpus else 0.0)


def _short(demand: Demand, placed_so_far: int, nodes: Sequence[Node], free: Mapping[str, _Free],
           per_node: Mapping[tuple[str, str], int]) -> InsufficientResourcesError:
    needs = f"{demand.cpus:g} cpus, {demand.memory_mb} MiB" + (f", {demand.gpus} gpus" if demand.gpus else "")
    rooms = []
    shortfalls: dict[str, dict[str, float]] = {}
    for node in nodes:
        room = free[node.name]
        missing = {key: value for key, value in (("cpus", demand.cpus - room.cpus),
                                                  ("memory_mb", demand.memory_mb - room.memory_mb),
                                                  ("gpus", demand.gpus - room.gpus)) if value > _EPS}
        capped = _at_limit(demand, node.name, per_node)
        rooms.append(f"'{node.name}' has {max(room.cpus, 0):g} of {node.cpus:g} cpus, "
                     f"{max(room.memory_mb, 0):g} of {node.memory_mb} MiB"
                     + (f", {max(room.gpus, 0):g} of {node.gpus} gpus" if node.gpus or demand.gpus else "")
                     + (f" (already {plural(demand.max_per_node or 0, 'replica')}, max_replicas_per_node)"
                        if capped else ""))
        shortfalls[node.name] = missing
    short = "; ".join(
        f"'{name}' by " + (", ".join(f"{v:g} {'MiB' if k == 'memory_mb' else k}" for k, v in missing.items())
                           or "the max_replicas_per_node limit")
        for name, missing in shortfalls.items())
    return InsufficientResourcesError(
        f"replica {placed_so_far + 1} of {demand.count} of '{demand.deployment}' (each needs {needs}) fits on no "
        f"node: {'; '.join(rooms)}. Short on {short}. "
        "Lower replicas or resources per replica, stop another deployment (kaon stop NAME), "
        "or add capacity (kaon up --cpus/--memory-mb, or a Ray cluster).",
        fields=[{"name": demand.deployment, "expected": needs, "short": shortfalls}],
    )
