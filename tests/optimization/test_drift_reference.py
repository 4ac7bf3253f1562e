"""The optimized version's drift reference: refitted on the calibration samples when there are enough,
else carried over from the parent where the parent's is valid for it, and the CLI says which."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import kaon
import kaon.cli.optimize_cmd  # noqa: F401 - registers `kaon optimize` on the app
from kaon.cli.app import _register_commands, app
from kaon.monitoring import REFERENCE_FILENAME, Monitor, Reference, feature_extractor, fit_reference
from kaon.optimization.report import Variant

if not app.registered_groups:
    _register_commands()


def tabular(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated classes of 13 features, like the wine data set."""
    centers = np.random.default_rng(0).normal(0, 3, (3, 13)).astype(np.float32)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return (centers[y] + rng.normal(0, 1, (n, 13))).astype(np.float32), y


def wine_net(x: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def test_fewer_than_50_calibration_samples_keep_the_parents_reference(tmp_path, monkeypatch):
    """45 calibration rows are too few to fit a reference: the version registered from a parent with
    reference_data lost its drift monitor, and the CLI said nothing."""
    from kaon.registry import Registry

    monkeypatch.setenv("COLUMNS", "300")
    x_train, y_train = tabular(200, seed=1)
    x_test, y_test = tabular(45, seed=2)
    parent = kaon.register(wine_net(x_train, y_train), "wine", input_example=x_test[:2], reference_data=x_train)
    data = tmp_path / "wine_test.npz"
    np.savez(data, x=x_test, y=y_test)
    result = CliRunner().invoke(app, ["optimize", parent.ref, "--calibration-data", str(data), "--methods", "onnx",
                                      "--target", "size"])
    assert result.exit_code == 0, result.output
    assert "registered wine@2 (parent wine@1)" in result.output
    with Registry() as registry:
        child = registry.get_version("wine@2")
        assert child.framework == "onnx" and REFERENCE_FILENAME in child.files
        reference = Reference.load(registry.materialize(child) / REFERENCE_FILENAME)
    assert reference.source == "inputs" and reference.num_samples == 200  # the parent's was on its penultimate layer
    assert ("drift reference of wine@2: refitted for the optimized model on the 200 inputs kept in wine@1's "
            "reference.npz (the 45 calibration samples are fewer than the 50") in result.output, result.output
    # what `kaon serve wine@2` builds: a monitor of the ONNX model against that reference
    model = kaon.load("wine@2")
    monitor = Monitor(reference, feature_extractor(model), window=40, stride=20)
    assert monitor.observe(x_train[:60]).shape == (60,)
    assert {"embedding_mmd", "features_ks", "outlier_rate"} <= set(monitor.detectors)
    assert all(d.evaluations > 0 for d in monitor.detectors.values())


def _fake(folder: Path) -> tuple[SimpleNamespace, SimpleNamespace]:
    record = SimpleNamespace(ref="img@1", name="img", files={REFERENCE_FILENAME: "x"})
    return record, SimpleNamespace(materialize=lambda _record: folder)


class _Outputs:
    """A model kaon can only see the outputs of (as ONNX): an 'outputs' reference on images."""

    def __init__(self, signature):
        self.signature = signature

    def run(self, inputs):
        x = next(iter(inputs.values()))
        return {"logits": x.reshape(len(x), -1)[:, :3] * 2.0}


@pytest.mark.parametrize("method", ["onnx", "int8-dynamic"])
def test_a_parents_outputs_reference_is_kept_for_the_plain_export_only(tmp_path, method):
    from kaon.optimization.optimize import _parents_reference
    from kaon.types import Signature, TensorSpec

    signature = Signature([TensorSpec("image", "float32", (-1, 1, 4, 4))], [TensorSpec("logits", "float32", (-1, 3))])
    parent = fit_reference(_Outputs(signature), np.random.default_rng(0).random((60, 1, 4, 4), dtype=np.float32))
    assert parent.source == "outputs" and parent.features is None
    (tmp_path / "parent").mkdir()
    parent.save(tmp_path / "parent" / REFERENCE_FILENAME)
    record, registry = _fake(tmp_path / "parent")
    name = "onnx-fp32" if method == "onnx" else "int8-dynamic"
    variant = Variant(name, (method,), "onnx")
    (tmp_path / "new").mkdir()
    path, why = _parents_reference(variant, record, registry, tmp_path / "new")
    if method == "onnx":  # the same function (the export check): the same outputs
        assert path is not None and Reference.load(path).source == "outputs" and "carried over as it is" in why
    else:  # int8 moves the scores the MMD and outlier quantiles were fitted on
        assert path is None and "holds its outputs, which int8-dynamic does not reproduce" in why


def test_a_parents_inputs_reference_is_kept_for_any_variant(tmp_path):
    from kaon.optimization.optimize import _parents_reference
    from kaon.types import Signature, TensorSpec

    signature = Signature([TensorSpec("x", "float32", (-1, 13))], [TensorSpec("logits", "float32", (-1, 3))])
    parent = fit_reference(_Outputs(signature), tabular(60, seed=3)[0])
    assert parent.source == "inputs"  # tabular, and no penultimate layer in reach
    (tmp_path / "parent").mkdir()
    parent.save(tmp_path / "parent" / REFERENCE_FILENAME)
    record, registry = _fake(tmp_path / "parent")
    (tmp_path / "new").mkdir()
    path, why = _parents_reference(Variant("pruned-75", ("prune-structured",), "onnx"), record, registry,
                                   tmp_path / "new")
    assert path is not None and "carried over as it is: its statistics are of the inputs" in why
    assert path.read_bytes() == (tmp_path / "parent" / REFERENCE_FILENAME).read_bytes()
