"""The Python SDK: load and register models, and call a server.

The HTTP client (httpx) is imported on first use: a server loading a model through `load` does not
pay for it at start-up (it is a tenth of a replica's cold start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kaon.sdk.hub import load, register

if TYPE_CHECKING:
    from kaon.sdk.client import AsyncClient, Client, ClientError, ServerUnreachableError

__all__ = ["AsyncClient", "Client", "ClientError", "ServerUnreachableError", "load", "register"]


def __getattr__(name: str) -> Any:
    if name in ("AsyncClient", "Client", "ClientError", "ServerUnreachableError"):
        from kaon.sdk import client

        return getattr(client, name)
    raise AttributeError(f"module 'kaon.sdk' has no attribute {name!r}")
