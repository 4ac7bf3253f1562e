"""`kaon serve --tls-cert --tls-key` with a self-signed certificate made here; model loading refused when unsafe."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import kaon
from kaon.errors import InvalidInputError
from kaon.registry import Registry
from kaon.sdk import ServerUnreachableError
from tests.security.conftest import DIGIT, kaon_cli
from tests.security.test_routes_headers_tls import make_self_signed
from tests.servers import free_port


def test_https_with_a_self_signed_certificate(model_file: Path, tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    port = free_port()
    env = {**os.environ, "KAON_HOME": str(tmp_path / "home"), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "kaon.cli", "serve", str(model_file), "--port", str(port),
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(url + "/readyz", verify=trust, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the TLS server did not get ready"
                time.sleep(0.2)
        answer = httpx.post(url + "/predict", json={"inputs": [DIGIT]}, verify=trust, timeout=10)
        assert answer.status_code == 200 and 0 <= answer.json()[0]["label"] < 10
        assert answer.headers["strict-transport-security"].startswith("max-age=")
        with pytest.raises(httpx.ConnectError):  # an unknown certificate is refused by a verifying client
            httpx.get(url + "/healthz", timeout=5)
        # kaon.Client: verify= takes the certificate; without it, one clear error (it retried 5 times, then
        # said "could not reach ... Is it running")
        with kaon.Client(url, verify=str(cert)) as client:
            assert 0 <= client.predict([DIGIT])[0]["label"] < 10
        started = time.monotonic()
        with kaon.Client(url, backoff_s=1.0) as client, pytest.raises(ServerUnreachableError) as refused:
            client.predict([DIGIT])
        assert "does not trust" in str(refused.value) and "verify='cert.pem'" in str(refused.value)
        assert time.monotonic() - started < 1.0  # not retried
        with pytest.raises(InvalidInputError, match="verify= must be True, False or a PEM file"):
            kaon.Client(url, verify=str(tmp_path / "missing.pem"))
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert f"https://127.0.0.1:{port}" in (proc.stdout.read() if proc.stdout else "")  # the banner says https


def test_tls_mistakes_stop_serve_with_one_error_line(model_file: Path, tmp_path: Path) -> None:
    cert, _ = make_self_signed(tmp_path)
    done = kaon_cli(["serve", str(model_file), "--port", "0", "--tls-cert", str(cert)], tmp_path)
    assert done.returncode == 1
    assert "both --tls-cert and --tls-key" in done.stderr and "Traceback" not in done.stderr


def test_pickle_needs_trust_pickle_over_the_cli(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    refused = kaon_cli(["serve", str(path), "--port", "0"], tmp_path)
    assert refused.returncode == 1 and "loading a pickle can run arbitrary code" in refused.stderr
    trusted = kaon_cli(["serve", str(path), "--port", "0", "--trust-pickle"], tmp_path)
    # past the pickle gate: the module loads, then serving stops for the next reason (it has no signature)
    assert trusted.returncode == 1 and "no signature" in trusted.stderr
    assert "arbitrary code" not in trusted.stderr


def test_a_tampered_registry_artifact_is_refused_over_the_cli(model_file: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    os.environ["KAON_HOME"] = str(home)  # the autouse fixture restores it
    with Registry() as registry:
        record = registry.register_version("digits", {"model.pt2": model_file}, framework="torch")
        stored = registry.artifact_path(record.files["model.pt2"])
    os.chmod(stored, 0o644)
    with open(stored, "r+b") as fh:
        fh.seek(200)
        fh.write(b"tampered")
    done = kaon_cli(["serve", "digits@1", "--port", "0"], home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "IntegrityError" in done.stderr and "sha256" in done.stderr
