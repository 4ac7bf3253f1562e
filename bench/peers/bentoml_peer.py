"""BentoML (1.4.40) with adaptive batching: `@bentoml.api(batchable=True, max_batch_size, max_latency_ms)`.

    cd bench/peers && BENCH_MODEL=digits.onnx bentoml serve bentoml_peer:DigitsService --port 8000
One worker. The batchable API takes the `inputs` of many requests concatenated along axis 0 and
returns one list entry per input item, which BentoML splits back per request.
"""

from __future__ import annotations

from typing import Any

import bentoml
import numpy as np
from _common import MAX_BATCH_SIZE, Digits, rows


@bentoml.service(workers=1, traffic={"timeout": 30}, logging={"access": {"enabled": False}})
class DigitsService:
    def __init__(self) -> None:
        self.model = Digits()

    @bentoml.api(route="/predict", batchable=True, batch_dim=0, max_batch_size=MAX_BATCH_SIZE,
                 max_latency_ms=1000)
    def predict(self, inputs: np.ndarray) -> list[dict[str, Any]]:
        return rows(self.model.run(inputs.astype(np.float32, copy=False)))
