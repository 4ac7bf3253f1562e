"""Outlier scores of a model registered with tabular reference_data: Mahalanobis on the inputs, as calibrated.

An ONNX model has no reachable penultimate layer, so a tabular reference holds the inputs themselves
(source 'inputs') and its outlier model is a Mahalanobis distance on them. The monitor scored the model's
logits (`1 - max`) against those Mahalanobis quantiles instead: clean wine rows scored about -1.9, rows with
every feature at 50 about -51, and kaon_outliers_total stayed 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import kaon
from kaon.errors import ConfigError
from kaon.monitoring import REFERENCE_FILENAME, Features, Monitor, MonitorMetrics, Reference, feature_extractor


def wine() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_wine

    x, y = load_wine(return_X_y=True)
    return ((x - x.mean(0)) / x.std(0)).astype(np.float32), y.astype(np.int64)


def wine_onnx(x: np.ndarray, y: np.ndarray, path: Path, probabilities: bool) -> Path:
    from kaon.optimization import export_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(13, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    served = torch.nn.Sequential(net.eval(), torch.nn.Softmax(dim=1)) if probabilities else net.eval()
    export_onnx(served, {"x": x[:2]}, path, output_names=["probabilities" if probabilities else "logits"])
    return path


@pytest.mark.parametrize("probabilities", [False, True], ids=["logits", "probabilities"])
def test_far_tabular_rows_are_outliers_of_an_onnx_model_registered_with_reference_data(tmp_path, probabilities):
    from kaon.registry import Registry

    x, y = wine()
    path = wine_onnx(x, y, tmp_path / "wine.onnx", probabilities)
    kaon.register(str(path), "wine", input_example=x[:2], reference_data=x, aliases=["production"])
    model = kaon.load("wine@production")
    with Registry() as registry:
        reference = Reference.load(registry.materialize(registry.get_version("wine@production")) / REFERENCE_FILENAME)
    assert reference.source == "inputs" and reference.outlier.method == "mahalanobis"

    metrics = MonitorMetrics()
    monitor = Monitor(reference, feature_extractor(model), metrics=metrics, sinks=[], calibration_rounds=20)
    clean = monitor.observe(x)
    assert np.median(clean) < 0.5 and np.mean(clean > 1.0) <= 0.02  # about 1 in 100 clean rows above p99
    counted = metrics.registry.get_sample_value("kaon_outliers_total")
    assert counted == np.sum(clean > 1.0)

    far = np.concatenate([np.full((4, 13), 50.0), np.full((4, 13), -50.0), x[:4] + 8.0 * np.eye(4, 13)])
    scores = monitor.observe(far.astype(np.float32))
    assert np.all(scores > 1.0), scores
    assert np.all(scores[:8] > 10.0), scores  # every feature 50 standard deviations out: nowhere near p99
    assert metrics.registry.get_sample_value("kaon_outliers_total") == counted + len(far)
    np.testing.assert_allclose(monitor.score(far.astype(np.float32)), scores)  # X-Kaon-Outlier scores them alike
    # the score is the reference's own Mahalanobis distance, normalised by its own quantiles
    raw = reference.outlier.raw(far.astype(np.float64), None, np.zeros((len(far), 3)))
    np.testing.assert_allclose(scores, reference.outlier.normalise(raw), rtol=1e-6)


def test_an_input_space_reference_will_not_score_without_the_inputs() -> None:
    """Without the inputs there is nothing to score on the reference's scale: an error, not a silent 0."""
    from kaon.monitoring import fit_reference
    from kaon.monitoring.features import FeatureExtractor

    x, _ = wine()

    def outputs_only(batch: np.ndarray) -> Features:
        logits = batch[:, :3].astype(np.float32)
        return Features(logits, logits, None)

    reference = fit_reference(None, x, extractor=FeatureExtractor(outputs_only, "outputs", "x"))  # type: ignore[arg-type]
    assert reference.source == "inputs"
    monitor = Monitor(reference, calibration_rounds=20, sinks=[])
    with pytest.raises(ConfigError, match="Mahalanobis distance on the inputs"):
        monitor.observe_features(outputs_only(x[:4]))
    assert monitor.observe_features(outputs_only(x[:4]), x[:4]).shape == (4,)
