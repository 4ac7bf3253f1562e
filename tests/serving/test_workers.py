"""`kaon serve --workers N`: worker processes on one port, metrics summed across them, clean stops."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import Server


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie left for its new parent to reap is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _predict_total(metrics: str) -> float:
    lines = [line for line in metrics.splitlines()
             if line.startswith('kaon_requests_total{route="/predict",status="200"}')]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_workers_share_the_port_and_sum_their_metrics(models_dir, probe, tmp_path):
    x, expected = probe
    server = Server(["serve", str(models_dir / "digits.pt2"), "--workers", "2"],
                    env={"KAON_HOME": str(tmp_path / "home")})
    try:
        server.wait_ready(timeout_s=120)
        workers = _children(server.proc.pid)
        assert len(workers) == 2, f"expected 2 worker processes under the supervisor, found {workers}"
        share = str(max(1, len(os.sched_getaffinity(0)) // 2))  # the cores shared out, unless the user set it
        for pid in workers:
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            assert environ["KAON_NUM_THREADS"] == os.environ.get("KAON_NUM_THREADS", share)
            assert environ["OMP_NUM_THREADS"] == os.environ.get("OMP_NUM_THREADS", share)
            assert environ["KAON_PROCESS_CORES"] == share  # what the batcher's inline limit follows
        sent = 24
        for _ in range(sent):  # a new connection each time: the kernel hands them to either worker
            answer = httpx.post(server.url + "/predict", json={"inputs": x[:2].tolist()})
            assert answer.status_code == 200
            np.testing.assert_allclose([row["output"] for row in answer.json()], expected[:2], atol=1e-5)
        # every scrape, whichever worker answers it, counts the requests of both
        for _ in range(4):
            assert _predict_total(httpx.get(server.url + "/metrics").text) == sent
        code = server.stop(signal.SIGTERM)
        assert code == 0, server.output()
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        server.stop()


def test_workers_stop_when_their_supervisor_is_killed(models_dir, tmp_path):
    import time

    server = Server(["serve", str(models_dir / "digits.pt2"), "--workers", "2"],
                    env={"KAON_HOME": str(tmp_path / "home")})
    try:
        server.wait_ready(timeout_s=120)
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        server.proc.kill()  # SIGKILL: the supervisor cannot forward anything
        server.proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        alive = [pid for pid in workers if _alive(pid)]
        assert not alive, f"orphaned workers still running: {alive}"
    finally:
        server.stop()


def test_a_stop_while_the_workers_start_is_a_clean_stop(models_dir, tmp_path):
    """SIGTERM before every worker serves (one may still be loading its model) stops them all and exits 0."""
    import time

    server = Server(["serve", str(models_dir / "digits.pt2"), "--workers", "2"],
                    env={"KAON_HOME": str(tmp_path / "home")})
    try:
        deadline = time.monotonic() + 60
        while len(_children(server.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = _children(server.proc.pid)
        assert len(workers) == 2
        code = server.stop(signal.SIGTERM)
        assert code == 0, server.output()
        assert not [pid for pid in workers if _alive(pid)]
    finally:
        server.stop()


def test_a_worker_that_cannot_start_stops_the_rest_with_its_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"PK\x03\x04 not an onnx file")
    server = Server(["serve", str(bad), "--workers", "2"], env={"KAON_HOME": str(tmp_path / "home")})
    code = server.proc.wait(timeout=120)
    output = server.output()
    assert code == 1
    assert "is named .onnx but is not an ONNX model" in output
    assert "exited with code" in output and "while starting" in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_taken_port_is_a_clear_error_before_the_banner(models_dir, tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-m", "kaon.cli", "serve", str(models_dir / "digits.pt2"),
                               "--workers", workers, "--port", str(port)], capture_output=True, text=True, timeout=60,
                              env={**__import__("os").environ, "KAON_HOME": str(tmp_path / "home")})
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stdout + done.stderr
    assert "kaon is serving" not in done.stdout  # no banner promising a server that is not there


def test_workers_need_a_target_they_can_load_themselves():
    from kaon.config import ServeConfig
    from kaon.errors import ConfigError
    from kaon.serving.workers import serve_workers

    with pytest.raises(ConfigError, match="must be a model file, a registry reference or path/to/service.py"):
        serve_workers(object(), ServeConfig(workers=2))
