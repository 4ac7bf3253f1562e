"""Expected calibration error, the reliability diagram, and the corruptions, on numbers worked by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kaon.robustness import corruptions, expected_calibration_error, reliability_bins
from kaon.robustness.calibration import plot_reliability


def test_ece_is_zero_when_confidence_matches_accuracy_and_counts_the_gap_otherwise():
    # 10 predictions at confidence 0.8, 8 of them right: perfectly calibrated
    probs = np.tile([[0.8, 0.2]], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)
    # all right at confidence 0.6: under-confident by 0.4
    assert expected_calibration_error(np.tile([[0.6, 0.4]], (5, 1)), np.zeros(5, dtype=int)) == pytest.approx(0.4)
    bins = reliability_bins(probs, labels, num_bins=10)
    assert sum(bins.counts) == 10 and bins.counts[7] == 10 and bins.accuracy[7] == pytest.approx(0.8)


def test_reliability_diagram_is_a_png(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10) * 0.3, size=200)
    path = plot_reliability(reliability_bins(probs, rng.integers(0, 10, 200)), tmp_path / "r.png")
    assert Image.open(path).format == "PNG"


def test_corruptions_keep_shape_and_range_and_grow_with_severity():
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    assert corruptions.gaussian_noise(x, 0.1, seed=1).shape == x.shape
    noisy = corruptions.gaussian_noise(x, 0.1, seed=1)
    np.testing.assert_array_equal(noisy, corruptions.gaussian_noise(x, 0.1, seed=1))
    for fn, weak, strong in ((corruptions.gaussian_noise, 0.05, 0.3), (corruptions.blur, 0.5, 1.5),
                             (corruptions.contrast, 0.5, 0.1)):
        a, b = fn(x, weak), fn(x, strong)
        assert a.min() >= 0.0 and b.max() <= 1.0 and a.dtype == np.float32
        assert np.abs(b - x).mean() > np.abs(a - x).mean()
    blurred = corruptions.blur(x, 1.0)
    np.testing.assert_allclose(blurred.mean(axis=(2, 3)), x.mean(axis=(2, 3)), atol=0.05)  # blur moves no mass
    assert corruptions.contrast(x, 1.0) == pytest.approx(x)
    with pytest.raises(ValueError, match="image batch"):
        corruptions.blur(np.zeros((4, 10), dtype=np.float32), 1.0)
