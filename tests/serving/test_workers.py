"""`kaon serve --workers N`: worker processes on one port, metrics summed across them, clean stops."""

from __future__ import annotations

import os
import signal
import socket
import sys
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


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def _tcp_sockets(port: int, state: str) -> set[str]:
    """Inodes of this machine's IPv4 TCP sockets on local `port` in `state` (0A: listening, 01: established)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            found.add(fields[9])
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only")
def test_each_worker_listens_on_its_own_socket_and_connections_spread_over_them(models_dir, tmp_path):
    """One shared listening socket went to whichever worker accepted first: a worker busy with a batch accepted
    nothing, and all of a client's keep-alive connections could land on the other (half the throughput)."""
    server = Server(["serve", str(models_dir / "digits.pt2"), "--workers", "2"],
                    env={"KAON_HOME": str(tmp_path / "home")})
    clients: list[socket.socket] = []
    try:
        import time

        server.wait_ready(timeout_s=120)  # one worker answers; the other may still be loading
        port = server.port
        workers = _children(server.proc.pid)
        deadline = time.monotonic() + 60
        while True:
            listening = _tcp_sockets(port, "0A")
            own = {pid: _socket_inodes(pid) & listening for pid in workers}
            if all(own.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert all(len(inodes) == 1 for inodes in own.values()), own  # each its own listening socket
        assert len(set.union(*own.values())) == 2
        assert not _socket_inodes(server.proc.pid) & listening  # the supervisor's holds the port, not listening
        for _ in range(32):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            clients.append(client)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 200")
        established = _tcp_sockets(port, "01")
        counts = [len(_socket_inodes(pid) & established) for pid in workers]
        # spread by a hash of the addresses: 32 connections all but never leave a worker with fewer than 4
        assert sum(counts) == 32 and min(counts) >= 4, counts
    finally:
        for client in clients:
            client.close()
        server.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only")
def test_a_second_workers_server_on_the_port_is_refused_even_while_the_first_starts(models_dir, tmp_path):
    """The first's port-holding socket does not listen, and its workers listen only once loaded: without a lock the
    second's port check would pass meanwhile, and its SO_REUSEPORT workers would share the first's port."""
    import subprocess
    import time

    first = Server(["serve", str(models_dir / "digits.pt2"), "--workers", "2"], env={"KAON_HOME": str(tmp_path / "a")})
    try:
        port = first.port
        deadline = time.monotonic() + 60
        while len(_children(first.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # the first holds the port; its workers are loading
        second = subprocess.run([sys.executable, "-m", "kaon.cli", "serve", str(models_dir / "digits.pt2"),
                                 "--workers", "2", "--port", str(port)], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "KAON_HOME": str(tmp_path / "b")})
        assert second.returncode != 0
        assert "another `kaon serve --workers` is starting or serving on port" in second.stdout + second.stderr
        first.wait_ready(timeout_s=120)  # the first is unharmed
        assert httpx.get(first.url + "/readyz").status_code == 200
    finally:
        first.stop()


def test_workers_on_port_0_all_serve_the_one_port_the_system_picked(models_dir, tmp_path):
    """Each worker binding port 0 itself would get a port of its own."""
    import re
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, "-m", "kaon.cli", "serve", str(models_dir / "digits.pt2"), "--workers",
                             "2", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "KAON_HOME": str(tmp_path / "home")})
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while "kaon is serving" not in seen and time.monotonic() < deadline and proc.poll() is None:
            seen += proc.stdout.readline()  # type: ignore[union-attr]
        urls = re.findall(r"http://127\.0\.0\.1:(\d+)", seen)
        assert urls and urls[0] != "0", seen
        port = int(urls[0])
        listening = _tcp_sockets(port, "0A")
        assert all(_socket_inodes(pid) & listening for pid in _children(proc.pid)), "a worker is not on the port"
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
