"""Bin-packing placement: tight packing, several deployments, and refusals that say what is short."""

from __future__ import annotations

import pytest

from kaon.cluster.placement import Demand, InsufficientResourcesError, Node, max_fitting, place


def test_best_fit_packs_big_replicas_first_so_everything_fits():
    nodes = [Node("a", cpus=4, memory_mb=8192), Node("b", cpus=4, memory_mb=8192)]
    # first fit in arrival order would put the 1-cpu replicas on 'a' first and strand a 3-cpu one
    demands = [Demand("small", count=2, cpus=1, memory_mb=256), Demand("big", count=2, cpus=3, memory_mb=1024)]
    plan = place(demands, nodes)
    assert sorted(plan.assignments["big"]) == ["a", "b"]
    assert sorted(plan.assignments["small"]) == ["a", "b"]
    left = {"cpus": 0.0, "memory_mb": 6912, "gpus": 0}
    assert plan.free == {"a": left, "b": left}


def test_refuses_what_cannot_fit_naming_deployment_needs_free_room_and_shortfall():
    nodes = [Node("local", cpus=2, memory_mb=4096)]
    with pytest.raises(InsufficientResourcesError) as info:
        place([Demand("a", count=1, cpus=1.5, memory_mb=1024), Demand("b", count=1, cpus=1, memory_mb=512)], nodes)
    message = info.value.message
    assert "of 'b' (each needs 1 cpus, 512 MiB)" in message
    assert "'local' has 0.5 of 2 cpus, 3072 of 4096 MiB" in message
    assert "Short on 'local' by 0.5 cpus." in message
    assert info.value.status_code == 409 and info.value.code == "insufficient_resources"


def test_memory_and_gpus_are_resources_too():
    nodes = [Node("cpu-box", cpus=16, memory_mb=2048), Node("gpu-box", cpus=8, memory_mb=32768, gpus=1)]
    plan = place([Demand("llm", count=1, cpus=2, memory_mb=16384, gpus=1)], nodes)
    assert plan.assignments["llm"] == ("gpu-box",)
    with pytest.raises(InsufficientResourcesError, match="Short on 'cpu-box' by 2048 MiB, 1 gpus; 'gpu-box' by 1 gpus"):
        place([Demand("llm", count=2, cpus=2, memory_mb=4096, gpus=1)], nodes)
    with pytest.raises(InsufficientResourcesError, match="'gpu-box' by 1024 MiB"):
        place([Demand("fat", count=1, cpus=1, memory_mb=33792)], nodes)


def test_already_placed_replicas_take_their_room_first():
    nodes = [Node("local", cpus=4, memory_mb=8192)]
    running = {"a": ["local", "local"]}
    sizes = {"a": Demand("a", count=2, cpus=1.5, memory_mb=512)}
    plan = place([Demand("b", count=1, cpus=1, memory_mb=512)], nodes, placed=running, requests=sizes)
    assert plan.assignments == {"b": ("local",)}
    with pytest.raises(InsufficientResourcesError):
        place([Demand("b", count=2, cpus=1, memory_mb=512)], nodes, placed=running, requests=sizes)


def test_max_replicas_per_node_spreads_replicas():
    nodes = [Node("n1", cpus=8, memory_mb=8192), Node("n2", cpus=8, memory_mb=8192)]
    plan = place([Demand("web", count=4, cpus=1, memory_mb=128, max_per_node=2)], nodes)
    assert sorted(plan.assignments["web"]) == ["n1", "n1", "n2", "n2"]
    with pytest.raises(InsufficientResourcesError, match="max_replicas_per_node"):
        place([Demand("web", count=5, cpus=1, memory_mb=128, max_per_node=2)], nodes)


def test_max_fitting_counts_what_fits_beside_other_deployments():
    nodes = [Node("local", cpus=2, memory_mb=4096)]
    others = [Demand("a", count=1, cpus=1, memory_mb=512)]
    assert max_fitting(Demand("b", count=10, cpus=0.25, memory_mb=256), nodes, others) == 4
    assert max_fitting(Demand("b", count=10, cpus=4, memory_mb=256), nodes, others) == 0


def test_no_nodes_is_a_clear_error():
    with pytest.raises(InsufficientResourcesError, match="no nodes"):
        place([Demand("a", count=1)], [])
