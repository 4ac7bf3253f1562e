"""kaon.audit / `kaon audit`: the report's figures, where it is stored, data defaults and errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import kaon
import kaon.cli.audit_cmd  # noqa: F401 - registers `kaon audit` (until the lead lists it in _register_commands)
import kaon.robustness as kr
from kaon.cli.app import _register_commands, app
from kaon.errors import InvalidInputError
from kaon.registry import Registry
from kaon.robustness._digits import digits_test_split
from kaon.types import Signature, TensorSpec

_register_commands()
SIGNATURE = Signature([TensorSpec("image", "float32", (-1, 1, 8, 8))],
                      [TensorSpec("probabilities", "float32", (-1, 10))])


def _register(cnn, digits):
    served = torch.nn.Sequential(cnn, torch.nn.Softmax(dim=1)).eval()
    return kaon.register(served, "digits", input_example=digits[2][:2], signature=SIGNATURE)


def test_the_default_data_is_the_training_packages_digits_test_split(digits):
    x, y = digits_test_split()
    np.testing.assert_array_equal(x, digits[2])
    np.testing.assert_array_equal(y, digits[3])


def test_audit_of_a_registered_digits_model_is_stored_as_an_audit_run(cnn, digits):
    version = _register(cnn, digits)
    report = kr.audit("digits@latest", epsilons=(0.05, 0.1), pgd_steps=5)
    assert report.model == version.ref and report.num_samples == 360
    assert "bundled digits test split" in report.notes[0]
    assert 0.9 < report.clean_accuracy <= 1.0
    assert set(report.adversarial) == {"fgsm", "pgd"} and set(report.adversarial["pgd"]) == {"0.05", "0.1"}
    assert report.adversarial["pgd"]["0.1"] < report.adversarial["pgd"]["0.05"] < report.clean_accuracy
    assert set(report.corruptions) == {"gaussian_noise", "blur", "contrast"}
    assert np.asarray(report.confusion_matrix).sum() == 360
    assert len(report.per_class_accuracy) == 10 and 0 <= report.ece < 0.2
    line = report.summary()
    assert line.startswith(f"{version.ref}: clean ") and "PGD@0.1" in line and "ECE" in line and "\n" not in line

    registry = Registry()
    run = registry.get_run(report.run_id)
    assert run.kind == "audit" and run.status == "completed" and run.params["model"] == version.ref
    assert run.summary["pgd_0.1"] == report.adversarial["pgd"]["0.1"]
    artifacts = registry.run_artifacts(run.id)
    assert set(artifacts) == {"report.md", "report.json", "confusion_matrix.png", "reliability.png", "robustness.png"}
    stored = json.loads(registry.artifact_path(artifacts["report.json"]).read_text())
    assert stored["clean_accuracy"] == report.clean_accuracy and stored["run_id"] == run.id
    assert "## Adversarial accuracy" in registry.artifact_path(artifacts["report.md"]).read_text()
    assert [r.id for r in kr.audits_of(version.ref)] == [run.id]


def test_an_onnx_model_is_audited_without_attacks_and_says_why(cnn, digits, tmp_path):
    served = torch.nn.Sequential(cnn, torch.nn.Softmax(dim=1)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(served, (torch.from_numpy(digits[2][:2]),), str(tmp_path / "digits.onnx"),
                          input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}}, dynamo=False)
    report = kr.audit(str(tmp_path / "digits.onnx"), out=tmp_path / "report")
    assert report.adversarial == {} and any("need gradients" in n and "onnx" in n for n in report.notes)
    assert report.run_id is None and report.corruptions["gaussian_noise"]
    assert (tmp_path / "report" / "robustness.png").stat().st_size > 1000


def test_other_models_need_data_and_labels_must_fit(cnn, digits, tmp_path):
    wide = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(20, 3)).eval()
    from kaon.models.torch import TorchModel

    small = TorchModel.from_module(wide, np.zeros((2, 20), dtype=np.float32), name="tabular")
    with pytest.raises(InvalidInputError, match="--data FILE.npz"):
        kr.audit(small)
    x = np.random.default_rng(0).random((30, 20), dtype=np.float32)
    np.savez(tmp_path / "data.npz", inputs=x, labels=np.arange(30) % 3)
    report = kr.audit(small, data=tmp_path / "data.npz")
    assert report.num_samples == 30 and "blur needs image inputs" in " ".join(report.notes)
    with pytest.raises(InvalidInputError, match=r"class indices in \[0, 2\]"):
        kr.audit(small, data=(x, np.arange(30)))
    np.savez(tmp_path / "bad.npz", features=x)
    with pytest.raises(InvalidInputError, match="x/y"):
        kr.audit(small, data=tmp_path / "bad.npz")


def test_kaon_audit_of_a_version_uses_the_samples_attached_to_it(tmp_path):
    """After attach_samples, kaon optimize used them but kaon audit still asked for --data."""
    from kaon.optimization import attach_samples

    torch.manual_seed(0)
    tabular = torch.nn.Sequential(torch.nn.Linear(20, 3)).eval()
    x = np.random.default_rng(0).random((40, 20), dtype=np.float32)
    version = kaon.register(tabular, "tab", input_example=x[:2])
    refused = CliRunner().invoke(app, ["audit", version.ref, "--epsilons", "0.1", "--pgd-steps", "2"])
    assert refused.exit_code == 1 and "--data FILE.npz" in refused.output
    attach_samples(version.ref, x, np.arange(40) % 3)
    result = CliRunner().invoke(app, ["audit", version.ref, "--epsilons", "0.1", "--pgd-steps", "2",
                                      "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert f"auditing on the 40 samples stored with {version.ref}" in result.output
    assert "on 40 samples" in result.output
    fewer = CliRunner().invoke(app, ["audit", version.ref, "--epsilons", "0.1", "--pgd-steps", "2",
                                     "--max-samples", "30", "--out", str(tmp_path / "audit30")])
    assert fewer.exit_code == 0 and "auditing on the first 30 of the 40 samples" in fewer.output


def test_a_torch_module_in_memory_is_audited_like_its_model(cnn, digits):
    """kaon.explain and kaon.optimize take a module; audit refused it ("model must be a kaon Model")."""
    _, _, x, y = digits
    served = torch.nn.Sequential(cnn, torch.nn.Softmax(dim=1)).eval()
    from kaon.models.torch import TorchModel

    direct = kr.audit(served, data=(x[:60], y[:60]), epsilons=(0.1,), pgd_steps=2)
    wrapped = kr.audit(TorchModel.from_module(served, x[:2]), data=(x[:60], y[:60]), epsilons=(0.1,), pgd_steps=2)
    assert direct.clean_accuracy == wrapped.clean_accuracy and direct.adversarial == wrapped.adversarial
    with pytest.raises(InvalidInputError, match=r"torch module with data=\(x, y\).*without data"):
        kr.audit(served)


def test_kaon_audit_cli_prints_the_tables_and_where_the_report_is(cnn, digits, tmp_path):
    _register(cnn, digits)
    result = CliRunner().invoke(app, ["audit", "digits@latest", "--epsilons", "0.1", "--pgd-steps", "3",
                                      "--max-samples", "100", "--out", str(tmp_path / "audit")])
    assert result.exit_code == 0, result.output
    assert "bundled digits test split" in result.output and "PGD" in result.output
    assert "kaon runs show" in result.output and (tmp_path / "audit" / "report.md").exists()
    refused = CliRunner().invoke(app, ["audit", "digits@latest", "--epsilons", "big"])
    assert refused.exit_code == 1 and "--epsilons" in refused.output


def test_a_keras_model_on_torch_is_attacked_too(tmp_path):
    """kaon audit skipped FGSM/PGD for Keras models ('need gradients'); on the torch backend they have them."""
    import keras

    from kaon.models import load_file

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((200, 6), dtype=np.float32)
    y = (x[:, 0] + x[:, 1] > 1).astype(np.int64)
    net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(2, activation="softmax")])
    net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    net.fit(x, y, epochs=30, verbose=0)
    net.save(tmp_path / "m.keras")
    report = kr.audit(load_file(tmp_path / "m.keras"), data=(x, y), epsilons=(0.2,), pgd_steps=3, store=False)
    assert report.clean_accuracy > 0.8
    assert report.adversarial["pgd"]["0.2"] < report.clean_accuracy  # attacked through Keras' torch graph
    assert not any("need gradients" in note for note in report.notes)
