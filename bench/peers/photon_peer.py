"""Lepton's Photon (leptonai 0.27.3) with its batching: `@Photon.handler(max_batch_size, max_wait_time)`.

    BENCH_MODEL=digits.onnx BENCH_PORT=8000 python photon_peer.py
With batching, Photon calls the handler with one list per argument (one entry per request) and
expects one result per request back.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from _common import MAX_BATCH_SIZE, MAX_WAIT_S, PORT, Digits, rows
from leptonai.photon import Photon


class DigitsPhoton(Photon):
    def init(self) -> None:
        self.model = Digits()

    @Photon.handler(path="predict", max_batch_size=MAX_BATCH_SIZE, max_wait_time=MAX_WAIT_S)
    def predict(self, inputs: list[list[list[float]]]) -> list[dict[str, Any]]:
        # annotated per request; batched, `inputs` holds one such list per request
        sizes = [len(items) for items in inputs]
        batch = np.asarray([item for items in inputs for item in items], dtype=np.float32)
        answers = rows(self.model.run(batch))
        bounds = np.cumsum([0, *sizes]).tolist()
        return [answers[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]


if __name__ == "__main__":
    DigitsPhoton().launch(host="127.0.0.1", port=PORT, log_level="warning")
    logging.shutdown()
