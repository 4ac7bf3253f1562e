"""A reference registered with the version is all `kaon serve` needs to watch drift; `optimize` carries it over."""

from __future__ import annotations

import re
import time

import httpx

import kaon
from kaon.monitoring import REFERENCE_FILENAME, Reference
from tests.servers import Server


def trained_digits(epochs: int = 2):
    import torch

    from kaon.training import Trainer
    from kaon.training.data import load_digits
    from kaon.training.models import DigitsCNN

    x_train, y_train, x_test, y_test = load_digits(seed=0)
    model = DigitsCNN()
    Trainer(model, lr=3e-3, seed=0, track=False).fit(x_train, y_train, epochs=epochs, verbose=False)
    return torch.nn.Sequential(model.eval(), torch.nn.Softmax(dim=1)).eval(), (x_train, y_train, x_test, y_test)


def test_kaon_serve_monitors_drift_of_a_version_registered_with_reference_data(kaon_home):
    net, (x_train, _, x_test, _) = trained_digits(epochs=1)
    version = kaon.register(net, "digits", input_example=x_test[:2], reference_data=x_train)
    server = Server(["serve", version.ref, "--alert-webhook", "http://127.0.0.1:9/hooks/secret"],
                    env={"KAON_HOME": str(kaon_home)}).wait_ready()
    try:
        deadline = time.monotonic() + 60
        while "kaon_drift_threshold{" not in (scrape := httpx.get(server.url + "/metrics").text):
            assert time.monotonic() < deadline, f"no drift detector on /metrics after 60 s:\n{scrape}"
            time.sleep(0.2)
        answer = httpx.post(server.url + "/predict", json={"inputs": x_test[:4].tolist()},
                            headers={"x-kaon-outlier": "1"})
        assert answer.status_code == 200 and len(answer.headers["x-kaon-outlier-score"].split(",")) == 4
    finally:
        assert server.stop() == 0, server.output()
    banner = server.output()
    assert f"drift: inputs checked against {version.ref}'s reference.npz (window 200)" in banner
    assert "POSTed to http://127.0.0.1:9/..." in banner and "secret" not in banner  # the URL's path may be a key
    assert f"curl -s -X POST {server.url}/predict " in banner  # the example is the model's main route


def test_no_monitor_turns_detection_off_and_redact_fields_masks_the_fields_named(kaon_home, tmp_path):
    net, (x_train, _, x_test, _) = trained_digits(epochs=1)
    version = kaon.register(net, "digits", input_example=x_test[:2], reference_data=x_train)
    log = tmp_path / "requests.jsonl"
    server = Server(["serve", version.ref, "--no-monitor", "--request-log", str(log),
                     "--redact-fields", "patient_id, ward"], env={"KAON_HOME": str(kaon_home)}).wait_ready()
    try:
        bad = httpx.post(server.url + "/predict", json={"inputs": x_test[:1].tolist(), "patient_id": "P-48213",
                                                        "ward": "W-7", "note": "kept"})
        assert bad.status_code == 422
        assert httpx.post(server.url + "/predict", json={"inputs": x_test[:2].tolist()}).status_code == 200
        deadline = time.monotonic() + 30
        while len(log.read_text().splitlines() if log.exists() else []) < 2:
            assert time.monotonic() < deadline, "the request log has not got both requests after 30 s"
            time.sleep(0.1)
        assert "kaon_drift_threshold{" not in httpx.get(server.url + "/metrics").text
    finally:
        assert server.stop() == 0, server.output()
    text = log.read_text()
    assert "P-48213" not in text and "W-7" not in text and '"note":"kept"' in text.replace(" ", "")
    assert log.stat().st_mode & 0o777 == 0o600  # request bodies: the owner's only (kaon serve made it 0644)
    assert "drift: off (--no-monitor)" in server.output()
    assert f"request log: requests (at most 100/s) to {log}, e-mails, phone and card numbers masked, and " \
           "patient_id, ward" in server.output()


def test_a_bad_alert_webhook_fails_before_the_server_starts(kaon_home):
    net, (x_train, _, x_test, _) = trained_digits(epochs=1)
    version = kaon.register(net, "digits", input_example=x_test[:2], reference_data=x_train)
    server = Server(["serve", version.ref, "--alert-webhook", "ftp://alerts.example"],
                    env={"KAON_HOME": str(kaon_home)})
    deadline = time.monotonic() + 60
    while server.proc.poll() is None:
        assert time.monotonic() < deadline, "the server started with an ftp:// webhook"
        time.sleep(0.2)
    assert server.proc.returncode != 0 and "webhook must be an http(s) URL" in server.output()


def test_optimized_version_gets_a_reference_refitted_for_its_own_features(kaon_home):
    from kaon.optimization import attach_samples, optimize
    from kaon.registry import Registry

    net, (x_train, y_train, x_test, y_test) = trained_digits()
    parent = kaon.register(net, "digits", input_example=x_test[:2], reference_data=x_train)
    attach_samples(parent.ref, x_test, y_test, x_train=x_train, y_train=y_train)
    report = optimize(parent.ref, target="size", methods="int8-dynamic", num_rounds=1, max_accuracy_drop=5.0)
    assert report.registered == "digits@2", report.to_markdown()
    with Registry() as registry:
        child = registry.get_version(report.registered)
        assert child.framework == "onnx" and REFERENCE_FILENAME in child.files
        reference = Reference.load(registry.materialize(child) / REFERENCE_FILENAME)
        parent_reference = Reference.load(registry.materialize(parent) / REFERENCE_FILENAME)
    # the ONNX model's outputs, fitted on every sample (x_train and x), not the torch parent's penultimate layer
    assert reference.source == "outputs" and parent_reference.source == "penultimate"
    assert reference.num_samples == len(x_train) + len(x_test) and reference.embeddings.shape[1] == 10
    assert reference.embeddings.shape[1] != parent_reference.embeddings.shape[1]
    # sizes compare model files: the parent's reference.npz is not part of "original"
    with Registry() as registry:
        model_file = registry.materialize(parent) / "model.pt2"
    assert report.original.size_bytes == model_file.stat().st_size


def test_a_few_samples_still_give_the_optimized_version_a_reference(kaon_home):
    """80 samples split 40 to tune, 40 held out: the reference was fitted on the 40 (under the 50 it needs), so
    the optimized version lost its drift monitor. It is fitted on all 80 now."""
    from kaon.optimization import attach_samples, optimize
    from kaon.registry import Registry

    net, (x_train, _, x_test, y_test) = trained_digits(epochs=1)
    parent = kaon.register(net, "digits", input_example=x_test[:2], reference_data=x_train)
    attach_samples(parent.ref, x_test[:80], y_test[:80])
    report = optimize(parent.ref, target="size", methods="int8-dynamic", num_rounds=1, max_accuracy_drop=50.0)
    with Registry() as registry:
        child = registry.get_version(report.registered)
        assert REFERENCE_FILENAME in child.files
        assert Reference.load(registry.materialize(child) / REFERENCE_FILENAME).num_samples == 80


def test_optimized_version_of_a_parent_without_reference_gets_none(kaon_home):
    from kaon.optimization import attach_samples, optimize
    from kaon.registry import Registry

    net, (x_train, y_train, x_test, y_test) = trained_digits(epochs=1)
    parent = kaon.register(net, "digits", input_example=x_test[:2])
    attach_samples(parent.ref, x_test, y_test, x_train=x_train, y_train=y_train)
    report = optimize(parent.ref, target="size", methods="int8-dynamic", num_rounds=1, max_accuracy_drop=5.0)
    with Registry() as registry:
        assert REFERENCE_FILENAME not in registry.get_version(report.registered).files


def test_with_workers_every_worker_watches_drift_and_its_alerts_name_it(kaon_home):
    """With `--workers 2` each worker watches the requests it answers (a keep-alive client stays on one worker:
    watching on one worker alone could see nothing); an alert names the worker, so two of one episode are
    told apart. Every worker scores the requests that ask for it."""
    from prometheus_client.parser import text_string_to_metric_families

    net, (x_train, _, x_test, _) = trained_digits(epochs=1)
    version = kaon.register(net, "digits", input_example=x_test[:2], reference_data=x_train)
    server = Server(["serve", version.ref, "--workers", "2", "--drift-window", "40"],
                    env={"KAON_HOME": str(kaon_home)}).wait_ready(timeout_s=120)
    inverted = (1.0 - x_test).tolist()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            def alerts() -> float:
                return sum(s.value for f in text_string_to_metric_families(client.get("/metrics").text)
                           for s in f.samples if s.name == "kaon_alerts_total")

            deadline = time.monotonic() + 90
            with httpx.Client(base_url=server.url, timeout=30) as keep_alive:  # one connection: one worker
                while not alerts():
                    assert time.monotonic() < deadline, "no drift alert from the worker this client is on"
                    for start in range(0, 80, 8):
                        assert keep_alive.post("/predict", json={"inputs": inverted[start:start + 8]}).is_success
                    time.sleep(0.3)
            def scored() -> bool:  # on a new connection: either worker answers
                answer = httpx.post(server.url + "/predict", json={"inputs": inverted[:2]},
                                    headers={"x-kaon-outlier": "1"})
                return len(answer.headers.get("x-kaon-outlier-score", "").split(",")) == 2

            # 20 in a row, spread over both workers, all scored (the other worker's monitor may still have
            # been calibrating when the alert came: until it is built, it answers without a score)
            deadline = time.monotonic() + 60
            while not all(scored() for _ in range(20)):
                assert time.monotonic() < deadline, "a worker does not score outliers"
                time.sleep(0.5)
    finally:
        assert server.stop() == 0, server.output()
    assert re.search(r"kaon alert firing: model 'digits@1' drifted on \w+ on \S+ worker [01] \(", server.output())
