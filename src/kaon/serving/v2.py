"""The Open Inference Protocol (KServe V2) over REST: tensors in and out, JSON or binary.

The binary-data extension: the body is a JSON header of `Inference-Header-Content-Length` bytes
followed by the raw little-endian tensors, in order, each announced by `binary_data_size` in its
tensor's `parameters`. Clients such as tritonclient send it with no or an octet-stream
Content-Type, so the body is parsed from the header, never from the Content-Type.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson

from kaon.errors import InvalidInputError, MalformedRequestError
from kaon.serving.batcher import check_request_size
from kaon.serving.tensors import numbers_to_array
from kaon.types import NUMPY_TO_V2, V2_DATATYPES, Signature


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    output_names: list[str] | None  # None: every output
    binary_outputs: set[str]  # outputs to return as binary data
    binary_default: bool


def decode_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Parse a V2 infer body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise MalformedRequestError(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes."
            )
        header_bytes, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        request = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequestError(f"the inference request is not valid JSON: {exc}") from exc
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise MalformedRequestError(
            "expected a V2 inference request: an object with an 'inputs' list of "
            "{name, shape, datatype, data}. Received: " + type(request).__name__
        )
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for tensor in request["inputs"]:
        array, used = _decode_tensor(tensor, binary, offset)
        if tensor["name"] in inputs:
            raise InvalidInputError(f"input '{tensor['name']}' is given twice. Send each input once.")
        inputs[tensor["name"]] = array
        offset += used
    if offset != len(binary):
        raise MalformedRequestError(
            f"the binary tensors announce {offset} bytes but {len(binary)} bytes follow the JSON header."
        )
    params = _parameters(request, "the request")
    binary_default = bool(params.get("binary_data_output", False))
    outputs = request.get("outputs")
    output_names = None
    binary_outputs: set[str] = set()
    if isinstance(outputs, list):
        output_names = []
        for out in outputs:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise MalformedRequestError(f"each requested output needs a 'name' string. Received: {str(out)[:200]}")
            output_names.append(out["name"])
            if _parameters(out, f"output '{out['name']}'").get("binary_data", binary_default):
                binary_outputs.add(out["name"])
    return InferRequest(request.get("id"), inputs, output_names, binary_outputs, binary_default)


def _parameters(holder: dict[str, Any], where: str) -> dict[str, Any]:
    """A V2 'parameters' object (absent or null: none)."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise MalformedRequestError(f"{where}: 'parameters' is an object. Received: {str(params)[:200]}")
    return params


def _decode_tensor(tensor: Any, binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(tensor, dict) or not {"name", "shape", "datatype"} <= tensor.keys():
        raise MalformedRequestError(
            f"each input tensor needs 'name', 'shape' and 'datatype'. Received: {str(tensor)[:200]}"
        )
    name, shape, datatype = tensor["name"], tensor["shape"], tensor["datatype"]
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise MalformedRequestError(
            f"an input tensor's 'name' and 'datatype' are strings. Received: name={str(name)[:80]}, "
            f"datatype={str(datatype)[:80]}")
    if datatype not in V2_DATATYPES or datatype == "BYTES":
        raise InvalidInputError(
            f"input '{name}': datatype {datatype!r} is not supported. "
            f"Expected one of {sorted(k for k in V2_DATATYPES if k != 'BYTES')}."
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise MalformedRequestError(
            f"input '{name}': shape must be a list of non-negative integers. Received: {shape!r}")
    dtype = np.dtype(V2_DATATYPES[datatype])
    count = math.prod(shape)  # Python ints: a huge shape is a size mismatch below, not an overflow
    size = _parameters(tensor, f"input '{name}'").get("binary_data_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise MalformedRequestError(f"input '{name}': binary_data_size must be a byte count. Received: {size!r}")
    if size is not None:
        if size != count * dtype.itemsize:
            raise InvalidInputError(
                f"input '{name}': binary_data_size is {size} bytes but shape {shape} of {datatype} needs "
                f"{count * dtype.itemsize}."
            )
        if offset + size > len(binary):
            raise MalformedRequestError(f"input '{name}': the body ends before its {size} bytes of binary data.")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
        if dtype.kind == "f" and not np.isfinite(array).all():  # as the JSON tensors and kaon's other routes
            raise InvalidInputError(
                f"input '{name}': expected finite numbers ({datatype}). Received: NaN or infinity in its binary "
                f"data. Replace missing values before sending (a model answers NaN to NaN).")
        return array.astype(dtype, copy=False), size
    if "data" not in tensor:
        raise MalformedRequestError(f"input '{name}' has neither 'data' nor parameters.binary_data_size.")
    try:
        array = numbers_to_array(tensor["data"], dtype, f"a list of {datatype} values")
    except ValueError as exc:
        raise InvalidInputError(f"input '{name}': {exc}") from exc
    if array.size != count:
        raise InvalidInputError(
            f"input '{name}': shape {shape} needs {count} values. Received: {array.size} values."
        )
    return array.reshape(shape), 0


def encode_infer_response(model_name: str, model_version: str | None, request: InferRequest,
                          outputs: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """The V2 response body and its extra headers (binary outputs add Inference-Header-Content-Length)."""
    names = request.output_names if request.output_names is not None else list(outputs)
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise InvalidInputError(f"requested outputs {unknown} do not exist. Expected some of {list(outputs)}.")
    tensors = []
    blobs = []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        datatype = NUMPY_TO_V2.get(str(array.dtype), "FP32")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary_outputs or (request.output_names is None and request.binary_default):
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "outputs": tensors}
    if model_version is not None:
        response["model_version"] = model_version
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def model_metadata(name: str, versions: list[str], platform: str, signature: Signature,
                   any_batch: bool = False) -> dict[str, Any]:
    """`any_batch`: a model exported with a fixed batch, which kaon runs on any number of rows (in calls of that
    size): its batch axis reads -1, as what a request may send, not the 1 it was exported with."""
    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.v2_datatype,
                 "shape": [-1, *s.shape[1:]] if any_batch and s.shape else list(s.shape)} for s in specs]

    return {"name": name, "versions": versions, "platform": platform,
            "inputs": tensors(signature.inputs), "outputs": tensors(signature.outputs)}


def model_config(name: str, platform: str, signature: Signature, max_batch_size: int,
                 max_wait_ms: float) -> dict[str, Any]:
    """Triton's model configuration extension (`GET /v2/models/{name}/config`), as Triton writes it in JSON:
    the batch axis is left out of `dims` because `max_batch_size` is above 0, and datatypes are TYPE_*."""
    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": s.name, "data_type": _config_datatype(s.v2_datatype), "dims": list(s.shape[1:])}
                for s in specs]

    return {"name": name, "platform": platform, "backend": "kaon", "max_batch_size": max_batch_size,
            "input": tensors(signature.inputs), "output": tensors(signature.outputs),
            "dynamic_batching": {"max_queue_delay_microseconds": round(max_wait_ms * 1000)},
            "version_policy": {"latest": {"num_versions": 1}}}


def _config_datatype(v2: str) -> str:
    return "TYPE_STRING" if v2 == "BYTES" else f"TYPE_{v2}"


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


@dataclass
class ModelStats:
    """Triton's statistics extension for one model, counted by this process since it started.
    Per request: success/fail (count, total ns), queue (submitted until its batch started), compute_input
    (parse and check), compute_infer (its batch's model call), compute_output (encode). Per model call:
    execution_count, and batch_stats by batch size."""

    success: list[int] = field(default_factory=lambda: [0, 0])
    fail: list[int] = field(default_factory=lambda: [0, 0])
    queue: list[int] = field(default_factory=lambda: [0, 0])
    compute_input: list[int] = field(default_factory=lambda: [0, 0])
    compute_infer: list[int] = field(default_factory=lambda: [0, 0])
    compute_output: list[int] = field(default_factory=lambda: [0, 0])
    inference_count: int = 0  # batch rows answered
    execution_count: int = 0  # model calls (written by the batch thread only)
    last_inference_ms: int = 0
    batches: dict[int, list[int]] = field(default_factory=dict)  # batch rows -> [model calls, ns]

    def executed(self, rows: int, ns: int) -> None:
        self.execution_count += 1
        entry = self.batches.setdefault(rows, [0, 0])
        entry[0] += 1
        entry[1] += ns

    def to_dict(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name, "version": version, "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {key: _duration(*getattr(self, key)) for key in (
                "success", "fail", "queue", "compute_input", "compute_infer", "compute_output")},
            "batch_stats": [{"batch_size": size, "compute_infer": _duration(*entry)}
                            for size, entry in sorted(self.batches.items())],
        }


def _add(duration: list[int], ns: int) -> None:
    duration[0] += 1
    duration[1] += ns


# The V2 routes and their methods (after /v2 and, for a model's, after /models/NAME[/versions/V]): another
# method on one of these paths is a 405 naming the one it takes, as kaon's other routes answer
_V2_SERVER_ROUTES = {(): "GET", ("health", "live"): "GET", ("health", "ready"): "GET", ("models", "stats"): "GET",
                     ("repository", "index"): "POST"}
_V2_MODEL_ROUTES = {(): "GET", ("ready",): "GET", ("config",): "GET", ("stats",): "GET", ("infer",): "POST"}


def _refuse_method(request: Any, allowed: str | None) -> None:
    """A 405 when the path is a V2 route that takes another method."""
    if allowed is None:
        return
    from kaon.errors import MethodNotAllowedError

    raise MethodNotAllowedError(f"{request.method} is not allowed on {request.path}; it takes {allowed}.",
                                allowed=[allowed, "HEAD"] if allowed == "GET" else [allowed])


class V2Routes:
    """The V2 REST routes for the models a Service exposes; infer requests share a batcher per model.
    Besides the core protocol: Triton's model configuration and statistics extensions and the model
    repository index, which tritonclient's get_model_config, get_inference_statistics and
    get_model_repository_index call (perf_analyzer reads the first)."""

    def __init__(self, models: dict[str, Any], config: Any, metrics: Any, version: str | None = None) -> None:
        from kaon.serving.batcher import Batcher, Deadlines

        self.models = models
        self.version = str(version) if version is not None else "1"
        self.max_batch_size, self.max_wait_ms = config.max_batch_size, config.max_wait_ms
        self.max_rows = config.max_queue  # rows per infer request, as /predict takes at most max_queue inputs
        self.batchers: dict[str, Batcher] = {}
        self.deadlines: dict[str, Deadlines] = {}
        self.stats = {name: ModelStats() for name in models}
        for name, model in models.items():
            self.batchers[name] = Batcher(
                self._runner(model, self.stats[name]), max_batch_size=config.max_batch_size,
                max_wait_ms=config.max_wait_ms,
                max_queue=config.max_queue, name=f"v2:{name}",
                on_batch=metrics.batch_size.labels(f"v2:{name}").observe,
            )
            self.deadlines[name] = Deadlines(config.timeout_s, partial(_timeout_error, name, config.timeout_s))

    @staticmethod
    def _runner(model: Any, stats: ModelStats) -> Any:
        """Runs a batch of requests; each result is (outputs, when its model call started, how long it took)."""
        from kaon.serving.batcher import run_by_shape

        def run_merged(requests: list[dict[str, np.ndarray]]) -> list[tuple[dict[str, np.ndarray], int, int]]:
            started = time.perf_counter_ns()
            sizes = [len(next(iter(r.values()))) for r in requests]
            if len(requests) == 1:
                answers = [model.run(requests[0])]
            else:
                merged = {k: np.concatenate([r[k] for r in requests]) for k in requests[0]}
                outputs = model.run(merged)
                bounds = np.cumsum([0, *sizes])
                answers = [{k: v[bounds[i]:bounds[i + 1]] for k, v in outputs.items()} for i in range(len(requests))]
            took = time.perf_counter_ns() - started
            stats.executed(sum(sizes), took)
            return [(answer, started, took) for answer in answers]

        def run(requests: list[dict[str, np.ndarray]]) -> list[tuple[dict[str, np.ndarray], int, int]]:
            return run_by_shape(requests, [tuple(v.shape[1:] for v in r.values()) for r in requests], run_merged)

        return run

    async def stop(self) -> None:
        for batcher in self.batchers.values():
            await batcher.stop()
        for deadlines in self.deadlines.values():
            deadlines.close()

    async def handle(self, request: Any) -> Any:
        from kaon.errors import NotFoundError
        from kaon.serving.http import Response

        parts = [p for p in request.path.split("/") if p][1:]  # drop "v2"
        method = "GET" if request.method == "HEAD" else request.method  # HEAD: a GET's headers, the body left out
        if method == "GET":
            if not parts:
                return Response.json({"name": "kaon", "version": _kaon_version(),
                                      "extensions": ["binary_tensor_data", "model_configuration", "statistics"]})
            if parts in (["health", "live"], ["health", "ready"]):
                return Response.json({"live": True} if parts[1] == "live" else {"ready": True})
            if parts == ["models", "stats"] and "stats" not in self.models:  # every model's (as Triton)
                return Response.json({"model_stats": [self.stats[n].to_dict(n, self.version) for n in self.models]})
        if method == "POST" and parts == ["repository", "index"]:
            return Response.json([{"name": n, "version": self.version, "state": "READY"} for n in self.models])
        if not parts or parts[0] != "models" or len(parts) < 2 or (parts == ["models", "stats"]
                                                                   and "stats" not in self.models):
            _refuse_method(request, _V2_SERVER_ROUTES.get(tuple(parts)))
            raise NotFoundError(f"no V2 route {request.method} {request.path}")
        name, rest = parts[1], parts[2:]
        if name not in self.models:
            raise NotFoundError(f"model '{name}' is not served here. Served: {sorted(self.models)}.")
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != self.version:
                asked = f"version '{rest[1]}'" if len(rest) > 1 else "version given"
                raise NotFoundError(f"model '{name}' has no {asked}; served: version '{self.version}'.")
            rest = rest[2:]
        model = self.models[name]
        if method == "GET" and not rest:
            return Response.json(model_metadata(name, [self.version], f"kaon_{model.framework}", model.signature,
                                                any_batch=model.fixed_batch is not None))
        if method == "GET" and rest == ["ready"]:
            return Response.json({"name": name, "ready": True})
        if method == "GET" and rest == ["config"]:
            return Response.json(model_config(name, f"kaon_{model.framework}", model.signature,
                                              self.max_batch_size, self.max_wait_ms))
        if method == "GET" and rest == ["stats"]:
            return Response.json({"model_stats": [self.stats[name].to_dict(name, self.version)]})
        if method == "POST" and rest == ["infer"]:
            return await self._infer(name, model, request)
        _refuse_method(request, _V2_MODEL_ROUTES.get(tuple(rest)))
        raise NotFoundError(f"no V2 route {request.method} {request.path}")

    async def _infer(self, name: str, model: Any, request: Any) -> Any:
        stats = self.stats[name]
        arrived = time.perf_counter_ns()
        try:
            return await self._infer_counted(name, model, request, stats, arrived)
        except BaseException:
            _add(stats.fail, time.perf_counter_ns() - arrived)
            raise

    async def _infer_counted(self, name: str, model: Any, request: Any, stats: ModelStats, arrived: int) -> Any:
        from kaon.serving.http import Response

        raw_length = request.headers.get("inference-header-content-length")
        if raw_length is not None and not raw_length.strip().isdigit():
            raise MalformedRequestError(f"Inference-Header-Content-Length is the JSON header's size in bytes. "
                                        f"Received: {raw_length[:40]!r}.")
        header_length = int(raw_length) if raw_length is not None else None
        infer = decode_infer_request(request.body, header_length)
        inputs = model.validate(infer.inputs)
        sizes = {len(v) for v in inputs.values()}
        if len(sizes) > 1:
            raise InvalidInputError(f"all inputs must have the same batch size. Received: {sorted(sizes)}.")
        check_request_size(max(sizes, default=0), self.max_rows, "rows")
        submitted = time.perf_counter_ns()
        future = self.batchers[name].submit([inputs])
        self.deadlines[name].add(future)  # a 504 after --timeout-s, as on the endpoints
        ((outputs, started, took),) = await future
        answered = time.perf_counter_ns()
        body, headers = encode_infer_response(name, self.version, infer, outputs)
        done = time.perf_counter_ns()
        _add(stats.compute_input, submitted - arrived)
        _add(stats.queue, max(0, started - submitted))
        _add(stats.compute_infer, took)
        _add(stats.compute_output, done - answered)
        _add(stats.success, done - arrived)
        stats.inference_count += sizes.pop() if sizes else 0
        stats.last_inference_ms = time.time_ns() // 1_000_000
        extra = [(k.encode(), v.encode()) for k, v in headers.items() if k != "content-type"]
        return Response(200, body, content_type=headers["content-type"].encode(), headers=extra)


def _timeout_error(name: str, timeout_s: float) -> Exception:
    from kaon.errors import EndpointTimeoutError

    return EndpointTimeoutError(f"model '{name}' did not answer within {timeout_s:g} s (--timeout-s). "
                                f"Send smaller batches, or raise --timeout-s.")


def _kaon_version() -> str:
    from kaon import __version__

    return __version__
