"""A run that registers nothing (Ctrl-C, or an error) leaves no work folder; Ctrl-C is recorded 'interrupted'.
The folders it created for --output-dir go too, parents included; a folder that was there before it is kept."""

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
from kaon.optimization.optimize import OptimizationInterrupted
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


@pytest.fixture()
def ctrl_c_after_the_variants_are_written(monkeypatch):
    """Ctrl-C once the variants are built (their folders written under the output folder), before timing them."""

    def ctrl_c(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importlib.import_module("kaon.optimization.optimize"), "time_runners", ctrl_c)


def test_interrupted_run_removes_the_parents_it_created_and_keeps_the_ones_that_were_there(
        wine, tmp_path, ctrl_c_after_the_variants_are_written):
    version, (x, y) = wine
    existing = tmp_path / "work"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    output_dir = existing / "a" / "b" / "c"

    with pytest.raises(OptimizationInterrupted):
        optimize(version.ref, calibration_data=(x, y), methods="onnx", output_dir=output_dir)

    assert not (existing / "a").exists()
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_failed_run_keeps_a_parent_that_gained_files_of_someone_elses(wine, tmp_path, monkeypatch):
    version, (x, y) = wine
    output_dir = tmp_path / "a" / "b" / "c"
    real_time_runners = importlib.import_module("kaon.optimization.optimize").time_runners

    def others_write_then_fail(*args, **kwargs):
        (tmp_path / "a" / "other.txt").write_text("written by another program while optimize ran")
        real_time_runners(*args, **kwargs)
        raise InvalidInputError("failed after the variants were written")

    monkeypatch.setattr(importlib.import_module("kaon.optimization.optimize"), "time_runners", others_write_then_fail)
    with pytest.raises(InvalidInputError, match="failed after the variants were written"):
        optimize(version.ref, calibration_data=(x, y), methods="onnx", output_dir=output_dir)

    assert not (tmp_path / "a" / "b").exists()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["other.txt"]


def test_cli_interrupted_with_a_relative_output_dir_leaves_no_empty_folders(
        wine, tmp_path, monkeypatch, ctrl_c_after_the_variants_are_written):
    version, (x, y) = wine
    data = tmp_path / "wine.npz"
    np.savez(data, x=x, y=y)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())

    result = CliRunner().invoke(app, ["optimize", version.ref, "--calibration-data", str(data), "--methods", "onnx",
                                      "--output-dir", "a/b/c"])

    assert result.exit_code == 130, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_input_with_a_new_output_dir_leaves_no_folder(wine, tmp_path):
    version, (x, y) = wine
    with pytest.raises(InvalidInputError, match="labels up to"):
        optimize(version.ref, calibration_data=(x, y + 5), methods="onnx", output_dir=tmp_path / "a" / "b" / "c")
    assert not (tmp_path / "a").exists()
