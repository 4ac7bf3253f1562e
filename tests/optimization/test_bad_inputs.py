"""What bad input gets: no calibration data, unknown methods, an unexportable model, a budget nobody meets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kaon.errors import ConfigError, InvalidInputError
from kaon.optimization import UnexportableModelError, export_onnx, optimize, parse_methods

from .conftest import register_digits


@torch.library.custom_op("kaontest::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    """An operator ONNX has never heard of."""
    return x * 2


@wobble.register_fake
def _(x):
    return torch.empty_like(x)


wobble.register_autograd(lambda ctx, grad: grad * 2)


class Wobble(nn.Module):
    def forward(self, x):
        return wobble(x)


class OddNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)
        self.odd = Wobble()

    def forward(self, x):
        return self.odd(self.head(self.body(x)))


def fit(module: nn.Module, x: np.ndarray, y: np.ndarray, steps: int = 40) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(module(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


def samples_file(tmp_path, digits, **extra):
    path = tmp_path / "samples.npz"
    np.savez(path, x=digits.x_test, y=digits.y_test, **extra)
    return path


def test_no_calibration_data_names_the_flag(digits):
    version = register_digits(digits)
    with pytest.raises(ConfigError) as info:
        optimize(version.ref)
    assert "--calibration-data" in info.value.message and "attach_samples" in info.value.message
    assert version.ref in info.value.message


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        parse_methods("onnx,int4-magic")
    assert "'int4-magic'" in info.value.message and "int8-dynamic" in info.value.message
    assert parse_methods(" int8-static , onnx ") == ("onnx", "int8-static")
    with pytest.raises(ConfigError, match="target must be one of"):
        optimize("digits@1", target="speed")  # checked before anything is loaded


def test_calibration_file_is_checked(tmp_path, digits):
    version = register_digits(digits)
    bad = tmp_path / "bad.npz"
    np.savez(bad, inputs=digits.x_test)
    with pytest.raises(ConfigError, match="has no array 'x' or 'y'"):
        optimize(version.ref, calibration_data=bad)
    wrong_shape = tmp_path / "wrong.npz"
    np.savez(wrong_shape, x=digits.x_test[:, 0], y=digits.y_test)  # no channel axis
    with pytest.raises(InvalidInputError, match=r"expects shape \(N, 1, 8, 8\)"):
        optimize(version.ref, calibration_data=wrong_shape)
    with pytest.raises(ConfigError, match="no such file"):
        optimize(version.ref, calibration_data=tmp_path / "missing.npz")
    only_x = tmp_path / "x.npy"  # was a TypeError traceback from np.load's context manager
    np.save(only_x, digits.x_test)
    with pytest.raises(ConfigError, match="holds one array; optimization needs inputs and their labels"):
        optimize(version.ref, calibration_data=only_x)
    with pytest.raises(InvalidInputError, match=r"x does not fit the model's input 'image'"):
        optimize(version.ref, calibration_data=(digits.x_test[:, 0], digits.y_test))  # pairs are read, and checked


def test_unexportable_module_names_the_module_and_reason(digits, tmp_path):
    with pytest.raises(UnexportableModelError) as info:
        export_onnx(OddNet().eval(), {"input": digits.x_test[:2]}, tmp_path / "m.onnx", output_names=["output"])
    message = info.value.message
    assert "kaontest.wobble" in message and "module 'odd' (Wobble)" in message
    assert "TorchScript exporter" in message  # the fallback was tried too


def test_unexportable_model_still_gets_the_other_methods(digits, tmp_path):
    model = fit(OddNet(), digits.x_train, digits.y_train)
    report = optimize(model, calibration_data=samples_file(tmp_path, digits, x_train=digits.x_train,
                                                           y_train=digits.y_train),
                      methods="onnx,int8-dynamic,prune-structured", num_rounds=1)
    by_name = {v.name: v for v in report.variants}
    assert by_name["onnx-fp32"].status == "failed"
    assert "module 'odd' (Wobble)" in by_name["onnx-fp32"].notes[0]
    assert by_name["int8-dynamic"].status == "skipped"
    pruned = next(v for v in report.variants if v.name.startswith("pruned-") and "+" not in v.name)
    assert pruned.status == "ok" and pruned.framework == "torch" and "model.pt2" in pruned.files
    assert pruned.accuracy > 0.5 and pruned.throughput_b64 > 0
    assert report.registered is None  # an in-memory model has no registry entry to add a version to


def test_budget_no_variant_meets_registers_nothing(digits, tmp_path):
    """Per-tensor int8 of a layer with one huge weight rounds every other weight to 0: accuracy collapses.

    The layer is fast in int8, but the per-operator profile scores accuracy too, keeps it fp32, and
    then no variant is left that is smaller (target size) within the budget.
    """
    from kaon.registry import Registry
    from kaon.sdk import register

    torch.manual_seed(0)
    model = fit(nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.Softmax(dim=1)), digits.x_train, digits.y_train,
                steps=60)
    with torch.no_grad():
        model[1].weight[:, 0] = 1000.0  # every output's outlier; pixel (0, 0) is 0 in every digit: fp32 is unchanged
    registry = Registry()
    original = register(model, "fragile", input_example=digits.x_test[:2], registry=registry)
    report = optimize(original.ref, registry=registry, calibration_data=samples_file(tmp_path, digits),
                      methods="int8-dynamic", target="size", max_accuracy_drop=1.0, num_rounds=1)
    int8 = next(v for v in report.variants if v.name == "int8-dynamic")
    assert int8.status == "skipped", int8.notes
    assert "accuracy pts, over the budget" in " ".join(int8.notes)
    assert report.chosen is None and report.registered is None
    assert "original stays the serving version" in report.reasons[-1]
    assert "no variant met the budget" in report.before_after()
    from kaon.cli import optimize_cmd

    with optimize_cmd.console.capture() as printed:
        optimize_cmd.print_report(report)
    text = printed.get()  # one line says that nothing beat the original (it was said twice, in other words)
    assert text.count("original stays the serving version") == 1, text
    assert "int8-dynamic skipped" in text
    assert [v.version for v in registry.list_versions("fragile")] == [1]
    assert registry.get_version("fragile@latest").version == 1
    assert registry.get_run(report.run_id).status == "completed"
    assert "report.md" in registry.run_artifacts(report.run_id)  # the report is kept with the run
