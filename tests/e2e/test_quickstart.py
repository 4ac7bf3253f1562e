"""`kaon quickstart`: train, register and serve on the bundled digits, driven as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import numpy as np

import kaon
from kaon.training.data import load_digits
from tests.servers import Server


def test_quickstart_trains_registers_and_serves_digits(tmp_path):
    home = tmp_path / "home"
    server = Server(["quickstart", "--epochs", "6"], env={"KAON_HOME": str(home)})
    try:
        server.wait_ready(timeout_s=240)
        _, _, x_test, y_test = load_digits()
        with kaon.Client(server.url) as client:
            rows = client.predict(x_test[:300])
            accuracy = float(np.mean(np.array([r["label"] for r in rows]) == y_test[:300]))
            assert accuracy > 0.9
            probs = client.infer(x_test[:4], model="digits")["probabilities"]
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert httpx.get(server.url + "/v2/models/digits/ready").status_code == 200
    finally:
        code = server.stop()
    output = server.output()
    assert code == 0, output
    assert "test accuracy" in output and "curl" in output and "kaon.Client" in output
    assert (home / "quickstart" / "curves.png").stat().st_size > 1000
    assert (home / "quickstart" / "explanation.png").stat().st_size > 100
    assert "FGSM@0.1" in output and "ECE" in output
    assert (home / "kaon.db").exists()


def test_two_homes_never_mix(tmp_path):
    script = ("import numpy as np, torch, kaon\n"
              "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))\n"
              "print(kaon.register(model, 'digits', input_example=np.zeros((2, 1, 8, 8), np.float32)).ref)\n")
    for name, times in (("a", 2), ("b", 1)):
        for _ in range(times):
            proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                                  env={**__import__("os").environ, "KAON_HOME": str(tmp_path / name)})
            assert proc.returncode == 0, proc.stderr
    from kaon.registry import Registry

    for name, versions in (("a", [1, 2]), ("b", [1])):
        registry = Registry(f"sqlite:///{tmp_path / name / 'kaon.db'}")
        assert sorted(v.version for v in registry.list_versions("digits")) == versions


def test_kaon_serve_python_api_takes_the_same_flag_names(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, kaon\n"
        "class Echo(kaon.Service):\n"
        "    @kaon.endpoint\n"
        "    def predict(self, xs: list[float]) -> list[float]:\n"
        "        return [2 * x for x in xs]\n"
        "kaon.serve(Echo, port=int(sys.argv[1]), max_batch_size=8, max_wait_ms=1.0, timeout_s=5)\n"
    )
    from tests.servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        import time

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert httpx.post(f"http://127.0.0.1:{port}/predict", json={"xs": [1, 2]}).json() == [2.0, 4.0]
        info = httpx.get(f"http://127.0.0.1:{port}/").json()
        assert info["endpoints"][0]["max_batch_size"] == 8
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_the_same_seed_gives_the_same_run(tmp_path):
    """--seed seeded training but not the CNN's starting weights: two runs scored 0.806 and 0.783."""
    runs = [subprocess.Popen([sys.executable, "-m", "kaon.cli", "quickstart", "--no-serve", "--epochs", "1"],
                             env={**os.environ, "KAON_HOME": str(tmp_path / str(i))}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]
    scores = []
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
        scores.append(re.search(r"test accuracy ([\d.]+), loss ([\d.]+)", output).groups())
    assert scores[0] == scores[1]
