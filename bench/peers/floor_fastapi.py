"""The HTTP floor through FastAPI: an async route that answers a constant (the body is not parsed).

    uvicorn floor_fastapi:app --no-access-log --port 8000
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()
ANSWER = [{"probabilities": [0.1] * 10, "label": 0}]


@app.post("/predict")
async def predict() -> list[dict[str, Any]]:
    return ANSWER
