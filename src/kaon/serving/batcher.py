"""Dynamic batching: concurrent requests to one endpoint share one forward pass.

The decision to flush is a pure function of the queue and the clock (`decide_flush`); the
`Batcher` only applies it. A batch is flushed when it is full, when its oldest request has waited
`max_wait_ms`, or at once when no other request is on its way in: waiting then would only add
latency, so a lone client sees no batch window at all.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kaon._internal.processes import process_cores
from kaon.errors import KaonError, OverloadedError, PayloadTooLargeError

# A handler whose batches take less than this on average runs on the event loop itself: handing a
# 100 us batch to a worker thread costs more than the batch (measured: ~10% of CPU at c64).
INLINE_MAX_S = 0.0005
# A batch timed in the worker thread also counts the time it waited for the GIL while the event loop ran,
# so under load a fast handler can look slow there and never come back to the loop. Every PROBE_EVERY-th
# batch of a handler measured under PROBE_MAX_S runs inline once, where the timing is the handler's own.
PROBE_EVERY = 64
PROBE_MAX_S = 0.005
# A process with one core to itself (a `--workers N` worker given one core's share, or a one-core machine) gains
# no parallelism from the batch thread, only thread switches and caches the two threads evict for each other.
# There, batches up to ONE_CORE_INLINE_MAX_S run on the event loop as well, so /healthz still answers within
# about that long. Measured with the heavy CNN of bench/serving.py (~20 ms batches), --workers 2 on 2 cores, c64:
# 6 interleaved rounds, median 1,400 req/s inline against 1,335 in the thread (BENCHMARKS.md, session 12).
ONE_CORE_INLINE_MAX_S = 0.1


def default_inline_max_s() -> float:
    """How long a batch may take and still run on the event loop, for this process. A process driving a GPU keeps
    the thread on one core too: while a batch runs on the card, the event loop reads and decodes the next ones."""
    return ONE_CORE_INLINE_MAX_S if process_cores() <= 1 and not _uses_cuda() else INLINE_MAX_S


def _uses_cuda() -> bool:
    """Whether this process has started CUDA (a served model on a GPU: setup() runs before the batchers exist)."""
    torch = sys.modules.get("torch")
    return torch is not None and bool(torch.cuda.is_initialized())


@dataclass(frozen=True)
class FlushDecision:
    flush: bool
    wait_s: float  # how long to wait before deciding again when not flushing


def decide_flush(num_queued: int, oldest_wait_s: float, num_arriving: int,
                 max_batch_size: int, max_wait_s: float) -> FlushDecision:
    """Flush now, or wait how long? `num_arriving` counts requests admitted but not yet queued."""
    if num_queued == 0:
        return FlushDecision(False, math.inf)
    if num_queued >= max_batch_size or oldest_wait_s >= max_wait_s or num_arriving == 0:
        return FlushDecision(True, 0.0)
    return FlushDecision(False, max_wait_s - oldest_wait_s)


class Deadlines:
    """Fails each future still not done `timeout_s` after `add`, with `expired()`: one timer for all of them.

    A timer per request (`loop.call_later` and its cancel) cost ~3 us, a tenth of a small model's whole request
    path. For one batcher's requests the deadlines come in order (one timeout) and the futures complete in
    order (batches are taken and run first in, first out), so a queue whose done head is dropped on every `add`
    stays as short as the requests in flight, and one timer on its oldest entry is enough.
    """

    def __init__(self, timeout_s: float, expired: Callable[[], BaseException]) -> None:
        self.timeout_s = timeout_s
        self._expired = expired
        self._queue: deque[tuple[float, asyncio.Future[Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, future: asyncio.Future[Any]) -> None:
        queue = self._queue
        while queue and queue[0][1].done():
            queue.popleft()
        loop = future.get_loop()
        deadline = loop.time() + self.timeout_s
        queue.append((deadline, future))
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        queue = self._queue
        now = loop.time()
        while queue and (queue[0][1].done() or queue[0][0] <= now):
            _, future = queue.popleft()
            if not future.done():
                future.set_exception(self._expired())
        if queue:
            self._timer = loop.call_at(queue[0][0], self._expire, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def run_by_shape(items: list[Any], shapes: list[Any], run: Callable[[list[Any]], Any]) -> list[Any]:
    """`run(items)`, or, when the items have several shapes, `run` once per shape: a model whose inputs have a
    dynamic axis besides the batch (a sequence length, say) takes one shape per call. Results in the items'
    order; `run` returns one result per item it is given."""
    groups: dict[Any, list[int]] = {}
    for index, shape in enumerate(shapes):
        groups.setdefault(shape, []).append(index)
    if len(groups) == 1:
        return list(run(items))
    results: list[Any] = [None] * len(items)
    for group in groups.values():
        for index, result in zip(group, run([items[i] for i in group]), strict=True):
            results[index] = result
    return results


def check_request_size(count: int, limit: int, what: str) -> None:
    """One request with more inputs (or V2 rows) than --max-queue: a 413, since no retry could pass."""
    if count > limit:
        raise PayloadTooLargeError(f"the request has {count} {what}; at most {limit} are accepted per request "
                                   f"(--max-queue). Split it into smaller requests.")


@dataclass
class _Pending:
    items: list[Any]
    future: asyncio.Future[list[Any]]
    enqueued_s: float


class Batcher:
    """Queues requests for one endpoint and runs `handler(items) -> results` on batches of them."""

    def __init__(
        self,
        handler: Callable[[list[Any]], Any],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        is_async: bool = False,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int], None] | None = None,
        name: str = "endpoint",
        inline_max_s: float | None = None,
    ) -> None:
        self.handler = handler
        # a handler whose batches take less than this on average runs on the event loop (INLINE_MAX_S)
        self.inline_max_s = default_inline_max_s() if inline_max_s is None else inline_max_s
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.is_async = is_async
        self.clock = clock
        self.on_batch = on_batch
        self.name = name
        self.num_arriving = 0
        self._queue: deque[_Pending] = deque()
        self._num_queued_items = 0
        self._waiter: asyncio.Future[None] | None = None  # what the batcher's task sleeps on while it waits
        self._task: asyncio.Task[None] | None = None
        # the loop the batcher runs on, kept: asyncio.get_running_loop() makes a getpid() system call each time
        # on Python 3.11 (fork safety), ~1.5 us a request at c64 here (an A/B; py-spy, whose stops lengthen system
        # calls, put 7% of the loop's busy samples there)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kaon-{name}")
        self._mean_batch_s: float | None = None  # EWMA of a batch's run time; the first batch uses the thread
        self._threaded_batches = 0  # batches run in the thread since the last inline one (for the probe)

    @property
    def queue_depth(self) -> int:
        return self._num_queued_items

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(OverloadedError("the server is shutting down; retry", retry_after_s=1))
        self._queue.clear()
        self._executor.shutdown(wait=False)

    def arriving(self) -> None:
        """A request for this endpoint was admitted and is being decoded."""
        self.num_arriving += 1

    def arrived(self) -> None:
        self.num_arriving = max(0, self.num_arriving - 1)

    def submit(self, items: list[Any]) -> asyncio.Future[list[Any]]:
        """Queue one request's items; the future resolves to its results. Full queue: OverloadedError (503,
        retry); more items in one request than the queue holds: PayloadTooLargeError (413, a retry cannot help)."""
        check_request_size(len(items), self.max_queue, f"inputs for endpoint '{self.name}'")
        if self._num_queued_items + len(items) > self.max_queue:
            raise OverloadedError(
                f"endpoint '{self.name}' has {self._num_queued_items} items queued (max_queue={self.max_queue}). "
                f"Retry after a short wait, or raise --max-queue / add replicas.",
                retry_after_s=1.0,
            )
        self.start()
        assert self._loop is not None
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        self._queue.append(_Pending(items, future, self.clock()))
        self._num_queued_items += len(items)
        _wake(self._waiter)
        return future

    async def _run(self) -> None:
        while True:
            if not self._queue:
                await self._sleep(None)
                continue
            decision = decide_flush(self._num_queued_items, self.clock() - self._queue[0].enqueued_s,
                                    self.num_arriving, self.max_batch_size, self.max_wait_s)
            if not decision.flush:
                await self._sleep(decision.wait_s)
                continue
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _sleep(self, timeout_s: float | None) -> None:
        """Until `submit` queues more, or `timeout_s` passes. A future and a timer on the batcher's loop: what
        asyncio.wait_for(event.wait()) does with a task and three getpid() calls per batch (see _loop)."""
        assert self._loop is not None
        waiter = self._waiter = self._loop.create_future()
        timer = None if timeout_s is None else self._loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _take_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # timed out or cancelled while queued
                self._queue.popleft()
                self._num_queued_items -= len(head.items)
                continue
            if batch and size + len(head.items) > self.max_batch_size:
                break
            self._queue.popleft()
            self._num_queued_items -= len(head.items)
            batch.append(head)
            size += len(head.items)
        return batch

    def _runs_inline(self) -> bool:
        mean = self._mean_batch_s
        if mean is None:
            return False
        return mean < self.inline_max_s or (mean < PROBE_MAX_S and self._threaded_batches >= PROBE_EVERY)

    def _timed(self, items: list[Any]) -> tuple[Any, float]:
        """Run the handler and say how long it took (the thread hand-off itself is not counted)."""
        started = time.perf_counter()
        results = self.handler(items)
        return results, time.perf_counter() - started

    async def _call(self, items: list[Any]) -> list[Any]:
        """The handler's results for `items`: awaited, run inline or in the batch thread (see INLINE_MAX_S)."""
        if self.is_async:
            results = await self.handler(items)  # type: ignore[misc]
        else:
            if self._runs_inline():
                probe = self._threaded_batches >= PROBE_EVERY
                self._threaded_batches = 0
                results, took_s = self._timed(items)
                if probe:  # a fresh measurement, free of the thread's GIL waits, replaces the average
                    self._mean_batch_s = None
            else:
                self._threaded_batches += 1
                assert self._loop is not None
                results, took_s = await self._loop.run_in_executor(self._executor, self._timed, items)
            mean = self._mean_batch_s
            self._mean_batch_s = took_s if mean is None else 0.8 * mean + 0.2 * took_s
        results = list(results)
        if len(results) != len(items):
            raise KaonError(
                f"endpoint '{self.name}' returned {len(results)} results for a batch of {len(items)} "
                f"inputs; a batched endpoint returns one result per input, in order."
            )
        return results

    async def _execute(self, batch: list[_Pending]) -> None:
        items = [item for pending in batch for item in pending.items]
        if self.on_batch is not None:
            self.on_batch(len(items))
        try:
            results = await self._call(items)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
            if isinstance(exc, asyncio.CancelledError) or len(batch) == 1:
                _fail(batch, exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            # One request's input can fail a whole batch (an index out of an embedding's range, say): each
            # request runs again alone, so only the one that fails alone gets the error.
            await self._execute_alone(batch)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.items)
            _resolve(pending, results[start:end])
            start = end

    async def _execute_alone(self, batch: list[_Pending]) -> None:
        for index, pending in enumerate(batch):
            if pending.future.done():
                continue
            try:
                results = await self._call(pending.items)
            except asyncio.CancelledError as exc:
                _fail(batch[index:], exc)
                raise
            except BaseException as exc:  # noqa: BLE001 - this request's own failure
                pending.future.set_exception(exc)
                continue
            _resolve(pending, results)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


def _resolve(pending: _Pending, results: list[Any]) -> None:
    """A request's results; a handler may answer one input with an exception (a picture that does not
    decode, say): that request fails with it, the rest of the batch does not."""
    if pending.future.done():
        return
    failed = next((r for r in results if isinstance(r, BaseException)), None)
    if failed is None:
        pending.future.set_result(results)
    else:
        pending.future.set_exception(failed)


async def call_unbatched(handler: Callable[..., Any], is_async: bool, executor: ThreadPoolExecutor,
                         kwargs: dict[str, Any]) -> Any:
    """Run an endpoint that is not batched: awaited when async, else in a worker thread."""
    if is_async:
        result: Awaitable[Any] = handler(**kwargs)
        return await result
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, lambda: handler(**kwargs))
