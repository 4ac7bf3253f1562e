"""Serving: a Service becomes an ASGI app with batching, the V2 protocol, limits and metrics."""

from kaon.serving.app import KaonApp
from kaon.serving.batcher import Batcher, decide_flush
from kaon.serving.model_service import model_service
from kaon.serving.server import serve
from kaon.serving.service import Service, endpoint
from kaon.serving.tensors import Image, Tensor

__all__ = ["Batcher", "Image", "KaonApp", "Service", "Tensor", "decide_flush", "endpoint", "model_service", "serve"]
