"""The Monitor: sliding windows of live inputs, drift detectors with hysteresis, outlier scores, alerts.

    monitor = Monitor(Reference.load("reference.npz"), feature_extractor(model), window=200, stride=20)
    scores = monitor.observe(x)       # (N,) outlier scores; evaluates the detectors every `stride` inputs

It is synchronous and single-threaded: serving calls it from one observer thread, off the hot path.
A detector evaluates once the window is full, every `stride` inputs; its alarm fires after
`on_after` breaching evaluations in a row and resolves after `off_after` clear ones.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from kaon.errors import ConfigError, InvalidInputError
from kaon.monitoring import drift
from kaon.monitoring.alarm import AlarmState, update_alarm
from kaon.monitoring.alerts import Alert, AlertSink, log_sink
from kaon.monitoring.features import FeatureExtractor, Features
from kaon.monitoring.metrics import MonitorMetrics
from kaon.monitoring.reference import Reference

log = logging.getLogger("kaon.monitoring")


@dataclass
class DetectorStatus:
    name: str
    statistic: float = float("nan")
    threshold: float = float("nan")
    clear_threshold: float = float("nan")
    alarm: AlarmState = AlarmState()
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"statistic": self.statistic, "threshold": self.threshold, "firing": self.alarm.firing,
                "evaluations": self.evaluations}


class Monitor:
    def __init__(self, reference: Reference, extractor: FeatureExtractor | None = None, *, window: int = 200,
                 stride: int = 20, alpha: float = 0.002, psi_threshold: float = 0.25, on_after: int = 2,
                 off_after: int = 3, mmd_reference_size: int = 300, calibration_rounds: int = 300,
                 outlier_rate_tolerance: float = 3.0,
                 metrics: MonitorMetrics | None = None, sinks: list[AlertSink] | None = None,
                 model_name: str = "model", seed: int = 0, source: str = "") -> None:
        if window < 20 or stride < 1 or not 0 < alpha < 0.5:
            raise ConfigError(
                f"the drift window needs window >= 20, stride >= 1 and 0 < alpha < 0.5. "
                f"Received: window={window}, stride={stride}, alpha={alpha}"
            )
        self.reference = reference
        self.extractor = extractor
        self.window = window
        self.stride = stride
        self.alpha = alpha
        self.on_after = on_after
        self.off_after = off_after
        self.model_name = model_name
        self.source = source  # named in each alert: which server (and worker) saw the drift
        # The outlier-rate detector asks "are clearly more inputs outliers than the reference predicts?": live
        # data a model did not train on scores a little higher than its training data always does, so the rate
        # it tests against is `outlier_rate_tolerance` times the reference's (at least 2 points above it).
        rate = reference.outlier.rate
        self.tolerated_outlier_rate = min(0.5, max(outlier_rate_tolerance * rate, rate + 0.02))
        self.metrics = metrics
        self.sinks: list[AlertSink] = sinks if sinks is not None else [log_sink]
        self.observed = 0
        self.alerts: list[Alert] = []
        self._since_eval = 0
        self._arrived: list[np.ndarray] = []  # embeddings not yet pushed into the sliding MMD
        self._features: collections.deque[np.ndarray] = collections.deque(maxlen=window)
        self._classes: collections.deque[int] = collections.deque(maxlen=window)
        self._outliers: collections.deque[bool] = collections.deque(maxlen=window)
        self.detectors: dict[str, DetectorStatus] = {}
        p_threshold, p_clear = drift.neglog10(alpha), drift.neglog10(min(0.5, alpha * 10))

        pool = reference.embeddings
        ref_size = min(mmd_reference_size, max(len(pool) - window, len(pool) // 2))
        rng = np.random.default_rng(seed)
        self._mmd = drift.SlidingMMD(drift.MMD(pool[rng.permutation(len(pool))[:ref_size]], reference.bandwidth),
                                     window)
        null = drift.mmd_null(pool, ref_size, window, reference.bandwidth, calibration_rounds, seed)
        self.detectors["embedding_mmd"] = DetectorStatus(
            "embedding_mmd", threshold=drift.null_quantile(null, 1.0 - alpha),
            clear_threshold=drift.null_quantile(null, 1.0 - min(0.5, alpha * 10)),
        )
        if reference.kind == "tabular" and reference.features is not None:
            self._ks_reference = np.sort(reference.features, axis=0)
            self.detectors["features_ks"] = DetectorStatus("features_ks", threshold=p_threshold,
                                                           clear_threshold=p_clear)
            self.detectors["features_psi"] = DetectorStatus("features_psi", threshold=psi_threshold,
                                                            clear_threshold=psi_threshold / 2)
        if reference.class_counts is not None:
            self.detectors["predicted_classes"] = DetectorStatus("predicted_classes", threshold=p_threshold,
                                                                 clear_threshold=p_clear)
        self.detectors["outlier_rate"] = DetectorStatus("outlier_rate", threshold=p_threshold,
                                                        clear_threshold=p_clear)
        if metrics is not None:
            for status in self.detectors.values():
                metrics.threshold.labels(status.name).set(status.threshold)
                metrics.alert.labels(status.name).set(0)
                metrics.alerts.labels(status.name)  # exported as 0 from the start, not only after the first alert

    # inputs ---------------------------------------------------------------------------------------

    def check_input(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if tuple(x.shape[1:]) != self.reference.input_shape:
            expected = ", ".join(map(str, self.reference.input_shape))
            raise InvalidInputError(
                f"the monitor's reference was fitted on inputs of shape (N, {expected}). Received: shape={x.shape}."
            )
        return x

    def features(self, x: np.ndarray) -> Features:
        if self.extractor is None:
            raise ConfigError("this Monitor has no feature extractor; pass one, or call observe_features.")
        return self.extractor(self.check_input(x))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Normalised outlier scores of a batch (1.0 = the reference's 99th percentile); no state changes."""
        x = self.check_input(x)
        return self._scores(self.features(x), x)

    def _embeddings(self, f: Features, x: np.ndarray | None) -> np.ndarray | None:
        """This batch's counterpart of the reference's `embeddings`, as fit_reference computed them: the
        penultimate layer, or the inputs themselves (flattened, float64) for a tabular reference; None for
        'outputs' (its outlier model reads the logits or probabilities) or when it cannot be had."""
        source = self.reference.source
        if source == "penultimate":
            return f.embeddings
        if source == "inputs" and x is not None:
            return np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        return None

    def _scores(self, f: Features, x: np.ndarray | None) -> np.ndarray:
        model = self.reference.outlier
        embeddings = self._embeddings(f, x)
        if model.method == "mahalanobis" and embeddings is None:
            # Scoring anything else against the Mahalanobis quantiles gives numbers on another scale
            # (a far-out input scored -51 where 1.0 is the reference's p99): refuse instead.
            if self.reference.source == "inputs":
                hint = "the inputs: pass them too, observe_features(features, x)"
            else:
                hint = ("penultimate-layer embeddings, and these features have none: use the feature extractor "
                        "the reference was fitted with")
            raise ConfigError(f"this monitor's reference scores outliers by Mahalanobis distance on {hint}.")
        return model.normalise(model.raw(embeddings, f.logits, f.outputs))

    def observe(self, x: np.ndarray) -> np.ndarray:
        """Add a batch of live inputs to the windows; evaluate when due. Returns their outlier scores."""
        x = self.check_input(x)
        return self.observe_features(self.features(x), x)

    def observe_features(self, f: Features, x: np.ndarray | None = None) -> np.ndarray:
        scores = self._scores(f, x)
        embeddings = self._embeddings(f, x)
        if embeddings is None:  # source 'outputs'
            embeddings = f.logits if f.logits is not None else f.outputs
        classes = f.outputs.argmax(axis=1) if self.reference.class_counts is not None else None
        for i in range(len(scores)):
            self._arrived.append(embeddings[i])
            self._outliers.append(bool(scores[i] > 1.0))
            if classes is not None:
                self._classes.append(int(classes[i]))
            if "features_ks" in self.detectors and x is not None:
                self._features.append(np.asarray(x[i], dtype=np.float64).reshape(-1))
            self.observed += 1
            self._since_eval += 1
            if self._mmd.count + len(self._arrived) >= self.window and self._since_eval >= self.stride:
                self._since_eval = 0
                self._evaluate()
        if self.metrics is not None:
            self.metrics.inputs.inc(len(scores))
            for value in scores:
                self.metrics.outlier_score.observe(float(value))
            outliers = int(np.sum(scores > 1.0))
            if outliers:
                self.metrics.outliers.inc(outliers)
        return scores

    # detectors -----------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        self._mmd.push(np.stack(self._arrived[-self.window:]))
        self._arrived.clear()
        stats: dict[str, float] = {"embedding_mmd": self._mmd.value()}
        if "features_ks" in self.detectors and len(self._features) >= self.window:
            window = np.stack(self._features)
            _, pvalues = drift.ks_test(self._ks_reference, window)
            stats["features_ks"] = drift.neglog10(min(1.0, float(pvalues.min()) * len(pvalues)))
            assert self.reference.psi_edges is not None and self.reference.psi_expected is not None
            stats["features_psi"] = float(drift.psi(self.reference.psi_edges, self.reference.psi_expected,
                                                    window).max())
        if "predicted_classes" in self.detectors:
            assert self.reference.class_counts is not None
            counts = np.bincount(np.fromiter(self._classes, int), minlength=self.reference.num_classes)
            stats["predicted_classes"] = drift.neglog10(drift.class_test(self.reference.class_counts, counts)[1])
        stats["outlier_rate"] = drift.neglog10(
            drift.rate_test(sum(self._outliers), len(self._outliers), self.tolerated_outlier_rate))
        for name, value in stats.items():
            self._update(self.detectors[name], value)

    def _update(self, status: DetectorStatus, value: float) -> None:
        status.statistic = value
        status.evaluations += 1
        status.alarm, event = update_alarm(status.alarm, value, threshold=status.threshold,
                                           clear_threshold=status.clear_threshold, on_after=self.on_after,
                                           off_after=self.off_after)
        if self.metrics is not None:
            self.metrics.statistic.labels(status.name).set(value)
        if event is None:
            return
        alert = Alert(status.name, "firing" if event == "fired" else "resolved", value, status.threshold,
                      self.model_name, self.observed, self.window, time.time(), self.source)
        self.alerts.append(alert)
        if self.metrics is not None:
            self.metrics.alert.labels(status.name).set(1 if event == "fired" else 0)
            if event == "fired":
                self.metrics.alerts.labels(status.name).inc()
        for sink in self.sinks:
            try:
                sink(alert)
            except Exception:  # noqa: BLE001 - a failing sink must not stop monitoring
                log.exception("alert sink %r failed", sink)

    @property
    def firing(self) -> list[str]:
        return [name for name, status in self.detectors.items() if status.alarm.firing]

    def status(self) -> dict[str, Any]:
        return {"model": self.model_name, "observed": self.observed, "window": self.window,
                "source": self.reference.source, "detectors": {k: v.to_dict() for k, v in self.detectors.items()}}
