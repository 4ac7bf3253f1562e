"""`optimize` starts from what the user has: an ONNX file or a Keras 3 model, not only a torch program."""

from __future__ import annotations

import os

import numpy as np
import torch

from kaon.optimization import export_onnx, optimize


def test_onnx_file_gets_int8_and_a_reason_for_pruning(digits, tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                 torch.nn.Linear(64, 10)).eval()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(module(torch.from_numpy(digits.x_train)),
                                                 torch.from_numpy(digits.y_train))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path / "mlp.onnx"
    export_onnx(module.eval(), {"image": digits.x_test[:2]}, path, output_names=["logits"])
    data = tmp_path / "samples.npz"
    np.savez(data, x=digits.x_test, y=digits.y_test, x_train=digits.x_train, y_train=digits.y_train)
    report = optimize(path, calibration_data=data, methods="int8-dynamic,prune-structured", target="size",
                      max_accuracy_drop=1.0, num_rounds=1, output_dir=tmp_path / "out")
    by_name = {v.name: v for v in report.variants}
    assert "onnx-fp32" not in by_name  # the original is that model already
    assert report.original.framework == "onnx" and report.original.size_bytes == path.stat().st_size
    assert by_name["int8-dynamic"].status == "ok" and by_name["int8-dynamic"].size_bytes < 0.4 * path.stat().st_size
    assert by_name["pruned"].status == "skipped" and "needs a torch model" in by_name["pruned"].notes[0]
    assert report.chosen == "int8-dynamic" and report.registered is None
    assert (tmp_path / "out" / "report.md").exists()


def test_keras_model_is_exported_by_keras_and_checked(digits, tmp_path):
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / "digits.keras")
    data = tmp_path / "samples.npz"
    x_test, x_train = digits.x_test.transpose(0, 2, 3, 1), digits.x_train.transpose(0, 2, 3, 1)  # channels last
    np.savez(data, x=x_test, y=digits.y_test, x_train=x_train[:300], y_train=digits.y_train[:300])
    report = optimize(tmp_path / "digits.keras", calibration_data=data, methods="onnx", num_rounds=1,
                      output_dir=tmp_path / "out")
    onnx_variant = report.variants[0]
    assert onnx_variant.status == "ok" and "keras exporter" in onnx_variant.notes[0]
    assert "top-1 agreement 100.00%" in report.parity
    assert onnx_variant.accuracy == report.original.accuracy
