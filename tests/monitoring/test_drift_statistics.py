"""The drift statistics against references (scipy), and their behaviour with and without a shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kaon.monitoring import drift
from kaon.monitoring.alarm import AlarmState, update_alarm


def test_ks_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 3))
    win = np.column_stack([rng.normal(size=200), rng.normal(0.6, size=200), rng.uniform(-1, 1, size=200)])
    d, p = drift.ks_test(np.sort(ref, axis=0), win)
    for j in range(3):
        expected = stats.ks_2samp(ref[:, j], win[:, j], method="asymp")
        assert d[j] == pytest.approx(expected.statistic)
        assert p[j] == pytest.approx(expected.pvalue, rel=0.25, abs=1e-4)
    assert p[0] > 0.01 and p[1] < 1e-4


def test_psi_is_small_without_a_shift_and_large_with_one() -> None:
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2000, 2))
    edges, expected = drift.psi_bins(ref)
    assert edges.shape == (2, 9) and expected.shape == (2, 10)
    assert np.allclose(expected.sum(axis=1), 1.0)
    same = drift.psi(edges, expected, rng.normal(size=(500, 2)))
    shifted = drift.psi(edges, expected, rng.normal(1.0, size=(500, 2)))
    assert same.max() < 0.1 and shifted.min() > 0.25


def test_mmd_null_quantile_bounds_clean_windows_and_a_shift_exceeds_it() -> None:
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(800, 8))
    bandwidth = drift.median_bandwidth(pool)
    null = drift.mmd_null(pool, 300, 100, bandwidth, num_rounds=200, seed=0)
    threshold = drift.null_quantile(null, 0.99)
    assert threshold >= np.quantile(null, 0.99)
    mmd = drift.MMD(pool[:300], bandwidth)
    clean = [mmd(rng.normal(size=(100, 8))) for _ in range(100)]
    assert np.mean(np.array(clean) > threshold) <= 0.05
    assert mmd(rng.normal(0.5, size=(100, 8))) > 3 * threshold


def test_sliding_mmd_matches_mmd_of_the_same_window() -> None:
    rng = np.random.default_rng(3)
    pool = rng.normal(size=(400, 6))
    mmd = drift.MMD(pool[:300], drift.median_bandwidth(pool))
    sliding = drift.SlidingMMD(mmd, window=50)
    stream = np.concatenate([rng.normal(size=(120, 6)), rng.normal(0.7, size=(130, 6))])
    with pytest.raises(ValueError, match="holds 30 of 50"):
        sliding.push(stream[:30])
        sliding.value()
    pushed = 30
    for size in (25, 13, 1, 20, 60, 49):  # smaller and larger than the window, crossing the ring's end
        sliding.push(stream[pushed:pushed + size])
        pushed += size
        assert sliding.value() == pytest.approx(mmd(stream[pushed - 50:pushed]), abs=1e-6)
    assert sliding.value() > 3 * abs(mmd(stream[:50]))  # the shifted half is in the window now


def test_class_and_rate_tests() -> None:
    reference = np.array([100, 100, 100, 100])
    assert drift.class_test(reference, np.array([25, 24, 26, 25]))[1] > 0.5
    assert drift.class_test(reference, np.array([90, 5, 3, 2]))[1] < 1e-10
    assert drift.class_test(np.array([10, 0]), np.array([5, 0]))[1] == 1.0  # one class seen: nothing to test
    assert drift.rate_test(2, 200, 0.01) > 0.3
    assert drift.rate_test(20, 200, 0.01) < 1e-6
    from scipy.stats import binom

    for count, total, rate in [(1, 10, 0.5), (5, 200, 0.01), (30, 200, 0.06), (200, 200, 0.3)]:
        assert drift.rate_test(count, total, rate) == pytest.approx(binom.sf(count - 1, total, rate), rel=1e-9)
    assert drift.neglog10(0.001) == pytest.approx(3.0) and drift.neglog10(0.0) == 300.0


def test_alarm_hysteresis() -> None:
    kwargs = {"threshold": 10.0, "clear_threshold": 5.0, "on_after": 2, "off_after": 3}
    state, events = AlarmState(), []
    for value in [11, 4, 11, 11, 7, 3, 3, 8, 3, 3, 3, 12]:
        state, event = update_alarm(state, value, **kwargs)
        events.append(event)
    # one breach alone does not fire; between the thresholds keeps firing; three clear ones resolve it
    assert events == [None, None, None, "fired", None, None, None, None, None, None, "resolved", None]
    assert not state.firing and state.over == 1
