"""LitServe (0.2.19) with batching: LitAPI(max_batch_size, batch_timeout), fast_queue on, one worker.

    BENCH_MODEL=digits.onnx BENCH_PORT=8000 python litserve_peer.py
LitServe runs the model in a separate worker process and passes requests to it over a queue
(ZeroMQ with fast_queue=True, its documented fast path).
"""

from __future__ import annotations

from typing import Any

import litserve as ls
import numpy as np
from _common import MAX_BATCH_SIZE, MAX_WAIT_S, PORT, Digits, rows


class DigitsAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Digits()

    def decode_request(self, request):  # noqa: ANN001, ANN201 - unannotated: LitServe passes the parsed JSON
        return np.asarray(request["inputs"], dtype=np.float32)  # (n, H, W)

    def batch(self, inputs: list[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        return np.concatenate(inputs), [len(x) for x in inputs]

    def predict(self, batch: Any) -> list[list[dict[str, Any]]]:
        if isinstance(batch, tuple):  # batched: (stacked items, items per request)
            stacked, sizes = batch
        else:
            stacked, sizes = batch, [len(batch)]
        answers = rows(self.model.run(stacked))
        bounds = np.cumsum([0, *sizes]).tolist()
        out = [answers[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]
        return out if isinstance(batch, tuple) else out[0]

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output):  # noqa: ANN001, ANN201 - an annotation would become a response model
        return output


if __name__ == "__main__":
    api = DigitsAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=MAX_WAIT_S)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, fast_queue=True, timeout=30)
    server.run(host="127.0.0.1", port=PORT, log_level="warning", generate_client_file=False)
