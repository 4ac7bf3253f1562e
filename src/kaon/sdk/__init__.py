"""The Python SDK: load and register models, and call a server."""

from kaon.sdk.client import AsyncClient, Client, ClientError
from kaon.sdk.hub import load, register

__all__ = ["AsyncClient", "Client", "ClientError", "load", "register"]
