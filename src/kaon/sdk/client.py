"""`kaon.Client` and `kaon.AsyncClient`: call a kaon server from Python.

    client = kaon.Client("http://127.0.0.1:8000", token=None)
    client.predict(images)                 # POST /predict {"inputs": images}; see below for what an item may be
    client.call("classify", texts=[...])   # POST /classify {"texts": [...]}
    client.infer({"image": x})             # V2 infer with binary tensors -> dict of numpy arrays

Both retry a 503 (overloaded or starting) with exponential backoff, honouring Retry-After, and a refused
connection the same way (nothing was sent); a server still unreachable after that is ServerUnreachableError.
Request building and response parsing are shared; the two classes differ only in how they send.

What predict() and call() send, anywhere in the inputs (a list of items, or the values of a dict for an
endpoint taking objects): JSON values (numbers, strings, bools, None, lists, tuples, dicts), numpy arrays
and scalars (as nested lists and numbers), `bytes`/`bytearray` (an encoded PNG/JPEG file, sent base64-encoded)
and PIL images (written as PNG, sent base64-encoded; PIL is never imported by the client); other bytes have no
agreed JSON form and are refused. Anything else is an InvalidInputError naming its type and where it is, before
a request is sent.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import ssl
import sys
import time
from typing import Any

import httpx
import numpy as np
import orjson

from kaon.errors import InvalidInputError, KaonError
from kaon.types import NUMPY_TO_V2, V2_DATATYPES

RETRY_STATUSES = {503}


class ClientError(KaonError):
    """The server answered with an error; `status_code`, `code` and `request_id` say which."""

    def __init__(self, status: int, body: bytes) -> None:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = {"error": {"message": body[:200].decode(errors="replace")}}
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, str):
            err = {"message": err}
        err = err or {}
        super().__init__(f"HTTP {status}: {err.get('message', '')}", fields=err.get("fields") or [])
        self.status_code = status
        self.code = err.get("code", "http_error")
        self.request_id = err.get("request_id")


class ServerUnreachableError(KaonError):
    """No answer from the server: the connection refused after every retry, reset, or timed out."""


def _untrusted(exc: httpx.TransportError) -> bool:
    """A TLS certificate the client does not trust: trying again cannot help."""
    return "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc)


def _trusting(cafile: str) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(cafile))
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInputError(f"verify= must be True, False or a PEM file of the certificate (or CA) to trust. "
                                f"Received: verify={str(cafile)!r} ({exc}).") from exc


def _unreachable(url: str, exc: httpx.TransportError, attempts: int) -> ServerUnreachableError:
    if _untrusted(exc):
        return ServerUnreachableError(
            f"the kaon server at {url} answered with a TLS certificate this client does not trust ({exc}). "
            f"For a self-signed certificate pass its file: kaon.Client(url, verify='cert.pem') (or set "
            f"SSL_CERT_FILE); verify=False turns the check off (tests only).")
    if isinstance(exc, httpx.TimeoutException):
        return ServerUnreachableError(
            f"the kaon server at {url} did not answer in time ({type(exc).__name__}). Raise the client's "
            f"timeout_s for a slow endpoint, or check the server's log.")
    return ServerUnreachableError(
        f"could not reach the kaon server at {url} ({type(exc).__name__}: {exc}) after {attempts} attempt(s). "
        f"Is it running (`kaon serve ...`), and is the URL right?"
    )


_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff")  # PNG, JPEG
ACCEPTED_INPUTS = ("numbers, strings, bools, None, lists, tuples, dicts with string keys, numpy arrays of numbers "
                   "or bools, bytes of a PNG/JPEG file (sent base64-encoded) and PIL images (sent as PNG)")


def _to_jsonable(value: Any) -> Any:
    """`value` with what JSON cannot carry as such made JSON: numpy arrays as nested lists, image bytes and PIL
    images as base64 strings (the servers take an image item as a nested array or a base64 PNG/JPEG string)."""
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _to_jsonable(value.tolist()) if value.dtype.kind == "O" else value.tolist()
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = value.tobytes() if isinstance(value, memoryview) else bytes(value)
        if not data.startswith(_IMAGE_MAGIC):  # JSON has no bytes: only an image's have a meaning servers agree on
            raise InvalidInputError(
                f"the client sends bytes only when they are a PNG or JPEG file (as base64, which image endpoints "
                f"decode). Received: {len(data)} bytes starting {data[:8]!r}. Send text as a str, numbers as a "
                f"list or numpy array, or base64-encode the bytes yourself for an endpoint that expects that.")
        return base64.b64encode(data).decode("ascii")
    if _is_pil_image(value):
        return base64.b64encode(_png(value)).decode("ascii")
    return value


def _is_pil_image(value: Any) -> bool:
    # an object can only be a PIL image where PIL.Image was imported: the client never imports it itself
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG")
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"a PIL image in mode {image.mode!r} cannot be written as PNG ({exc}). Convert it first, e.g. "
            f"image.convert('RGB') or image.convert('L'), or send it as a numpy array.") from exc
    return buffer.getvalue()


def _dumps(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(_to_jsonable(payload), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:  # orjson.JSONEncodeError is one
        problem = _unjsonable(payload, "") or f"the inputs cannot be sent as JSON ({exc})"
        raise InvalidInputError(f"{problem}. Send {ACCEPTED_INPUTS}.") from exc


def _unjsonable(value: Any, where: str) -> str | None:
    """What the first value orjson refuses is, and where (`inputs[2]['image']`): for the error, so only then."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where or 'the inputs'} has the key {key!r} ({type(key).__name__}); JSON keys are strings"
            found = _unjsonable(item, f"{where}[{key!r}]" if where else key)
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype.kind == "O"):
        items = np.ndenumerate(value) if isinstance(value, np.ndarray) else enumerate(value)
        for index, item in items:
            found = _unjsonable(item, f"{where}[{_index(index)}]")
            if found:
                return found
        return None
    try:
        orjson.dumps(_to_jsonable(value), option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        kind = type(value)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        if isinstance(value, np.ndarray):
            name += f" of dtype {value.dtype}"
        detail = "" if "not JSON serializable" in str(exc) else f" ({exc})"
        return f"{where} is of type {name}{detail}, which the client cannot send as JSON"
    return None


def _index(index: Any) -> str:
    return ", ".join(map(str, index)) if isinstance(index, tuple) else str(index)


def _encode_infer(inputs: dict[str, np.ndarray], request_id: str | None) -> tuple[bytes, dict[str, str]]:
    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    if request_id:
        header["id"] = request_id
    blobs = []
    for name, value in inputs.items():
        array = np.ascontiguousarray(value)
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)  # the V2 wire is little-endian
        datatype = NUMPY_TO_V2.get(str(array.dtype))
        if datatype is None:
            raise TypeError(f"input '{name}' has dtype {value.dtype if hasattr(value, 'dtype') else array.dtype}, "
                            f"which the V2 protocol cannot carry. Send one of: {', '.join(sorted(NUMPY_TO_V2))}.")
        blob = array.tobytes()
        header["inputs"].append({"name": name, "shape": list(array.shape), "datatype": datatype,
                                 "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = orjson.dumps(header)
    return head + b"".join(blobs), {"inference-header-content-length": str(len(head)),
                                    "content-type": "application/octet-stream"}


def _decode_infer(response: httpx.Response) -> dict[str, np.ndarray]:
    body = response.content
    length = response.headers.get("inference-header-content-length")
    head = body[: int(length)] if length else body
    offset = int(length) if length else 0
    data = orjson.loads(head)
    outputs = {}
    for out in data["outputs"]:
        dtype = np.dtype(V2_DATATYPES[out["datatype"]])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            outputs[out["name"]] = np.frombuffer(body, dtype=dtype, count=size // dtype.itemsize,
                                                 offset=offset).reshape(out["shape"])
            offset += size
        else:
            outputs[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
    return outputs


def _backoff_s(attempt: int, response: httpx.Response, base_s: float) -> float:
    retry_after = response.headers.get("retry-after")
    wait = base_s * (2 ** attempt)
    if retry_after and retry_after.replace(".", "", 1).isdigit():
        wait = max(wait, min(float(retry_after), 10.0))
    return wait


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise ClientError(response.status_code, response.content)
    return orjson.loads(response.content)


class _Base:
    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 max_retries: int = 4, backoff_s: float = 0.05, verify: bool | str = True) -> None:
        """`token`: an API token; None takes $KAON_TOKEN when it is set (as `kaon monitor` does).
        `verify`: check the server's TLS certificate against the system's CAs (True), a CA or certificate
        file (a path, e.g. the self-signed cert.pem the server uses), or not at all (False)."""
        token = token if token is not None else os.environ.get("KAON_TOKEN") or None
        self.url = url.rstrip("/")
        self.verify: bool | ssl.SSLContext = verify if isinstance(verify, bool) else _trusting(verify)
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._model: str | None = None

    def _predict_body(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        if args and kwargs:
            raise TypeError("pass the inputs positionally (sent as 'inputs') or as named fields, not both")
        if len(args) > 1:
            raise TypeError(f"predict takes one positional argument (the inputs). Received: {len(args)}")
        return _dumps({"inputs": args[0]} if args else kwargs)

    @staticmethod
    def _named(inputs: Any) -> dict[str, np.ndarray]:
        return inputs if isinstance(inputs, dict) else {"__single__": np.asarray(inputs)}


class Client(_Base):
    """A synchronous client; use it as a context manager or call `.close()`."""

    def __init__(self, url: str, token: str | None = None, *, transport: httpx.BaseTransport | None = None,
                 **options: Any) -> None:
        super().__init__(url, token, **options)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=self.timeout_s,
                                  transport=transport, verify=self.verify)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, content: bytes | None = None,
              headers: dict[str, str] | None = None) -> httpx.Response:
        headers = headers or {"content-type": "application/json"}
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except httpx.ConnectError as exc:  # nothing was sent: safe to try again (a server still starting)
                if attempt == self.max_retries or _untrusted(exc):
                    raise _unreachable(self.url, exc, attempt + 1) from exc
                time.sleep(self.backoff_s * 2 ** attempt)
                continue
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc, attempt + 1) from exc
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return response
            time.sleep(_backoff_s(attempt, response, self.backoff_s))
        raise AssertionError("unreachable")

    def call(self, endpoint: str, **fields: Any) -> Any:
        return _result(self._send("POST", "/" + endpoint.lstrip("/"), self._predict_body((), fields)))

    def predict(self, *inputs: Any, **fields: Any) -> Any:
        return _result(self._send("POST", "/predict", self._predict_body(inputs, fields)))

    def infer(self, inputs: Any, model: str | None = None, request_id: str | None = None) -> dict[str, np.ndarray]:
        _check_model_name(model)
        model = model or self._model or self._discover_model()
        named = self._named(inputs)
        if "__single__" in named:
            meta = _result(self._send("GET", f"/v2/models/{model}"))
            named = {meta["inputs"][0]["name"]: named["__single__"]}
        body, headers = _encode_infer(named, request_id)
        response = self._send("POST", f"/v2/models/{model}/infer", body, headers)
        if response.status_code >= 400:
            raise ClientError(response.status_code, response.content)
        return _decode_infer(response)

    def _discover_model(self) -> str:
        self._model = _only_model(_result(self._send("GET", "/")).get("models") or [])
        return self._model

    def ready(self) -> bool:
        """True when the server answers /readyz with 200; False while it is starting, or not there at all."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient(_Base):
    """The async twin of Client: the same calls, awaited."""

    def __init__(self, url: str, token: str | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None, **options: Any) -> None:
        super().__init__(url, token, **options)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self.timeout_s,
                                       transport=transport, verify=self.verify)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, content: bytes | None = None,
                    headers: dict[str, str] | None = None) -> httpx.Response:
        headers = headers or {"content-type": "application/json"}
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except httpx.ConnectError as exc:  # nothing was sent: safe to try again (a server still starting)
                if attempt == self.max_retries or _untrusted(exc):
                    raise _unreachable(self.url, exc, attempt + 1) from exc
                await asyncio.sleep(self.backoff_s * 2 ** attempt)
                continue
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc, attempt + 1) from exc
            if response.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                return response
            await asyncio.sleep(_backoff_s(attempt, response, self.backoff_s))
        raise AssertionError("unreachable")

    async def call(self, endpoint: str, **fields: Any) -> Any:
        return _result(await self._send("POST", "/" + endpoint.lstrip("/"), self._predict_body((), fields)))

    async def predict(self, *inputs: Any, **fields: Any) -> Any:
        return _result(await self._send("POST", "/predict", self._predict_body(inputs, fields)))

    async def infer(self, inputs: Any, model: str | None = None,
                    request_id: str | None = None) -> dict[str, np.ndarray]:
        _check_model_name(model)
        if model is None and self._model is None:
            self._model = _only_model(_result(await self._send("GET", "/")).get("models") or [])
        model = model or self._model
        named = self._named(inputs)
        if "__single__" in named:
            meta = _result(await self._send("GET", f"/v2/models/{model}"))
            named = {meta["inputs"][0]["name"]: named["__single__"]}
        body, headers = _encode_infer(named, request_id)
        response = await self._send("POST", f"/v2/models/{model}/infer", body, headers)
        if response.status_code >= 400:
            raise ClientError(response.status_code, response.content)
        return _decode_infer(response)

    async def ready(self) -> bool:
        """True when the server answers /readyz with 200; False while it is starting, or not there at all."""
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False


def _check_model_name(model: object) -> None:
    if model is not None and not isinstance(model, str):
        raise InvalidInputError(
            f"model is the served model's name, a string. Received: {type(model).__name__}. A model with several "
            f"inputs takes them as one dict: infer({{'input_ids': ids, 'attention_mask': mask}}).")


def _only_model(models: list[str]) -> str:
    """The one model a server exposes, for infer() without model=."""
    if not models:
        raise KaonError("this server serves no models on the V2 routes (a Service without models): call its "
                        "endpoints with predict() or call('endpoint', ...) instead of infer().")
    if len(models) > 1:
        raise KaonError(f"the server exposes models {models}; pass model=NAME to infer().")
    return models[0]
