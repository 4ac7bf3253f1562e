"""Two-sample drift statistics, each a pure function of reference statistics and a window.

| detector | data | statistic | breach |
| --- | --- | --- | --- |
| `features_ks` | tabular inputs | KS per feature, p Bonferroni-corrected over features | p < alpha |
| `features_psi` | tabular inputs | population stability index over reference deciles | max PSI > 0.25 |
| `embedding_mmd` | penultimate embeddings | unbiased MMD^2, RBF kernel, median width | > null (1 - alpha) quantile |
| `predicted_classes` | argmax of the outputs | chi-square test of class counts, window vs reference | p < alpha |
| `outlier_rate` | outlier flags | one-sided binomial test against 3x the reference rate | p < alpha |

p-value tests report `-log10(p)` as their statistic so that every statistic grows with drift.
"""

from __future__ import annotations

import math

import numpy as np

PSI_BINS = 10
_EPS = 1e-4


def ks_test(reference_sorted: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column two-sample KS: (D, p) for `reference_sorted` (M, F, each column sorted) vs `window` (N, F)."""
    from scipy.special import kolmogorov

    m, n = len(reference_sorted), len(window)
    window_sorted = np.sort(window, axis=0)
    stats = np.empty(window.shape[1])
    for j in range(window.shape[1]):
        ref, win = reference_sorted[:, j], window_sorted[:, j]
        points = np.concatenate([ref, win])
        cdf_ref = np.searchsorted(ref, points, side="right") / m
        cdf_win = np.searchsorted(win, points, side="right") / n
        stats[j] = np.max(np.abs(cdf_ref - cdf_win))
    en = math.sqrt(m * n / (m + n))
    pvalues = kolmogorov((en + 0.12 + 0.11 / en) * stats)  # Stephens' approximation of the exact law
    return stats, np.clip(pvalues, 0.0, 1.0)


def psi_bins(reference: np.ndarray, num_bins: int = PSI_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Per-column inner bin edges (F, B-1) at the reference's quantiles, and its proportions (F, B)."""
    quantiles = np.linspace(0, 1, num_bins + 1)[1:-1]
    edges = np.quantile(reference, quantiles, axis=0).T  # (F, B-1)
    proportions = np.stack([_proportions(reference[:, j], edges[j], num_bins) for j in range(reference.shape[1])])
    return edges, proportions


def psi(edges: np.ndarray, expected: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Population stability index per column: sum (a - e) ln(a / e) over the reference's bins."""
    num_bins = expected.shape[1]
    actual = np.stack([_proportions(window[:, j], edges[j], num_bins) for j in range(window.shape[1])])
    return np.sum((actual - expected) * np.log(actual / expected), axis=1)


def _proportions(values: np.ndarray, inner_edges: np.ndarray, num_bins: int) -> np.ndarray:
    counts = np.bincount(np.searchsorted(inner_edges, values, side="right"), minlength=num_bins)[:num_bins]
    props = counts / max(len(values), 1)
    return np.maximum(props, _EPS) / np.maximum(props, _EPS).sum()


def median_bandwidth(x: np.ndarray, max_points: int = 500, seed: int = 0) -> float:
    """The median pairwise distance of (a sample of) `x`: the RBF kernel width that adapts to the data."""
    rng = np.random.default_rng(seed)
    sample = x[rng.permutation(len(x))[:max_points]]
    d2 = _sq_dists(sample, sample)
    upper = d2[np.triu_indices(len(sample), k=1)]
    width = float(np.sqrt(np.median(upper))) if len(upper) else 1.0
    return width if width > 1e-12 else 1.0


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d2, 0.0)


def _kernel_mean(a: np.ndarray, b: np.ndarray, gamma: float, same: bool) -> float:
    k = _kernel(a, b, gamma)
    if same:
        n = len(a)
        return float((k.sum(dtype=np.float64) - np.trace(k)) / max(n * (n - 1), 1))
    return float(k.mean(dtype=np.float64))


class MMD:
    """Unbiased MMD^2 between a fixed reference sample and windows, with an RBF kernel."""

    def __init__(self, reference: np.ndarray, bandwidth: float) -> None:
        # float32: kernel values lie in [0, 1] and are averaged, so single precision is plenty, at half the cost
        self.reference = np.asarray(reference, dtype=np.float32)
        self.gamma = 1.0 / (2.0 * bandwidth * bandwidth)
        self.reference_term = _kernel_mean(self.reference, self.reference, self.gamma, same=True)

    def __call__(self, window: np.ndarray) -> float:
        w = np.asarray(window, dtype=np.float32)
        return float(self.reference_term + _kernel_mean(w, w, self.gamma, same=True)
                - 2.0 * _kernel_mean(self.reference, w, self.gamma, same=False))


class SlidingMMD:
    """`MMD` of the last `window` points pushed, kept up to date as points arrive.

    Each point's kernel values against the reference and against the other window points are computed
    once, when it enters (a row of a ring-indexed window x window kernel matrix and its mean against the
    reference), so an evaluation costs two sums instead of (reference + window) x window kernels. Same value
    as `MMD.__call__` on the same window, to float32 rounding.
    """

    def __init__(self, mmd: MMD, window: int) -> None:
        self.mmd = mmd
        self.window = window
        self.count = 0  # points pushed so far; the window is full from `window` on
        self._next = 0  # the ring slot the next point goes to
        self._points = np.zeros((window, mmd.reference.shape[1]), dtype=np.float32)
        self._kernel = np.zeros((window, window), dtype=np.float32)
        self._to_reference = np.zeros(window, dtype=np.float64)

    def push(self, points: np.ndarray) -> None:
        points = np.asarray(points, dtype=np.float32)[-self.window:]
        slots = (self._next + np.arange(len(points))) % self.window
        self._points[slots] = points
        rows = _kernel(points, self._points, self.mmd.gamma)  # against the whole ring, the new points included
        self._kernel[slots, :] = rows
        self._kernel[:, slots] = rows.T
        self._to_reference[slots] = _kernel(points, self.mmd.reference, self.mmd.gamma).mean(axis=1, dtype=np.float64)
        self._next = (self._next + len(points)) % self.window
        self.count += len(points)

    def value(self) -> float:
        """MMD^2 of the window against the reference (the window must be full)."""
        if self.count < self.window:
            raise ValueError(f"the window holds {self.count} of {self.window} points; push more before value().")
        n = self.window
        within = (self._kernel.sum(dtype=np.float64) - np.trace(self._kernel, dtype=np.float64)) / (n * (n - 1))
        return float(self.mmd.reference_term + within - 2.0 * self._to_reference.mean())


def _kernel(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    k = _sq_dists(a, b)
    k *= -gamma
    return np.exp(k, out=k)


def mmd_null(pool: np.ndarray, reference_size: int, window: int, bandwidth: float, num_rounds: int = 500,
             seed: int = 0) -> np.ndarray:
    """MMD^2 between disjoint random splits of `pool`: samples of the statistic when nothing drifted.

    Each round mirrors what a live window meets: a reference of `reference_size` points and a
    window of `window` other points from the same distribution (drawn with replacement from the
    rest when the pool is too small). The pool's kernel matrix is computed once.
    """
    rng = np.random.default_rng(seed)
    pool = np.asarray(pool, dtype=np.float64)
    kernel = np.exp(-_sq_dists(pool, pool) / (2.0 * bandwidth * bandwidth))
    values = np.empty(num_rounds)
    for r in range(num_rounds):
        order = rng.permutation(len(pool))
        ref, rest = order[:reference_size], order[reference_size:]
        win = rest[:window] if len(rest) >= window else rest[rng.integers(0, len(rest), window)]
        k_rr, k_ww, k_rw = kernel[np.ix_(ref, ref)], kernel[np.ix_(win, win)], kernel[np.ix_(ref, win)]
        m, n = len(ref), len(win)
        values[r] = ((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)) + (k_ww.sum() - np.trace(k_ww)) / (n * (n - 1))
                     - 2.0 * k_rw.mean())
    return values


def null_quantile(values: np.ndarray, q: float) -> float:
    """The q-quantile of a null distribution known from a few hundred samples.

    A Pearson type III curve (a shifted gamma) matched to their mean, spread and skew reaches further
    into the tail than the samples do; the larger of it and the empirical quantile is returned.
    """
    from scipy.stats import pearson3, skew

    empirical = float(np.quantile(values, q))
    spread = float(np.std(values))
    if spread <= 0 or len(values) < 20:
        return empirical
    fitted = float(pearson3.ppf(q, float(skew(values)), loc=float(np.mean(values)), scale=spread))
    return max(empirical, fitted)


def class_counts(outputs: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.argmax(outputs, axis=1), minlength=num_classes)[:num_classes]


def class_test(reference_counts: np.ndarray, window_counts: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors (a 2 x K table): (statistic, p)."""
    from scipy.special import chdtrc

    table = np.stack([reference_counts, window_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    statistic = float(((table - expected) ** 2 / expected).sum())
    return statistic, float(chdtrc(table.shape[1] - 1, statistic))


def rate_test(count: int, total: int, expected_rate: float) -> float:
    """One-sided binomial p-value of seeing at least `count` of `total` when the rate is `expected_rate`.

    scipy.special's binomial tail, as scipy.stats.binom.sf computes it, without the distribution object's
    argument handling (2 us a call instead of 82 us: it runs at every evaluation of the detectors)."""
    from scipy.special import bdtrc

    if total <= 0 or count <= 0:
        return 1.0
    return float(bdtrc(count - 1, total, min(max(expected_rate, 1e-6), 1.0)))


def neglog10(p: float) -> float:
    """-log10(p), capped at 300, so that a p-value test's statistic grows with drift."""
    return float(min(300.0, -math.log10(max(p, 1e-300))))
