"""A run that registers nothing (Ctrl-C, or an error) leaves no work folder; Ctrl-C is recorded 'interrupted'."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from typer.testing import CliRunner

import kaon
import kaon.cli.optimize_cmd  # noqa: F401 - registers `kaon optimize` on the app
from kaon.cli.app import _register_commands, app
from kaon.errors import InvalidInputError
from kaon.optimization import optimize
from kaon.registry import Registry

from .test_drift_reference import tabular, wine_net

if not app.registered_groups:
    _register_commands()


@pytest.fixture()
def wine():
    x, y = tabular(60, seed=1)
    return kaon.register(wine_net(x, y), "wine", input_example=x[:2]), (x, y)


def test_ctrl_c_is_interrupted_says_so_and_leaves_no_folder(wine, kaon_home, tmp_path, monkeypatch):
    version, (x, y) = wine
    data = tmp_path / "wine.npz"
    np.savez(data, x=x, y=y)

    def ctrl_c(*_args, **_kwargs):  # once the variants are built (their folders written), before timing them
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("kaon.optimization.optimize"), "time_runners", ctrl_c)
    result = CliRunner().invoke(app, ["optimize", version.ref, "--calibration-data", str(data), "--methods", "onnx"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "interrupted; nothing was registered"
    with Registry() as registry:
        run = registry.list_runs()[0]
        assert run.kind == "optimize" and run.status == "interrupted", (run.status, run.summary)
        assert [v.version for v in registry.list_versions("wine")] == [1]
    assert list((kaon_home / "optimize").iterdir()) == []


def test_failed_validation_is_failed_and_leaves_no_folder_but_a_folder_of_the_users_own(wine, kaon_home, tmp_path):
    version, (x, y) = wine
    with pytest.raises(InvalidInputError, match="labels up to 7"):
        optimize(version.ref, calibration_data=(x, y + 5), methods="onnx")  # labels out of range
    with Registry() as registry:
        run = registry.list_runs()[0]
        assert run.status == "failed" and "InvalidInputError" in run.summary["error"]
    assert list((kaon_home / "optimize").iterdir()) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(InvalidInputError):
        optimize(version.ref, calibration_data=(x, y + 5), methods="onnx", output_dir=mine)
    assert mine.is_dir()
