"""Measure every variant the same way: accuracy on held-out data, file size, p50 latency, throughput.

Timing is interleaved: each round gives every runner one slot of `round_s` seconds, in a rotating
order, and keeps each call's duration, so a noisy neighbour on a shared machine slows every
variant alike. p50 is the median call at batch 1; throughput is batch size / median call at batch 64.

    >>> runner = onnx_runner(Path("model.onnx"), num_threads=1)                 # doctest: +SKIP
    >>> durations = time_interleaved({"onnx": lambda: runner(feeds)})           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from kaon._internal.scores import class_scores
from kaon.errors import require

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]  # feeds -> first output
BATCH_LATENCY = 1
BATCH_THROUGHPUT = 64


@dataclass(frozen=True)
class Timing:
    p50_ms_b1: float
    throughput_b64: float  # samples per second at batch 64


def onnx_session(path: Path, *, num_threads: int, providers: Sequence[str] | None = None) -> Any:
    """An onnxruntime session with all graph optimizations and a fixed thread count."""
    ort = require("onnxruntime", "onnx", "Running an ONNX model")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def onnx_runner(path: Path, *, num_threads: int, providers: Sequence[str] | None = None) -> Runner:
    session = onnx_session(path, num_threads=num_threads, providers=providers)
    first = session.get_outputs()[0].name

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([first], feeds)[0]  # type: ignore[no-any-return]

    return run


def torch_runner(module: Any, input_names: Sequence[str]) -> Runner:
    """Call a torch module (eager, inference mode) on numpy feeds, inputs in signature order."""
    torch = require("torch", "torch", "Running a PyTorch model")
    names = list(input_names)

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(feeds[n]) for n in names])
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.detach().float().numpy()  # type: ignore[no-any-return]

    return run


def model_runner(model: Any) -> Runner:
    """A kaon Model's own `run` (what `kaon serve` calls), first output."""
    first = model.signature.outputs[0].name

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        return model.run(feeds)[first]  # type: ignore[no-any-return]

    return run


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `num_threads` inside the block (onnxruntime's are per session)."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(runner: Runner, name: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([runner({name: np.ascontiguousarray(x[i:i + batch_size])})
                           for i in range(0, len(x), batch_size)])


def batch_dependence(runner: Runner, name: str, x: np.ndarray) -> tuple[float, int]:
    """How far each input's outputs move between running alone and in one batch with the others (int8-dynamic
    scales a batch's activations by that batch's range): the largest absolute difference, and how many argmax
    labels change (for outputs of several classes)."""
    together = predict(runner, name, x, batch_size=len(x))
    alone = predict(runner, name, x, batch_size=1)
    gap = float(np.abs(together.astype(np.float64) - alone).max()) if together.size else 0.0
    classes = together.ndim == 2 and together.shape[1] > 1
    return gap, int((together.argmax(-1) != alone.argmax(-1)).sum()) if classes else 0


def accuracy(outputs: np.ndarray, y: np.ndarray, probabilities: bool | None = None) -> float:
    """Share of correct predictions; a binary model's one output counts as two classes (class_scores), read as
    `probabilities` (the model's, decided once) or logits."""
    return float(np.mean(class_scores(outputs, probabilities).argmax(axis=-1) == y))


def time_interleaved(calls: dict[str, Callable[[], object]], *, num_rounds: int = 5,
                     round_s: float = 0.05, min_calls: int = 3) -> dict[str, list[float]]:
    """Per-call durations (s) of each call, `num_rounds` interleaved rounds of about `round_s` each."""
    names = list(calls)
    for call in calls.values():  # warm up: first runs allocate and JIT
        call()
    durations: dict[str, list[float]] = {n: [] for n in names}
    for round_index in range(num_rounds):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            call, samples = calls[name], durations[name]
            clock = time.perf_counter
            deadline = clock() + round_s
            count = 0
            while count < min_calls or clock() < deadline:
                start = clock()
                call()
                samples.append(clock() - start)
                count += 1
    return durations


def time_runners(runners: dict[str, Runner], name: str, x: np.ndarray, *, num_rounds: int = 5,
                 round_s: float = 0.05) -> dict[str, Timing]:
    """p50 at batch 1 and throughput at batch 64 for every runner, on the same inputs, interleaved."""
    x1 = {name: np.ascontiguousarray(x[:BATCH_LATENCY])}
    x64 = {name: np.ascontiguousarray(_tile(x, BATCH_THROUGHPUT))}
    calls: dict[str, Callable[[], object]] = {}
    for key, runner in runners.items():
        calls[f"{key}|1"] = partial(runner, x1)
        calls[f"{key}|64"] = partial(runner, x64)
    durations = time_interleaved(calls, num_rounds=num_rounds, round_s=round_s)
    return {key: Timing(p50_ms_b1=statistics.median(durations[f"{key}|1"]) * 1000,
                        throughput_b64=BATCH_THROUGHPUT / statistics.median(durations[f"{key}|64"]))
            for key in runners}


def _tile(x: np.ndarray, n: int) -> np.ndarray:
    reps = -(-n // len(x))
    return np.concatenate([x] * reps)[:n] if reps > 1 else x[:n]


def file_size(paths: Sequence[Path]) -> int:
    return int(sum(Path(p).stat().st_size for p in paths))
