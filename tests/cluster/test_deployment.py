"""The Deployment spec: YAML and Python, validation that names the field, and what backends read from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaon.cluster.deployment import Deployment, from_stored, stored_spec
from kaon.errors import ConfigError
from kaon.serving import Service


class Echo(Service):
    pass


def test_yaml_round_trip_and_scaling_config(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        "name: digits\n"
        "target: digits@production\n"
        "port: 8123\n"
        "min_replicas: 0\n"
        "max_replicas: 3\n"
        "resources: {cpus: 0.5, memory_mb: 256}\n"
        "idle_timeout_s: 60\n"
        "serve: {max_batch_size: 16, max_wait_ms: 1}\n"
        "autoscaling:\n"
        "  policy: predictive\n"
        "  target_in_flight: 2\n"
        "  schedule: [{cron: '* 9-16 * * 1-5', min_replicas: 2}]\n"
    )
    deployment = Deployment.from_file(path)
    config = deployment.scaling_config()
    assert (config.policy, config.min_replicas, config.max_replicas, config.idle_timeout_s) == ("predictive", 0, 3, 60)
    assert config.schedule[0].min_replicas == 2
    assert deployment.replica_env() == {"KAON_MAX_BATCH_SIZE": "16", "KAON_MAX_WAIT_MS": "1"}
    assert deployment.replica_args(9000)[:2] == ["serve", "digits@production"]
    assert deployment.model_name == "digits"
    again = tmp_path / "again.yaml"
    again.write_text(deployment.to_yaml())
    assert Deployment.from_file(again) == deployment


@pytest.mark.parametrize(("data", "message"), [
    ({"name": "Digits!", "target": "x"}, "name: String should match pattern"),
    ({"name": "d", "target": "x", "min_replicas": 3, "max_replicas": 2},
     "max_replicas (2) must be >= min_replicas (3)"),
    ({"name": "d", "target": "x", "replicaz": 2}, "replicaz: Extra inputs are not permitted"),
    ({"name": "d", "target": "x", "serve": {"port": 1}}, "unknown kaon serve options ['port']"),
    ({"name": "d", "target": "x", "serve": {"max_batch_size": 0}}, "max_batch_size must be an integer >= 1"),
    ({"name": "d", "target": "x", "serve": {"read_timeout_s": 0}}, "read_timeout_s must be a number > 0"),
    ({"name": "d", "target": "x", "autoscaling": {"policy": "magic"}}, "autoscaling.policy"),
    ({"name": "d", "target": "x", "autoscaling": {"schedule": [{"cron": "* *", "min_replicas": 1}]}}, "five fields"),
    ({"name": "d", "target": "x", "backend": "ray"}, "needs address: HOST:PORT"),
    ({"name": "d", "target": "x", "resources": {"cpus": 0}}, "resources.cpus"),
])
def test_bad_specs_are_refused_naming_the_field(data, message):
    with pytest.raises(ConfigError) as info:
        Deployment.parse(data, source="d.yaml")
    assert message in info.value.message
    assert info.value.message.startswith("d.yaml is not a valid deployment")


def test_a_service_class_becomes_an_importable_file_reference():
    deployment = Deployment(name="echo", target=Echo)
    path, _, cls = deployment.target.rpartition(":")
    assert path.endswith("test_deployment.py") and cls == "Echo"


def test_kaon_scale_pins_a_fixed_count_and_overrides_apply():
    deployment = Deployment(name="d", target="m@1", max_replicas=2).with_overrides(replicas=5, policy="predictive")
    config = deployment.scaling_config()
    assert (config.policy, config.replicas, config.max_replicas) == ("fixed", 5, 5)
    assert deployment.initial_replicas() == 5
    assert deployment.autoscaling.policy == "predictive"


def test_the_stored_spec_keeps_the_resolved_version_beside_the_fields():
    spec = Deployment(name="digits", target="digits@production")
    assert from_stored(stored_spec(spec, "digits@1"), source="d") == (spec, "digits@1")
    assert from_stored(stored_spec(spec, None), source="d") == (spec, None)  # a file, or stored before 'resolved'


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="deployment file not found"):
        Deployment.from_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Deployment.from_file(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        Deployment.from_file(listed)


def test_public_names_of_kaon_cluster_are_pinned_and_load():
    import kaon.cluster

    assert kaon.cluster.__all__ == sorted([
        "Autoscaling", "ControlPlane", "ControlPlaneClient", "Demand", "Deployment", "DeploymentModel", "Forecast",
        "ForecasterState", "InsufficientResourcesError", "Load", "Node", "Resources", "ScalingConfig",
        "ScalingState", "ScheduleRule", "Trace", "build_context", "decide_replicas", "deploy", "export_k8s", "fixed",
        "place",
        "predictive", "reactive", "simulate"])
    for name in kaon.cluster.__all__:
        assert getattr(kaon.cluster, name) is not None


def test_file_targets_become_absolute_relative_to_the_deployment_file(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(b"x")
    (tmp_path / "svc.py").write_text("")
    (tmp_path / "a.yaml").write_text("name: a\ntarget: models/m.onnx\n")
    (tmp_path / "b.yaml").write_text("name: b\ntarget: svc.py:Thing\n")
    (tmp_path / "c.yaml").write_text("name: c\ntarget: digits@production\n")
    monkeypatch.chdir("/")
    assert Deployment.from_file(tmp_path / "a.yaml").target == str(tmp_path / "models" / "m.onnx")
    assert Deployment.from_file(tmp_path / "b.yaml").target == f"{tmp_path / 'svc.py'}:Thing"
    assert Deployment.from_file(tmp_path / "c.yaml").target == "digits@production"


def test_the_example_deployment_file_is_valid():
    example = Path(__file__).resolve().parents[2] / "examples" / "deployment.yaml"
    spec = Deployment.from_file(example)
    assert (spec.name, spec.autoscaling.policy, spec.min_replicas) == ("digits", "predictive", 0)
    assert spec.scaling_config().schedule[0].cron == "* 9-16 * * 1-5"


@pytest.mark.parametrize(("target", "name"), [("digits@production", "digits"), ("out/My_Model.onnx", "my-model"),
                                              ("svc/service.py:Digits", "digits"), (Echo, "echo")])
def test_default_names_come_from_the_target(target, name):
    from kaon.cluster.deployment import default_name

    assert default_name(target) == name


def test_a_deployment_passes_the_read_timeout_on_to_its_replicas():
    deployment = Deployment.parse({"name": "d", "target": "x", "serve": {"read_timeout_s": 5}}, source="d.yaml")
    assert deployment.replica_env() == {"KAON_READ_TIMEOUT_S": "5"}
