"""The HTTP floor: a bare ASGI app that reads the request body and answers a constant.

    uvicorn floor_asgi:app --http httptools --loop uvloop --no-access-log --port 8000
"""

from __future__ import annotations

from typing import Any

BODY = b'[{"probabilities":[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1],"label":0}]'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
