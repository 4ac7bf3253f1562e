"""Ray Serve (2.60.0) with `@serve.batch`: one replica, max_ongoing_requests above the batch size.

    BENCH_MODEL=digits.onnx BENCH_PORT=8000 python ray_peer.py
Starts a local Ray instance (num_cpus=2), deploys, and blocks until SIGTERM/SIGINT, then shuts
Ray down so that no Ray process outlives this script.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import numpy as np
import ray
from _common import MAX_BATCH_SIZE, MAX_WAIT_S, PORT, Digits, rows
from ray import serve
from starlette.requests import Request


@serve.deployment(num_replicas=1, max_ongoing_requests=2 * MAX_BATCH_SIZE, ray_actor_options={"num_cpus": 0},
                  logging_config={"log_level": "WARNING", "enable_access_log": False})
class DigitsDeployment:
    def __init__(self) -> None:
        self.model = Digits()

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=MAX_WAIT_S)
    async def predict(self, requests: list[list[Any]]) -> list[list[dict[str, Any]]]:
        sizes = [len(items) for items in requests]
        batch = np.asarray([item for items in requests for item in items], dtype=np.float32)
        answers = rows(self.model.run(batch))
        bounds = np.cumsum([0, *sizes]).tolist()
        return [answers[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]

    async def __call__(self, request: Request) -> list[dict[str, Any]]:
        body = await request.json()
        return await self.predict(body["inputs"])


def main() -> None:
    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT},
                    logging_config={"log_level": "WARNING", "enable_access_log": False})
        serve.run(DigitsDeployment.bind(), route_prefix="/predict", name="digits")
        print("ray serve ready", flush=True)
        while True:
            time.sleep(3600)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        sys.stdout.flush()


if __name__ == "__main__":
    main()
