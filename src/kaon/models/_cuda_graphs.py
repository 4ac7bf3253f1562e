"""CUDA graphs of a torch module, one per batch-size bucket, for serving on a GPU.

A forward pass launched op by op from Python costs the CPU ~20 us per op: ~5-10 ms for ResNet-50 at any
batch size, the GIL held throughout. A captured graph replays every kernel in one call (~0.1 ms). A batch
of n runs in the graph of the smallest bucket >= n (its inputs copied into the graph's own buffers, the
rows past n left from earlier batches: they are computed and dropped); bigger batches run eagerly.

Graphs are captured on first use of a bucket, under a lock that also covers every replay and the copy of
its outputs, so two threads (the batcher, the V2 route) never share a graph's buffers. All graphs draw on
one memory pool. A module that cannot be captured (a host sync, a data-dependent shape) runs eagerly from
then on, with one warning in the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("kaon.models")

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256)
# Inputs whose other axes vary (token counts, say) get a graph per shape: past this many, new shapes run
# op by op rather than hold GPU memory for ever more graphs.
MAX_GRAPHS = 64


def bucket_for(n: int, buckets: tuple[int, ...] = BUCKETS) -> int | None:
    """The smallest bucket that holds a batch of n, or None when n is over the largest."""
    return next((b for b in buckets if b >= n), None)


class GraphRunner:
    """Runs `call(*args)` (args on the GPU, batch axis first) through captured CUDA graphs."""

    def __init__(self, call: Callable[..., Any], channels_last: bool) -> None:
        self.call = call
        self.channels_last = channels_last
        # (bucket, the inputs' other axes and dtypes) -> (graph, static inputs, static output)
        self.graphs: dict[tuple[Any, ...], tuple[Any, list[Any], Any]] = {}
        self.pool: Any = None
        self.lock = threading.Lock()
        self.disabled = False

    def buckets_up_to(self, max_batch_size: int) -> list[int]:
        """The buckets a batch of at most `max_batch_size` can land in."""
        top = bucket_for(max_batch_size) or BUCKETS[-1]
        return [b for b in BUCKETS if b <= top]

    def run(self, args: list[Any], finish: Callable[[Any], Any]) -> Any:
        """`finish(output)` (e.g. the copy to numpy) of the module's output for `args`, or None when this
        batch is not for a graph (the caller then runs it eagerly)."""
        import torch
        from torch.utils._pytree import tree_map

        n = int(args[0].shape[0]) if args and args[0].dim() > 0 else 0
        bucket = bucket_for(n)
        if self.disabled or bucket is None or any(a.dim() == 0 or a.shape[0] != n for a in args):
            return None
        key = (bucket, *((tuple(a.shape[1:]), a.dtype) for a in args))
        with self.lock, torch.inference_mode():
            entry = self.graphs.get(key)
            if entry is None:
                if len(self.graphs) >= MAX_GRAPHS:
                    return None
                entry = self._capture(bucket, args)
                if entry is None:
                    return None
                self.graphs[key] = entry
            graph, static_inputs, static_output = entry
            for static, arg in zip(static_inputs, args, strict=True):
                static[:n].copy_(arg)
            graph.replay()
            return finish(tree_map(lambda t: t[:n] if isinstance(t, torch.Tensor) else t, static_output))

    def _capture(self, bucket: int, args: list[Any]) -> tuple[Any, list[Any], Any] | None:
        import torch

        try:
            static_inputs = []
            for arg in args:
                static = torch.zeros((bucket, *arg.shape[1:]), dtype=arg.dtype, device=arg.device)
                if self.channels_last and static.dim() == 4:
                    static = static.contiguous(memory_format=torch.channels_last)
                static_inputs.append(static)
            device = static_inputs[0].device
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: cuDNN/cuBLAS pick their kernels outside the capture
                    self.call(*static_inputs)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                static_output = self.call(*static_inputs)
            if self.pool is None:
                self.pool = graph.pool()
        except Exception as exc:  # noqa: BLE001 - any capture failure: eager from now on, said once
            self.disabled = True
            log.warning("CUDA graph capture failed (%s: %s); the model runs op by op from now on.",
                        type(exc).__name__, exc)
            return None
        log.info("captured a CUDA graph for batches of up to %d", bucket)
        return graph, static_inputs, static_output
