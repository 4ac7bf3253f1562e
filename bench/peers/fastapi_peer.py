"""Plain FastAPI + uvicorn, no batching: one forward pass per request, in FastAPI's thread pool.

    BENCH_MODEL=digits.onnx uvicorn fastapi_peer:app --port 8000 --no-access-log
"""

from __future__ import annotations

from typing import Any

from _common import Digits
from fastapi import FastAPI
from pydantic import BaseModel

model = Digits()
app = FastAPI()


class PredictRequest(BaseModel):
    inputs: list[list[list[float]]]  # N items of (H, W) pixels


@app.post("/predict")
def predict(request: PredictRequest) -> list[dict[str, Any]]:
    return model.predict(request.inputs)
