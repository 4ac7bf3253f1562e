"""uvicorn's httptools protocol, with each response leaving in one `send()` instead of two.

uvicorn writes a response's status line and headers in one `transport.write()` and its body in a
second; with uvloop each write is a `send()` syscall at once. Under c64 those two syscalls were the
largest single cost of a small-model request (py-spy: 16% and 8% of the event loop's samples; see
BENCHMARKS.md, serving). `CoalescingTransport` holds a write until the end of the current event-loop
step: the body written right after the headers joins them, and anything written alone (an error
answer, a 100-continue, the last chunk of a stream) still leaves in the same loop iteration.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Above this a body is written on its own: copying it to join the headers would cost more than a syscall.
_JOIN_MAX_BYTES = 64 * 1024


class CoalescingTransport:
    """A transport whose first write waits for the next one, or for the end of this loop step."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._pending
        if pending is None:
            self._pending = bytes(data)
            self._loop.call_soon(self.flush)
            return
        self._pending = None
        if len(data) <= _JOIN_MAX_BYTES:
            self._transport.write(pending + bytes(data))
        else:
            self._transport.write(pending)
            self._transport.write(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._transport.is_closing():
            self._transport.write(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class KaonHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a CoalescingTransport (`uvicorn.Config(http=...)`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
