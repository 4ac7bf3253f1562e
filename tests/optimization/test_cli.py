"""`kaon optimize` end to end on a digits model trained in the test, driven through the Typer app."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import kaon
import kaon.cli.optimize_cmd  # noqa: F401 - registers `kaon optimize` on the app (the lead adds it to main)
from kaon.cli.app import _register_commands, app

from .conftest import register_digits

if not app.registered_groups:  # the other commands, as `kaon` has them (one command alone runs without its name)
    _register_commands()


@pytest.fixture()
def runner(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_cli_optimizes_registers_and_prints_before_after(runner, digits, tmp_path):
    version = register_digits(digits)
    data = tmp_path / "digits.npz"
    np.savez(data, x=digits.x_test, y=digits.y_test, x_train=digits.x_train, y_train=digits.y_train)
    result = runner.invoke(app, ["optimize", version.ref, "--methods", "onnx,int8-dynamic", "--calibration-data",
                                 str(data), "--max-accuracy-drop", "1", "--num-threads", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "variant" in out and "onnx-fp32" in out and "int8-dynamic" in out and "original" in out
    assert f"{version.ref} -> digits@2" in out and "samples/s" in out
    assert "registered digits@2 (parent digits@1)" in out and "kaon serve digits@2" in out
    loaded = kaon.load("digits@latest")
    assert loaded.framework == "onnx" and loaded.version.parent == version.ref
    assert float(np.mean(loaded.predict(digits.x_test).argmax(1) == digits.y_test)) > 0.8


def test_cli_without_calibration_data_names_the_flag(runner, digits):
    register_digits(digits)
    result = runner.invoke(app, ["optimize", "digits@1"])
    assert result.exit_code == 1
    assert "--calibration-data" in result.output and "Traceback" not in result.output


def test_cli_unknown_method_exits_1(runner, digits):
    register_digits(digits)
    result = runner.invoke(app, ["optimize", "digits@1", "--methods", "onnx,quantum"])
    assert result.exit_code == 1 and "'quantum'" in result.output and "prune-structured" in result.output
