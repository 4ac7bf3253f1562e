"""`kaon explain MODEL_REF --input FILE`: files written, top features printed, one-screen errors."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

import kaon.cli.explain_cmd  # noqa: F401 - registers `kaon explain` (until the lead lists it in _register_commands)
from kaon.cli.app import _register_commands, app

_register_commands()  # the other commands, so that `explain` is a subcommand as it is for users
runner = CliRunner()


def test_explain_a_program_on_a_npy_batch_writes_arrays_heatmaps_and_trust(model_files, probe, tmp_path):
    x, y = probe
    np.save(tmp_path / "batch.npy", x[:2])
    out = tmp_path / "out"
    result = runner.invoke(app, ["explain", str(model_files["pt2"]), "--input", str(tmp_path / "batch.npy"),
                                 "--method", "integrated_gradients", "--out", str(out), "--top", "3"])
    assert result.exit_code == 0, result.output
    assert np.load(out / "attributions.npy").shape == (2, 1, 8, 8)
    assert Image.open(out / "heatmap_1.png").size == (256, 256)
    report = json.loads((out / "explanation.json").read_text())
    assert report["targets"] == y[:2].tolist() and len(report["top_features"][0]) == 3
    assert report["trust"]["faithfulness"]["faithfulness"] > 0 and report["trust"]["randomization"]["passed"]
    assert "Top features" in result.output and "randomization check passed" in result.output
    (out / "notes.txt").write_text("mine")
    (out / "heatmap_best.png").write_bytes(b"mine too")  # named like kaon's, but not one of its numbered ones
    np.save(tmp_path / "one.npy", x[:1])  # again into the same folder, with one input: no heatmap_1.png left over
    again = runner.invoke(app, ["explain", str(model_files["pt2"]), "--input", str(tmp_path / "one.npy"),
                                "--method", "saliency", "--out", str(out), "--no-trust"])
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == ["attributions.npy", "explanation.json", "heatmap_0.png",
                                                     "heatmap_best.png", "notes.txt"]
    assert "replaced the earlier explanation" in again.output and "4 files" in again.output


def test_one_sample_and_one_plain_image_are_explained_as_a_batch_of_one(model_files, probe, tmp_path):
    """An (8, 8) digit, as a server takes it, was 'expected shape (N, 1, 8, 8). Received: shape=(8, 8)'."""
    x, _ = probe
    for name, sample in (("image.npy", x[0, 0]), ("sample.npy", x[0])):
        np.save(tmp_path / name, sample)
        out = tmp_path / name.replace(".npy", "")
        result = runner.invoke(app, ["explain", str(model_files["pt2"]), "--input", str(tmp_path / name),
                                     "--method", "saliency", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert np.load(out / "attributions.npy").shape == (1, 1, 8, 8)
        assert "explained as a batch of 1" in result.output


def test_explain_a_png_on_onnx_with_a_forward_method(model_files, probe, tmp_path):
    x, _ = probe
    Image.fromarray((x[0, 0] * 255).round().astype(np.uint8)).resize((32, 32)).save(tmp_path / "digit.png")
    result = runner.invoke(app, ["explain", str(model_files["onnx"]), "-i", str(tmp_path / "digit.png"),
                                 "-m", "occlusion", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "resized digit.png from 32x32" in result.output and "randomization check skipped" in result.output
    assert (tmp_path / "out" / "heatmap_0.png").exists()


def test_gradients_on_onnx_is_one_red_line_naming_the_methods_that_work(model_files, probe, tmp_path):
    np.save(tmp_path / "x.npy", probe[0][:1])
    result = runner.invoke(app, ["explain", str(model_files["onnx"]), "--input", str(tmp_path / "x.npy"),
                                 "--method", "saliency"])
    assert result.exit_code == 1
    assert "occlusion, kernel_shap, lime" in result.output and "Traceback" not in result.output


def test_a_model_that_answers_logits_is_not_printed_as_probabilities(tmp_path):
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()  # logits, no softmax
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32) * 5
    program = torch.export.export(module, (torch.from_numpy(x),),
                                  dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(program, str(tmp_path / "logits.pt2"))
    np.save(tmp_path / "x.npy", x)
    result = runner.invoke(app, ["explain", str(tmp_path / "logits.pt2"), "--input", str(tmp_path / "x.npy"),
                                 "--no-trust", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "(output " in result.output and "(p=" not in result.output


def test_a_binary_models_one_output_is_not_named_as_class_0(tmp_path):
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Sigmoid()).eval()  # one score: p of class 1
    x = np.random.default_rng(0).random((2, 4), dtype=np.float32)
    program = torch.export.export(module, (torch.from_numpy(x),),
                                  dynamic_shapes=({0: torch.export.Dim("b", min=1)},))
    torch.export.save(program, str(tmp_path / "binary.pt2"))
    np.save(tmp_path / "x.npy", x)
    result = runner.invoke(app, ["explain", str(tmp_path / "binary.pt2"), "--input", str(tmp_path / "x.npy"),
                                 "--no-trust", "--out", str(tmp_path / "out")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert result.output.count("its one output (") == 2 and "0 (output" not in result.output


def test_no_method_is_integrated_gradients_on_torch_and_occlusion_on_onnx(model_files, probe, tmp_path):
    np.save(tmp_path / "x.npy", probe[0][:1])
    for kind, method in (("onnx", "occlusion"), ("pt2", "integrated_gradients")):
        result = runner.invoke(app, ["explain", str(model_files[kind]), "--input", str(tmp_path / "x.npy"),
                                     "--no-trust", "--out", str(tmp_path / kind)])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / kind / "explanation.json").read_text())["method"] == method


def test_explain_a_text_model_writes_highlighted_tokens(minilm_path, tmp_path):
    (tmp_path / "texts.txt").write_text("the movie was wonderful\n\nwhat a boring film\n")
    result = runner.invoke(app, ["explain", str(minilm_path), "--input", str(tmp_path / "texts.txt"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "out" / "tokens.html").read_text()
    assert ">wonderful</span>" in page and ">boring</span>" in page
    assert np.load(tmp_path / "out" / "attributions.npy").shape[0] == 2
    assert "wonderful" in result.output


def test_a_corrupt_npy_is_one_clear_line(model_files, tmp_path):
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not an array")
    result = runner.invoke(app, ["explain", str(model_files["pt2"]), "--input", str(broken)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"the input file '{broken}' is not a readable .npy file" in " ".join(result.output.split())
