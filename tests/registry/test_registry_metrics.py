"""Metric values: numbers go in (numpy scalars and 0-d tensors converted), anything else is refused before a
version or a metric point is written, with what was received and how to fix it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import kaon
from kaon.errors import InvalidInputError, NotFoundError
from kaon.registry import Registry

NOT_NUMBERS = [
    pytest.param("high", id="text"),
    pytest.param("0.5", id="numeric-text"),
    pytest.param(b"1", id="bytes"),
    pytest.param([0.9, 0.8], id="list"),
    pytest.param({"top1": 0.9}, id="dict"),
    pytest.param(None, id="none"),
    pytest.param(True, id="bool"),
    pytest.param(np.bool_(True), id="numpy-bool"),
    pytest.param(1 + 2j, id="complex"),
    pytest.param(np.array([0.5]), id="numpy-1d"),
    pytest.param(torch.tensor([0.5]), id="tensor-1d"),
    pytest.param(torch.tensor(True), id="tensor-bool"),
]
NOT_FINITE = [pytest.param(math.nan, id="nan"), pytest.param(np.float32("inf"), id="inf"),
              pytest.param(torch.tensor(-math.inf), id="tensor-minus-inf")]


def _artifact_files(kaon_home: Path) -> list[Path]:
    return [p for p in (kaon_home / "artifacts").rglob("*") if p.is_file()]


@pytest.mark.parametrize("value", NOT_NUMBERS + NOT_FINITE)
def test_register_version_refuses_a_metric_that_is_not_a_finite_number_and_writes_nothing(
    registry: Registry, make_file, kaon_home: Path, value: object
) -> None:
    source = make_file(b"weights", "model.onnx")

    with pytest.raises(InvalidInputError) as info:
        registry.register_version("digits", {"model.onnx": source}, framework="onnx",
                                  metrics={"loss": 0.1, "accuracy": value})

    message = info.value.message
    assert "metric 'accuracy'" in message and "Received:" in message and "e.g." in message
    assert registry.list_models() == []
    assert [e for e in registry.events() if e["kind"] == "version.registered"] == []
    assert _artifact_files(kaon_home) == []


def test_register_version_refuses_a_metric_name_that_is_not_text(registry: Registry, make_file) -> None:
    with pytest.raises(InvalidInputError, match="metric name must be a non-empty printable string"):
        registry.register_version("digits", {"model.onnx": make_file(b"w")}, framework="onnx", metrics={"": 0.5})
    with pytest.raises(InvalidInputError, match="metrics must be a dict of name -> number"):
        registry.register_version("digits", {"model.onnx": make_file(b"w")}, framework="onnx",
                                  metrics=[("accuracy", 0.5)])  # type: ignore[arg-type]
    assert registry.list_models() == []


def test_register_version_converts_numpy_scalars_and_0d_tensors_to_plain_numbers(
    registry: Registry, make_file
) -> None:
    metrics = {"accuracy": np.float32(0.5), "loss": torch.tensor(0.25), "f1": np.array(0.75),
               "size_bytes": np.int64(1234), "epochs": torch.tensor(3), "threads": 4, "lr": 0.125}

    version = registry.register_version("digits", {"model.onnx": make_file(b"w")}, framework="onnx",
                                        metrics=metrics)

    stored = registry.get_version(version.ref).metrics
    assert stored == {"accuracy": 0.5, "loss": 0.25, "f1": 0.75, "size_bytes": 1234, "epochs": 3, "threads": 4,
                      "lr": 0.125}
    assert {k: type(v) for k, v in stored.items()} == {
        "accuracy": float, "loss": float, "f1": float, "size_bytes": int, "epochs": int, "threads": int,
        "lr": float}


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_log_metrics_refuses_a_value_that_is_not_a_number_and_logs_no_point(registry: Registry,
                                                                            value: object) -> None:
    run = registry.create_run("r")

    with pytest.raises(InvalidInputError) as info:
        registry.log_metrics(run.id, {"loss": 0.5, "accuracy": value}, step=1)  # type: ignore[dict-item]

    assert "metric 'accuracy'" in info.value.message and "Received:" in info.value.message
    assert registry.metric_history(run.id) == {}


def test_log_metrics_keeps_nan_and_inf_and_converts_0d_tensors(registry: Registry) -> None:
    run = registry.create_run("diverging")

    registry.log_metrics(run.id, {"loss": torch.tensor(math.nan), "grad": np.float64("inf"),
                                  "accuracy": torch.tensor(0.5), "seen": np.int32(64)}, step=2)

    history = registry.metric_history(run.id)
    assert math.isnan(history["loss"][0][1])
    assert (history["grad"], history["accuracy"], history["seen"]) == ([(2, math.inf)], [(2, 0.5)], [(2, 64.0)])


def test_kaon_register_refuses_a_text_metric_and_leaves_no_version_or_artifact(kaon_home: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    x = np.zeros((2, 4), np.float32)

    with pytest.raises(InvalidInputError, match=r"metric 'accuracy' must be a number.*Received: 'high'"):
        kaon.register(model, "tiny", input_example=x, metrics={"accuracy": "high"})

    with Registry() as registry:
        assert registry.list_models() == []
    assert _artifact_files(kaon_home) == []


@pytest.mark.parametrize("reference", [pytest.param({"run_id": 999}, id="run"),
                                       pytest.param({"parent": "nosuch@1"}, id="parent")])
def test_register_version_with_a_missing_run_or_parent_stores_no_file(
    registry: Registry, make_file, kaon_home: Path, reference: dict[str, object]
) -> None:
    with pytest.raises(NotFoundError):
        registry.register_version("digits", {"model.onnx": make_file(b"w")}, framework="onnx",
                                  **reference)  # type: ignore[arg-type]

    assert registry.list_models() == []
    assert _artifact_files(kaon_home) == []
