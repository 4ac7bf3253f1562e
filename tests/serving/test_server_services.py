"""`kaon serve path/to/service.py:Class`: user Services, faults and shutdown, on a real server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest

from tests.servers import Server

SERVICE = textwrap.dedent('''
    import asyncio, time
    import pydantic
    import kaon

    class Echo(pydantic.BaseModel):
        value: float
        doubled: float

    class Toy(kaon.Service):
        def setup(self):
            self.offset = 0.5   # heavy work would go here

        @kaon.endpoint(max_batch_size=16, max_wait_ms=20)
        def double(self, values: list[float]) -> list[Echo]:
            return [Echo(value=v, doubled=2 * v + self.offset - 0.5) for v in values]

        @kaon.endpoint
        async def greet(self, name: str, times: int = 1) -> dict[str, str]:
            await asyncio.sleep(0)
            return {"greeting": ("hello " + name + " ") * times}

        @kaon.endpoint
        def explode(self, values: list[int]) -> list[int]:
            raise RuntimeError("secret internals /home/user/model.bin")

        @kaon.endpoint(max_batch_size=1)
        def slow(self, seconds: list[float]) -> list[float]:
            time.sleep(seconds[0])
            return seconds

        @kaon.endpoint
        def own_validation(self, value: float) -> Echo:
            return Echo(value=value, doubled="not a number")  # the endpoint's bug, not the request's

        @kaon.endpoint
        def as_dict(self, value: float) -> Echo:
            return {"value": value, "doubled": 2 * value}  # a dict for a declared model: fine, as in FastAPI

        @kaon.endpoint
        def wrong_return(self, value: float) -> Echo:
            return {"value": "high", "doubled": 0}
''')


@pytest.fixture(scope="module")
def service_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("svc") / "toy_service.py"
    path.write_text(SERVICE)
    return path


@pytest.fixture(scope="module")
def toy_server(service_file):
    server = Server(["serve", f"{service_file}:Toy", "--timeout-s", "1", "--max-queue", "3"]).wait_ready()
    yield server
    server.stop()


def test_sync_batched_endpoint(toy_server):
    response = httpx.post(toy_server.url + "/double", json={"values": [1, 2.5]})
    assert response.status_code == 200
    assert response.json() == [{"value": 1.0, "doubled": 2.0}, {"value": 2.5, "doubled": 5.0}]


def test_async_unbatched_endpoint_with_default(toy_server):
    assert httpx.post(toy_server.url + "/greet", json={"name": "ada"}).json() == {"greeting": "hello ada "}
    twice = httpx.post(toy_server.url + "/greet", json={"name": "a", "times": 2}).json()
    assert twice["greeting"] == "hello a hello a "


def test_unknown_field_and_wrong_type_are_422(toy_server):
    response = httpx.post(toy_server.url + "/greet", json={"name": "a", "tiems": 2})
    assert response.status_code == 422 and response.json()["error"]["fields"][0]["name"] == "tiems"
    response = httpx.post(toy_server.url + "/double", json={"values": "abc"})
    assert response.status_code == 422


def test_endpoint_that_raises_is_500_without_internals_and_server_keeps_serving(toy_server):
    response = httpx.post(toy_server.url + "/explode", json={"values": [1]})
    assert response.status_code == 500
    error = response.json()["error"]
    assert "secret" not in response.text and error["request_id"] in error["message"]
    assert httpx.post(toy_server.url + "/double", json={"values": [1]}).status_code == 200


def test_endpoint_over_timeout_is_504(toy_server):
    response = httpx.post(toy_server.url + "/slow", json={"seconds": [1.5]}, timeout=10)
    assert response.status_code == 504 and "--timeout-s" in response.json()["error"]["message"]


def test_full_queue_is_503_with_retry_after(toy_server):
    deadline = time.monotonic() + 5  # a timed-out call from another test may still hold the model
    while httpx.post(toy_server.url + "/slow", json={"seconds": [0]}, timeout=10).status_code != 200:
        assert time.monotonic() < deadline

    async def scenario():
        async with httpx.AsyncClient(base_url=toy_server.url, timeout=10) as client:
            first = asyncio.ensure_future(client.post("/slow", json={"seconds": [0.8]}))
            await asyncio.sleep(0.2)  # the first occupies the model; the rest queue (max 3)
            rest = [client.post("/slow", json={"seconds": [0.01]}) for _ in range(8)]
            return await asyncio.gather(first, *rest)

    responses = asyncio.run(scenario())
    statuses = [r.status_code for r in responses]
    overloaded = [r for r in responses if r.status_code == 503]
    assert overloaded and 200 in statuses, statuses
    assert overloaded[0].headers["retry-after"] == "1"
    assert "max_queue=3" in overloaded[0].json()["error"]["message"]


def test_the_endpoints_own_mistakes_are_500s_and_a_dict_for_a_model_is_validated(toy_server):
    own = httpx.post(toy_server.url + "/own_validation", json={"value": 1})
    assert own.status_code == 500 and "doubled" not in own.text  # was a 422 blaming the request's 'doubled'
    assert httpx.post(toy_server.url + "/as_dict", json={"value": 1.5}).json() == {"value": 1.5, "doubled": 3.0}
    wrong = httpx.post(toy_server.url + "/wrong_return", json={"value": 1})
    assert wrong.status_code == 500  # was a 200 whose body contradicted the schema


def test_more_inputs_in_one_request_than_the_queue_holds_is_413_not_a_retry(toy_server):
    response = httpx.post(toy_server.url + "/double", json={"values": [1, 2, 3, 4]})  # --max-queue 3
    assert response.status_code == 413 and "Split it" in response.json()["error"]["message"]
    assert "retry-after" not in response.headers


def test_sigterm_finishes_in_flight_requests_and_exits_zero(service_file):
    server = Server(["serve", f"{service_file}:Toy", "--timeout-s", "10"]).wait_ready()
    result: dict[str, object] = {}

    def call():
        result["response"] = httpx.post(server.url + "/slow", json={"seconds": [1.0]}, timeout=10)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    code = server.stop()
    thread.join()
    assert code == 0
    assert result["response"].status_code == 200  # type: ignore[union-attr]


def test_sigterm_does_not_wait_for_a_call_stuck_past_its_timeout(service_file):
    """A sync call still running after its 504 cannot be stopped (it is a thread): the server exits without
    waiting for it, so a Kubernetes pod stops within its grace period, and says so in the log."""
    server = Server(["serve", f"{service_file}:Toy", "--timeout-s", "1"]).wait_ready()
    stuck = httpx.post(server.url + "/slow", json={"seconds": [60.0]}, timeout=10)
    assert stuck.status_code == 504
    started = time.monotonic()
    code = server.stop(timeout_s=30)
    took = time.monotonic() - started
    log = server.output()
    assert code == 0 and took < 10, (code, took, log)
    assert "1 call(s) still running after shutdown" in log and "kaon-slow" in log


@pytest.mark.parametrize("path", ["/slow", "/healthz"])  # the direct path, and uvicorn's ASGI path (a chunked body)
def test_sigterm_does_not_wait_for_a_request_whose_body_stalled(service_file, path):
    """A client that sent its headers and part of its body held the exit for the whole graceful timeout
    (--timeout-s, 30 s by default: a Kubernetes pod's grace period): the request was not started, so it is
    dropped and the client may retry it elsewhere. A request being answered is still finished (the test above)."""
    import socket

    server = Server(["serve", f"{service_file}:Toy", "--timeout-s", "20"]).wait_ready()
    head = (f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" +
            ("content-length: 100\r\n\r\n" if path == "/slow" else "transfer-encoding: chunked\r\n\r\n6\r\n"))
    with socket.create_connection(("127.0.0.1", server.port)) as stalled:
        stalled.sendall(head.encode() + b'{"seco')
        time.sleep(0.3)
        started = time.monotonic()
        code = server.stop(timeout_s=30)
        took = time.monotonic() - started
        assert stalled.recv(100) == b""  # closed, unanswered
    assert code == 0 and took < 5, (code, took, server.output())
    assert "timeout graceful shutdown exceeded" not in server.output()


SLOW_SETUP = textwrap.dedent('''
    import os, time
    import kaon

    class Slow(kaon.Service):
        def setup(self):
            time.sleep(float(os.environ["SETUP_S"]))  # a big model loading
            if os.environ.get("SETUP_FAILS"):
                raise RuntimeError("weights file is corrupt")

        @kaon.endpoint
        def ping(self, n: int) -> int:
            return n
''')


def test_probes_answer_while_setup_loads_the_model(tmp_path):
    """Kubernetes probes a pod while its model loads: /healthz must answer (200) and /readyz say 503, not hang
    (they waited for setup(), so a liveness probe with a 1 s timeout failed and restarted the pod)."""
    path = tmp_path / "slow.py"
    path.write_text(SLOW_SETUP)
    server = Server(["serve", f"{path}:Slow"], env={"SETUP_S": "4"})
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                live = httpx.get(server.url + "/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, server.output()
                time.sleep(0.05)
        assert live.status_code == 200
        starting = httpx.get(server.url + "/readyz", timeout=1)
        assert starting.status_code == 503 and starting.json()["status"] == "starting"
        early = httpx.post(server.url + "/ping", json={"n": 1}, timeout=1)
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert httpx.get(server.url + "/v2/health/live", timeout=1).status_code == 200
        server.wait_ready(timeout_s=30)
        assert httpx.post(server.url + "/ping", json={"n": 2}).json() == 2
        # a Service with no models still answers V2's server probes after setup (they 404ed)
        assert httpx.get(server.url + "/v2/health/live", timeout=1).json() == {"live": True}
        assert httpx.get(server.url + "/v2/health/ready", timeout=1).json() == {"ready": True}
        assert server.stop() == 0
    finally:
        server.stop()


def test_a_setup_that_fails_after_the_port_opened_exits_1_with_the_reason(tmp_path):
    path = tmp_path / "slow.py"
    path.write_text(SLOW_SETUP)
    server = Server(["serve", f"{path}:Slow"], env={"SETUP_S": "0.5", "SETUP_FAILS": "1"})
    assert server.proc.wait(timeout=60) == 1
    assert "weights file is corrupt" in server.output()


def _serve_fails(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "kaon.cli", "serve", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


def test_pickle_is_refused_before_the_server_starts(tmp_path):
    import torch

    path = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    message = _serve_fails([str(path), "--port", "0"])
    assert "pickle" in message and "--trust-pickle" in message


def test_file_that_is_not_what_its_extension_says(tmp_path):
    path = tmp_path / "fake.onnx"
    path.write_bytes(b"PK\x03\x04 this is a zip")
    assert "not an ONNX model" in _serve_fails([str(path)])


def test_missing_service_class_names_the_ones_found(service_file):
    message = _serve_fails([f"{service_file}:Nope"])
    assert "Toy" in message


def test_unknown_registry_reference_is_a_clear_error():
    message = _serve_fails(["digits@production"])
    assert "digits" in message


@pytest.mark.parametrize(("flags", "expected"), [
    (["--drift-window", "5"], "drift_window must be an integer >= 20"),
    (["--alert-webhook", "ftp://alerts/hook"], "alert_webhook must be an http(s) URL"),
    (["--request-log", "/proc/kaon-nope/requests.jsonl"], "cannot be written"),
    (["--drift-reference", "missing-reference.npz"], "is not a file"),
])
def test_monitoring_flags_that_cannot_work_fail_before_the_banner(service_file, flags, expected):
    """They printed the banner and 'Press Ctrl-C', then failed ~10 s later as a model setup failure, or (a
    window of 5) served on without drift monitoring after a traceback."""
    proc = subprocess.run([sys.executable, "-m", "kaon.cli", "serve", f"{service_file}:Toy", "--port", "0", *flags],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and expected in proc.stderr, proc.stdout + proc.stderr
    assert "Press Ctrl-C" not in proc.stdout and "Traceback" not in proc.stderr
