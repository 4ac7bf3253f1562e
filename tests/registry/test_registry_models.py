"""Model versions: registration, refs and aliases, delete rules, materialize, hash checks, events."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kaon.errors import IntegrityError, InvalidInputError, NotFoundError
from kaon.registry import ModelVersionRecord, Registry

SIGNATURE = {"inputs": [{"name": "image", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
             "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}],
             "labels": [str(i) for i in range(10)]}


def register(registry: Registry, make_file, name: str = "digits", content: bytes = b"weights", **kwargs):
    kwargs.setdefault("framework", "torch")
    kwargs.setdefault("signature", SIGNATURE)
    return registry.register_version(name, {"model.safetensors": make_file(content)}, **kwargs)


def test_register_version_round_trips_every_field(registry: Registry, make_file) -> None:
    run = registry.create_run("train-digits")
    record = registry.register_version(
        "digits",
        {"model.safetensors": make_file(b"weights"), "config/labels.json": make_file(b"[]")},
        framework="torch", signature=SIGNATURE, metrics={"accuracy": 0.97}, run_id=run.id,
        description="first try",
    )

    assert isinstance(record, ModelVersionRecord)
    assert (record.name, record.version, record.ref) == ("digits", 1, "digits@1")
    assert record.files == {"model.safetensors": hashlib.sha256(b"weights").hexdigest(),
                            "config/labels.json": hashlib.sha256(b"[]").hexdigest()}
    assert (record.framework, record.signature, record.metrics) == ("torch", SIGNATURE, {"accuracy": 0.97})
    assert (record.parent, record.run_id, record.aliases) == (None, run.id, ["latest"])
    assert record.description == "first try"
    assert registry.get_version("digits@1") == record
    assert registry.get_version("digits") == record


def test_versions_count_up_and_latest_follows(registry: Registry, make_file) -> None:
    versions = [register(registry, make_file, content=bytes([i])).version for i in range(3)]
    assert versions == [1, 2, 3]
    assert registry.get_version("digits").version == 3
    assert registry.get_version("digits@latest").version == 3
    assert registry.get_version("digits@1").aliases == []
    assert registry.list_models() == [("digits", 3, 3)]
    assert [v.version for v in registry.list_versions("digits")] == [1, 2, 3]


def test_parent_is_stored_as_a_concrete_version(registry: Registry, make_file) -> None:
    base = register(registry, make_file)
    registry.set_alias("digits", "production", base.version)
    variant = register(registry, make_file, name="digits-int8", framework="onnx", parent="digits@production")
    assert variant.parent == "digits@1"
    with pytest.raises(NotFoundError, match="no model named 'nothing'"):
        register(registry, make_file, name="x", parent="nothing@1")


def test_aliases_resolve_move_and_show_on_records(registry: Registry, make_file) -> None:
    register(registry, make_file, content=b"1")
    register(registry, make_file, content=b"2")
    registry.set_alias("digits", "production", 1)
    assert registry.get_version("digits@production").version == 1
    assert registry.get_version("digits@1").aliases == ["production"]

    registry.set_alias("digits", "production", 2)

    assert registry.get_version("digits@production").version == 2
    assert registry.get_version("digits@2").aliases == ["latest", "production"]
    moved = [e for e in registry.events() if e["kind"] == "alias.moved"]
    assert moved[0]["payload"] == {"name": "digits", "alias": "production", "version": 2, "previous": 1}


def test_alias_rules(registry: Registry, make_file) -> None:
    register(registry, make_file)
    with pytest.raises(InvalidInputError, match="alias 'latest' is kept by the registry"):
        registry.set_alias("digits", "latest", 1)
    with pytest.raises(InvalidInputError, match="alias must not be a number"):
        registry.set_alias("digits", "2", 1)
    with pytest.raises(NotFoundError, match="model 'digits' has no version 7. Its versions: 1."):
        registry.set_alias("digits", "production", 7)


def test_unknown_refs_list_what_exists(registry: Registry, make_file) -> None:
    register(registry, make_file)
    register(registry, make_file, name="mnist")
    with pytest.raises(NotFoundError, match="no model named 'cifar'. Models in the registry: digits, mnist."):
        registry.get_version("cifar")
    with pytest.raises(NotFoundError, match="has no version 9. Its versions: 1."):
        registry.get_version("digits@9")
    with pytest.raises(NotFoundError, match="has no alias 'staging'. Its aliases: latest."):
        registry.get_version("digits@staging")
    with pytest.raises(NotFoundError, match="no model named 'cifar'"):
        registry.list_versions("cifar")


def test_invalid_model_names_say_what_was_expected(registry: Registry, make_file) -> None:
    for bad in ("", "-digits", "my model", "a" * 129, "digits/v2"):
        with pytest.raises(InvalidInputError, match="model name must be 1 to 128 characters") as info:
            register(registry, make_file, name=bad)
        assert f"Received: {bad!r}" in info.value.message


def test_register_refuses_bad_files(registry: Registry, make_file, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="files must map at least one file name"):
        registry.register_version("digits", {}, framework="torch")
    with pytest.raises(InvalidInputError, match=r"file name must be a relative path.*Received: '../evil'"):
        registry.register_version("digits", {"../evil": make_file(b"x")}, framework="torch")
    with pytest.raises(NotFoundError, match="does not exist"):
        registry.register_version("digits", {"m.bin": tmp_path / "missing.bin"}, framework="torch")
    with pytest.raises(NotFoundError, match="no run with id 42"):
        registry.register_version("digits", {"m.bin": make_file(b"x")}, framework="torch", run_id=42)
    assert registry.list_models() == []


def test_delete_refuses_a_version_an_alias_points_to_unless_forced(registry: Registry, make_file) -> None:
    register(registry, make_file, content=b"1")
    register(registry, make_file, content=b"2")
    registry.set_alias("digits", "production", 1)

    with pytest.raises(InvalidInputError, match="digits@1 is what 'digits@production' points to"):
        registry.delete_version("digits", 1)
    assert registry.get_version("digits@production").version == 1

    registry.delete_version("digits", 1, force=True)

    with pytest.raises(NotFoundError, match="has no alias 'production'"):
        registry.get_version("digits@production")
    assert [v.version for v in registry.list_versions("digits")] == [2]


def test_deleting_the_latest_version_moves_latest_back(registry: Registry, make_file) -> None:
    register(registry, make_file, content=b"1")
    register(registry, make_file, content=b"2")
    registry.delete_version("digits", 2)  # only 'latest' points at it: allowed
    assert registry.get_version("digits").version == 1
    assert registry.get_version("digits@1").aliases == ["latest"]
    assert registry.list_models() == [("digits", 1, 1)]


def test_version_numbers_are_never_reused_after_delete(registry: Registry, make_file) -> None:
    register(registry, make_file)
    registry.delete_version("digits", 1)
    assert registry.list_models() == []
    with pytest.raises(NotFoundError, match="no versions left"):
        registry.get_version("digits")
    assert register(registry, make_file, content=b"new").version == 2


def test_delete_of_an_unknown_version_is_not_found(registry: Registry, make_file) -> None:
    register(registry, make_file)
    with pytest.raises(NotFoundError, match="has no version 5"):
        registry.delete_version("digits", 5)


def test_artifact_path_catches_a_tampered_file(registry: Registry, make_file) -> None:
    record = register(registry, make_file, content=b"good weights")
    sha256 = record.files["model.safetensors"]
    stored = registry.artifact_path(sha256)
    stored.write_bytes(b"evil weights")

    with pytest.raises(IntegrityError) as info:
        registry.artifact_path(sha256)

    message = info.value.message
    assert str(stored) in message and sha256 in message
    assert hashlib.sha256(b"evil weights").hexdigest() in message
    assert "register the model version again" in message
    with pytest.raises(IntegrityError):
        registry.materialize("digits")

    register(registry, make_file, content=b"good weights")  # the documented fix
    assert registry.artifact_path(sha256).read_bytes() == b"good weights"


def test_a_deleted_artifact_is_reported_not_found(registry: Registry, make_file) -> None:
    sha256 = registry.store_artifact(make_file(b"data"))
    registry.artifact_path(sha256).unlink()
    with pytest.raises(NotFoundError, match=f"artifact {sha256} is missing"):
        registry.artifact_path(sha256)
    with pytest.raises(InvalidInputError, match="64 lowercase hex"):
        registry.artifact_path("../../etc/passwd")


def test_store_artifact_is_content_addressed(registry: Registry, make_file, kaon_home: Path) -> None:
    sha256 = registry.store_artifact(make_file(b"same"))
    assert sha256 == registry.store_artifact(make_file(b"same")) == hashlib.sha256(b"same").hexdigest()
    assert registry.artifact_path(sha256) == kaon_home / "artifacts" / sha256
    assert sorted(p.name for p in (kaon_home / "artifacts").iterdir()) == [sha256]  # no temp files left


def test_materialize_builds_the_folder_and_repairs_it(registry: Registry, make_file, kaon_home: Path) -> None:
    record = registry.register_version(
        "digits", {"model.onnx": make_file(b"onnx"), "extra/labels.txt": make_file(b"0 1")}, framework="onnx"
    )
    folder = registry.materialize("digits@1")
    assert folder == kaon_home / "cache" / "digits" / "1"
    assert (folder / "model.onnx").read_bytes() == b"onnx"
    assert (folder / "extra" / "labels.txt").read_bytes() == b"0 1"

    (folder / "model.onnx").write_bytes(b"tampered")
    (folder / "extra" / "labels.txt").unlink()
    (folder / "stray.bin").write_bytes(b"?")

    assert registry.materialize(record) == folder
    assert (folder / "model.onnx").read_bytes() == b"onnx"
    assert (folder / "extra" / "labels.txt").read_bytes() == b"0 1"
    assert not (folder / "stray.bin").exists()


def test_every_write_is_in_the_event_log(registry: Registry, make_file) -> None:
    run = registry.create_run("r")
    registry.log_metrics(run.id, {"loss": 1.0}, step=0)
    registry.finish_run(run.id)
    register(registry, make_file, content=b"1")
    register(registry, make_file, content=b"2")
    registry.set_alias("digits", "production", 1)
    registry.delete_version("digits", 2)

    events = registry.events()

    assert [e["kind"] for e in reversed(events)] == [
        "run.created", "run.finished", "version.registered", "version.registered", "alias.moved",
        "version.deleted",
    ]
    assert events[0]["subject"] == "digits@2" and events[0]["payload"]["latest"] == 1
    assert [e["id"] for e in registry.events(limit=2)] == [events[0]["id"], events[1]["id"]]
