"""What every peer server shares: the model session, the request decoding and the answer shape.

A peer reads its settings from the environment the benchmark sets:
BENCH_MODEL (the .onnx file), BENCH_PORT, BENCH_MAX_BATCH_SIZE, BENCH_MAX_WAIT_MS and
BENCH_NUM_THREADS (onnxruntime intra-op threads; 0 = onnxruntime's default, as kaon's KAON_NUM_THREADS).
The session is built exactly as kaon builds it (kaon/models/onnx.py), so that every server runs
the same graph with the same optimizations; only the serving machinery differs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

MODEL = os.environ.get("BENCH_MODEL", "digits.onnx")
PORT = int(os.environ.get("BENCH_PORT", "8000"))
MAX_BATCH_SIZE = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "64"))
MAX_WAIT_S = float(os.environ.get("BENCH_MAX_WAIT_MS", "5")) / 1000.0
NUM_THREADS = int(os.environ.get("BENCH_NUM_THREADS", "0"))


def load_session(path: str = MODEL) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if NUM_THREADS:
        options.intra_op_num_threads = NUM_THREADS
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class Digits:
    """The model behind every peer: items of (H, W) pixels in, one {probabilities, label} per item out."""

    def __init__(self, path: str = MODEL) -> None:
        self.session = load_session(path)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """(N, H, W) or (N, 1, H, W) float32 -> (N, 10) probabilities."""
        if batch.ndim == 3:
            batch = batch[:, None]  # (N, 1, H, W)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def predict(self, items: list[Any]) -> list[dict[str, Any]]:
        """A list of (H, W) nested lists -> one answer per item, in the shape kaon answers."""
        return rows(self.run(np.asarray(items, dtype=np.float32)))


def rows(probabilities: np.ndarray) -> list[dict[str, Any]]:
    labels = probabilities.argmax(axis=1).tolist()
    return [{"probabilities": p, "label": k} for p, k in zip(probabilities.tolist(), labels, strict=True)]
