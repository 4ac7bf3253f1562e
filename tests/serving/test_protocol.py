"""The coalescing transport under uvicorn's protocol: one send per response, nothing held past a loop step."""

from __future__ import annotations

import asyncio
import socket

from kaon.serving._protocol import _JOIN_MAX_BYTES, CoalescingTransport


class Recorder:
    """A transport that records its writes (a pure unit test of the buffering rule)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_headers_and_body_written_in_one_step_leave_in_one_write() -> None:
    async def scenario() -> Recorder:
        real = Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        transport.write(b"{}")
        assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
        transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # alone: the protocol's own error answer
        assert len(real.writes) == 1
        await asyncio.sleep(0)  # one loop step later it is out
        assert real.writes[-1] == b"HTTP/1.1 400 Bad Request\r\n\r\n"
        assert transport.get_extra_info("peername") == "info:peername"  # the rest is the real transport
        return real

    asyncio.run(scenario())


def test_a_large_body_is_not_copied_and_close_flushes_first() -> None:
    async def scenario() -> None:
        real = Recorder()
        transport = CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
        body = b"x" * (_JOIN_MAX_BYTES + 1)
        transport.write(b"head")
        transport.write(body)
        assert real.writes == [b"head", body]
        transport.write(b"last words")
        transport.close()
        assert real.writes[-1] == b"last words" and real.closed
        await asyncio.sleep(0)
        assert len(real.writes) == 3  # the scheduled flush finds nothing left

    asyncio.run(scenario())


def test_a_real_server_answers_pipelined_requests_in_order(onnx_server) -> None:
    """Two requests in one packet (HTTP pipelining): both answers arrive, complete and in order."""
    host, port = "127.0.0.1", onnx_server.port
    request = (f"GET /healthz HTTP/1.1\r\nhost: {host}\r\n\r\n"
               f"GET /nope HTTP/1.1\r\nhost: {host}\r\n\r\n").encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    first, second = data.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"200") and second.startswith(b"404")
