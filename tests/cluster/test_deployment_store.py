"""Deployments, replicas and nodes in the registry (migration 0003), on a real SQLite file."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kaon.errors import InvalidInputError, NotFoundError
from kaon.registry import Registry
from kaon.registry.deployments import DeploymentStore


@pytest.fixture
def store(kaon_home):
    registry = Registry()
    yield DeploymentStore(registry)
    registry.close()


def test_save_get_list_update_and_delete(store):
    created = store.save_deployment("digits", {"name": "digits", "target": "digits@1"})
    assert created.status == "running" and created.decision == {}
    store.save_deployment("other", {"name": "other", "target": "m@1"}, status="stopped")
    updated = store.save_deployment("digits", {"name": "digits", "target": "digits@2"})
    assert updated.spec["target"] == "digits@2" and updated.created_at == created.created_at
    assert [d.name for d in store.list_deployments()] == ["digits", "other"]
    assert [d.name for d in store.list_deployments("running")] == ["digits"]
    assert store.set_status("digits", "stopped").status == "stopped"
    store.delete_deployment("digits")
    with pytest.raises(NotFoundError, match="no deployment named 'digits'. Deployments: other"):
        store.get_deployment("digits")


def test_decisions_and_replicas_survive_a_new_registry(store, kaon_home):
    store.save_deployment("digits", {"name": "digits"})
    store.record_decision("digits", {"replicas": 2, "reason": "load", "time": 1.0})
    started = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store.put_replicas("digits", [
        {"replica": 0, "node": "local", "state": "ready", "pid": 123, "port": 9001, "started_at": started,
         "ready_at": started},
        {"replica": 1, "node": "local", "state": "starting", "pid": 124, "port": 9002, "restarts": 1},
    ])
    with Registry() as fresh:
        again = DeploymentStore(fresh)
        assert again.get_deployment("digits").decision["replicas"] == 2
        replicas = again.list_replicas("digits")
        assert [(r.replica, r.state, r.pid, r.restarts) for r in replicas] == [(0, "ready", 123, 0),
                                                                             (1, "starting", 124, 1)]
        assert replicas[0].started_at == started
        kinds = [event["kind"] for event in fresh.events()]
    assert kinds[:2] == ["deployment.scaled", "deployment.created"]


def test_nodes_are_upserted(store):
    store.save_node("local", {"cpus": 2, "memory_mb": 4096})
    store.save_node("local", {"cpus": 4, "memory_mb": 4096}, backend="local")
    store.save_node("ray-head", {"cpus": 8, "memory_mb": 1024}, backend="ray", address="10.0.0.1:6379")
    assert [(n.name, n.capacity["cpus"], n.address) for n in store.list_nodes()] == [
        ("local", 4, None), ("ray-head", 8, "10.0.0.1:6379")]
    store.delete_node("ray-head")
    assert [n.name for n in store.list_nodes()] == ["local"]


def test_bad_input_is_refused(store):
    with pytest.raises(InvalidInputError, match="deployment name must be"):
        store.save_deployment("Bad Name", {})
    with pytest.raises(InvalidInputError, match="'running' or 'stopped'"):
        store.save_deployment("ok", {}, status="paused")  # type: ignore[arg-type]
    store.save_deployment("ok", {})
    with pytest.raises(InvalidInputError, match="a replica needs replica"):
        store.put_replicas("ok", [{"node": "local"}])
    with pytest.raises(NotFoundError):
        store.put_replicas("missing", [])
