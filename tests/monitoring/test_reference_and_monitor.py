"""fit_reference on real torch models (tabular and images), the npz file, and the Monitor on real shifts."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from kaon.errors import InvalidInputError, ModelLoadError
from kaon.models.torch import TorchModel
from kaon.monitoring import Monitor, MonitorMetrics, Reference, WebhookSink, feature_extractor, fit_reference
from kaon.monitoring.alerts import Alert


def tabular_model(num_features: int = 4) -> TorchModel:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(num_features, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    return TorchModel.from_module(module, np.zeros((2, num_features), np.float32))


def test_tabular_reference_round_trips_through_npz(tmp_path: Path) -> None:
    model = tabular_model()
    x = np.random.default_rng(0).normal(size=(600, 4)).astype(np.float32)
    ref = fit_reference(model, x)
    assert ref.kind == "tabular" and ref.source == "penultimate" and ref.input_shape == (4,)
    assert ref.features.shape == (600, 4) and ref.psi_expected.shape == (4, 10)
    assert ref.class_counts.sum() == 600 and ref.outlier.method == "mahalanobis"
    path = ref.save(tmp_path / "reference.npz")
    loaded = Reference.load(path)
    assert loaded.kind == ref.kind and loaded.input_shape == ref.input_shape and loaded.bandwidth == ref.bandwidth
    np.testing.assert_allclose(loaded.embeddings, ref.embeddings, rtol=1e-6)
    np.testing.assert_array_equal(loaded.class_counts, ref.class_counts)
    assert loaded.outlier.precision.shape == (16, 16)


def test_a_reference_file_never_unpickles(tmp_path: Path) -> None:
    evil = tmp_path / "reference.npz"
    np.savez(evil, meta=np.array([{"format": 1}], dtype=object))
    with pytest.raises(ModelLoadError, match="not a kaon reference file"):
        Reference.load(evil)


def test_fit_reference_wants_a_real_batch() -> None:
    with pytest.raises(InvalidInputError, match="at least 50 inputs"):
        fit_reference(tabular_model(), np.zeros((10, 4), np.float32))


def test_penultimate_embeddings_of_an_exported_program_and_of_a_module(tmp_path: Path) -> None:
    from kaon.models.torch import export_program, load_program

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10),
                                 torch.nn.Softmax(dim=1)).eval()
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    export_program(module, x, tmp_path / "m.pt2")
    for model in (load_program(tmp_path / "m.pt2"), TorchModel.from_module(module, x)):
        extractor = feature_extractor(model)
        f = extractor(x)
        assert extractor.source == "penultimate"
        assert f.embeddings.shape == (5, 32) and f.logits.shape == (5, 10)
        np.testing.assert_allclose(f.outputs, model.predict(x), atol=1e-6)
        np.testing.assert_allclose(torch.softmax(torch.from_numpy(f.logits), 1).numpy(), f.outputs, atol=1e-5)
        with torch.no_grad():
            hidden = module[2](module[1](module[0](torch.from_numpy(x)))).numpy()
        np.testing.assert_allclose(f.embeddings, hidden, atol=1e-5)


def test_models_without_a_reachable_penultimate_layer_fall_back_to_outputs() -> None:
    from kaon.models.model import Model
    from kaon.types import Signature, TensorSpec

    class Softmaxed(Model):  # what an ONNX or Keras model looks like from here: a run() and nothing inside
        framework = "onnx"

        def _run(self, inputs):
            z = inputs["x"].reshape(len(inputs["x"]), -1)[:, :3]
            e = np.exp(z - z.max(1, keepdims=True))
            return {"p": e / e.sum(1, keepdims=True)}

    model = Softmaxed(Signature([TensorSpec("x", "float32", (-1, 2, 2))], [TensorSpec("p", "float32", (-1, 3))]))
    extractor = feature_extractor(model)
    f = extractor(np.ones((2, 2, 2), np.float32))
    assert extractor.source == "outputs" and f.embeddings is None and f.logits is None  # probabilities, not logits
    ref = fit_reference(model, np.random.default_rng(0).normal(size=(200, 2, 2)).astype(np.float32))
    assert ref.kind == "embedding" and ref.source == "outputs" and ref.outlier.method == "msp"
    tabular = fit_reference(model.__class__(Signature([TensorSpec("x", "float32", (-1, 4))], model.signature.outputs)),
                            np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32))
    assert tabular.source == "inputs" and tabular.outlier.method == "mahalanobis"  # on the features themselves


def test_monitor_stays_quiet_on_clean_tabular_data_and_alerts_on_a_shift() -> None:
    rng = np.random.default_rng(3)
    model = tabular_model()
    ref = fit_reference(model, rng.normal(size=(1000, 4)).astype(np.float32))
    got: list[Alert] = []
    metrics = MonitorMetrics()
    monitor = Monitor(ref, feature_extractor(model), window=100, stride=20, metrics=metrics, sinks=[got.append],
                      calibration_rounds=100)
    assert set(monitor.detectors) == {"embedding_mmd", "features_ks", "features_psi", "predicted_classes",
                                      "outlier_rate"}
    for _ in range(30):
        monitor.observe(rng.normal(size=(20, 4)).astype(np.float32))
    assert got == [] and monitor.firing == []
    shifted = rng.normal(size=(400, 4)).astype(np.float32)
    shifted[:, 1] += 1.5  # one feature drifts
    for start in range(0, 400, 20):
        monitor.observe(shifted[start:start + 20])
    fired = {a.detector for a in got if a.state == "firing"}
    assert {"features_ks", "features_psi"} <= fired
    assert all("drifted" in a.message for a in got)
    text = metrics.registry.get_sample_value("kaon_drift_alert", {"detector": "features_ks"})
    assert text == 1.0
    assert metrics.registry.get_sample_value("kaon_monitor_inputs_total") == 1000
    for _ in range(40):  # the world goes back to normal: the alerts resolve (hysteresis)
        monitor.observe(rng.normal(size=(20, 4)).astype(np.float32))
    assert "features_ks" not in monitor.firing
    assert any(a.detector == "features_ks" and a.state == "resolved" for a in got)


def test_outlier_scores_separate_far_inputs() -> None:
    rng = np.random.default_rng(4)
    model = tabular_model()
    ref = fit_reference(model, rng.normal(size=(1000, 4)).astype(np.float32))
    monitor = Monitor(ref, feature_extractor(model), calibration_rounds=50)
    clean = monitor.score(rng.normal(size=(500, 4)).astype(np.float32))
    far = monitor.score(rng.normal(8.0, size=(50, 4)).astype(np.float32))
    assert np.mean(clean > 1.0) < 0.05 and np.mean(far > 1.0) > 0.9
    with pytest.raises(InvalidInputError, match=r"shape \(N, 4\)"):
        monitor.score(np.zeros((2, 5), np.float32))


class Receiver(BaseHTTPRequestHandler):
    """A real HTTP server that fails the first `failures` POSTs with 503, then records what it receives."""

    failures = 0
    received: list[bytes] = []
    authorizations: list[str | None] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.authorizations.append(self.headers.get("authorization"))
        if Receiver.failures > 0:
            Receiver.failures -= 1
            self.send_response(503)
        else:
            Receiver.received.append(body)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_retries_then_delivers_and_gives_up_when_bounded(caplog) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hooks/secret-path"
    alert = Alert("embedding_mmd", "firing", 0.02, 0.01, "digits", 400, 200, 0.0)
    try:
        Receiver.failures, Receiver.received = 2, []
        sink = WebhookSink(url, max_attempts=3, backoff_s=0.01)
        sink(alert)
        sink.close()
        assert sink.sent == 1 and sink.failed == 0 and len(Receiver.received) == 1
        assert b'"detector":"embedding_mmd"' in Receiver.received[0]
        Receiver.failures, Receiver.received = 5, []
        sink = WebhookSink(url, max_attempts=2, backoff_s=0.01)
        sink(alert)
        sink.close()
        assert sink.sent == 0 and sink.failed == 1 and Receiver.received == []
    finally:
        server.shutdown()
    dead = WebhookSink("http://127.0.0.1:9/never", max_attempts=2, backoff_s=0.01, timeout_s=0.5, max_pending=2)
    with caplog.at_level(logging.WARNING, logger="kaon.monitoring"):
        dead(alert)
        dead.close(timeout_s=10)
    assert "Connection refused" in caplog.text  # the reason, not only "URLError"
    dead = WebhookSink("http://127.0.0.1:9/never", max_attempts=2, backoff_s=0.01, timeout_s=0.5, max_pending=2)
    for _ in range(5):
        dead(alert)
    dead.close(timeout_s=10)
    assert dead.failed + dead.dropped == 5 and dead.dropped >= 1


def test_webhook_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    """urllib sends nothing for http://user:pass@host/: every delivery failed (401 at the receiver)."""
    import base64

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        Receiver.failures, Receiver.received, Receiver.authorizations = 0, [], []
        sink = WebhookSink(f"http://alice:s3cr%40t@127.0.0.1:{server.server_address[1]}/hook", backoff_s=0.01)
        sink(Alert("embedding_mmd", "firing", 0.02, 0.01, "digits", 400, 200, 0.0))
        sink.close()
    finally:
        server.shutdown()
    assert sink.sent == 1 and "alice" not in sink.url
    assert Receiver.authorizations == ["Basic " + base64.b64encode(b"alice:s3cr@t").decode()]
    assert WebhookSink("http://u:p@[::1]:9000/hook").url == "http://[::1]:9000/hook"  # brackets kept


def test_a_resolved_alert_is_logged_at_the_default_level(caplog) -> None:
    from kaon.monitoring.alerts import log_sink

    with caplog.at_level(logging.WARNING, logger="kaon.monitoring"):
        log_sink(Alert("embedding_mmd", "resolved", 0.001, 0.01, "digits", 600, 200, 0.0))
    assert "resolved" in caplog.text.lower()
