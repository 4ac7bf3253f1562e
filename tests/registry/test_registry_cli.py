"""`kaon runs ...` and `kaon models ...`, driven through their Typer sub-apps."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from kaon.cli.registry_cmd import models_app, runs_app
from kaon.registry import Registry


@pytest.fixture
def filled(kaon_home: Path, make_file) -> Registry:
    registry = Registry()
    run = registry.create_run("digits-mlp", params={"lr": 0.01})
    for step in range(5):
        registry.log_metrics(run.id, {"loss": 1.0 / (step + 1), "accuracy": step / 5}, step=step)
    registry.add_run_artifact(run.id, "checkpoint.pt", make_file(b"ckpt"))
    registry.finish_run(run.id, summary={"accuracy": 0.8})
    for content in (b"v1", b"v2"):
        registry.register_version("digits", {"model.onnx": make_file(content)}, framework="onnx",
                                  signature={"inputs": [{"name": "image"}]}, run_id=run.id)
    registry.set_alias("digits", "production", 1)
    return registry


def invoke(app, *args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_runs_list_shows_each_run(filled: Registry) -> None:
    result = invoke(runs_app, "list")
    assert result.exit_code == 0
    assert "digits-mlp" in result.stdout and "completed" in result.stdout and "accuracy=0.8" in result.stdout


def test_runs_show_lists_metrics_and_artifacts(filled: Registry) -> None:
    result = invoke(runs_app, "show", "1")
    assert result.exit_code == 0
    for text in ("Run 1: digits-mlp", "lr=0.01", "loss", "accuracy", "checkpoint.pt"):
        assert text in result.stdout


def test_runs_show_plot_writes_a_png(filled: Registry, kaon_home: Path) -> None:
    result = invoke(runs_app, "show", "1", "--plot")
    assert result.exit_code == 0
    png = kaon_home / "plots" / "run-1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in result.stdout.replace("\n", "")


def test_runs_show_unknown_run_is_one_red_line_and_exit_1(filled: Registry) -> None:
    result = invoke(runs_app, "show", "99")
    assert result.exit_code == 1
    assert result.stderr.startswith("error (NotFoundError): no run with id 99")
    assert "Traceback" not in result.output


def test_models_list_and_show(filled: Registry) -> None:
    listing = invoke(models_app, "list")
    assert listing.exit_code == 0 and "digits" in listing.stdout

    shown = invoke(models_app, "show", "digits@production")
    assert shown.exit_code == 0
    assert "Model digits@1" in shown.stdout and "production" in shown.stdout and "model.onnx" in shown.stdout

    with_versions = invoke(models_app, "show", "digits")
    assert "Model digits@2" in with_versions.stdout and "Versions of digits" in with_versions.stdout


def test_models_alias_moves_the_alias(filled: Registry) -> None:
    result = invoke(models_app, "alias", "digits", "production", "2")
    assert result.exit_code == 0 and "digits@production -> digits@2" in result.stdout
    assert filled.get_version("digits@production").version == 2
    as_ref = invoke(models_app, "alias", "digits", "staging", "digits@1")  # the version's reference works too
    assert as_ref.exit_code == 0 and filled.get_version("digits@staging").version == 1
    for wrong, words in (("wine@1", "is not one of the versions of 'digits'"), ("production", "expected a version "
                         "number"), ("\u00b2", "expected a version number")):
        refused = invoke(models_app, "alias", "digits", "canary", wrong)
        assert refused.exit_code == 1 and words in refused.stderr, refused.stderr


def test_models_delete_follows_the_alias_rule(filled: Registry) -> None:
    refused = invoke(models_app, "delete", "digits@1")
    assert refused.exit_code == 1 and "production" in refused.stderr and "--force" in refused.stderr

    forced = invoke(models_app, "delete", "digits@1", "--force")
    assert forced.exit_code == 0 and "Deleted digits@1" in forced.stdout
    assert [v.version for v in filled.list_versions("digits")] == [2]


def test_models_delete_needs_an_explicit_version(filled: Registry) -> None:
    result = invoke(models_app, "delete", "digits@production")
    assert result.exit_code == 1 and "explicit version number" in result.stderr
    as_alias_takes_it = invoke(models_app, "delete", "digits", "2")  # NAME VERSION, as `models alias` takes them
    assert as_alias_takes_it.exit_code == 0 and "Deleted digits@2" in as_alias_takes_it.stdout
    both = invoke(models_app, "delete", "digits@1", "2")  # deleted digits@1 and ignored the 2
    assert both.exit_code == 1 and "give the version once" in both.stderr
    assert [v.version for v in filled.list_versions("digits")] == [1]


def test_bad_ref_is_an_error_line_not_a_traceback(filled: Registry) -> None:
    result = invoke(models_app, "show", "no such model")
    assert result.exit_code == 1
    assert result.stderr.startswith("error (InvalidInputError): a model reference is")
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_empty_registry_says_how_to_start(kaon_home: Path) -> None:
    assert "No runs yet" in invoke(runs_app, "list").stdout
    assert "No models yet" in invoke(models_app, "list").stdout


def test_empty_registry_points_at_what_exists_and_a_home_that_is_a_file_is_one_line(kaon_home: Path, tmp_path,
                                                                                    monkeypatch) -> None:
    assert "kaon quickstart" in invoke(runs_app, "list").stdout and "kaon train" not in invoke(runs_app, "list").stdout
    assert "kaon.register(model" in invoke(models_app, "list").stdout
    afile = tmp_path / "afile"
    afile.write_text("")
    monkeypatch.setenv("KAON_HOME", str(afile))
    result = CliRunner().invoke(models_app, ["list"])
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit)
    assert "cannot be created as a folder" in " ".join(result.output.split())


def test_runs_show_prints_a_failed_runs_whole_error(kaon_home: Path) -> None:
    registry = Registry()
    run = registry.create_run("broken", params={"lr": 0.01, "optimizer": "adam", "batch_size": 32, "epochs": 40})
    error = "TrainingError: the loss became nan at epoch 3, step 17 (lr=0.01). Lower the learning rate or check x."
    registry.finish_run(run.id, status="failed", summary={"epochs_completed": 2, "error": error})
    cells = "".join(ch for ch in invoke(runs_app, "show", str(run.id)).stdout if not ch.isspace() and ch != "│")
    assert error.replace(" ", "") in cells and "epochs=40" in cells  # wrapped in its cell, never cut


def test_runs_list_leads_with_validation_figures_not_bookkeeping(registry: Registry) -> None:
    """The summary column showed epochs_completed, stopped_early and duration_s, then was cut before any metric."""
    run = registry.create_run("fit", params={})
    registry.finish_run(run.id, summary={"epochs_completed": 12, "stopped_early": False, "duration_s": 0.743,
                                         "loss": 0.03, "accuracy": 0.99, "val_loss": 0.07, "val_accuracy": 0.98,
                                         "best_val_loss": 0.066, "best_val_accuracy": 0.983})
    from kaon.cli.registry_cmd import _headline

    assert list(_headline(registry.get_run(run.id).summary))[:2] == ["val_loss", "val_accuracy"]
    assert "epochs_completed" not in invoke(runs_app, "list").stdout
